"""Full-history upkeep on a synthetic 925,000-block warehouse: attribution of the whole history,
the metric tables, and what an incremental load costs afterwards.

The warehouse holds ``blocks`` and ``coinbase_outputs`` generated with numpy/pyarrow (not decoded
from a node: this measures upkeep, not loading): one block every 600 s from 2009-01-03, difficulty
growing over 14 orders of magnitude, and coinbases from the shipped registry
(``benchmarks.bench_attribution.generate``: a pool's tag in the scriptSig and/or one of its
mainnet payout addresses, ~5% unknown, 3% with a second pool's payout). Committed through
``Warehouse.commit`` in 50,000-block batches (the real layout and partitions). Then, timed:

1. ``reattribute`` (what ``poolwatch attribute`` runs): the first attribution of the history;
2. ``refresh_metrics(full=True)``: every materialized window (day, week, month, epoch);
3. an incremental load: one new block committed as the loop's gate commits a batch (blocks,
   coinbase outputs, attributions), then ``refresh_metrics()`` as ``poolwatch sync`` runs it after
   loading (incremental: only the windows the new block touched). Goal: under 5 s. Repeated for
   a few blocks; the median is the headline;
4. re-attribution of the whole history with an updated registry, then the catalog refresh, as
   ``poolwatch attribute --registry FILE`` does. Goal: under 10 s. The headline update is a rule
   change that moves real blocks: the tags of the pool that won the most blocks by tag are closed
   at mid-history (its later blocks fall back to its payouts, or to unknown); timed three times
   (closed, opened again, closed again: each a new version moving the same blocks), median. ``reattribute``
   attributes again only the blocks the changed rules can alter (those carrying a changed tag) and
   relabels the rest; how many were attributed again is recorded. Then, each labelled: one pool
   gains a tag no stored block carries (rule change, nothing to attribute again), and a registry
   that differs only in its description (every row relabelled), and that registry once more (the
   attributions are current: nothing is attributed or written). A change that alters every
   block's rows (engine rules, a setting) costs what the first attribution (1.) costs;
5. on-request queries: ``compute_metrics`` of one window kind with and without the bootstrap.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

GENESIS_TIME = 1231006505
MAINNET_GENESIS = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
GOAL_UPKEEP_SECONDS = 5.0
REATTRIBUTE_RUNS = 3  # closed, opened, closed: each a rule change moving the same blocks
GOAL_REATTRIBUTE_SECONDS = 10.0


def synthetic_batch(lo: int, hi: int, rng: np.random.Generator, rnd: random.Random, registry: Any
                    ) -> dict[str, pa.Table]:
    """``blocks`` and ``coinbase_outputs`` for heights [lo, hi): consistent with each other (output
    counts and values), coinbases from the registry."""
    from benchmarks.bench_attribution import generate
    from pipeline.chain.networks import MAIN
    from pipeline.chain.scripts import classify, script_to_address
    from pipeline.store.schemas import table_spec

    gen_blocks, gen_outputs, _ = generate(registry, lo, hi, rnd)
    heights = np.arange(lo, hi, dtype=np.int64)
    n = len(heights)
    times = GENESIS_TIME + heights * 600 + rng.integers(-300, 300, n)
    difficulty = np.exp(heights / 925_000 * np.log(1e14))
    hashes = gen_blocks.column("hash").to_pylist()
    prev = [f"{h - 1:064x}" if h > 0 else "0" * 64 for h in heights.tolist()]
    size = rng.integers(200, 2_000_000, n)
    tx_count = np.maximum(1, size // 500)
    subsidy = (50 * 100_000_000) >> np.minimum(heights // 210_000, 63)

    out_heights = np.asarray(gen_outputs.column("height").to_numpy(), dtype=np.int64)
    values = gen_outputs.column("value_sat").to_numpy()
    scripts = gen_outputs.column("script_hex").to_pylist()
    kinds: dict[str, tuple[str, str | None]] = {}
    for s in scripts:
        if s not in kinds:
            raw = bytes.fromhex(s)
            kinds[s] = (classify(raw), script_to_address(raw, MAIN))
    counts = np.bincount(out_heights - lo, minlength=n)
    sums = np.bincount(out_heights - lo, weights=values, minlength=n).astype(np.int64)
    blocks_cols: dict[str, Any] = {
        "height": heights, "hash": hashes, "prev_hash": prev, "merkle_root": hashes,
        "version": np.full(n, 0x20000000), "time": pa.array(times, pa.timestamp("s", tz="UTC")),
        "median_time": pa.array(times - 3000, pa.timestamp("s", tz="UTC")), "bits": ["1d00ffff"] * n,
        "nonce": rng.integers(0, 2**32, n), "difficulty": difficulty, "size": size, "stripped_size": size,
        "weight": size * 4, "tx_count": tx_count, "coinbase_txid": hashes, "coinbase_wtxid": hashes,
        "coinbase_version": np.ones(n, np.int64), "coinbase_locktime": np.zeros(n, np.int64),
        "coinbase_script_sig_hex": gen_blocks.column("coinbase_script_sig_hex"), "coinbase_bip34_height": heights,
        "coinbase_sequence": np.full(n, 0xFFFFFFFF), "coinbase_witness_reserved_hex": [None] * n,
        "coinbase_value_sat": sums, "subsidy_sat": subsidy, "fees_sat": sums - subsidy, "output_count": counts,
        "coinbase_tag": [""] * n,
    }
    outputs_cols: dict[str, Any] = {
        "height": out_heights, "block_hash": gen_outputs.column("block_hash"),
        "output_index": gen_outputs.column("output_index"), "value_sat": values, "script_hex": scripts,
        "script_type": [kinds[s][0] for s in scripts], "address": [kinds[s][1] for s in scripts],
    }
    out = {}
    for name, cols in (("blocks", blocks_cols), ("coinbase_outputs", outputs_cols)):
        schema = table_spec(name).arrow_schema
        out[name] = pa.table({f.name: _column(cols[f.name], f.type) for f in schema}, schema=schema)
    return out


def _column(values: Any, kind: pa.DataType) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(kind)
    return pa.array(values, type=kind)


def build_warehouse(root: Path, n_blocks: int, registry: Any, batch: int = 50_000, seed: int = 5) -> float:
    """Blocks and coinbase outputs of ``n_blocks`` heights (no attributions yet); seconds taken."""
    from pipeline.store.warehouse import Warehouse

    shutil.rmtree(root, ignore_errors=True)
    rng, rnd = np.random.default_rng(seed), random.Random(seed)
    warehouse = Warehouse(root)
    started = time.perf_counter()
    with warehouse.writer():
        warehouse.bind_chain("main", MAINNET_GENESIS)
        for lo in range(0, n_blocks, batch):
            warehouse.commit(synthetic_batch(lo, min(lo + batch, n_blocks), rng, rnd, registry))
        warehouse.refresh_catalog()
    return time.perf_counter() - started


def incremental_load(warehouse: Any, registry: Any, height: int, seed: int) -> None:
    """One new block, committed as the loop commits a validated batch: blocks, coinbase outputs and
    their attributions under the warehouse's current version, in one commit."""
    from pipeline.attribution.engine import attribute_tables

    tables = synthetic_batch(height, height + 1, np.random.default_rng(seed), random.Random(seed), registry)
    tables.update(attribute_tables(tables["blocks"], tables["coinbase_outputs"], registry, "main"))
    with warehouse.writer():
        warehouse.commit(tables)


