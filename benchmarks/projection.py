"""Full-mainnet backfill time on this machine, projected from measured per-era per-block costs.

For each read path and era (``benchmarks/eras.py``): the production loop's measured seconds per
block on that era's segment of the benchmark chain (steady state: between its first and last commit;
a segment too short for two commits uses its whole ``load`` call, start-up included, and says so),
times the era's number of mainnet blocks, plus one process start-up (the headline rounds' median
``poolwatch sync`` time minus its loop's steady-state time, never below 0). The bare loops are
projected the same way, as the floor the node (or the disk) sets.

Assumptions (each printed with the projection):

* a block of an era costs what the benchmark's blocks of that era cost: the same mean size and
  witness share (``eras.py`` gives the sources), so the same bytes read, hashed and decoded;
* the node serves a mainnet block as fast as a regtest block of the same size (serving a block does
  not touch the UTXO set; Core reads it from its block files either way);
* the block files are in the page cache when measured; a full mainnet (~690 GB) is not: the block-file
  and REST projections assume the disk delivers at least the measured byte rate (the bare pread
  column shows what that rate was, warm);
* one process, one worker, batches of the run's ``--batch-size`` (per-batch costs, e.g. validation,
  are spread over a batch, so small batches overstate small blocks' cost), nothing else on the machine;
* cold disk (block files only, when the disk was measured): per block, the larger of the measured
  cost and the era's mean block size read at the disk's O_DIRECT sequential rate.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.eras import ERAS, MAINNET_TIP, mainnet_bytes

PATHS = ("rest", "rpc", "blkfiles")
GOAL_BLKFILES_HOURS = 1.0

ASSUMPTIONS = [
    "per-era cost per block = the production loop's steady-state seconds per block on that era's segment of the "
    "benchmark chain (same mean size and witness share as mainnet's era, see benchmarks/eras.py)",
    "the node serves a mainnet block as fast as a regtest block of the same size (serving does not touch the UTXO set)",
    "page cache warm when measured: a full mainnet (~690 GB of blocks) is not cached, so the projection assumes the "
    "disk delivers at least the measured byte rate",
    "one process, one worker, batches of the run's --batch-size (per-batch costs such as validation are spread over "
    "it: a run with small batches overstates the cost of small blocks), nothing else running; plus one process "
    "start-up (measured median)",
]


def seconds_per_block(run: dict[str, Any] | None) -> tuple[float | None, str]:
    """(seconds per block, how measured) of one loop run."""
    if not run or "error" in run:
        return None, "failed"
    steady = run.get("steady")
    if steady and steady.get("blocks"):
        return steady["seconds"] / steady["blocks"], "steady state"
    return run["load_seconds"] / run["blocks"], "whole load call (too few batches for a steady state)"


def startup_seconds(rounds: list[dict[str, Any]], source: str) -> float:
    """Median over rounds of (``poolwatch sync`` process seconds - its blocks at the loop's steady rate)."""
    values = []
    for r in rounds:
        cli, loop = r.get(f"cli_{source}"), r.get(f"loop_{source}")
        if not cli or "error" in cli or not loop or "error" in loop or not loop.get("steady"):
            continue
        values.append(max(0.0, cli["seconds"] - cli["blocks"] / loop["steady"]["blocks_per_s"]))
    return statistics.median(values) if values else 0.0


def project(eras: list[dict[str, Any]], rounds: list[dict[str, Any]], disk: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Hours to backfill mainnet heights 0..MAINNET_TIP-1 by each read path and by the bare loops;
    with ``disk`` (its measured O_DIRECT rate) also the block-file path on a cold disk: per block
    the larger of its measured cost and the era's mean block size at the disk's rate (the loop
    reads in a thread of its own, so reading and the rest overlap)."""
    measured = {e["era"]: e for e in eras}
    missing = [e.name for e in ERAS if e.name not in measured]
    if missing:
        raise ValueError(f"no measurement for the eras {', '.join(missing)}: the projection needs every era")
    table = []
    totals: dict[str, float] = {}
    for era in ERAS:
        m = measured[era.name]
        row: dict[str, Any] = {"era": era.name, "dates": era.dates, "mainnet_blocks": era.blocks,
                               "assumed_mean_bytes": era.mean_bytes, "benchmark_mean_bytes": m["mean_bytes"]}
        for source in PATHS:
            spb, how = seconds_per_block(m["loop"].get(source))
            row[source] = {"ms_per_block": None if spb is None else spb * 1000, "how": how,
                           "hours": None if spb is None else spb * era.blocks / 3600}
        for name, bare in m["bare"].items():
            bps = bare.get("blocks_per_s")
            row[f"bare_{name}"] = {"ms_per_block": 1000 / bps if bps else None,
                                   "hours": era.blocks / bps / 3600 if bps else None}
        table.append(row)
    for key in (*PATHS, "bare_rest", "bare_rpc", "bare_pread"):
        hours = [row[key]["hours"] for row in table]
        if any(h is None for h in hours):
            totals[key] = None
            continue
        startup = startup_seconds(rounds, key) if key in PATHS else 0.0
        totals[key] = sum(hours) + startup / 3600
    rate = (disk or {}).get("median") if disk and "error" not in disk else None
    if rate and totals.get("blkfiles") is not None:
        for row in table:
            era = next(e for e in ERAS if e.name == row["era"])
            ms = max(row["blkfiles"]["ms_per_block"], era.mean_bytes / (rate * 1e6) * 1000)
            row["blkfiles_cold"] = {"ms_per_block": ms, "hours": ms / 1000 * era.blocks / 3600}
        totals["blkfiles_cold"] = (sum(row["blkfiles_cold"]["hours"] for row in table)
                                   + startup_seconds(rounds, "blkfiles") / 3600)
        totals["disk_only"] = mainnet_bytes() / (rate * 1e6) / 3600
    # Judged on a cold disk when the disk was measured: a backfill reads ~690 GB no cache holds.
    blk = totals.get("blkfiles_cold", totals.get("blkfiles"))
    assumptions = ASSUMPTIONS + ([f"block files on a cold disk: per block the larger of the measured cost and the "
                                  f"era's mean block size read at {rate:,.0f} MB/s (this disk's O_DIRECT sequential "
                                  "rate, median of 3 reads of 1 GiB; a virtual disk's host may cache)"]
                                 if rate else [])
    return {"disk_mb_per_s": rate, "goal_judged_on": "cold disk" if "blkfiles_cold" in totals else "page cache","mainnet_blocks": MAINNET_TIP, "mainnet_gb": mainnet_bytes() / 1e9, "eras": table, "total_hours": totals,
            "startup_seconds": {s: startup_seconds(rounds, s) for s in PATHS},
            "goal_blkfiles_hours": GOAL_BLKFILES_HOURS,
            "goal_blkfiles_met": None if blk is None else blk < GOAL_BLKFILES_HOURS,
            "assumptions": assumptions}


__all__ = ["ASSUMPTIONS", "project", "seconds_per_block", "startup_seconds"]
