"""Metrics commands: ``poolwatch metrics`` (tables in the terminal, or CSV / JSON) and ``poolwatch report``
(charts)."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

from pipeline.cli import output
from pipeline.cli.output import Column, fmt_number, is_missing, no_negative_zero, signless_zero

if TYPE_CHECKING:  # pandas is imported where a command needs it: `poolwatch sync` never does
    import pandas as pd

err = Console(stderr=True)


def _fail(message: str) -> None:
    output.fail(message)


def _open(ctx: click.Context):
    from pipeline.store.warehouse import Warehouse

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
    return fmt_number(value, ".1%")


def _fmt_interval(point, lo, hi, spec: str) -> str:
    if is_missing(point):
        return "-"
    text = fmt_number(point, spec)
    if is_missing(lo) or is_missing(hi):
        return text
    return f"{text} [{fmt_number(lo, spec)}-{fmt_number(hi, spec)}]"


def _fmt_hashrate(value) -> str:
    if is_missing(value):
        return "-"
    value = no_negative_zero(float(value))
    for unit, scale in (("EH/s", 1e18), ("PH/s", 1e15), ("TH/s", 1e12), ("GH/s", 1e9), ("MH/s", 1e6)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return signless_zero(f"{value:.3g} H/s")


def centralization_table(cent: pd.DataFrame, level: str) -> tuple[list[Column], list[list]]:
    """Columns and rows of the centralization table: one row per window, the unknown treatments side
    by side where they differ, and the Nakamoto coefficient and HHI at the three levels (pool /
    legal / inferred, unknown = one miner; ``cent`` holds every level, the other columns are
    ``level``'s). Labels come from ``metrics.column_label`` (the HTML report's and the
    notebook's names); the window and blocks columns and the composite HHI / Nakamoto cells use the
    HTML report's wording. Optional columns are left out first in a narrow terminal."""
    from pipeline.metrics.compute import LEVELS, column_label, format_levels, level_comparison

    columns = [
        Column("window"), Column("blocks", "right"), Column(column_label("unknown_share", level), "right"),
        Column(column_label("known_entities", level), "right"),
        Column(column_label("top1_share_of_known", level), "right"),
        Column(column_label("top3_share_of_known", level), "right", optional=True),
        Column(column_label("top5_share_of_known", level), "right", optional=True),
        Column("HHI [95% CI]", "right"), Column("Nakamoto excl. / one / each [95% CI]", "right"),
        Column("Nakamoto pool / legal / inferred", "right"), Column("HHI pool / legal / inferred", "right"),
        Column(column_label("entropy_normalized", level), "right", optional=True),
        Column(column_label("gini", level), "right", optional=True),
        Column(column_label("network_hashrate", level), "right", optional=True),
        Column("flags"),
    ]
    levels = level_comparison(cent).set_index(["first_height", "window_id"])
    cent = cent[cent.level == level]
    rows = []
    for (first, window_id), group in cent.groupby(["first_height", "window_id"], sort=True):
        across = levels.loc[(first, window_id)]
        by = {r.unknown_treatment: r for r in group.itertuples(index=False)}
        one = by["one_entity"]
        naks = []
        for t in ("excluded", "one_entity", "each_own"):
            r = by[t]
            naks.append(_fmt_interval(r.nakamoto, r.nakamoto_lo, r.nakamoto_hi, "d"))
        flags = []
        if one.low_sample:
            flags.append(Text("low sample", style="yellow"))
        if not one.complete:
            flags.append(Text("partial", style="dim"))
        rows.append([str(window_id), f"{int(one.blocks_total):,}", _fmt_share(one.unknown_share),
                     str(int(one.known_entities)), _fmt_share(one.top1_share_of_known),
                     _fmt_share(one.top3_share_of_known), _fmt_share(one.top5_share_of_known),
                     _fmt_interval(one.hhi, one.hhi_lo, one.hhi_hi, ".3f"), " / ".join(naks),
                     format_levels([across[f"nakamoto_{lv}"] for lv in LEVELS], "d"),
                     format_levels([across[f"hhi_{lv}"] for lv in LEVELS], ".3f"),
                     fmt_number(one.entropy_normalized, ".2f"), fmt_number(one.gini, ".2f"),
                     _fmt_hashrate(one.network_hashrate), Text(" ").join(flags)])
    return columns, rows


def top_pools(share: pd.DataFrame, level: str, limit: int) -> pd.DataFrame:
    """The ``limit`` largest entities of the latest window (all columns), or an empty frame."""
    if not limit or share.empty:
        return share.iloc[0:0]
    latest = share.sort_values("first_height")["window_id"].iloc[-1]
    return share[(share.level == level) & (share.window_id == latest)].sort_values("rank").head(limit)


LEVEL_ENTITY = {"pool": "pool", "legal": "owner", "inferred": "group"}
LEVEL_HELP = ("pool: registry pools as reported; legal: pools joined by the registry's dated families "
              "(family:<id>); inferred: legal owners further joined by template and custody links at or above "
              "the thresholds (group:<lead>). docs/metrics.md, Levels.")


def pool_table(rows: pd.DataFrame, level: str) -> tuple[list[Column], list[list]]:
    from pipeline.metrics.compute import column_label

    columns = [Column("#", "right"), Column(LEVEL_ENTITY[level]), Column("blocks", "right"),
               Column("share [95% Wilson]", "right"), Column(column_label("share_of_known", level), "right"),
               Column(column_label("hashrate", level), "right", optional=True)]
    body = [[str(r.rank), str(r.entity_name), f"{int(r.blocks):,}", _fmt_interval(r.share, r.share_lo, r.share_hi, ".1%"),
             _fmt_share(r.share_of_known), _fmt_hashrate(r.hashrate)] for r in rows.itertuples(index=False)]
    return columns, body


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    import pandas as pd

    frame = frame.copy()
    for name in frame.columns:
        if pd.api.types.is_float_dtype(frame[name]):
            frame[name] = frame[name] + 0.0  # -0.0 + 0.0 == +0.0: no "-0.0" in the file
    frame.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)


