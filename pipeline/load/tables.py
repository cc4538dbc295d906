"""Decoded blocks -> the tables of one batch: blocks, coinbase_outputs, the coinbase spends of the
blocks walked with a coinbase index (spend_scans, coinbase_spends) and, with a registry, the
attributions and their candidates, each conformed to its declaration in ``schemas/tables``.

This is the step between decoding (``pipeline.chain``, which knows nothing of tables) and the
store; the loop (``pipeline.load.loop``) calls ``build_tables`` once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline.chain.decode import DecodedBlock
from pipeline.store.schemas import table_spec

if TYPE_CHECKING:
    from pipeline.attribution.registry import Registry


_BLOCK_COLUMNS = [f.name for f in fields(DecodedBlock) if f.name not in ("outputs", "spends", "inputs")]
_TIMESTAMP = pa.timestamp("s", tz="UTC")


def blocks_to_tables(blocks: Sequence[DecodedBlock]) -> dict[str, pa.Table]:
    """{"blocks": ..., "coinbase_outputs": ...}, conformed to schemas/tables/*.json."""
    columns: dict[str, pa.Array | list] = {name: [getattr(b, name) for b in blocks] for name in _BLOCK_COLUMNS}
    columns["time"] = pa.array(columns["time"], type=_TIMESTAMP)
    columns["median_time"] = pa.array(columns["median_time"], type=_TIMESTAMP)
    blocks_table = table_spec("blocks").conform(pa.table(
        {name: col if isinstance(col, pa.Array) else pa.array(col) for name, col in columns.items()}
        if blocks else {name: pa.array([], type=table_spec("blocks").arrow_schema.field(name).type)
                        for name in _BLOCK_COLUMNS}))
    heights, hashes, index, values, scripts, types, addresses = [], [], [], [], [], [], []
    for b in blocks:
        for out in b.outputs:
            heights.append(b.height)
            hashes.append(b.hash)
            index.append(out.index)
            values.append(out.value_sat)
            scripts.append(out.script_hex)
            types.append(out.script_type)
            addresses.append(out.address)
    spec = table_spec("coinbase_outputs")
    schema = spec.arrow_schema
    outputs_table = spec.conform(pa.table({
        "height": pa.array(heights, type=schema.field("height").type),
        "block_hash": pa.array(hashes, type=pa.string()),
        "output_index": pa.array(index, type=schema.field("output_index").type),
        "value_sat": pa.array(values, type=pa.int64()),
        "script_hex": pa.array(scripts, type=pa.string()),
        "script_type": pa.array(types, type=pa.string()),
        "address": pa.array(addresses, type=pa.string()),
    }))
    return {"blocks": blocks_table, "coinbase_outputs": outputs_table}


def spends_to_tables(blocks: Sequence[DecodedBlock]) -> dict[str, pa.Table]:
    """The blocks walked with a coinbase index (``spends`` not None) as spend_scans rows and their
    spends as coinbase_spends rows; {} when no block was walked so, and no coinbase_spends table
    when they spend no coinbase (its rows would be none: an empty table would only cost validation)."""
    scanned = [b for b in blocks if b.spends is not None]
    if not scanned:
        return {}
    scans = table_spec("spend_scans").conform(pa.table({
        "height": pa.array([b.height for b in scanned], pa.int32()),
        "block_hash": pa.array([b.hash for b in scanned], pa.string()),
        "inputs": pa.array([b.inputs for b in scanned], pa.int32()),
        "spends": pa.array([len(b.spends or ()) for b in scanned], pa.int32()),
    }))
    rows = [(b, s) for b in scanned for s in b.spends or ()]
    if not rows:
        return {"spend_scans": scans}
    spends = table_spec("coinbase_spends").conform(pa.table({
        "height": pa.array([b.height for b, _ in rows], pa.int32()),
        "block_hash": pa.array([b.hash for b, _ in rows], pa.string()),
        "tx_index": pa.array([s.tx_index for _, s in rows], pa.int32()),
        "spending_txid": pa.array([s.txid for _, s in rows], pa.string()),
        "input_index": pa.array([s.input_index for _, s in rows], pa.int32()),
        "coinbase_txid": pa.array([s.coinbase_txid for _, s in rows], pa.string()),
        "coinbase_vout": pa.array([s.coinbase_vout for _, s in rows], pa.int32()),
        "coinbase_height": pa.array([s.coinbase_height for _, s in rows], pa.int32()),
    }))
    return {"spend_scans": scans, "coinbase_spends": spends}


def build_tables(blocks: Sequence[DecodedBlock], registry: Registry | None, chain: str,
                 allow_cross_network: bool = False) -> dict[str, pa.Table]:
    """Decoded blocks -> the tables of one batch (blocks, coinbase_outputs, spends, attributions...)."""
    tables = blocks_to_tables(blocks)
    tables.update(spends_to_tables(blocks))
    if registry is not None:
        from pipeline.attribution.engine import attribute_tables

        tables.update(attribute_tables(tables["blocks"], tables["coinbase_outputs"], registry, chain,
                                       allow_cross_network=allow_cross_network))
    return tables


__all__ = ["blocks_to_tables", "build_tables", "spends_to_tables"]
