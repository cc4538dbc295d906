"""Attribute 1,000,000 coinbases generated from the shipped registry; print blocks/s and peak memory.

    python benchmarks/bench_attribution.py [--blocks 1000000] [--chunk 100000] [--seed 7]

Each generated block picks a pool of the registry (or none, ~5%), writes a BIP34 height push, random
extranonce bytes and (usually) one of the pool's tags into the scriptSig, and pays (usually) one of
its mainnet addresses plus a zero-value witness commitment; 3% of blocks also pay a second pool
(conflicts). Only attribution is timed (not the generation); chunks mirror how `poolwatch attribute`
reads the warehouse. Agreement with the generating pool is printed as a correctness check: 100%
since short tags only match where their rule places them (before, random extranonce bytes now and
then spelled a short tag of another pool, e.g. EclipseMC's 'EMC'; docs/attribution.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.attribution.engine import attribute_with, compiled_matcher  # noqa: E402
from pipeline.attribution.registry import load_registry  # noqa: E402


def bip34(height: int) -> bytes:
    n = height.to_bytes((height.bit_length() + 8) // 8 or 1, "little")
    return bytes([len(n)]) + n


def placed(tag, offset: int, rnd: random.Random) -> bytes:
    """The tag as a pool writes it from ``offset`` on: after its anchor when its rule states one
    (ckpool's signature before 'Kano'), or padded to the stated offset."""
    pos = tag.position
    if pos is None:
        return tag.value
    if pos.anchor is None:
        return bytes(max(0, pos.min_gap - offset)) + tag.value
    return pos.anchor + rnd.randbytes(pos.min_gap) + tag.value


def generate(registry, lo: int, hi: int, rnd: random.Random):
    pools = [p for p in registry.pools if p.tags or any(a.network == "main" for a in p.addresses)]
    weights = [rnd.paretovariate(1.2) for _ in pools]  # a few big pools, a long tail
    commitment = (b"\x6a\x24\xaa\x21\xa9\xed" + b"\x11" * 32).hex()
    b_h, b_hash, b_sig = [], [], []
    o_h, o_hash, o_idx, o_val, o_script = [], [], [], [], []
    truth = []
    for height in range(lo, hi):
        block_hash = f"{height:064x}"
        pool = rnd.choices(pools, weights)[0] if rnd.random() > 0.05 else None
        sig = bip34(height) + rnd.randbytes(8)
        outs: list[tuple[int, str]] = []
        expected = "unknown"
        if pool is not None:
            # A software signature names no pool; a positioned tag is written where its rule says.
            tags = [t for t in pool.tags if t.heights.contains(height) and t.active and not t.software]
            addrs = [a for a in pool.addresses if a.network == "main" and a.heights.contains(height)]
            use_tag = bool(tags) and (not addrs or rnd.random() < 0.9)
            use_addr = bool(addrs) and (not use_tag or rnd.random() < 0.8)
            if use_tag:
                sig += placed(rnd.choice(tags), len(sig), rnd) + rnd.randbytes(rnd.randint(0, 40))
            if use_addr:
                outs.append((312_500_000, rnd.choice(addrs).script.hex()))
            if use_tag or use_addr:
                expected = pool.id
        if rnd.random() < 0.03:  # a small second payout to another pool: a conflict, same winner
            other = rnd.choice(pools)
            other_addrs = [a for a in other.addresses if a.network == "main" and a.heights.contains(height)]
            if other_addrs and other.id != expected and outs:
                outs.append((1_000, rnd.choice(other_addrs).script.hex()))
        if not outs:
            outs.append((312_500_000, ("0014" + rnd.randbytes(20).hex())))
        outs.append((0, commitment))
        b_h.append(height), b_hash.append(block_hash), b_sig.append(sig.hex())
        for i, (value, script) in enumerate(outs):
            o_h.append(height), o_hash.append(block_hash), o_idx.append(i), o_val.append(value), o_script.append(script)
        truth.append(expected)
    # Mainnet-like block times (one every 600 s from the genesis block): the registry's family
    # memberships are dated by block time, so attribution needs them.
    times = pa.array([1231006505 + h * 600 for h in b_h], pa.timestamp("s", tz="UTC"))
    blocks = pa.table({"height": pa.array(b_h, pa.int32()), "hash": b_hash, "time": times,
                       "coinbase_script_sig_hex": b_sig})
    outputs = pa.table({"height": pa.array(o_h, pa.int32()), "block_hash": o_hash,
                        "output_index": pa.array(o_idx, pa.int32()), "value_sat": pa.array(o_val, pa.int64()),
                        "script_hex": o_script})
    return blocks, outputs, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the report (with when, which commit, the load average) to this file, "
                             "for `python -m benchmarks --write-docs --attribution-from FILE`")
    args = parser.parse_args()
    started_at, started, load_at_start = _now(), time.perf_counter(), list(os.getloadavg())
    registry = load_registry()
    matcher = compiled_matcher(registry, "main")
    rnd = random.Random(args.seed)
    seconds, done, right, conflicts, unknown = 0.0, 0, 0, 0, 0
    for lo in range(0, args.blocks, args.chunk):
        hi = min(args.blocks, lo + args.chunk)
        blocks, outputs, truth = generate(registry, lo, hi, rnd)
        t0 = time.perf_counter()
        result = attribute_with(matcher, blocks, outputs)
        seconds += time.perf_counter() - t0
        got = result["attributions"]["pool_id"].to_pylist()
        right += sum(g == t for g, t in zip(got, truth))
        conflicts += sum(result["attributions"]["conflict"].to_pylist())
        unknown += got.count("unknown")
        done += hi - lo
        print(f"  {done:>9,} blocks  {done / seconds:>9,.0f} blocks/s", file=sys.stderr)
    peak_mb = _vm_hwm_mb()
    report = [f"registry {registry.version}: {len(registry.pools)} pools, "
              f"{sum(len(p.tags) for p in registry.pools)} tags, {len(matcher.by_script)} payout scripts",
              f"attributed {done:,} coinbases in {seconds:.1f} s: {done / seconds:,.0f} blocks/s",
              f"peak memory (VmHWM of the process, generation included): {peak_mb:,.0f} MB",
              f"agreement with the generating pool: {right / done:.4%}; conflicts flagged: {conflicts:,}; "
              f"unknown: {unknown:,}"]
    print("\n".join(report))
    if args.json is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benchmarks.__main__ import code_version

        doc = {"blocks": done, "wall_seconds": time.perf_counter() - started, "report": report,
               "measured": {"command": " ".join(["python benchmarks/bench_attribution.py", *sys.argv[1:]]),
                            "started": started_at, "code": code_version(), "load_average_at_start": load_at_start,
                            "load_average_at_end": list(os.getloadavg())}}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _vm_hwm_mb() -> float:
    """Peak RSS of this program image. Not ru_maxrss: on Linux it survives exec, so a run started
    by a large parent (the benchmark runner) would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best available


if __name__ == "__main__":
    main()
