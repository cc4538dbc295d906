"""results.json (everything measured) and results.md (the tables README and docs quote, generated)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

GOAL_RSS_MB = 1024
# Goals of issue 15, judged here (never by a timed test): ratio label -> minimum.
GOALS = {
    "sync REST (whole process) / bare REST": 0.9,
    "sync RPC (whole process) / bare getblock 0": 0.8,
    "sync blkfiles (whole process) / bare pread": 0.5,
}


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    """A ratio: two decimals, three below 0.1 (so a small ratio never prints as 0.00)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def _ok(flag: bool | None) -> str:
    return "-" if flag is None else ("met" if flag else "**not met**")


def describe_run(results: dict[str, Any]) -> str:
    """One sentence: when, what configuration, which machine and node."""
    m = results.get("machine", {})
    node = results.get("node") or {}
    chain = results.get("chain") or {}
    head = results.get("headline_range") or {}
    config = results.get("config") or {}
    if results.get("quick"):
        kind = "a QUICK smoke run (tiny chain: the figures only show that the harness runs, they are not representative)"
    elif config.get("era_blocks") not in (None, config.get("full_era_blocks")):
        kind = (f"a REDUCED run ({config['era_blocks']} blocks per era instead of {config['full_era_blocks']}, batches of "
                f"{config.get('batch_size')}, {config.get('rounds')} rounds)")
    else:
        kind = "a full run"
    code = results.get("code") or {}
    at = f" at commit {code['commit'][:12]}{' (with uncommitted changes)' if code.get('dirty') else ''}" \
        if code.get("commit") else ""
    return (f"From {kind}: `{results.get('command')}`{at} on {results.get('started')}, "
            f"{m.get('cpu_model')} ({m.get('cpus')} CPUs, shared), {m.get('ram_gb')} GB RAM, disk {m.get('disk')}; "
            f"node {node.get('version_text') or 'Bitcoin Core'} ({node.get('subversion')}, regtest, same machine); "
            f"headline range: {head.get('blocks', '?')} blocks of the `{head.get('era', '?')}` era "
            f"({(head.get('bytes') or 0) / max(head.get('blocks') or 1, 1) / 1e6:.2f} MB, "
            f"{(head.get('weight') or 0) / max(head.get('blocks') or 1, 1) / 1e6:.2f} MWU per block), "
            f"block files XORed: {chain.get('xor_key')}.")


def ratios_table(results: dict[str, Any]) -> list[str]:
    lines = ["| ratio | median | min-max over rounds | best-of-N | goal |", "|---|---:|---|---:|---|"]
    for r in results.get("ratios") or []:
        goal = GOALS.get(r["label"])
        judged = None if goal is None or r["median"] is None else r["median"] >= goal
        if not r["rounds"]:  # e.g. a loop run of one batch: no steady state to compare
            lines.append(f"| {r['label']} | not measured | (no round had both sides) | - | - |")
            continue
        lines.append(f"| {r['label']} | **{_x(r['median'])}x** | {_x(r['min'])}-{_x(r['max'])} "
                     f"({r['rounds']} rounds) | {_x(r['best_of_n'])} | "
                     + (f">= {goal}: {_ok(judged)}" if goal else "-") + " |")
    return lines


CPU_PAIRS = (("REST", "bare_rest", "cli_rest"), ("RPC", "bare_rpc", "cli_rpc"), ("block files", "bare_pread", "cli_blkfiles"))


def _median_of(rounds: list[dict[str, Any]], key: str, get: Any) -> float | None:
    values = []
    for r in rounds:
        run = r.get(key)
        if isinstance(run, dict) and "error" not in run and isinstance(run.get("cpu"), dict):
            v = get(run)
            if v is not None:
                values.append(v)
    return statistics.median(values) if values else None