def _window_and_range(window_text: str, start: str | None, end: str | None):
    """--window and --from/--to, parsed and checked before the warehouse is opened; a bad value is a
    usage error naming the option's problem."""
    from pipeline.metrics import compute as m

    for name, text in (("--from", start), ("--to", end)):
        if text is not None and re.fullmatch(r"\s*-\d+\s*", text):
            raise click.BadParameter(f"{text.strip()} is not a height: heights start at 0", param_hint=f"'{name}'")
    try:
        window, rng = m.parse_window(window_text), m.make_range(start, end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if rng.from_height is not None and rng.to_height is not None and rng.from_height > rng.to_height:
        raise click.UsageError(f"--from {rng.from_height} is above --to {rng.to_height}: the range is empty")
    if rng.from_time is not None and rng.to_time is not None and rng.from_time > rng.to_time:
        raise click.UsageError(f"--from {start.strip()} is after --to {end.strip()}: the range is empty")
    return window, rng


def inference_options(wh, min_template_heights: int | None, min_co_spends: int | None):
    """The inferred level's thresholds: the options given, the rest as the warehouse recorded them."""
    from dataclasses import replace

    from pipeline.metrics import compute as m

    settings = m.inference_settings(wh)
    if min_template_heights is not None:
        settings = replace(settings, min_template_heights=min_template_heights)
    if min_co_spends is not None:
        settings = replace(settings, min_co_spend_txs=min_co_spends)
    return settings


def register(main: click.Group) -> None:
    @main.command("metrics")
    @click.option("--window", "window_text", default="week", show_default=True,
                  help="day, week, month, epoch, all, blocks:N (chunks of N heights) or rolling:N[:STEP].")
    @click.option("--from", "start", default=None, help="First height, or a UTC date/time (2024-01-01).")
    @click.option("--to", "end", default=None, help="Last height, or a UTC date/time (a date includes the day).")
    @click.option("--level", type=click.Choice(["pool", "legal", "inferred"]), default="pool", show_default=True,
                  help="The level of the detail columns and the top list (the Nakamoto and HHI columns show all "
                       "three). " + LEVEL_HELP)
    @click.option("--last", type=click.IntRange(min=0), default=12, show_default=True,
                  help="Show the most recent N windows (0: all windows in the range).")
    @click.option("--pools", "show_pools", type=click.IntRange(min=0), default=10, show_default=True,
                  help="Also list the top N pools of the latest window (0: none).")
    @click.option("--draws", type=click.IntRange(min=1), default=1000, show_default=True,
                  help="Bootstrap replicates.")
    @click.option("--no-bootstrap", is_flag=True, help="Skip the HHI / Nakamoto intervals (faster).")
    @output.output_options(
        csv_help="Print the centralization rows of the shown windows and level as CSV (every column, one "
                 "row per unknown treatment) instead of tables; the pool shares: --json or --csv-dir.",
        json_help="Print {window, level, registry_version, centralization: [...], pool_share: [...]} as JSON "
                  "(every column of the shown windows and pools) instead of tables.")
    @click.option("--csv-dir", "csv_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Also write centralization.csv and pool_share.csv (every level, every window computed) "
                       "into this folder.")
    @click.option("--refresh", is_flag=True,
                  help="Recompute the materialized tables (centralization, pool_share: day/week/month/epoch).")
    @click.option("--min-template-heights", type=click.IntRange(min=1), default=None,
                  help="Inferred level: a template link counts when the two pools shared templates at this many "
                       "heights (default: the warehouse's recorded setting, else 2). With --refresh it is recorded.")
    @click.option("--min-co-spends", type=click.IntRange(min=1), default=None,
                  help="Inferred level: a custody link counts when this many transactions spent both pools' "
                       "coinbase outputs (default: the recorded setting, else 2). With --refresh it is recorded.")
    @click.pass_context
    def metrics_cmd(ctx, window_text, start, end, level, last, show_pools, draws, no_bootstrap, as_csv, as_json,
                    csv_dir, refresh, min_template_heights, min_co_spends):
        """Centralization metrics per window: shares, HHI, Nakamoto coefficient, entropy, Gini.

        Unknown blocks are counted three ways (excluded / one miner / each its own miner), so the
        Nakamoto coefficient is shown as a range. Definitions: docs/metrics.md. In a terminal too
        narrow for the table, some columns are left out or each window is printed one field per
        line; --csv and --json print everything.
        """
        from pipeline.metrics import compute as m

        fmt = output.output_format(as_csv, as_json)
        window, rng = _window_and_range(window_text, start, end)
        wh, version = _open(ctx)
        inference = inference_options(wh, min_template_heights, min_co_spends)
        if refresh:
            with err.status("recomputing the materialized metric tables"):
                done = m.refresh_metrics(wh, full=True, inference=inference)
            err.print(Text(f"refreshed ({done.mode}): {done.rows['centralization']:,} centralization rows, "
                           f"{done.rows['pool_share']:,} pool_share rows (attribution version {version}; "
                           f"inferred links: {inference.describe()})"))
        con = wh.connect()
        try:
            result = m.compute_metrics(con, window, registry_version=version, rng=rng,
                                       last=last or None, bootstrap=not no_bootstrap, draws=draws,
                                       inference=inference)
            notes = m.data_notes(con, rng, inference)
        except m.MetricsError as exc:
            _fail(str(exc))
        finally:
            con.close()
        if result.centralization.empty:
            _fail("no blocks in the selected range")
        if fmt != "json":  # --json carries them in its "notes"
            for note in notes:
                err.print(Text(f"note: {note}"), highlight=False)
        warn_if_stale(wh)
        cent = result.centralization[result.centralization.level == level]
        pools = top_pools(result.pool_share, level, show_pools)
        if fmt == "json":
            output.print_json({"window": window.name, "level": level, "registry_version": version,
                               "inference": inference.to_meta(), "notes": notes,
                               "centralization": output.records(cent),
                               "levels": output.records(m.level_comparison(result.centralization)),
                               "pool_share": output.records(pools)})
        elif fmt == "csv":
            output.print_csv(list(cent.columns), output.records(cent))
        else:
            title = (f"{window.name} windows, {level} level, attribution version {version}; "
                     f"HHI and the pool / legal / inferred columns with unknown = one miner; 95% bootstrap "
                     f"intervals")
            output.print_table(*centralization_table(result.centralization, level), title=title)
            if not pools.empty:
                output.stdout().print()
                output.print_table(*pool_table(pools, level),
                                   title=f"{LEVEL_ENTITY[level].capitalize()}s in {pools.window_id.iloc[0]}")
        if csv_dir is not None:
            csv_dir.mkdir(parents=True, exist_ok=True)
            _write_csv(result.centralization, csv_dir / "centralization.csv")
            _write_csv(result.pool_share, csv_dir / "pool_share.csv")
            err.print(Text(f"wrote {csv_dir / 'centralization.csv'} and {csv_dir / 'pool_share.csv'}"))

    @main.command("report")
    @click.option("--window", "window_text", default="week", show_default=True,
                  help="day, week, month, epoch, blocks:N or rolling:N[:STEP].")
    @click.option("--from", "start", default=None, help="First height, or a UTC date/time.")
    @click.option("--to", "end", default=None, help="Last height, or a UTC date/time.")
    @click.option("--level", type=click.Choice(["pool", "legal", "inferred"]), default="pool", show_default=True,
                  help="The level of the share and treatment charts (the levels chart shows all three). " + LEVEL_HELP)
    @click.option("--draws", type=click.IntRange(min=1), default=1000, show_default=True,
                  help="Bootstrap replicates.")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Output folder (default: <warehouse>/reports).")
    @click.pass_context
    def report_cmd(ctx, window_text, start, end, level, draws, out_dir):
        """Charts: stacked pool shares, Nakamoto coefficient and HHI with intervals, top pools (PNG + HTML)."""
        from pipeline.metrics import compute as m
        from pipeline.metrics import report as r

        window, rng = _window_and_range(window_text, start, end)
        wh, version = _open(ctx)
        con = wh.connect()
        try:
            with err.status("computing metrics"):
                data = r.load_report_data(con, window, level=level, registry_version=version, rng=rng, draws=draws,
                                          inference=m.inference_settings(wh))
        except m.MetricsError as exc:
            _fail(str(exc))
        finally:
            con.close()
        for note in data.notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        target = out_dir or (wh.root / "reports")
        for path in r.write_report(data, target):
            click.echo(str(path))
