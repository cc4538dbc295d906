"""Decoding real mainnet blocks (../shared/fixtures), with the C transaction walk and without it.

The benchmark chain is built on a node without segwit, so its blocks carry no witness data; this
measures the decoder on real blocks of every era instead, segwit ones included:

    python -m benchmarks.decode_bench [--fixtures ../shared/fixtures/mainnet] [--index-size 925000]

Each walk is timed twice: as the plain decode, and walking with a coinbase index of mainnet's size
(``--index-size`` random txids: nearly every input misses, as nearly every mainnet input does), the
decode of a load that records coinbase spends (docs/custody.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "mainnet"


def _load(path: Path) -> bytes:
    """One block from a single-block fixture file (formats per the fixtures README)."""
    data = path.read_bytes()
    if path.suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=8_000_000)
    if path.suffix == ".txt":
        return bytes.fromhex(data.decode().strip())
    return data


def _time_decode(raws: list[bytes], repeat: int, coinbases: Any = None) -> float:
    from pipeline.chain.decode import decode_block
    from pipeline.chain.networks import MAIN

    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for raw in raws:
            decode_block(raw, MAIN, height=1, coinbases=coinbases)
        best = min(best, time.perf_counter() - started)
    return best


def _index(size: int, use_c: bool) -> Any:
    import os

    from pipeline.chain.coinbases import CoinbaseIndex

    index = CoinbaseIndex(capacity=size, use_c=use_c)
    index.add_many(os.urandom(32 * size), range(size))
    return index


def run(fixtures: Path = DEFAULT_FIXTURES, min_bytes: int = 500_000, repeat: int = 5,
        index_size: int = 925_000) -> dict[str, Any]:
    from pipeline import native

    manifest = fixtures / "MANIFEST.tsv"
    if not manifest.exists():
        return {"error": f"no fixtures at {fixtures}"}
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    raws = [raw for raw in (_load(fixtures / row["file"]) for row in rows) if len(raw) >= min_bytes]
    if not raws:
        return {"error": f"no fixture block of at least {min_bytes} bytes"}
    total = sum(len(r) for r in raws)
    result: dict[str, Any] = {"blocks": len(raws), "mb": total / 1e6, "walk": native.implementation()}
    result["index_size"] = index_size
    timed: dict[str, float | None] = {"c": None, "c_spends": None}
    if native.AVAILABLE:
        timed["c"] = _time_decode(raws, repeat)
        timed["c_spends"] = _time_decode(raws, repeat, _index(index_size, use_c=True))
    saved = native._scan
    native._scan = None  # the Python reference walk (with the dict index it uses without the library)
    try:
        timed["python"] = _time_decode(raws, max(1, repeat // 2))
        timed["python_spends"] = _time_decode(raws, max(1, repeat // 2), _index(index_size, use_c=False))
    finally:
        native._scan = saved
    for name, seconds in timed.items():
        if seconds is not None:
            result[f"{name}_ms_per_block"] = seconds / len(raws) * 1000
            result[f"{name}_mb_per_s"] = total / 1e6 / seconds
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    parser.add_argument("--index-size", type=int, default=925_000, help="coinbases in the index (mainnet: ~925,000)")
    args = parser.parse_args()
    print(json.dumps(run(args.fixtures, index_size=args.index_size), indent=2))
