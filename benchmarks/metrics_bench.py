"""Full-history metrics query time on a synthetic 925,000-block warehouse.

The warehouse holds ``blocks`` and ``attributions`` tables generated directly with numpy/pyarrow
(not decoded from a node; this measures the query, not loading): one block every 600 s from
2009-01-03, difficulty growing smoothly over 12 orders of magnitude, pools drawn from a skewed
distribution (~25 pools, a few families, ~8% unknown) whose mix drifts over time, as on mainnet.
Committed through ``Warehouse.commit`` in 50,000-block batches (the real layout and partitions).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

GENESIS_TIME = 1231006505
N_POOLS = 25


def synthetic_batch(lo: int, hi: int, rng: np.random.Generator, registry_version: str) -> dict[str, pa.Table]:
    from pipeline.store.schemas import table_spec

    heights = np.arange(lo, hi, dtype=np.int64)
    n = len(heights)
    times = GENESIS_TIME + heights * 600 + rng.integers(-300, 300, n)
    difficulty = np.exp(heights / 925_000 * np.log(1e14))
    hashes = [f"{h:016x}" + "ab" * 24 for h in heights.tolist()]
    prev = [f"{h - 1:016x}" + "ab" * 24 if h > 0 else "0" * 64 for h in heights.tolist()]
    size = rng.integers(200, 2_000_000, n)
    tx_count = np.maximum(1, size // 500)
    subsidy = (50 * 100_000_000) >> np.minimum(heights // 210_000, 63)
    fees = rng.integers(0, 50_000_000, n)
    n_outputs = rng.integers(1, 4, n)
    tags = np.array([f"/pool{i}/" for i in range(N_POOLS)] + [""])
    blocks_cols: dict[str, Any] = {
        "height": heights, "hash": hashes, "prev_hash": prev, "merkle_root": hashes,
        "version": np.full(n, 0x20000000), "time": pa.array(times, pa.timestamp("s", tz="UTC")),
        "median_time": pa.array(times - 3000, pa.timestamp("s", tz="UTC")), "bits": ["1d00ffff"] * n,
        "nonce": rng.integers(0, 2**32, n), "difficulty": difficulty, "size": size, "stripped_size": size,
        "weight": size * 4, "tx_count": tx_count, "coinbase_txid": hashes, "coinbase_wtxid": hashes,
        "coinbase_version": np.ones(n, np.int64), "coinbase_locktime": np.zeros(n, np.int64),
        "coinbase_script_sig_hex": ["03abcdef"] * n, "coinbase_bip34_height": heights,
        "coinbase_sequence": np.full(n, 0xFFFFFFFF), "coinbase_witness_reserved_hex": [None] * n,
        "coinbase_value_sat": subsidy + fees, "subsidy_sat": subsidy, "fees_sat": fees, "output_count": n_outputs,
    }
    # Pools: Zipf-like shares whose ranking drifts with height; 8% unknown.
    drift = (heights // 50_000) % N_POOLS
    rank = np.minimum(rng.zipf(1.6, n) - 1, N_POOLS - 1)
    pool = (rank + drift) % N_POOLS
    unknown = rng.random(n) < 0.08
    blocks_cols["coinbase_tag"] = np.where(unknown, "", tags[pool]).tolist()
    pool_ids = np.where(unknown, "unknown", np.char.add("pool", pool.astype(str))).tolist()
    families = [None if u or p % 5 else f"family{p % 3}" for u, p in zip(unknown.tolist(), pool.tolist())]
    attributions_cols: dict[str, Any] = {
        "height": heights, "block_hash": hashes, "pool_id": pool_ids,
        "pool_name": [p.capitalize() if p != "unknown" else "Unknown" for p in pool_ids], "family": families,
        "method": np.where(unknown, "none", "tag").tolist(), "rule": [None] * n,
        "candidate_count": (~unknown).astype(np.int32),
        "candidate_pool_ids": [[] if u else [p] for u, p in zip(unknown.tolist(), pool_ids)],
        "conflict": np.zeros(n, bool), "registry_version": [registry_version] * n,
    }
    out = {}
    for name, cols in (("blocks", blocks_cols), ("attributions", attributions_cols)):
        spec = table_spec(name)
        schema = spec.arrow_schema
        arrays = {f.name: pa.array(cols[f.name], type=f.type) if not isinstance(cols[f.name], pa.Array)
                  else cols[f.name].cast(f.type) for f in schema}
        out[name] = pa.table(arrays, schema=schema)
    return out


def build_warehouse(root: Path, n_blocks: int, batch: int = 50_000, seed: int = 5) -> dict[str, float]:
    from pipeline.store.warehouse import Warehouse

    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    version = "synthetic-1"
    warehouse = Warehouse(root)
    started = time.perf_counter()
    with warehouse.writer():
        warehouse.bind_chain("main", "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f")
        for lo in range(0, n_blocks, batch):
            warehouse.commit(synthetic_batch(lo, min(lo + batch, n_blocks), rng, version))
        warehouse.set_meta(registry_version=version)
        warehouse.refresh_catalog()
    return {"build_seconds": time.perf_counter() - started}


def time_metrics(root: Path) -> dict[str, Any]:
    """refresh_metrics (all materialized windows) and one on-request full-history query."""
    from pipeline.metrics import compute as metrics
    from pipeline.store.warehouse import Warehouse

    warehouse = Warehouse(root)
    out: dict[str, Any] = {}
    con = warehouse.connect()
    started = time.perf_counter()
    frame = con.execute("SELECT count(*) FROM blocks").fetchall()[0]
    out["count_seconds"] = time.perf_counter() - started
    out["blocks"] = frame[0]
    started = time.perf_counter()
    result = metrics.compute_metrics(con, "month")
    out["compute_month_seconds"] = time.perf_counter() - started
    out["compute_month_windows"] = len(result.centralization) if hasattr(result, "centralization") else None
    for window in ("day", "month"):
        started = time.perf_counter()
        metrics.compute_metrics(con, window, bootstrap=False)
        out[f"compute_{window}_no_bootstrap_seconds"] = time.perf_counter() - started
    con.close()
    started = time.perf_counter()
    done = metrics.refresh_metrics(warehouse, full=True)
    out["refresh_metrics_seconds"] = time.perf_counter() - started
    out["refresh_metrics_rows"] = done.rows
    out["windows"] = list(metrics.MATERIALIZED_WINDOWS)
    out["bootstrap_draws"] = metrics.BOOTSTRAP_DRAWS
    return out


def run(root: Path, n_blocks: int) -> dict[str, Any]:
    result: dict[str, Any] = {"blocks_requested": n_blocks}
    result.update(build_warehouse(root, n_blocks))
    result.update(time_metrics(root))
    return result


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=925_000)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent / "out" / "metrics-warehouse")
    args = parser.parse_args()
    print(json.dumps(run(args.root, args.blocks), indent=2, default=str))
