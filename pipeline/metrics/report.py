"""Charts of the centralization metrics: PNG files and one self-contained HTML page.

Figures are built as plain ``matplotlib.figure.Figure`` objects, never through pyplot: no backend
or display is needed for the PNGs, nothing accumulates in pyplot's figure registry, and a notebook
shows a returned figure inline. The figures take the frames of ``pipeline.metrics.compute_metrics`` (or the materialized tables),
so the CLI (``poolwatch report``) and the notebook draw exactly the same pictures.
"""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.metrics import compute as m

log = logging.getLogger("pipeline.metrics.report")

TREATMENT_LABELS = {
    "excluded": "unknown excluded",
    "one_entity": "unknown = one miner",
    "each_own": "each unknown block its own miner",
}
TREATMENT_COLORS = {"excluded": "#1f77b4", "one_entity": "#d62728", "each_own": "#2ca02c"}
UNKNOWN_COLOR = "#9e9e9e"
OTHER_COLOR = "#d9d9d9"
CHARTS = ("pool_shares", "nakamoto", "hhi", "levels", "top_pools")
LEVEL_TITLES = {"pool": "pools", "legal": "legal owners (pools joined by dated families)",
                "inferred": "inferred groups (legal owners joined by template / custody links)"}
LEVEL_STYLES = {"pool": ("#4c72b0", "-"), "legal": ("#dd8452", "--"), "inferred": ("#55a868", ":")}


@dataclass
class ReportData:
    """What the charts need: per-window metrics plus one window over the whole range for ranking."""

    window: m.WindowScheme
    level: str
    series: m.MetricsResult
    overall: m.MetricsResult
    registry_version: str | None
    rng: m.Range
    notes: list[str]  # what the data behind the charts leaves out (metrics.data_notes)


def load_report_data(con: duckdb.DuckDBPyConnection, window: m.WindowScheme | str = "week", *, level: str = "pool",
                     registry_version: str | None = None, rng: m.Range | None = None,
                     draws: int = m.BOOTSTRAP_DRAWS, inference: m.InferenceSettings | None = None) -> ReportData:
    """Metrics per window and over the whole range at every level (``level`` picks the one the share
    and treatment charts draw); ``inference``: the inferred level's thresholds (callers with a
    warehouse pass ``compute.inference_settings(warehouse)``, as its stored tables were computed)."""
    window = m.parse_window(window) if isinstance(window, str) else window
    if level not in m.LEVELS:
        raise ValueError(f"unknown level {level!r}: use one of {', '.join(m.LEVELS)}")
    rng = rng or m.Range()
    series = m.compute_metrics(con, window, registry_version=registry_version, rng=rng, draws=draws,
                               inference=inference)
    if series.centralization.empty:
        raise m.MetricsError("no blocks in the selected range: nothing to chart")
    overall = m.compute_metrics(con, "all", registry_version=registry_version, rng=rng, draws=draws,
                                inference=inference)
    return ReportData(window, level, series, overall, registry_version, rng, m.data_notes(con, rng, inference))


def _x(frame: pd.DataFrame, window: m.WindowScheme) -> pd.Series:
    """x of a window's point: the middle of the window (calendar: of its time span; block windows:
    of its heights), so markers sit inside the span that the steps and the shading cover."""
    if window.is_calendar:
        start = pd.to_datetime(frame["window_start"])
        return start + (pd.to_datetime(frame["window_end"]) - start) / 2
    return (frame["first_height"] + frame["last_height"]) / 2


