"""Metrics commands: ``poolwatch metrics`` (a table in the terminal) and ``poolwatch report`` (charts)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click
import pandas as pd
from rich.console import Console
from rich.table import Table

err = Console(stderr=True)


def _out() -> Console:
    """stdout console; piped or captured output gets a wide page instead of truncated columns."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=220)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    sys.exit(1)


def _open(ctx: click.Context):
    from pipeline.warehouse import Warehouse

    root: Path = ctx.obj["warehouse"]
    if not root.exists():
        _fail(f"no warehouse at {root} (run `poolwatch sync` first, or pass --warehouse)")
    wh = Warehouse(root)
    return wh, wh.attribution_version


def warn_if_stale(wh) -> bool:
    """Say on stderr when the stored metric tables do not follow from the current data."""
    fresh = wh.freshness()
    if fresh["stale"] and wh.file_count("centralization"):
        err.print(f"warning: the stored metric tables (pool_share, centralization and their views) are stale: "
                  f"{fresh['reason']}. They show older numbers until `poolwatch metrics --refresh`; numbers "
                  "computed on request (like these) use the current data.", markup=False, highlight=False)
        return True
    return False


def _fmt_share(value) -> str:
    return "-" if pd.isna(value) else f"{value:.1%}"


def _fmt_interval(point, lo, hi, spec: str) -> str:
    if pd.isna(point):
        return "-"
    text = format(point, spec)
    if pd.isna(lo) or pd.isna(hi):
        return text
    return f"{text} [{format(lo, spec)}-{format(hi, spec)}]"