def updated_registry(registry: Any) -> Any:
    """A registry update as users make them: a rule changes (one pool gains a coinbase tag), so a
    new registry version whose rules differ, and every stored block is attributed again."""
    from pipeline.attribution.registry import parse_registry

    document = dict(registry.document)
    pools = [dict(p) for p in document["pools"]]
    pools[0]["tags"] = list(pools[0].get("tags") or []) + [{"tag": "/poolwatch benchmark tag/", "sources": []}]
    document["pools"] = pools
    return parse_registry(document)


def closed_tags_registry(registry: Any, pool_id: str, height: int | None, label: str = "") -> Any:
    """A registry update that moves blocks: ``pool_id``'s tags match only up to ``height`` (a pool
    that stopped writing its tag; its later blocks fall back to its payouts, or to unknown); None
    keeps ``registry``'s tags (applied after a closing: they open again). ``label`` goes into the description (a new registry version for the same
    rules, so that a repeated change is a new version again)."""
    from pipeline.attribution.registry import parse_registry

    document = dict(registry.document)
    pools = [dict(p) for p in document["pools"]]
    pool = next(p for p in pools if p["id"] == pool_id)
    if height is not None:
        pool["tags"] = [dict(t, to_height=height) for t in pool["tags"]]
    document["pools"] = pools
    if label:
        document["description"] = f"{document.get('description', '')} ({label})"
    return parse_registry(document)