def cpu_ceilings(results: dict[str, Any]) -> dict[str, float]:
    """Per path: the bare loop's wall time over (sync's CPU + the node's CPU during it) / CPUs,
    medians over rounds: the best whole-process ratio the machine's CPUs allow."""
    rounds = results.get("rounds") or []
    cpus = (results.get("machine") or {}).get("cpus") or 1
    out = {}
    for label, bare, cli in CPU_PAIRS:
        bare_wall = _median_of(rounds, bare, lambda run: run.get("seconds"))
        own = _median_of(rounds, cli, lambda run: run["cpu"].get("client"))
        node = _median_of(rounds, cli, lambda run: run["cpu"].get("node"))
        if bare_wall and own:
            out[label] = bare_wall / ((own + (node or 0.0)) / cpus)
    return out


def cpu_summary(results: dict[str, Any]) -> list[str]:
    ceilings = cpu_ceilings(results)
    if not ceilings:
        return []
    cpus = (results.get("machine") or {}).get("cpus") or 1
    return [f"CPU work bounds the whole-process ratios on these {cpus} CPUs: with the CPU seconds of `poolwatch "
            f"sync`'s process tree and of the node spread evenly over all {cpus}, the sync could reach at most "
            + ", ".join(f"{v:.2f}x of the bare {k} loop" for k, v in ceilings.items())
            + " (medians over rounds; \"CPU used\" in benchmarks/results.md)."]


def cpu_table(results: dict[str, Any]) -> list[str]:
    """Wall and CPU seconds of each bare loop and `poolwatch sync` (median over rounds): the node's
    CPU and this side's (every thread and helper process). Their sum over the machine's CPUs is the
    shortest wall time the work allows; the bare loop's wall over it bounds the whole-process ratio."""
    rounds = results.get("rounds") or []
    cpus = (results.get("machine") or {}).get("cpus") or 1
    rows = []
    ceilings = cpu_ceilings(results)
    for label, bare, cli in CPU_PAIRS:
        for name, key in ((f"bare {label}", bare), (f"`poolwatch sync` {label}", cli)):
            wall = _median_of(rounds, key, lambda run: run.get("seconds"))
            own = _median_of(rounds, key, lambda run: run["cpu"].get("client"))
            node = _median_of(rounds, key, lambda run: run["cpu"].get("node"))
            if wall is None or own is None:
                continue
            floor = (own + (node or 0.0)) / cpus
            rows.append(f"| {name} | {wall:.1f} | {own:.1f} | {_f(node, 1)} | {floor:.1f} |")
        ceiling = ceilings.get(label)
        if ceiling is not None:
            rows.append(f"| ceiling of sync {label} / bare {label} on {cpus} CPUs | - | - | - | {ceiling:.2f}x |")
    if not rows:
        return []
    return ["| run (median over rounds) | wall s | its CPU s | node CPU s | CPU sum / CPUs, s |",
            "|---|---:|---:|---:|---:|"] + rows