def _fmt_hashrate(value) -> str:
    if pd.isna(value):
        return "-"
    for unit, scale in (("EH/s", 1e18), ("PH/s", 1e15), ("TH/s", 1e12), ("GH/s", 1e9), ("MH/s", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.3g} H/s"


def centralization_table(cent: pd.DataFrame, level: str, title: str) -> Table:
    """One line per window; the unknown treatments side by side where they differ."""
    cent = cent[cent.level == level]
    table = Table(title=title, title_justify="left")
    from pipeline.metrics import column_label

    for name, justify in (("window", "left"), ("blocks", "right"), ("unknown", "right"),
                          (column_label("known_entities", level), "right"),
                          (column_label("top1_share_of_known"), "right"), (column_label("top3_share_of_known"), "right"),
                          (column_label("top5_share_of_known"), "right"), ("HHI [95% CI]", "right"),
                          ("Nakamoto excl/one/each [95% CI]", "right"), ("entropy", "right"),
                          ("Gini", "right"), ("hashrate", "right"), ("", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for (_, window_id), rows in cent.groupby(["first_height", "window_id"], sort=True):
        by = {r.unknown_treatment: r for r in rows.itertuples(index=False)}
        one = by["one_entity"]
        naks = []
        for t in ("excluded", "one_entity", "each_own"):
            r = by[t]
            naks.append(_fmt_interval(r.nakamoto, r.nakamoto_lo, r.nakamoto_hi, "d") if not pd.isna(r.nakamoto)
                        else "-")
        flags = []
        if one.low_sample:
            flags.append("[yellow]low sample[/]")
        if not one.complete:
            flags.append("[dim]partial[/]")
        table.add_row(str(window_id), f"{int(one.blocks_total):,}", _fmt_share(one.unknown_share),
                      str(int(one.known_entities)), _fmt_share(one.top1_share_of_known),
                      _fmt_share(one.top3_share_of_known), _fmt_share(one.top5_share_of_known),
                      _fmt_interval(one.hhi, one.hhi_lo, one.hhi_hi, ".3f"), " / ".join(naks),
                      "-" if pd.isna(one.entropy_normalized) else f"{one.entropy_normalized:.2f}",
                      "-" if pd.isna(one.gini) else f"{one.gini:.2f}", _fmt_hashrate(one.network_hashrate),
                      " ".join(flags))
    return table


def pool_table(share: pd.DataFrame, level: str, window_id: str, limit: int) -> Table:
    rows = share[(share.level == level) & (share.window_id == window_id)].sort_values("rank").head(limit)
    table = Table(title=f"{'Families' if level == 'family' else 'Pools'} in {window_id}", title_justify="left")
    for name in ("#", "pool" if level == "pool" else "family", "blocks", "share [95% Wilson]", "of known",
                 "hashrate"):
        table.add_column(name, justify="left" if name in ("pool", "family") else "right", no_wrap=True)
    for r in rows.itertuples(index=False):
        table.add_row(str(r.rank), str(r.entity_name), f"{int(r.blocks):,}",
                      _fmt_interval(r.share, r.share_lo, r.share_hi, ".1%"), _fmt_share(r.share_of_known),
                      _fmt_hashrate(r.hashrate))
    return table


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)


def _window_and_range(window_text: str, start: str | None, end: str | None):
    """--window and --from/--to, parsed; a bad value is a usage error naming the option's problem."""
    from pipeline import metrics as m

    try:
        return m.parse_window(window_text), m.make_range(start, end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def register(main: click.Group) -> None:
    @main.command("metrics")
    @click.option("--window", "window_text", default="week", show_default=True,
                  help="day, week, month, epoch, all, blocks:N (chunks of N heights) or rolling:N[:STEP].")
    @click.option("--from", "start", default=None, help="First height, or a UTC date/time (2024-01-01).")
    @click.option("--to", "end", default=None, help="Last height, or a UTC date/time (a date includes the day).")
    @click.option("--level", type=click.Choice(["pool", "family"]), default="pool", show_default=True,
                  help="Count registry pools, or registry families (proxy pooling merged).")
    @click.option("--last", type=int, default=12, show_default=True,
                  help="Show the most recent N windows (0: all windows in the range).")
    @click.option("--pools", "show_pools", type=int, default=10, show_default=True,
                  help="Also list the top N pools of the latest window (0: none).")
    @click.option("--draws", type=int, default=1000, show_default=True, help="Bootstrap replicates.")
    @click.option("--no-bootstrap", is_flag=True, help="Skip the HHI / Nakamoto intervals (faster).")
    @click.option("--csv", "csv_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Also write centralization.csv and pool_share.csv into this folder.")
    @click.option("--refresh", is_flag=True,
                  help="Recompute the materialized tables (centralization, pool_share: day/week/month/epoch).")
    @click.pass_context
    def metrics_cmd(ctx, window_text, start, end, level, last, show_pools, draws, no_bootstrap, csv_dir, refresh):
        """Centralization metrics per window: shares, HHI, Nakamoto coefficient, entropy, Gini.

        Unknown blocks are counted three ways (excluded / one miner / each its own miner), so the
        Nakamoto coefficient is shown as a range. Definitions: docs/metrics.md.
        """
        from pipeline import metrics as m

        window, rng = _window_and_range(window_text, start, end)
        wh, version = _open(ctx)
        if refresh:
            with err.status("recomputing the materialized metric tables"):
                done = m.refresh_metrics(wh, full=True)
            err.print(f"refreshed ({done.mode}): {done.rows['centralization']:,} centralization rows, "
                      f"{done.rows['pool_share']:,} pool_share rows (attribution version {version})")
        con = wh.connect()
        try:
            result = m.compute_metrics(con, window, registry_version=version, rng=rng,
                                       last=last or None, bootstrap=not no_bootstrap, draws=draws)
            notes = m.data_notes(con, rng)
        except m.MetricsError as exc:
            _fail(str(exc))
        finally:
            con.close()
        if result.centralization.empty:
            _fail("no blocks in the selected range")
        for note in notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        warn_if_stale(wh)
        title = (f"{window.name} windows, {level} level, attribution version {version}; "
                 f"HHI with unknown = one miner; 95% bootstrap intervals")
        out = _out()
        out.print(centralization_table(result.centralization, level, title))
        if show_pools:
            latest = result.pool_share.sort_values("first_height")["window_id"].iloc[-1]
            out.print(pool_table(result.pool_share, level, latest, show_pools))
        if csv_dir is not None:
            csv_dir.mkdir(parents=True, exist_ok=True)
            _write_csv(result.centralization, csv_dir / "centralization.csv")
            _write_csv(result.pool_share, csv_dir / "pool_share.csv")
            err.print(f"wrote {csv_dir / 'centralization.csv'} and {csv_dir / 'pool_share.csv'}")

    @main.command("report")
    @click.option("--window", "window_text", default="week", show_default=True,
                  help="day, week, month, epoch, blocks:N or rolling:N[:STEP].")
    @click.option("--from", "start", default=None, help="First height, or a UTC date/time.")
    @click.option("--to", "end", default=None, help="Last height, or a UTC date/time.")
    @click.option("--level", type=click.Choice(["pool", "family"]), default="pool", show_default=True)
    @click.option("--draws", type=int, default=1000, show_default=True, help="Bootstrap replicates.")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Output folder (default: <warehouse>/reports).")
    @click.pass_context
    def report_cmd(ctx, window_text, start, end, level, draws, out_dir):
        """Charts: stacked pool shares, Nakamoto coefficient and HHI with intervals, top pools (PNG + HTML)."""
        from pipeline import metrics as m
        from pipeline import report as r

        window, rng = _window_and_range(window_text, start, end)
        wh, version = _open(ctx)
        con = wh.connect()
        try:
            with err.status("computing metrics"):
                data = r.load_report_data(con, window, level=level, registry_version=version, rng=rng, draws=draws)
        except m.MetricsError as exc:
            _fail(str(exc))
        finally:
            con.close()
        for note in data.notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        target = out_dir or (wh.root / "reports")
        paths = r.write_report(data, target)
        out = _out()
        for path in paths:
            out.print(str(path))
