"""results.json (everything measured) and results.md (the tables the README quotes)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

GOAL_BARE_RATIO = 0.8
GOAL_ETL_SPEEDUP = 10.0
GOAL_RSS_MB = 1024


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _best_backfill(results: dict[str, Any]) -> dict[str, Any] | None:
    runs = [r for r in results.get("backfill", []) if "blocks_per_s" in r]
    return max(runs, key=lambda r: r["blocks_per_s"]) if runs else None


def _rates(values: list[float] | None) -> str:
    return ", ".join(f"{v:.0f}" for v in values or [])


def paired_ratios(run: dict[str, Any], bare_rounds: list[float]) -> list[float]:
    """Each run of a configuration over the bare loop timed at the start of its own round."""
    rates = run.get("rounds_blocks_per_s") or []
    rounds = run.get("rounds") or list(range(1, len(rates) + 1))
    return [rate / bare_rounds[r - 1] for rate, r in zip(rates, rounds) if 0 < r <= len(bare_rounds)]


def _backfill_section(results: dict[str, Any], bare_rest: dict[str, Any], bare_rpc: dict[str, Any] | None) -> list[str]:
    in_flight = results.get("bare_rest_in_flight") or {}
    n = in_flight.get("in_flight")
    rounds = bare_rest.get("rounds_blocks_per_s") or []
    lines = [f"The node's bare serving rate is a loop that only fetches raw blocks, one request at a time. For REST "
             f"it was timed with three clients at the start (best of 3 each: http.client on a kept-alive connection "
             f"{bare_rest.get('kept_alive_blocks_per_s', float('nan')):.0f} blocks/s, http.client with a new connection "
             f"per block {bare_rest.get('new_connection_blocks_per_s', float('nan')):.0f} blocks/s, poolwatch's own "
             f"raw-socket GET {bare_rest.get('raw_socket_blocks_per_s', float('nan')):.0f} blocks/s) and once more "
             f"at the start of each round of backfills ({_rates(rounds)} blocks/s). The best of all of them is the "
             f"yardstick: **REST {bare_rest['blocks_per_s']:.1f} blocks/s** ({bare_rest['mb_per_s']:.0f} MB/s)"
             + (f"; RPC getblock 0 {bare_rpc['blocks_per_s']:.1f} blocks/s ({bare_rpc['mb_per_s']:.0f} MB/s, best of "
                f"3 over the first {bare_rpc.get('blocks', '?')} blocks)" if bare_rpc else "") + "."]
    if in_flight.get("blocks_per_s"):
        lines[-1] += (f" With {n} requests in flight (what {n} worker processes ask of the node) the node serves "
                      f"{in_flight['blocks_per_s']:.1f} blocks/s (best of {_rates([r['blocks_per_s'] for r in in_flight['rounds']])}).")
    lines += ["", "A backfill is the whole `poolwatch sync` pipeline: fetch, decode, attribute, validate (Great "
              "Expectations), commit to Parquet, catalog refresh excluded. Each configuration ran once per round, "
              "in a fresh warehouse; the table shows its best run (every run is listed) against the best bare "
              "loop: the same treatment for both on a machine whose speed drifts. Goal: at least "
              f"{GOAL_BARE_RATIO} of the node's bare rate for the same read path.", "",
              "With 1 worker, one process runs a three-stage pipeline: a thread fetches and decodes ahead (one "
              "REST request in flight, like the bare loop), one helper process validates, the process itself "
              "builds and commits; with more, worker processes fetch, decode, attribute and validate and the "
              "parent commits. Worker start-up (spawning processes, importing Great Expectations: a few seconds "
              "once per run) is excluded and listed apart. \"read+decode\" is the read path alone (fetch and "
              "decode, no attribution, validation or commit; one run).", "",
              "\"x bare own path\" compares each read path with the node's bare rate for that path: the RPC path "
              "with the bare `getblock 0` loop (hex in JSON is what limits it), REST and the block files with bare "
              "REST (the node's fastest). The goal column is judged on it, as the goal is stated (one bare loop). "
              "\"x bare same in flight\" is the stricter comparison for several workers: N workers keep N requests "
              "in flight, so they are set against the node serving N requests at once. \"paired\" is the median, "
              "over the rounds, of each run over the bare loop timed just before it in the same round: less "
              "exposed to the machine's drift than best against best, shown for information (not judged).", "",
              "| read path | workers | blocks/s (best) | every run | MB/s | x bare REST | goal met (own path) | "
              "x bare own path | x bare same in flight | paired | seconds | start-up s | read+decode blocks/s | "
              "x bare REST | same tables |",
              "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results.get("backfill", []):
        if "blocks_per_s" not in r:
            lines.append(f"| {r.get('source')} | {r.get('workers')} | failed: {r.get('error')} |" + " |" * 12)
            continue
        read = (f"{r['read_blocks_per_s']:.1f} | {r['read_ratio_to_bare_rest']:.2f}" if "read_blocks_per_s" in r
                else "failed | ")
        same = r.get("ratio_to_bare_same_in_flight")
        pairs = paired_ratios(r, rounds) if r["source"] != "rpc" else []
        paired = statistics.median(pairs) if pairs else None
        lines.append(f"| {r['source']} | {r['workers']} | {r['blocks_per_s']:.1f} | {_rates(r.get('rounds_blocks_per_s'))} | "
                     f"{r['mb_per_s']:.1f} | {r['ratio_to_bare_rest']:.2f} | "
                     f"{_ok(r.get('ratio_to_bare_same_path', r['ratio_to_bare_rest']) >= GOAL_BARE_RATIO)} | "
                     f"{r.get('ratio_to_bare_same_path', float('nan')):.2f} | "
                     f"{'-' if same is None else f'{same:.2f}'} | {'-' if paired is None else f'{paired:.2f}'} | "
                     f"{r['seconds']:.1f} | "
                     f"{r.get('startup_seconds', 0):.1f} | {read} | {r.get('same_blocks_table_as_first_run', '?')} |")
    return lines


def render(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    lines = ["# poolwatch benchmark results", "",
             f"Run `{results.get('command', 'python -m benchmarks')}` on {results.get('started')} "
             f"({results.get('total_seconds', 0):.0f} s in all). Regenerate with `python -m benchmarks`.", "",
             "## Machine", "",
             f"- CPU: {m.get('cpu_model')} ({m.get('cpus')} cores available), RAM {m.get('ram_gb')} GB, "
             f"disk {m.get('disk')}, {m.get('os')}",
             f"- Python {m.get('python')}; " + ", ".join(f"{k} {v}" for k, v in (m.get('packages') or {}).items() if v),
             f"- Load average (1, 5, 15 min) at the start: {', '.join(f'{x:.1f}' for x in m.get('load_average_at_start') or [])}"
             + (f"; at the end: {', '.join(f'{x:.1f}' for x in m['load_average_at_end'])}" if m.get('load_average_at_end') else "")
             + " "
             "(the machine may be shared: compare ratios measured in the same run, not absolute numbers across runs)"]
    node = results.get("node")
    if node:
        lines.append(f"- Node: {node.get('subversion')} ({node.get('flavor')}), regtest, on the same machine")
    chain = results.get("chain")
    if chain:
        lines += ["", "## Chain", "",
                  f"{chain['blocks']} blocks (heights {chain['first_height']}..{chain['last_height']}), "
                  f"{chain['mb']:.0f} MB, {chain['avg_block_bytes'] / 1e6:.2f} MB per block on average, built by "
                  f"the benchmark in {chain['build_seconds']:.0f} s"
                  + (" (by an earlier `--keep` run, reused with `--reuse-chain`)" if chain.get("reused") else "")
                  + " (benchmarks/chain.py: real pool tags and payouts "
                  "from the registry, ~4,300 P2PKH-sized transactions per MB)."]
    bare_rest, bare_rpc = results.get("bare_rest"), results.get("bare_rpc")
    if bare_rest:
        lines += ["", "## Backfill throughput", ""] + _backfill_section(results, bare_rest, bare_rpc)
    stages = results.get("stages")
    if isinstance(stages, dict) and "error" not in stages and chain:
        total = sum(stages.values())
        lines += ["", "## Where the time goes (one process, REST, each stage timed alone)", "",
                  "| stage | seconds | ms per block | share |", "|---|---:|---:|---:|"]
        for name, secs in stages.items():
            lines.append(f"| {name} | {secs:.2f} | {secs / chain['blocks'] * 1000:.1f} | {secs / total:.0%} |")
    rss = results.get("rss")
    if rss:
        lines += ["", "## Peak memory of a backfill", "",
                  "A child process does the whole backfill (the run's batch size; raw blocks are fetched and decoded 16 at a time); peaks are "
                  "each process's VmHWM (not `ru_maxrss`, which on Linux carries the forking parent's size "
                  "across exec); the total adds every process's peak, an upper bound. Goal: under "
                  f"{GOAL_RSS_MB} MB. Memory is bounded by the batch, not the range: each process holds at most "
                  "two slices of 16 raw blocks and a few batches of decoded rows; most of a worker's size is its imports "
                  "(pyarrow, pandas, Great Expectations).", "",
                  "With one worker the child is the one-process pipeline: the process itself plus its validating "
                  "process (listed as the worker).", "",
                  "| read path | workers | parent peak MB | each worker peak MB | total upper bound MB | goal met |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in rss:
            if "peak_rss_mb" not in r:
                lines.append(f"| {r.get('source')} | {r.get('workers')} | failed: {r.get('error')} | | | |")
                continue
            lines.append(f"| {r['source']} | {r['workers']} | {r['peak_rss_mb']:.0f} | {r['worker_peak_rss_mb']:.0f} | "
                         f"{r['peak_rss_total_mb_upper_bound']:.0f} | {_ok(r['peak_rss_total_mb_upper_bound'] < GOAL_RSS_MB)} |")
    decode = results.get("decode")
    if decode:
        lines += ["", "## Decoding real mainnet blocks", ""]
        if "error" in decode:
            lines.append(f"Not measured: {decode['error']}")
        else:
            lines.append(f"The benchmark chain has no witness data (its node predates segwit), so the decoder is also "
                         f"timed on the {decode['blocks']} real mainnet fixture blocks of at least 0.5 MB "
                         f"({decode['mb']:.1f} MB, legacy and segwit): whole `decode_block`, best of several passes. "
                         + (f"C transaction walk: **{decode['c_ms_per_block']:.2f} ms per block** "
                            f"({decode['c_mb_per_s']:.0f} MB/s); " if "c_ms_per_block" in decode else
                            "C transaction walk: not built on this machine; ")
                         + f"Python reference walk: {decode['python_ms_per_block']:.2f} ms per block "
                         f"({decode['python_mb_per_s']:.0f} MB/s).")
    etl = results.get("bitcoin_etl")
    if etl:
        lines += ["", "## bitcoin-etl on the same range", ""]
        best = _best_backfill(results)
        if etl.get("ok") and best:
            speedup = best["blocks_per_s"] / etl["blocks_per_s"]
            lines.append(f"`bitcoinetl export_blocks_and_transactions` ({etl['install']}, {etl['workers']} workers) "
                         f"over the first {etl.get('blocks', '?')} blocks of the chain: "
                         f"{etl['blocks_per_s']:.2f} blocks/s ({etl['seconds']:.0f} s). Best poolwatch backfill "
                         f"({best['source']}, {best['workers']} workers): {best['blocks_per_s']:.1f} blocks/s = "
                         f"**{speedup:.1f}x** (goal {GOAL_ETL_SPEEDUP:g}x: {_ok(speedup >= GOAL_ETL_SPEEDUP)}). "
                         "bitcoin-etl exports every transaction (getblock verbosity 2), poolwatch only header and "
                         "coinbase, so this compares tools, not equal work.")
        else:
            lines.append(f"Not measured: {etl.get('install')}; {etl.get('error', '')}")
    attribution = results.get("attribution")
    if attribution:
        lines += ["", f"## Attribution ({attribution.get('blocks', 0):,} synthetic coinbases)", ""]
        if "report" in attribution:
            lines += [f"    {line}" for line in attribution["report"]]
        if "error" in attribution:
            lines.append(f"Failed: {attribution['error']}")
    metrics = results.get("metrics")
    if metrics:
        lines += ["", f"## Metrics on a synthetic {metrics.get('blocks_requested', 0):,}-block warehouse", ""]
        if "error" in metrics:
            lines.append(f"Failed: {metrics['error']}")
        else:
            lines += [f"- Building the warehouse (not the metric): {metrics['build_seconds']:.0f} s",
                      f"- `refresh_metrics` (windows {', '.join(metrics['windows'])}, bootstrap "
                      f"{metrics['bootstrap_draws']} draws): **{metrics['refresh_metrics_seconds']:.1f} s** "
                      f"({metrics['refresh_metrics_rows']})",
                      f"- `compute_metrics(month)` with bootstrap: {metrics['compute_month_seconds']:.1f} s; "
                      f"without: month {metrics['compute_month_no_bootstrap_seconds']:.1f} s, "
                      f"day {metrics['compute_day_no_bootstrap_seconds']:.1f} s"]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "results.json"
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = directory / "results.md"
    md.write_text(render(results))
    return md, js