def lock_table(results: dict[str, Any]) -> list[str]:
    """The bare REST loop alone and beside the same Python work in a thread of its process or in
    another process (``bare_rest_beside``): rates and each one's ratio to the loop alone in the same
    round, medians over rounds with min-max."""
    rounds = results.get("rounds") or []
    rows = []
    for name, key in (("alone", "bare_rest"), ("beside Python work in a thread of its process (CPUs and the "
                                               "interpreter lock shared)", "bare_rest_beside_thread"),
                      ("beside the same work in another process (CPUs shared)", "bare_rest_beside_process")):
        rates, ratios = [], []
        for r in rounds:
            run, alone = r.get(key), r.get("bare_rest")
            if isinstance(run, dict) and "blocks_per_s" in run and isinstance(alone, dict) \
                    and alone.get("blocks_per_s"):
                rates.append(run["blocks_per_s"])
                ratios.append(run["blocks_per_s"] / alone["blocks_per_s"])
        if not rates:
            continue
        rows.append(f"| {name} | {statistics.median(rates):,.1f} | {min(rates):,.1f}-{max(rates):,.1f} | "
                    f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    if len(rows) < 3:
        return []
    return ["| bare REST loop | blocks/s median | min-max | / alone, same round: median (min-max) |",
            "|---|---:|---|---|"] + rows


def rates_table(results: dict[str, Any]) -> list[str]:
    """Median blocks/s of every timed loop over the rounds (min-max)."""
    rounds = results.get("rounds") or []
    if not isinstance(rounds, list) or not rounds:
        return []
    rows = [("bare REST (http.client, new connection per block)", "bare_rest", "blocks_per_s"),
            ("bare getblock 0 (poolwatch transport, batched)", "bare_rpc", "blocks_per_s"),
            ("bare pread of the located records", "bare_pread", "blocks_per_s")]
    for s in ("rest", "rpc", "blkfiles"):
        rows += [(f"`poolwatch sync` {s}, whole process", f"cli_{s}", "blocks_per_s"),
                 (f"`poolwatch sync` {s}, as it reports (after its start-up)", f"cli_{s}", "reported"),
                 (f"loop {s}, steady state", f"loop_{s}", "steady")]
    lines = ["| loop | blocks/s median | min-max | MB/s median |", "|---|---:|---|---:|"]
    for label, key, field in rows:
        values, mbs = [], []
        for r in rounds:
            run = r.get(key)
            if not isinstance(run, dict) or "error" in run:
                continue
            if field == "steady":
                v = (run.get("steady") or {}).get("blocks_per_s")
            elif field == "reported":
                v = (run.get("reported") or {}).get("blocks_per_s")
            else:
                v = run.get(field)
            if v:
                values.append(v)
                if "mb_per_s" in run and field == "blocks_per_s":
                    mbs.append(run["mb_per_s"])
        if not values:
            continue
        values.sort()
        median = values[len(values) // 2] if len(values) % 2 else sum(values[len(values) // 2 - 1:len(values) // 2 + 1]) / 2
        mb = sorted(mbs)[len(mbs) // 2] if mbs else None
        lines.append(f"| {label} | {median:,.1f} | {min(values):,.1f}-{max(values):,.1f} | {_f(mb, 0)} |")
    return lines


def stages_table(results: dict[str, Any]) -> list[str]:
    """The production loop's own stage timings (its ``stages`` hook), first round."""
    rounds = results.get("rounds") or []
    if not isinstance(rounds, list) or not rounds:
        return []
    lines = ["| stage | " + " | ".join(f"{s} s (ms/block)" for s in ("rest", "rpc", "blkfiles")) + " |",
             "|---|---:|---:|---:|"]
    runs = {s: rounds[0].get(f"loop_{s}") or {} for s in ("rest", "rpc", "blkfiles")}
    names: list[str] = []
    for run in runs.values():
        for name in run.get("stages") or {}:
            if name not in names:
                names.append(name)
    for name in names:
        cells = []
        for run in runs.values():
            secs = (run.get("stages") or {}).get(name)
            cells.append("-" if secs is None else f"{secs:.2f} ({secs / run['blocks'] * 1000:.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _cold_text(p: dict[str, Any]) -> str:
    """The block files' goal verdict, on a cold disk when the disk's rate was measured."""
    t = p["total_hours"]
    goal = f"goal for the block files: < {p['goal_blkfiles_hours']:g} h: {_ok(p.get('goal_blkfiles_met'))}"
    if t.get("blkfiles_cold") is None:
        return f"{goal} at the page cache's rate, not on a cold disk; "
    return (f"page cache warm; on a cold disk read at {p['disk_mb_per_s']:,.0f} MB/s (O_DIRECT, measured): block "
            f"files **{_f(t['blkfiles_cold'], 1)} h**, reading alone {_f(t.get('disk_only'), 2)} h; {goal} on the "
            "cold disk; ")


def projection_lines(results: dict[str, Any]) -> list[str]:
    p = results.get("projection")
    if not isinstance(p, dict) or "error" in p:
        return [f"Not computed: {p.get('error') if isinstance(p, dict) else 'no per-era measurements'}"]
    lines = [f"Backfilling mainnet heights 0..{p['mainnet_blocks'] - 1:,} (~{p['mainnet_gb']:.0f} GB of blocks) "
             "on this machine, one process, from the measured per-era costs:", "",
             "| era | mainnet blocks | benchmark MB/block | REST ms/block | RPC ms/block | blkfiles ms/block | "
             "bare REST ms | bare pread ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in p["eras"]:
        lines.append(f"| {row['era']} ({row['dates']}) | {row['mainnet_blocks']:,} | "
                     f"{row['benchmark_mean_bytes'] / 1e6:.2f} | {_f(row['rest']['ms_per_block'], 1)} | "
                     f"{_f(row['rpc']['ms_per_block'], 1)} | {_f(row['blkfiles']['ms_per_block'], 1)} | "
                     f"{_f(row['bare_rest']['ms_per_block'], 1)} | {_f(row['bare_pread']['ms_per_block'], 2)} |")
    t = p["total_hours"]
    lines += ["", f"Projected: **REST {_f(t.get('rest'), 1)} h, RPC {_f(t.get('rpc'), 1)} h, block files "
                  f"{_f(t.get('blkfiles'), 1)} h** ({_cold_text(p)}see the "
                  f"assumptions); the bare loops alone: REST {_f(t.get('bare_rest'), 1)} h, "
                  f"getblock 0 {_f(t.get('bare_rpc'), 1)} h, pread {_f(t.get('bare_pread'), 2)} h.", "",
              "Assumptions:", ""] + [f"- {a}" for a in p["assumptions"]]
    if any("whole load" in row[s]["how"] for row in p["eras"] for s in ("rest", "rpc", "blkfiles")):
        lines += ["- some eras had too few batches for a steady state: their cost includes the loop's start-up "
                  "(a quick run's projection is meaningless)"]
    return lines


def etl_lines(results: dict[str, Any]) -> list[str]:
    etl = results.get("bitcoin_etl")
    if not etl:
        return []
    if "error" in etl or not etl.get("runs"):
        return [f"bitcoin-etl: not measured ({etl.get('error') or etl.get('install')})."]
    s = etl["blocks_per_s"]
    ratios = [r for r in results.get("ratios") or [] if r["label"].startswith("sync REST")]
    rounds = results.get("rounds") or []
    cli = sorted(r["cli_rest"]["blocks_per_s"] for r in rounds if "blocks_per_s" in (r.get("cli_rest") or {}))
    pw = cli[len(cli) // 2] if cli else None
    headline = (results.get("config") or {}).get("era_blocks")
    part = etl["last"] - etl["first"] + 1
    subset = (f" (the first {part:,} blocks of the {headline:,}-block headline range, same era and block sizes: "
              f"the whole range would take ~{headline / s['median'] / 60:.0f} min a run at this rate, so the rate "
              "per block is compared, over different spans)"
              if headline and part < headline and s.get("median") else "")
    return [f"bitcoin-etl (`export_blocks_and_transactions`, {etl['install']}, 1 worker) over heights "
            f"{etl['first']}..{etl['last']}{subset} of the same node, {len(etl['runs'])} runs: median "
            f"{_f(s['median'])} blocks/s ({_f(s['min'])}-{_f(s['max'])}). DIFFERENT WORK: it asks `getblock <hash> 2` "
            "and exports every transaction as JSON; poolwatch reads raw blocks and keeps header and coinbase. "
            + (f"`poolwatch sync` over REST, whole process, ran at a median {pw:,.1f} blocks/s over the headline range "
               f"({pw / s['median']:.0f}x as many blocks per second)." if pw and s["median"] and ratios else "")]


def _loads(values: Any) -> str:
    return " / ".join(f"{v:.1f}" for v in values) if isinstance(values, list) else str(values)


def upkeep_lines(results: dict[str, Any]) -> list[str]:
    u = results.get("upkeep")
    if not u:
        return []
    if "error" in u:
        return [f"Upkeep: failed: {u['error']}"]
    measured = u.get("measured") or {}
    source = (f" (measured on its own: `{measured.get('command')}` at commit {str((measured.get('code') or {}).get('commit'))[:12]} "
              f"on {measured.get('started')}, load average {_loads(measured.get('load_average_at_start'))} at its start, "
              f"{_loads(measured.get('load_average_at_end'))} at its end)"
              if u.get("taken_from") else "")
    return [f"Synthetic {u['blocks']:,}-block warehouse{source} (built in {u['build_seconds']:.0f} s, not timed): first "
            f"attribution of the history {u['attribute_first_seconds']:.1f} s; `refresh_metrics(full=True)` "
            f"{u['refresh_full_seconds']:.1f} s; after an incremental load of one block, `refresh_metrics()` "
            f"**{u['upkeep_seconds_median']:.1f} s** median ({u['upkeep_seconds_range'][0]:.1f}-"
            f"{u['upkeep_seconds_range'][1]:.1f}, {len(u['incremental'])} loads; goal < {u['goal_upkeep_seconds']:g} s: "
            f"{_ok(u['upkeep_seconds_median'] < u['goal_upkeep_seconds'])}); "
            + _reattribution_text(u)
            + "." + (f" Note: {u['note']}" if u.get("note") else "")]


def _runs_text(u: dict[str, Any]) -> str:
    """' median (a-b, N runs; C s of CPU ...)' for results that timed the rule change more than once."""
    runs = u.get("reattribute_runs") or []
    if len(runs) < 2:
        return " (one run)" if "reattribute_change" in u else ""
    lo, hi = u["reattribute_seconds_range"]
    cpu = u.get("reattribute_cpu_seconds")
    cpus = u.get("cpus")
    return (f" median ({lo:.1f}-{hi:.1f}, {len(runs)} runs: the tags closed, opened again, closed again"
            + (f"; {cpu:.1f} s of CPU, this process and its validating helper"
               + (f", i.e. at least {cpu / cpus:.1f} s on {cpus} CPUs" if cpus else "") if cpu is not None else "")
            + ")")


def _reattribution_text(u: dict[str, Any]) -> str:
    goal = f"goal < {u['goal_reattribute_seconds']:g} s: {_ok(u['reattribute_seconds'] < u['goal_reattribute_seconds'])}"
    change = u.get("reattribute_change")
    if not change:  # results from before re-attribution carried unchanged rows over
        return (f"full re-attribution with an updated registry (one pool gains a tag: every block attributed "
                f"again) **{u['reattribute_seconds']:.1f} s** ({goal})"
                + (f"; a registry differing only in its description relabels the stored rows in "
                   f"{u['relabel_seconds']:.1f} s (no rule changed: not a re-attribution)"
                   if "relabel_seconds" in u else ""))
    return (f"re-attribution of the whole history after a rule change ({change['pool_id']}, the pool with the most "
            f"blocks won by tag ({change['blocks_won_by_tag']:,}), has its tags closed at height "
            f"{change['tags_closed_at']:,}) **{u['reattribute_seconds']:.1f} s**{_runs_text(u)} ({goal}; "
            f"{u['reattribute_again_blocks']:,} blocks carrying a changed tag attributed again, the other "
            f"{u['reattribute_blocks'] - u['reattribute_again_blocks']:,} rows carried over under the new version); "
            f"one pool gaining a tag no block carries {u['newtag_seconds']:.1f} s ({u['newtag_again_blocks']:,} "
            f"attributed again); a registry differing only in its description {u['relabel_seconds']:.1f} s (every "
            f"row relabelled); "
            + (f"the same registry once more {u['current_seconds']:.1f} s (attributions current: nothing attributed "
               f"or written); " if "current_seconds" in u else "")
            + f"a change that alters every block's rows (engine rules, a setting) costs what the "
            f"first attribution costs ({u['attribute_first_seconds']:.1f} s)")


def memory_lines(results: dict[str, Any]) -> list[str]:
    pm = results.get("peak_memory")
    if not pm:
        return []
    return [f"Peak memory: **{pm['max_total_mb']:.0f} MB** ({pm['run']}: main process {pm['main_mb']:.0f} MB + "
            f"helpers {', '.join(f'{h:.0f}' for h in pm['helpers_mb'])} MB; VmHWM of every process of the tree, "
            f"summed: an upper bound). Goal < {GOAL_RSS_MB} MB: {_ok(pm['max_total_mb'] < GOAL_RSS_MB)}."]


def summary(results: dict[str, Any]) -> list[str]:
    """The section README and docs/performance.md quote (benchmarks/docs.py inserts it)."""
    lines = [describe_run(results), ""] + ratios_table(results)
    for extra in (cpu_summary(results), memory_lines(results), etl_lines(results), upkeep_lines(results)):
        if extra:
            lines += [""] + extra
    p = results.get("projection")
    if isinstance(p, dict) and "total_hours" in p:
        t = p["total_hours"]
        if t.get("blkfiles_cold") is not None:
            disk = (f" On a cold disk (this one read {p['disk_mb_per_s']:,.0f} MB/s with O_DIRECT, past the page "
                    f"cache) the block files take {_f(t['blkfiles_cold'], 1)} h (goal < {p['goal_blkfiles_hours']:g} h: "
                    f"{_ok(p.get('goal_blkfiles_met'))}); both leave out the coinbase lookup of a backfill from "
                    "genesis (0.3-0.45 ms per full-size block, docs/custody.md).")
        else:
            disk = (f" The block files' figure assumes the disk delivers {p['mainnet_gb'] / (t['blkfiles'] * 3600):.2f} "
                    "GB/s (the benchmark read a warm page cache) and leaves out the coinbase lookup of a backfill "
                    "from genesis (0.3-0.45 ms per full-size block, docs/custody.md)."
                    if t.get("blkfiles") and p.get("mainnet_gb") else "")
        lines += ["", f"Full-mainnet backfill projected from per-era costs: REST {_f(t.get('rest'), 1)} h, RPC "
                      f"{_f(t.get('rpc'), 1)} h, block files {_f(t.get('blkfiles'), 1)} h (assumptions in "
                      f"benchmarks/results.md).{disk}"]
    return lines


def render(results: dict[str, Any]) -> str:
    chain = results.get("chain") or {}
    lines = ["# poolwatch benchmark results", "",
             f"Generated by `python -m benchmarks` ({results.get('total_seconds', 0):.0f} s in all). "
             "Every ratio is computed within one round (the bare loop and the pipeline measured minutes apart); "
             "the headline is the median over rounds with its min-max, best-of-N (best pipeline run over best "
             "bare run) is secondary.", "", "## Summary", ""] + summary(results)
    m = results.get("machine", {})
    lines += ["", "## Machine and node", "",
              f"- CPU: {m.get('cpu_model')} ({m.get('cpus')} cores available), RAM {m.get('ram_gb')} GB, disk "
              f"{m.get('disk')}, {m.get('os')}; Python {m.get('python')}",
              f"- Load average at the start / end: {m.get('load_average_at_start')} / {m.get('load_average_at_end')} "
              "(a shared machine: compare ratios from the same run)",
              f"- Node: {(results.get('node') or {}).get('subversion')} at {(results.get('node') or {}).get('binary')}"]
    if chain.get("segments"):
        lines += ["", "## Chain", "",
                  f"Cache key `{chain.get('key')}` ({'reused' if chain.get('reused') else 'built'}; build took "
                  f"{chain.get('build_seconds', 0):.0f} s); block files XORed: {chain.get('xor_key')}. Coinbases from "
                  "the registry's pools (`demo_specs`); witness commitment in every block of a witness era.", "",
                  "| era | heights | blocks | MB/block | MWU/block | transactions/block | witness commitments |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for s in chain["segments"]:
            n = s["last"] - s["first"] + 1
            lines.append(f"| {s['era']} | {s['first']}..{s['last']} | {n} | {s['bytes'] / n / 1e6:.3f} | "
                         f"{s['weight'] / n / 1e6:.2f} | {s['transactions'] / n:,.0f} | {s['witness_commitments']} |")
    rates = rates_table(results)
    if rates:
        lines += ["", "## Rates over the headline range (median over rounds)", ""] + rates
        lines += ["", "What each ratio compares:", ""] + [f"- **{r['label']}**: {r['what']}"
                                                          for r in results.get("ratios") or []]
    cpu = cpu_table(results)
    if cpu:
        lines += ["", "## CPU used over the headline range", "",
                  "This side's CPU is the benchmark's own threads for a bare loop, the whole process tree (main "
                  "process, threads, validating helper) for `poolwatch sync`; the node's is bitcoind's (from "
                  "/proc). Both share the machine's CPUs: no run can finish in less wall time than their sum "
                  "over the CPU count, so the bare loop's wall time over that sum bounds the whole-process "
                  "ratio on this machine (the ceiling rows).", ""] + cpu
    lock = lock_table(results)
    if lock:
        duty = results.get("python_work_duty")
        lines += ["", "## What sharing the interpreter lock costs a fetching loop", "",
                  "`poolwatch sync` fetches in one thread while others decode and build (Python code, holding "
                  "the interpreter lock while they run). To see what that sharing costs, each round also runs "
                  "the bare REST loop beside pure-Python work busy "
                  + (f"{duty:.0%} of every {results.get('python_work_period', 0) * 1000:g} ms " if duty else "")
                  + "(`benchmarks.backfill.bare_rest_beside`): once in a thread of the loop's process, once in "
                  "another process. The work is the same; the difference between the two is the lock's share.",
                  ""] + lock
    stages = stages_table(results)
    if stages:
        lines += ["", "## Stage breakdown of the production loop (its own `stages` timings, round 1)", "",
                  "`wait` is the committing thread waiting for the next validated batch; "
                  "`validator_start_wait` the part of it spent waiting for the validating process to start "
                  "(it starts in the background while the first batch is read); stages in other "
                  "threads/processes overlap.", ""] + stages
    if results.get("eras") is not None:
        lines += ["", "## Full-mainnet projection", ""] + projection_lines(results)
    decode = results.get("decode")
    if isinstance(decode, dict) and "error" not in decode:
        lines += ["", "## Decoding real mainnet blocks", "",
                  f"{decode['blocks']} fixture blocks >= 0.5 MB ({decode['mb']:.1f} MB): C walk "
                  f"{_f(decode.get('c_ms_per_block'))} ms per block, Python walk {_f(decode.get('python_ms_per_block'))} ms."]
    attribution = results.get("attribution")
    if isinstance(attribution, dict) and "report" in attribution:
        lines += ["", f"## Attribution ({attribution['blocks']:,} synthetic coinbases)", ""]
        measured = attribution.get("measured") or {}
        if attribution.get("taken_from"):
            lines += [f"Measured on its own: `{measured.get('command')}` at commit "
                      f"{str((measured.get('code') or {}).get('commit'))[:12]} on {measured.get('started')}, load "
                      f"average {_loads(measured.get('load_average_at_start'))} at its start.", ""]
        lines += [f"    {line}" for line in attribution["report"]]
    failures = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    if failures:
        lines += ["", "## Failed parts", ""] + [f"- {k}: {results[k]['error']}" for k in failures]
    return "\n".join(lines) + "\n"


def load_results(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {path}: {exc}; run `python -m benchmarks` first") from None


def write_results(results: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    js = directory / "results.json"
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = directory / "results.md"
    md.write_text(render(results))
    return md, js
