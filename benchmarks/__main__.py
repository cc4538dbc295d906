"""Run the poolwatch benchmarks on a mainnet-shaped chain on Bitcoin Core; write results.json/.md.

    python -m benchmarks                  # full size: ~15,000 blocks in five eras (~11 GB, built once, cached)
    python -m benchmarks --quick          # smoke run: 50 blocks, 2 rounds, small synthetic warehouses
    POOLWATCH_BENCH_QUICK=1 python -m benchmarks   # the same as --quick
    python -m benchmarks --write-docs     # no measuring: README and docs/performance.md from results.json
    python -m benchmarks --help

Steps (benchmarks/backfill.py says what every timed loop does):

1. the chain (benchmarks/chain.py, eras from benchmarks/eras.py), cached under benchmarks/out/chains/<key>;
2. headline rounds over the newest era's segment (2023+ blocks, ~1.56 MB / ~3.9 MWU): in each round the
   bare loops (REST with a new connection per block, getblock 0 through poolwatch's transport, pread of
   the located records; bare REST again beside Python work in a thread and in another process: the
   interpreter lock's share), then ``poolwatch sync`` as a process (REST, RPC, block files) and the production
   loop ``pipeline.load.loop.load`` in a fresh interpreter (its steady state and stage timings). Every
   ratio is computed per round; the median and min-max over rounds are the headline, best-of-N second;
3. one loop run per read path on every era's segment: per-block costs for the projection
   (benchmarks/projection.py) of a full-mainnet backfill;
4. bitcoin-etl on part of the headline range, several runs (different work: every transaction);
5. attribution of synthetic coinbases, decoding of real mainnet fixture blocks, and the full-history
   upkeep on a synthetic warehouse (benchmarks/metrics_bench.py).

Every stored ``blocks`` table must be identical across read paths (a benchmark of wrong output is void).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUICK_ENV = "POOLWATCH_BENCH_QUICK"
PATHS = ("rest", "rpc", "blkfiles")


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", default=os.environ.get(QUICK_ENV, "") not in ("", "0"),
                   help=f"smoke run (also {QUICK_ENV}=1): 50 blocks (10 per era), batches of 5, 2 rounds, small "
                        "synthetic warehouses; results go to benchmarks/out/quick unless --results is given, "
                        "and never into the docs")
    p.add_argument("--era-blocks", type=int, default=None,
                   help="blocks per era in the chain (default 3000: three batches of 1000 each; 10 with --quick); "
                        "other values make a reduced run, labelled so in the results")
    p.add_argument("--rounds", type=int, default=None, help="headline rounds (default 3; 2 with --quick)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="blocks per batch (default 1000 as `poolwatch sync`; 5 with --quick)")
    p.add_argument("--rpc-blocks", type=int, default=None,
                   help="the RPC path's runs cover the first N blocks of each range (getblock 0 is several times "
                        "slower than REST; default 1000, all with --quick); its bare loop covers the same blocks")
    p.add_argument("--etl-blocks", type=int, default=None, help="blocks bitcoin-etl exports (default 100; 5 quick)")
    p.add_argument("--etl-runs", type=int, default=3, help="bitcoin-etl runs (default 3)")
    p.add_argument("--attribution-blocks", type=int, default=None, help="default 1,000,000 (20,000 quick)")
    p.add_argument("--upkeep-blocks", type=int, default=None, help="synthetic warehouse size (925,000; 20,000 quick)")
    p.add_argument("--skip", action="append", default=[],
                   choices=["eras", "etl", "decode", "attribution", "upkeep"], help="leave a part out")
    p.add_argument("--upkeep-from", type=Path, default=None,
                   help="take the upkeep part from this file (`python -m benchmarks.metrics_bench --json FILE`, "
                        "run on its own: the 925,000-block warehouse takes most of an hour) instead of measuring it; "
                        "the results say so, with that run's command, commit and time")
    p.add_argument("--attribution-from", type=Path, default=None,
                   help="with --write-docs: take the attribution part from this file "
                        "(`python benchmarks/bench_attribution.py --json FILE`, a run on its own); the results say so")
    p.add_argument("--rebuild-chain", action="store_true", help="build the chain even if a cached one exists")
    p.add_argument("--keep", action="store_true", help="keep the warehouses in --out")
    p.add_argument("--out", type=Path, default=HERE / "out", help="scratch directory (chains, warehouses, venv)")
    p.add_argument("--results", type=Path, default=None,
                   help="where results.md and results.json go (default benchmarks/, benchmarks/out/quick with --quick)")
    p.add_argument("--write-docs", action="store_true",
                   help="measure nothing: rewrite the generated sections of README.md and docs/performance.md "
                        "from --results' results.json (a full run writes them itself)")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"era_blocks": (3000, 10), "rounds": (3, 2), "batch_size": (1000, 5), "etl_blocks": (100, 5),
                "attribution_blocks": (1_000_000, 20_000), "upkeep_blocks": (925_000, 20_000)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if args.rpc_blocks is None:
        args.rpc_blocks = 10**9 if q else 1000
    if args.results is None:
        args.results = args.out / "quick" if q else HERE
    return args


def attempt(results: dict[str, Any], key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one part; a failure is recorded in the results (with its reason) instead of aborting."""
    try:
        value = fn(*args, **kwargs)
        results[key] = value
        return value
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the results file
        results[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        log(f"{key} failed: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return None


# ------------------------------------------------------------------------------------ statistics


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max (and every value) of a list of per-round figures."""
    if not values:
        return {"values": [], "median": None, "min": None, "max": None}
    return {"values": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(label: str, what: str, rounds: list[dict[str, Any]], num: Callable[[dict], float | None],
          den: Callable[[dict], float | None]) -> dict[str, Any]:
    """``num / den`` per round (median, min-max: the headline) and best numerator over best denominator
    across rounds (best-of-N: secondary)."""
    pairs = [(num(r), den(r)) for r in rounds]
    pairs = [(a, b) for a, b in pairs if a is not None and b]
    out = {"label": label, "what": what, **spread([a / b for a, b in pairs])}
    out["best_of_n"] = max(a for a, _ in pairs) / max(b for _, b in pairs) if pairs else None
    out["rounds"] = len(pairs)
    return out


def _rate(run: dict[str, Any] | None, key: str = "blocks_per_s") -> float | None:
    return None if not run or "error" in run else run.get(key)


def _steady(run: dict[str, Any] | None) -> float | None:
    return None if not run or "error" in run or not run.get("steady") else run["steady"]["blocks_per_s"]


def _process_rate(run: dict[str, Any] | None) -> float | None:
    """A loop run's blocks/s over its whole interpreter (start-up, set-up, load)."""
    return None if not run or "error" in run else run["blocks"] / run["process_seconds"]


# --------------------------------------------------------------------------------------- the node


def headline_rounds(args: argparse.Namespace, node: Any, segment: Any, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each round: the bare loops, then every path as a ``poolwatch sync`` process and as the loop."""
    from benchmarks import backfill as bf

    lo, hi = segment.first, segment.last
    rpc_hi = min(hi, lo + args.rpc_blocks - 1)
    hashes = bf.block_hashes(node, lo, hi)
    locations = bf.record_locations(node, hashes)
    results["headline_range"] = {"era": segment.era, "first": lo, "last": hi, "blocks": hi - lo + 1,
                                 "bytes": segment.bytes, "weight": segment.weight, "rpc_last": rpc_hi,
                                 "rpc_blocks": rpc_hi - lo + 1}
    results["python_work_duty"], results["python_work_period"] = bf.BUSY_DUTY, bf.BUSY_PERIOD
    bf.bare_rest(node, hashes)  # warm-up: the node's block cache and the page cache
    bf.warm_files(locations)
    rounds = []
    for rnd in range(1, args.rounds + 1):
        r: dict[str, Any] = {"round": rnd}
        r["bare_rest"] = bf.with_cpu(node, bf.bare_rest, node, hashes)
        r["bare_rpc"] = bf.with_cpu(node, bf.bare_rpc, node, hashes[:rpc_hi - lo + 1])
        r["bare_pread"] = bf.with_cpu(node, bf.bare_pread, locations)
        for where in ("thread", "process"):  # what sharing the interpreter lock costs a fetching loop
            r[f"bare_rest_beside_{where}"] = bf.with_cpu(node, bf.bare_rest_beside, node, hashes, where)
        log(f"round {rnd}/{args.rounds}: bare REST {r['bare_rest']['blocks_per_s']:.0f}, getblock 0 "
            f"{r['bare_rpc']['blocks_per_s']:.0f}, pread {r['bare_pread']['blocks_per_s']:.0f} blocks/s")
        for source in PATHS:
            end = rpc_hi if source == "rpc" else hi
            wh = args.out / "warehouses" / f"{source}"
            cli = attempt(r, f"cli_{source}", bf.with_cpu, node, bf.run_cli, node, source, lo, end, wh,
                          batch_size=args.batch_size, child=True)
            loop = attempt(r, f"loop_{source}", bf.with_cpu, node, bf.run_loop, node, source, lo, end, wh,
                           batch_size=args.batch_size, child=True)
            log(f"  {source}: poolwatch sync {_rate(cli) or 0:.1f} blocks/s (process), loop steady "
                f"{_steady(loop) or 0:.1f} blocks/s")
        digests = {r[k]["blocks_digest"] for k in ("loop_rest", "loop_blkfiles") if "blocks_digest" in r.get(k, {})}
        r["same_blocks_table"] = len(digests) <= 1
        if not r["same_blocks_table"]:
            raise RuntimeError(f"round {rnd}: the REST and block-file loops stored different blocks tables")
        rounds.append(r)
    return rounds


def headline_ratios(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bare = lambda name: lambda r: _rate(r.get(name))  # noqa: E731
    return [
        ratio("sync REST (whole process) / bare REST",
              "`poolwatch sync --no-metrics` over REST, process start to exit (imports, node checks, warehouse "
              "set-up, validator start, every batch fetched, decoded, attributed, validated, committed) vs "
              "http.client GET /rest/block/<hash>.bin with a new connection per block, same range",
              rounds, lambda r: _rate(r.get("cli_rest")), bare("bare_rest")),
        ratio("loop REST, steady state / bare REST",
              "STEADY STATE: the production loop's blocks committed between its first and last commit over that "
              "time (start-up and the first batch excluded) vs the same bare REST loop",
              rounds, lambda r: _steady(r.get("loop_rest")), bare("bare_rest")),
        ratio("sync RPC (whole process) / bare getblock 0",
              "`poolwatch sync --no-rest --no-metrics`, process start to exit, vs getblock <hash> 0 through "
              "poolwatch's own transport (same HTTP client, same batches), hex to bytes, same blocks",
              rounds, lambda r: _rate(r.get("cli_rpc")), bare("bare_rpc")),
        ratio("loop RPC, steady state / bare getblock 0",
              "STEADY STATE of the loop over RPC vs the same bare getblock 0 loop",
              rounds, lambda r: _steady(r.get("loop_rpc")), bare("bare_rpc")),
        ratio("sync blkfiles (whole process) / bare pread",
              "`poolwatch sync --source blkfiles --no-metrics`, process start to exit, vs one os.pread per "
              "located record of the same blocks in the same blk*.dat files (no XOR, no hashing; page cache "
              "warm)", rounds, lambda r: _rate(r.get("cli_blkfiles")), bare("bare_pread")),
        ratio("loop blkfiles, steady state / bare pread",
              "STEADY STATE of the loop over the block files vs the same bare pread loop",
              rounds, lambda r: _steady(r.get("loop_blkfiles")), bare("bare_pread")),
        ratio("sync blkfiles (whole process) / bare REST",
              "`poolwatch sync --source blkfiles --no-metrics`, process start to exit, vs the bare REST loop",
              rounds, lambda r: _rate(r.get("cli_blkfiles")), bare("bare_rest")),
        ratio("loop blkfiles, steady state / bare REST",
              "STEADY STATE of the loop over the block files vs the bare REST loop",
              rounds, lambda r: _steady(r.get("loop_blkfiles")), bare("bare_rest")),
    ]


def disk_rate(node: Any, runs: int = 3) -> dict[str, Any]:
    """The disk's sequential read rate over the chain's block files (O_DIRECT), median of ``runs``
    reads of 1 GiB, each from a different file than the last."""
    from benchmarks import backfill as bf

    files = sorted(str(p) for p in Path(node.datadir).glob("**/blocks/blk*.dat"))
    if not files:
        raise RuntimeError(f"no blk*.dat under {node.datadir}")
    reads = [bf.direct_read(files[(i * len(files)) // runs:] + files[:(i * len(files)) // runs]) for i in range(runs)]
    failed = [r["error"] for r in reads if "error" in r]
    if failed:
        return {"error": failed[0]}
    return {"runs": reads, **spread([r["mb_per_s"] for r in reads])}


def era_costs(args: argparse.Namespace, node: Any, chain: Any) -> list[dict[str, Any]]:
    """One loop run per read path on each era's segment, and the bare loops on it: per-block costs."""
    from benchmarks import backfill as bf

    out = []
    for segment in chain.segments:
        lo, hi = segment.first, segment.last
        rpc_hi = min(hi, lo + args.rpc_blocks - 1)
        hashes = bf.block_hashes(node, lo, hi)
        locations = bf.record_locations(node, hashes)
        bf.warm_files(locations)
        entry: dict[str, Any] = {"era": segment.era, "first": lo, "last": hi, "blocks": segment.blocks,
                                 "mean_bytes": segment.bytes / segment.blocks,
                                 "mean_weight": segment.weight / segment.blocks,
                                 "bare": {"rest": bf.bare_rest(node, hashes), "pread": bf.bare_pread(locations),
                                          "rpc": bf.bare_rpc(node, hashes[:rpc_hi - lo + 1])}, "loop": {}}
        for source in PATHS:
            end = rpc_hi if source == "rpc" else hi
            run = attempt(entry["loop"], source, bf.run_loop, node, source, lo, end,
                          args.out / "warehouses" / f"era-{source}", batch_size=args.batch_size)
            if run is not None:
                run.pop("commits", None)
        log(f"era {segment.era}: " + ", ".join(
            f"{s} {_steady(entry['loop'].get(s)) or 0:.1f}" for s in PATHS) + " blocks/s steady")
        out.append(entry)
    return out


def peak_memory(results: dict[str, Any]) -> dict[str, Any]:
    """The largest process-tree peak of every timed run (main process plus helpers, summed peaks)."""
    runs = []
    for r in results.get("rounds") or []:
        for key in [f"{k}_{s}" for k in ("cli", "loop") for s in PATHS]:
            if isinstance(r.get(key), dict) and "memory" in r[key]:
                runs.append((key, r[key]["memory"]))
    if not runs:
        return {}
    key, mem = max(runs, key=lambda x: x[1]["total_mb"])
    return {"max_total_mb": mem["total_mb"], "run": key, "main_mb": mem["main_mb"], "helpers_mb": mem["helpers_mb"],
            "per_run_max_total_mb": {k: max(m["total_mb"] for kk, m in runs if kk == k) for k, _ in runs}}


def etl_runs(args: argparse.Namespace, node: Any, segment: Any) -> dict[str, Any]:
    from benchmarks import etl

    exe, how = etl.ensure_venv(args.out)
    entry: dict[str, Any] = {"install": how, "runs": []}
    if exe is None:
        entry["error"] = how
        return entry
    lo = segment.first
    hi = min(segment.last, lo + args.etl_blocks - 1)
    entry.update({"first": lo, "last": hi})
    for i in range(args.etl_runs):
        run = etl.run_export(exe, node.rpc_url, Path(node.cookie_file), lo, hi, args.out, 1)
        entry["runs"].append(run)
        log(f"  bitcoin-etl run {i + 1}/{args.etl_runs}: {run.get('blocks_per_s', 0):.2f} blocks/s")
    entry["blocks_per_s"] = spread([r["blocks_per_s"] for r in entry["runs"] if r.get("ok")])
    return entry


def node_benchmarks(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from benchmarks.backfill import NodeAccess
    from benchmarks.chain import FULL_PLAN, QUICK_PLAN, ChainPlan, core_binary, ensure_chain, node_args
    from benchmarks.projection import project
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.node import RegtestNode

    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.era_blocks != next(iter(plan.blocks.values())):
        plan = ChainPlan({name: args.era_blocks for name in plan.blocks}, seed=plan.seed)
    progress = (lambda era, i, n: (i % 250 == 0 or i == n) and log(f"  {era}: {i}/{n} blocks built"))
    node_dir, chain, reused = ensure_chain(args.out, load_registry(), plan, rebuild=args.rebuild_chain,
                                           progress=progress, say=log)
    results["chain"] = {**chain.to_json(), "reused": reused, "directory": str(node_dir.parent)}
    with RegtestNode(binary=core_binary(), datadir=node_dir, extra_args=node_args()) as regtest:
        if regtest.tip().hash != chain.tip_hash:
            raise RuntimeError(f"the cached chain in {node_dir} does not end at its recorded tip; use --rebuild-chain")
        info = regtest.rpc("getnetworkinfo")
        version_text = subprocess.run([str(regtest.binary), "-version"], capture_output=True, text=True,
                                      timeout=60).stdout.strip().splitlines()
        results["node"] = {"flavor": regtest.flavor, "binary": str(regtest.binary),
                           "version_text": version_text[0] if version_text else None,
                           "subversion": info.get("subversion"), "version": info.get("version")}
        node = NodeAccess(regtest.rpc_url, str(regtest.cookie_file), str(regtest.datadir))
        headline = chain.segment("current")
        log(f"headline: {headline.blocks} blocks of the {headline.era} era, {args.rounds} rounds")
        rounds = attempt(results, "rounds", headline_rounds, args, node, headline, results)
        if rounds:
            results["ratios"] = headline_ratios(rounds)
            results["peak_memory"] = peak_memory(results)
        if "eras" not in args.skip:
            log("per-era costs (one loop run per path on each era's segment)")
            eras = attempt(results, "eras", era_costs, args, node, chain)
            log("disk: O_DIRECT reads of the block files (past the page cache)")
            disk = attempt(results, "disk", disk_rate, node)
            if eras:
                attempt(results, "projection", project, eras, results.get("rounds") or [], disk)
        if "etl" not in args.skip:
            log("bitcoin-etl")
            attempt(results, "bitcoin_etl", etl_runs, args, node, headline)
    if not args.keep:
        shutil.rmtree(args.out / "warehouses", ignore_errors=True)


# ------------------------------------------------------------------------------ node-free parts


def attribution_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "bench_attribution.py"), "--blocks", str(args.attribution_blocks)],
                          cwd=REPO, capture_output=True, text=True, timeout=3600)
    out = {"blocks": args.attribution_blocks, "wall_seconds": time.perf_counter() - started,
           "report": proc.stdout.strip().splitlines()}
    if proc.returncode != 0:
        raise RuntimeError(" | ".join(proc.stderr.strip().splitlines()[-3:]))
    return out


def upkeep_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.metrics_bench import run

    root = args.out / "upkeep-warehouse"
    try:
        return run(root, args.upkeep_blocks, say=log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _attach_parts(results: dict[str, Any], upkeep: Path | None, attribution: Path | None) -> bool:
    """Join separately measured parts (their files say how, when and at which commit) into ``results``;
    the run's command line records it. True if any was joined."""
    if upkeep is not None:
        results["upkeep"] = _upkeep_from(upkeep)
        results["command"] = _annotated(results["command"], "upkeep", f"--upkeep-from {upkeep}")
    if attribution is not None:
        part = json.loads(attribution.read_text())
        if not isinstance(part, dict) or "report" not in part or "measured" not in part:
            raise SystemExit(f"{attribution} is not the output of bench_attribution.py --json FILE")
        part["taken_from"] = str(attribution)
        results["attribution"] = part
        results["command"] = _annotated(results["command"], "attribution", f"--attribution-from {attribution}")
    return upkeep is not None or attribution is not None


def _annotated(command: str, part: str, source: str) -> str:
    """``command`` with `` (<part>: <source>)``, replacing an earlier annotation of the same part
    (a part measured again is joined again: the command names only the file now used)."""
    return re.sub(rf" \({part}: [^)]*\)", "", command) + f" ({part}: {source})"


def _upkeep_from(path: Path) -> dict[str, Any]:
    upkeep = json.loads(path.read_text())
    if not isinstance(upkeep, dict) or "upkeep_seconds_median" not in upkeep or "measured" not in upkeep:
        raise SystemExit(f"{path} is not the output of `python -m benchmarks.metrics_bench --json FILE`")
    upkeep["taken_from"] = str(path)
    return upkeep


def code_version() -> dict[str, Any]:
    """The commit measured (and whether the work tree differed from it): figures follow from code."""
    def git(*a: str) -> str | None:
        try:
            out = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from benchmarks.docs import write_docs
    from benchmarks.machine import describe
    from benchmarks.report import load_results, write_results

    args = parse_args(argv)
    if args.write_docs:
        results = load_results(args.results)
        if _attach_parts(results, args.upkeep_from, args.attribution_from):
            write_results(results, args.results)
            log(f"separately measured part(s) joined into {args.results / 'results.json'}")
        for path in write_docs(results):
            log(f"wrote the generated section of {path}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick, "machine": describe(args.out), "code": code_version(),
        "config": {"era_blocks": args.era_blocks, "full_era_blocks": 3000, "rounds": args.rounds, "batch_size": args.batch_size, "workers": 1, "rpc_blocks": args.rpc_blocks,
                   "etl_blocks": args.etl_blocks, "etl_runs": args.etl_runs,
                   "attribution_blocks": args.attribution_blocks, "upkeep_blocks": args.upkeep_blocks,
                   "skipped": args.skip}}
    started = time.perf_counter()
    attempt(results, "node_benchmarks", node_benchmarks, args, results)
    if results.get("node_benchmarks") is None:
        results.pop("node_benchmarks")
    if "decode" not in args.skip:
        from benchmarks.decode_bench import run as decode_run

        log("decoding real mainnet blocks (C and Python transaction walks)")
        attempt(results, "decode", decode_run)
    if "attribution" not in args.skip:
        log(f"attribution of {args.attribution_blocks:,} coinbases")
        attempt(results, "attribution", attribution_benchmark, args)
    if args.upkeep_from is not None:
        results["upkeep"] = _upkeep_from(args.upkeep_from)
        log(f"upkeep part taken from {args.upkeep_from} ({results['upkeep'].get('measured', {}).get('command')})")
    elif "upkeep" not in args.skip:
        log(f"full-history upkeep on a synthetic {args.upkeep_blocks:,}-block warehouse")
        attempt(results, "upkeep", upkeep_benchmark, args)
    results["total_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    md, js = write_results(results, args.results)
    log(f"wrote {md} and {js}")
    if not args.quick and args.results == HERE:
        for path in write_docs(results):
            log(f"wrote the generated section of {path}")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
