"""Synthetic tables conforming to schemas/tables/blocks.json and coinbase_outputs.json.

Deterministic: the same (heights, salt) always gives the same rows, so tests can compare runs.
A different ``salt`` gives different hashes for the same heights (a reorged chain).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pyarrow as pa

from pipeline.store.schemas import table_spec

GENESIS_TIME = 1_231_006_505
SUBSIDY = 50 * 100_000_000


def _hex(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def block_hash(height: int, salt: str = "") -> str:
    return _hex("block", height, salt)


def output_count(height: int) -> int:
    """1-3 outputs per coinbase, varying with height."""
    return 1 + height % 3


def synthetic_tables(heights: Sequence[int], salt: str = "") -> dict[str, pa.Table]:
    """{"blocks": ..., "coinbase_outputs": ...} for ``heights``, conformed to the declared schemas."""
    blocks: dict[str, list] = {c: [] for c in table_spec("blocks").column_names}
    outputs: dict[str, list] = {c: [] for c in table_spec("coinbase_outputs").column_names}
    for h in heights:
        h = int(h)
        n_out = output_count(h)
        fees = (h * 7919) % 1_000_000
        value = SUBSIDY + fees
        row = {
            "height": h, "hash": block_hash(h, salt),
            "prev_hash": block_hash(h - 1, salt) if h > 0 else "0" * 64,
            "merkle_root": _hex("merkle", h, salt), "version": 0x20000000, "time": GENESIS_TIME + 600 * h,
            "median_time": GENESIS_TIME + 600 * h - 3000 if h % 5 else None, "bits": "1d00ffff",
            "nonce": (h * 2654435761) % 2**32, "difficulty": 1.0, "size": 285 + h % 1000,
            "stripped_size": 250 + h % 1000, "weight": 3 * (250 + h % 1000) + 285 + h % 1000,
            "tx_count": 1 + h % 50, "coinbase_txid": _hex("cb", h, salt), "coinbase_wtxid": _hex("cb", h, salt),
            "coinbase_version": 1, "coinbase_locktime": 0,
            "coinbase_script_sig_hex": f"03{h:06x}" + f"pool{h % 4}".encode().hex(),
            "coinbase_tag": f"pool{h % 4}", "coinbase_bip34_height": h, "coinbase_sequence": 0xFFFFFFFF,
            "coinbase_witness_reserved_hex": None, "coinbase_value_sat": value, "subsidy_sat": SUBSIDY,
            "fees_sat": fees, "output_count": n_out,
        }
        for k, v in row.items():
            blocks[k].append(v)
        for i in range(n_out):
            share = value // n_out + (value % n_out if i == 0 else 0)
            out = {"height": h, "block_hash": row["hash"], "output_index": i, "value_sat": share,
                   "script_hex": "76a914" + _hex("pk", h % 4, i)[:40] + "88ac", "script_type": "p2pkh",
                   "address": None}
            for k, v in out.items():
                outputs[k].append(v)
    b = table_spec("blocks")
    o = table_spec("coinbase_outputs")
    # Times as plain ints -> timestamp[s] needs an explicit cast through int64.
    btab = pa.table({c.name: pa.array(blocks[c.name], pa.int64() if c.type.startswith("timestamp") else c.arrow)
                     for c in b.columns})
    return {"blocks": b.conform(btab), "coinbase_outputs": o.conform(pa.table(outputs))}