def busiest_tagged_pool(warehouse: Any) -> tuple[str, int]:
    """The pool that won the most stored blocks by its tag under the current version, and how many."""
    version = warehouse.attribution_version.replace("'", "''")
    con = warehouse.connect()
    try:
        pool_id, blocks = con.execute(f"""
            SELECT pool_id, count(*) FROM attributions
            WHERE registry_version = '{version}' AND method IN ('tag', 'both')
            GROUP BY pool_id ORDER BY count(*) DESC, pool_id LIMIT 1""").fetchone()
    finally:
        con.close()
    return str(pool_id), int(blocks)


def relabelled_registry(registry: Any) -> Any:
    """The same pools and rules under a new registry version (only the description differs): the
    stored attributions are relabelled, not recomputed (``reattribute``'s shortcut for that case)."""
    from pipeline.attribution.registry import parse_registry

    document = dict(registry.document)
    document["description"] = f"{document.get('description', '')} (benchmark update)"
    return parse_registry(document)


def _cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its finished children."""
    from benchmarks.backfill import children_cpu_seconds

    return time.process_time() + children_cpu_seconds()


def _wait_for_children(timeout: float = 60.0) -> None:
    """Until this process has no child process left (they are reaped by whoever started them)."""
    from benchmarks.backfill import _children

    deadline = time.monotonic() + timeout
    while _children("self") and time.monotonic() < deadline:
        time.sleep(0.05)


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def time_upkeep(root: Path, registry: Any, incremental_loads: int = 3,
                say=lambda message: None) -> dict[str, Any]:
    from pipeline.load.jobs import reattribute
    from pipeline.metrics import compute as metrics
    from pipeline.store.warehouse import Warehouse

    warehouse = Warehouse(root)
    out: dict[str, Any] = {"blocks": warehouse.stored_range()[1] + 1}

    def attribute(with_registry: Any) -> dict[str, int]:
        stats: dict[str, int] = {}
        with warehouse.writer():
            reattribute(warehouse, with_registry, stats=stats)
            warehouse.refresh_catalog()
        return stats

    say("  attribution of the whole history (first)")
    first, out["attribute_first_seconds"] = _timed(attribute, registry)
    out["attribute_first_blocks"] = first["blocks"]
    say("  refresh_metrics(full=True)")
    done, out["refresh_full_seconds"] = _timed(metrics.refresh_metrics, warehouse, full=True)
    out["refresh_full_rows"] = done.rows
    out["windows"] = list(metrics.MATERIALIZED_WINDOWS)
    out["bootstrap_draws"] = metrics.BOOTSTRAP_DRAWS
    runs = []
    for i in range(incremental_loads):
        height = warehouse.stored_range()[1] + 1
        say(f"  incremental load of block {height} + refresh_metrics()")
        _, load_seconds = _timed(incremental_load, warehouse, registry, height, seed=100 + i)
        done, seconds = _timed(metrics.refresh_metrics, warehouse)
        runs.append({"height": height, "load_seconds": load_seconds, "refresh_seconds": seconds, "mode": done.mode,
                     "windows_recomputed": done.windows_recomputed})
    out["incremental"] = runs
    refresh = [r["refresh_seconds"] for r in runs]
    out["upkeep_seconds_median"] = statistics.median(refresh) if refresh else None
    out["upkeep_seconds_range"] = [min(refresh), max(refresh)] if refresh else None
    pool_id, tagged = busiest_tagged_pool(warehouse)
    height = out["blocks"] // 2
    say(f"  re-attribution after a rule change: {pool_id}'s tags closed at height {height:,} "
        f"({tagged:,} blocks won by its tag)")
    # Timed REATTRIBUTE_RUNS times, each a rule change to a new version with the same blocks to match
    # again: the tags closed, opened again, closed again (the machine is shared: a median, not one run).
    runs_done: list[dict[str, Any]] = []
    changed = registry
    for run in range(REATTRIBUTE_RUNS):
        changed = closed_tags_registry(registry, pool_id, height if run % 2 == 0 else None,
                                       label=f"benchmark run {run + 1}")
        cpu_before = _cpu_seconds()
        stats, seconds = _timed(attribute, changed)
        # This process's threads plus the validating helper (a child: it exits, and is reaped, just
        # after the run, which does not wait for that; its CPU is counted once it has).
        _wait_for_children()
        cpu = _cpu_seconds() - cpu_before
        say(f"    run {run + 1}: {seconds:.1f} s ({cpu:.1f} s of CPU), {stats['attributed_again']:,} attributed again")
        runs_done.append({"seconds": seconds, "cpu_seconds": cpu, "attributed_again": stats["attributed_again"]})
    timings = [r["seconds"] for r in runs_done]
    again = [r["attributed_again"] for r in runs_done]
    out["reattribute_runs"] = runs_done
    out["reattribute_cpu_seconds"] = statistics.median(r["cpu_seconds"] for r in runs_done)
    out["reattribute_seconds"] = statistics.median(timings)
    out["reattribute_seconds_range"] = [min(timings), max(timings)]
    out["reattribute_blocks"], out["reattribute_again_blocks"] = stats["blocks"], again[0]
    out["reattribute_change"] = {"pool_id": pool_id, "tags_closed_at": height, "blocks_won_by_tag": tagged}
    out["reattribute_blocks_per_s"] = out["reattribute_blocks"] / out["reattribute_seconds"]
    say("  one pool gains a tag no stored block carries (rule change, nothing attributed again)")
    updated = updated_registry(changed)
    stats, out["newtag_seconds"] = _timed(attribute, updated)
    out["newtag_again_blocks"] = stats["attributed_again"]
    say("  registry with a new description only (stored attributions relabelled)")
    relabelled = relabelled_registry(updated)
    stats, out["relabel_seconds"] = _timed(attribute, relabelled)
    out["relabel_blocks"] = stats["blocks"]
    say("  the same registry again (attributions current: nothing to do)")
    stats, out["current_seconds"] = _timed(attribute, relabelled)
    out["current_blocks"] = stats.get("current")
    con = warehouse.connect()
    try:
        version = warehouse.attribution_version
        _, out["compute_month_seconds"] = _timed(metrics.compute_metrics, con, "month", registry_version=version)
        for window in ("day", "month"):
            _, out[f"compute_{window}_no_bootstrap_seconds"] = _timed(metrics.compute_metrics, con, window,
                                                                      registry_version=version, bootstrap=False)
    finally:
        con.close()
    out["goal_upkeep_seconds"] = GOAL_UPKEEP_SECONDS
    out["goal_reattribute_seconds"] = GOAL_REATTRIBUTE_SECONDS
    out["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return out


def run(root: Path, n_blocks: int, say=lambda message: None) -> dict[str, Any]:
    from pipeline.attribution.registry import load_registry

    registry = load_registry()
    say(f"  building a synthetic {n_blocks:,}-block warehouse")
    result: dict[str, Any] = {"blocks_requested": n_blocks, "build_seconds": build_warehouse(root, n_blocks, registry)}
    result.update(time_upkeep(root, registry, say=say))
    return result


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=925_000)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent / "out" / "metrics-warehouse")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the result (with when, which commit, the load average) to this file, "
                             "for `python -m benchmarks --upkeep-from FILE`")
    args = parser.parse_args()
    import os
    import sys
    from datetime import UTC, datetime

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.__main__ import code_version

    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    result = run(args.root, args.blocks, say=print)
    result["measured"] = {"command": " ".join(["python -m benchmarks.metrics_bench", *sys.argv[1:]]), "started": started,
                          "code": code_version(), "load_average_at_start": load_at_start,
                          "load_average_at_end": list(os.getloadavg())}
    text = json.dumps(result, indent=2, default=str)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