def _edges(frame: pd.DataFrame, window: m.WindowScheme) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) x edge of each window: the span its step and its low-sample shading cover."""
    if window.is_calendar:
        return (pd.to_datetime(frame["window_start"]).to_numpy(), pd.to_datetime(frame["window_end"]).to_numpy())
    return (frame["first_height"].to_numpy(dtype=float) - 0.5, frame["last_height"].to_numpy(dtype=float) + 0.5)


def _adjacent(frame: pd.DataFrame, window: m.WindowScheme) -> np.ndarray:
    """For each window after the first: does it follow the previous one with no gap in between
    (no empty calendar window, no missing height)?"""
    heights = frame["first_height"].to_numpy()[1:] == frame["last_height"].to_numpy()[:-1] + 1
    if window.is_calendar:
        times = pd.to_datetime(frame["window_start"]).to_numpy()[1:] <= pd.to_datetime(frame["window_end"]).to_numpy()[:-1]
        return heights & times
    return heights


def _steps(frame: pd.DataFrame, window: m.WindowScheme, *values: pd.Series) -> tuple[np.ndarray, list[np.ndarray]]:
    """Step lines as explicit segments: each window's value held from its left to its right edge,
    a vertical jump to the next window only when it is adjacent, and a break (NaN) across every gap:
    nothing is drawn over a range without data."""
    left, right = _edges(frame, window)
    xs: list = []
    ys: list[list[float]] = [[] for _ in values]
    follows = np.concatenate([[True], _adjacent(frame, window)])
    for i in range(len(frame)):
        if i and not follows[i]:
            xs.append(right[i - 1])
            for y in ys:
                y.append(np.nan)
        xs += [left[i], right[i]]
        for y, v in zip(ys, values, strict=True):
            value = float(v.iloc[i]) if pd.notna(v.iloc[i]) else np.nan
            y += [value, value]
    return np.array(xs), [np.array(y, dtype=float) for y in ys]


def _xlabel(window: m.WindowScheme) -> str:
    return "window start (UTC)" if window.is_calendar else "height (middle of the window)"


def _title_suffix(data: ReportData) -> str:
    return f"{LEVEL_TITLES[data.level]}, {data.window.name} windows"


def _mark_low_sample(ax, rows: pd.DataFrame, window: m.WindowScheme) -> None:
    """Shade low_sample windows (HHI interval spanning a factor of LOW_SAMPLE_HHI_RATIO or more) over
    exactly the span their step covers (``_edges``), so nobody reads them as signal."""
    flagged = rows[rows["low_sample"].astype(bool)]
    left, right = _edges(flagged, window)
    for lo, hi in zip(left, right, strict=True):
        ax.axvspan(lo, hi, color="#f4d0d0", alpha=0.6, zorder=0, linewidth=0)
    if len(flagged):
        ax.fill_between([], [], color="#f4d0d0", label=f"low sample (HHI interval spans x{m.LOW_SAMPLE_HHI_RATIO:g} or more)")


def _break_at_gaps(x: np.ndarray, ys: list[np.ndarray], rows: pd.DataFrame,
                   window: m.WindowScheme) -> tuple[np.ndarray, list[np.ndarray]]:
    """Insert a NaN point between two windows that are not adjacent (an empty calendar window or
    missing heights between them), so a line or area shows a gap instead of a straight line across
    a range without data."""
    where = np.flatnonzero(~_adjacent(rows, window)) + 1
    if not len(where):
        return x, ys
    mids = x[where - 1] + (x[where] - x[where - 1]) / 2
    return np.insert(x, where, mids), [np.insert(y, where, np.nan) for y in ys]


def pool_shares_figure(data: ReportData, top: int = 8) -> Figure:
    """Stacked shares per window: the `top` largest entities over the range, the rest, and unknown."""
    share = data.series.pool_share
    share = share[share.level == data.level]
    known = share[~share.is_unknown.astype(bool)]
    leaders = known.groupby("entity_id")["blocks"].sum().sort_values(ascending=False).head(top).index.tolist()
    names = known.drop_duplicates("entity_id").set_index("entity_id")["entity_name"].to_dict()
    labels = share.assign(stack=[e if e in leaders else ("unknown" if u else "other")
                                 for e, u in zip(share.entity_id, share.is_unknown.astype(bool), strict=True)])
    table = labels.pivot_table(index=["first_height", "window_id"], columns="stack", values="share",
                               aggfunc="sum", fill_value=0.0).sort_index()
    windows = share.drop_duplicates("window_id").set_index("window_id")
    order = leaders + [c for c in ("other", "unknown") if c in table.columns]
    table = table.reindex(columns=order, fill_value=0.0)
    idx = table.index.get_level_values("window_id")
    x = _x(windows.loc[idx], data.window).to_numpy()

    fig = Figure(figsize=(11, 5.5), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20"]
    colors = [cmap(i % 20) for i in range(len(leaders))] + \
        [OTHER_COLOR if c == "other" else UNKNOWN_COLOR for c in order[len(leaders):]]
    label_of = {**{e: names.get(e, e) for e in leaders}, "other": "other pools", "unknown": "unknown"}
    if len(x) == 1:
        bottom = 0.0
        for col, color in zip(order, colors, strict=True):
            ax.bar(x, table[col].to_numpy(), bottom=bottom, color=color, label=label_of[col], width=0.6)
            bottom = bottom + table[col].to_numpy()
    else:
        x, ys = _break_at_gaps(x, [table[c].to_numpy(dtype=float) for c in order], windows.loc[idx], data.window)
        ax.stackplot(x, *ys, colors=colors, labels=[label_of[c] for c in order], step=None)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylabel("share of blocks")
    ax.set_xlabel(_xlabel(data.window))
    ax.set_title(f"Share of blocks by {_title_suffix(data)}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _treatment_lines(ax, data: ReportData, value: str, lo: str, hi: str, step: bool) -> None:
    cent = data.series.centralization
    cent = cent[cent.level == data.level].sort_values("first_height")
    # Lines that coincide would hide each other: draw them slightly apart (dodge), bands unshifted.
    dodge = dict(zip(m.TREATMENTS, (-1, 0, 1), strict=True))
    spread = 0.04 * (float(cent[hi].max()) if step and cent[hi].notna().any() else 0.0)
    for treatment in m.TREATMENTS:
        rows = cent[cent.unknown_treatment == treatment].reset_index(drop=True)
        if rows[value].isna().all():
            continue
        color = TREATMENT_COLORS[treatment]
        shifted = rows[value].astype(float) + dodge[treatment] * spread
        if step:
            x, (y, band_lo, band_hi) = _steps(rows, data.window, shifted, rows[lo], rows[hi])
        else:
            x, (y, band_lo, band_hi) = _break_at_gaps(
                _x(rows, data.window).to_numpy(),
                [shifted.to_numpy(dtype=float), rows[lo].to_numpy(dtype=float), rows[hi].to_numpy(dtype=float)],
                rows, data.window)
        ax.fill_between(x, band_lo, band_hi, color=color, alpha=0.15, linewidth=0)
        ax.plot(x, y, color=color, label=TREATMENT_LABELS[treatment])
        ax.scatter(_x(rows, data.window), shifted, color=color, s=10)
    _mark_low_sample(ax, cent[cent.unknown_treatment == "excluded"], data.window)


def nakamoto_figure(data: ReportData) -> Figure:
    """Nakamoto coefficient per window under the three unknown treatments, with 95% bootstrap bands."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.subplots()
    _treatment_lines(ax, data, "nakamoto", "nakamoto_lo", "nakamoto_hi", step=True)
    ax.set_ylabel("Nakamoto coefficient")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel(_xlabel(data.window))
    ax.set_title(f"Nakamoto coefficient (entities needed for > 50% of blocks), {_title_suffix(data)}; "
                 f"bands: 95% bootstrap; lines drawn slightly apart where equal", fontsize=10)
    ax.legend(fontsize=9, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def hhi_figure(data: ReportData) -> Figure:
    """HHI per window under the three unknown treatments, with 95% bootstrap bands."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax = fig.subplots()
    _treatment_lines(ax, data, "hhi", "hhi_lo", "hhi_hi", step=False)
    ax.set_ylabel("HHI (sum of squared shares)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(_xlabel(data.window))
    ax.set_title(f"Herfindahl-Hirschman index, {_title_suffix(data)}; bands: 95% bootstrap", fontsize=10)
    ax.legend(fontsize=9, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def top_pools_figure(data: ReportData, top: int = 15) -> Figure:
    """Ranking over the whole selected range, with 95% Wilson intervals."""
    share = data.overall.pool_share
    share = share[share.level == data.level].sort_values("blocks", ascending=False).head(top).iloc[::-1]
    total = int(share["blocks_total"].iloc[0]) if len(share) else 0
    fig = Figure(figsize=(9, 0.4 * max(len(share), 3) + 1.5), layout="constrained")
    ax = fig.subplots()
    colors = [UNKNOWN_COLOR if u else "#4c72b0" for u in share.is_unknown.astype(bool)]
    ax.barh(share["entity_name"], share["share"], color=colors,
            xerr=[share["share"] - share["share_lo"], share["share_hi"] - share["share"]],
            error_kw={"ecolor": "#333333", "capsize": 3, "linewidth": 1})
    for y, (s, hi, b) in enumerate(zip(share["share"], share["share_hi"], share["blocks"], strict=True)):
        ax.text(hi, y, f"  {s:.1%} ({b:,} blocks)", va="center", ha="left", fontsize=8)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlim(0, min(1.0, float(share["share_hi"].max()) * 1.45 + 0.03) if len(share) else 1.0)
    ax.set_xlabel("share of blocks (95% Wilson interval)")
    first = int(data.overall.pool_share["first_height"].min())
    last = int(data.overall.pool_share["last_height"].max())
    level = m.LEVEL_ENTITIES[data.level]
    ax.set_title(f"Top {level} ({data.level} level), heights {first:,}-{last:,} ({total:,} blocks)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def levels_figure(data: ReportData) -> Figure:
    """Nakamoto coefficient and HHI per window at the three levels (pool, legal, inferred; unknown =
    one miner): the range from pools as reported to the fewest independent parties the evidence
    allows. Equal levels are drawn on top of each other (dashed and dotted lines keep them visible)."""
    cent = data.series.centralization
    rows = m.level_comparison(cent)
    frame = cent[(cent.level == "pool") & (cent.unknown_treatment == m.LEVEL_TREATMENT)]
    frame = frame.set_index(["first_height", "window_id"]).loc[list(zip(rows.first_height, rows.window_id,
                                                                        strict=True))].reset_index()
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    nak_ax, hhi_ax = fig.subplots(2, 1, sharex=True)
    for level in m.LEVELS:
        color, style = LEVEL_STYLES[level]
        x, (nak,) = _steps(frame, data.window, rows[f"nakamoto_{level}"])
        nak_ax.plot(x, nak, color=color, linestyle=style, linewidth=2, label=f"{level}: {LEVEL_TITLES[level]}")
        hx, (hhi,) = _break_at_gaps(_x(frame, data.window).to_numpy(), [rows[f"hhi_{level}"].to_numpy(dtype=float)],
                                    frame, data.window)
        hhi_ax.plot(hx, hhi, color=color, linestyle=style, linewidth=2, marker="o", markersize=3, label=level)
    nak_ax.set_ylabel("Nakamoto coefficient")
    nak_ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    nak_ax.set_ylim(bottom=0)
    nak_ax.set_title(f"Nakamoto coefficient and HHI at the three levels, {data.window.name} windows "
                     "(unknown = one miner)", fontsize=10)
    nak_ax.legend(fontsize=8, loc="lower left")
    nak_ax.grid(alpha=0.3)
    hhi_ax.set_ylabel("HHI")
    hhi_ax.set_ylim(bottom=0)
    hhi_ax.set_xlabel(_xlabel(data.window))
    hhi_ax.grid(alpha=0.3)
    return fig


def figures(data: ReportData) -> dict[str, Figure]:
    return {"pool_shares": pool_shares_figure(data), "nakamoto": nakamoto_figure(data),
            "hhi": hhi_figure(data), "levels": levels_figure(data), "top_pools": top_pools_figure(data)}


def _summary_html(data: ReportData) -> str:
    cent = data.series.centralization
    cent = cent[(cent.level == data.level)]
    wide = cent.pivot_table(index=["first_height", "window_id"], columns="unknown_treatment",
                            values="nakamoto", aggfunc="first").sort_index()
    base = cent[cent.unknown_treatment == "one_entity"].set_index(["first_height", "window_id"]).sort_index()
    levels = m.level_comparison(data.series.centralization).set_index(["first_height", "window_id"])
    rows = []
    for key in list(wide.index)[-20:]:
        b = base.loc[key]
        naks = " / ".join("-" if pd.isna(wide.loc[key].get(t)) else str(int(wide.loc[key][t]))
                          for t in m.TREATMENTS)
        rows.append(
            f"<tr><td>{html.escape(str(key[1]))}</td><td>{int(b.blocks_total)}</td>"
            f"<td>{b.unknown_share:.1%}</td><td>{int(b.known_entities)}</td><td>{_pct(b.top1_share_of_known)}</td>"
            f"<td>{_pct(b.top1_share_of_all)}</td>"
            f"<td>{b.hhi:.3f} [{b.hhi_lo:.3f}, {b.hhi_hi:.3f}]</td><td>{naks}</td>"
            f"<td>{m.format_levels([levels.loc[key, f'nakamoto_{lv}'] for lv in m.LEVELS], 'd')}</td>"
            f"<td>{m.format_levels([levels.loc[key, f'hhi_{lv}'] for lv in m.LEVELS], '.3f')}</td>"
            f"<td>{'low sample' if b.low_sample else ''}</td></tr>")
    heads = "".join(f"<th>{html.escape(m.column_label(c, data.level))}</th>"
                    for c in ("known_entities", "top1_share_of_known", "top1_share_of_all"))
    return (f"<table><tr><th>window</th><th>blocks</th><th>unknown</th>{heads}"
            "<th>HHI [95% CI] (unknown = one miner)</th><th>Nakamoto excl. / one / each</th>"
            "<th>Nakamoto pool / legal / inferred (unknown = one miner)</th>"
            "<th>HHI pool / legal / inferred (unknown = one miner)</th><th></th></tr>"
            + "".join(rows) + "</table>")


def _pct(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.1%}"


def write_report(data: ReportData, out_dir: Path, dpi: int = 110) -> list[Path]:
    """Write one PNG per chart and index.html (PNGs embedded as base64) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    parts: list[str] = []
    for name, fig in figures(data).items():
        path = out_dir / f"{name}_{data.level}_{data.window.name}.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{encoded}"></figure>')
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>poolwatch report</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:1em auto;color:#222}}
img{{max-width:100%}}table{{border-collapse:collapse;font-size:0.85em}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head><body>
<h1>poolwatch: who mines the blocks</h1>
<p>{html.escape(_title_suffix(data))}; attribution version {html.escape(str(data.registry_version))};
generated {generated}. Definitions, intervals and caveats: docs/metrics.md. Unknown blocks are shown
three ways: excluded, as one miner, and each as its own miner; the truth lies in that range.</p>
{"".join(f"<p><b>Note:</b> {html.escape(n)}.</p>" for n in data.notes)}
{"".join(parts)}
<h2>Latest windows</h2>
{_summary_html(data)}
</body></html>
"""
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    written.append(index)
    log.info("report written to %s (%d files)", out_dir, len(written))
    return written
