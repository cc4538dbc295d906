"""Custody links: pools whose coinbase outputs one transaction spends together (docs/custody.md).

A transaction that spends coinbase outputs of blocks attributed to two pools was signed by someone
holding the keys to both payouts: a custodian, an exchange or one operator behind two pool names.
``custody_links`` counts such transactions per pair of pools from every stored ``coinbase_spends``
row joined to the current attribution version's pool of the spent coinbase. It is recomputed
whole (the table is declared ``replace_all``: same spends and attributions, same bytes) in the
same commit as whatever changes its inputs: each load batch, a re-attribution, a reorg rollback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store.schemas import table_spec

if TYPE_CHECKING:
    from pipeline.store.validation import ValidationReport
    from pipeline.store.warehouse import Warehouse

log = logging.getLogger(__name__)

UNKNOWN_POOL_ID = "unknown"  # pipeline.attribution.engine's id for blocks no rule matched
_SPEND_COLUMNS = ["height", "spending_txid", "coinbase_height"]

# One row per (spending transaction, pool among the coinbases it spends); a pair of such rows for
# the same transaction is one co-spend of the two pools.
_LINKS_SQL = f"""
WITH tx_pools AS (
    SELECT DISTINCT s.height, s.spending_txid, p.pool_id
    FROM spends s JOIN pools p ON p.height = s.coinbase_height
    WHERE p.pool_id <> '{UNKNOWN_POOL_ID}'
)
SELECT a.pool_id AS pool_a, b.pool_id AS pool_b, CAST(count(*) AS INTEGER) AS co_spend_txs,
       CAST(min(a.height) AS INTEGER) AS first_height, CAST(max(a.height) AS INTEGER) AS last_height
FROM tx_pools a JOIN tx_pools b
  ON a.spending_txid = b.spending_txid AND a.height = b.height AND a.pool_id < b.pool_id
GROUP BY a.pool_id, b.pool_id
ORDER BY pool_a, pool_b
"""


def custody_links(spends: pa.Table, pools: pa.Table, attribution_version: str) -> pa.Table:
    """Pairs of pools co-spent by a transaction. ``spends``: coinbase_spends rows (height,
    spending_txid, coinbase_height at least); ``pools``: (height, pool_id) of the coinbases' blocks
    under ``attribution_version``, one row per height. A spent coinbase without a pool row (its
    block's attribution not stored) counts for no pool."""
    con = duckdb.connect(":memory:")
    try:
        con.register("spends", spends.select(_SPEND_COLUMNS))
        con.register("pools", pools.select(["height", "pool_id"]))
        links = con.sql(_LINKS_SQL).to_arrow_table()
    finally:
        con.close()
    links = links.append_column("attribution_version", pa.array([attribution_version] * links.num_rows, pa.string()))
    return table_spec("custody_links").conform(links)


def _not_in(table: pa.Table, column: str, values: pa.Array | None) -> pa.Table:
    if values is None or len(values) == 0 or table.num_rows == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table.column(column), value_set=values)))


def _heights(table: pa.Table | None) -> pa.Array | None:
    return pc.unique(table.column("height").combine_chunks()) if table is not None and table.num_rows else None


def links_after(warehouse: Warehouse, tables: Mapping[str, pa.Table], attribution_version: str,
                force: bool = False) -> pa.Table | None:
    """custody_links as they must read once ``tables`` (a batch not yet committed) are, or None
    when the batch cannot change them (no spend in it, and none stored of a coinbase it
    attributes) and ``force`` is off. The caller holds the writer lock.

    Links are sums over spending transactions, each at one height, so a batch that only adds
    spends at heights holding none yet, and attributes no coinbase a stored spend refers to, adds
    its own transactions' pairs to the stored links (the common case: a load appending blocks; it
    reads only the batch's range of stored rows). Anything else (a batch replacing stored spends or
    the pools of spent coinbases, stored links of another attribution version, ``force``) is
    recomputed from every stored spend."""
    batch_spends = tables.get("coinbase_spends")
    attributions = tables.get("attributions")
    if attributions is not None:
        attributions = attributions.filter(pc.equal(attributions.column("registry_version"), attribution_version))
    scanned, attributed = _heights(tables.get("spend_scans")), _heights(attributions)
    new_spends = batch_spends is not None and batch_spends.num_rows > 0
    if not force:
        replaced = _stored_spends_at(warehouse, scanned, attributed)
        if not replaced and not new_spends:
            return None
        stored_links = warehouse.read("custody_links")
        versions = set(stored_links.column("attribution_version").to_pylist())
        if not replaced and versions <= {attribution_version}:
            added = custody_links(batch_spends, _pools(warehouse, attribution_version, batch_spends, attributions),
                                  attribution_version)
            return _merge(stored_links, added)
    stored = warehouse.read("coinbase_spends", columns=_SPEND_COLUMNS)
    # A scanned height's spends are the batch's (coinbase_spends is replaced by height).
    spends = _not_in(stored, "height", scanned)
    if new_spends:
        spends = pa.concat_tables([spends, batch_spends.select(_SPEND_COLUMNS).cast(spends.schema)])
    return custody_links(spends, _pools(warehouse, attribution_version, spends, attributions), attribution_version)


def _stored_spends_at(warehouse: Warehouse, scanned: pa.Array | None, attributed: pa.Array | None) -> bool:
    """Whether a stored spend is at a height the batch scans again, or spends a coinbase the batch
    attributes (range conditions first, so Parquet statistics skip most files)."""
    conditions = []
    for column, heights in (("height", scanned), ("coinbase_height", attributed)):
        if heights is not None:
            lo, hi = pc.min(heights).as_py(), pc.max(heights).as_py()
            values = ", ".join(str(int(h)) for h in heights.to_pylist())
            conditions.append(f"({column} BETWEEN {int(lo)} AND {int(hi)} AND {column} IN ({values}))")
    if not conditions:
        return False
    return warehouse.read("coinbase_spends", where=" OR ".join(conditions), columns=["height"]).num_rows > 0


def _pools(warehouse: Warehouse, attribution_version: str, spends: pa.Table | None,
           attributions: pa.Table | None) -> pa.Table:
    """(height, pool_id) under ``attribution_version`` for the heights ``spends`` spend coinbases
    of: the batch's attributions over the stored ones."""
    empty = pa.table({"height": pa.array([], pa.int32()), "pool_id": pa.array([], pa.string())})
    if spends is None or spends.num_rows == 0:
        return empty
    lo, hi = pc.min(spends.column("coinbase_height")).as_py(), pc.max(spends.column("coinbase_height")).as_py()
    escaped = attribution_version.replace("'", "''")
    pools = warehouse.read("attributions", columns=["height", "pool_id"],
                           where=f"registry_version = '{escaped}' AND height BETWEEN {int(lo)} AND {int(hi)}")
    attributed = _heights(attributions)
    if attributed is not None:
        pools = pa.concat_tables([_not_in(pools, "height", attributed),
                                  attributions.select(["height", "pool_id"]).cast(pools.schema)])
    return pools


def _merge(stored: pa.Table, added: pa.Table) -> pa.Table:
    """Links of two disjoint sets of spending transactions: counts add, heights span both."""
    if added.num_rows == 0:
        return stored
    both = pa.concat_tables([stored, added])
    merged = both.group_by(["pool_a", "pool_b", "attribution_version"]).aggregate(
        [("co_spend_txs", "sum"), ("first_height", "min"), ("last_height", "max")])
    merged = merged.rename_columns({"co_spend_txs_sum": "co_spend_txs", "first_height_min": "first_height",
                                    "last_height_max": "last_height"})
    spec = table_spec("custody_links")
    merged = merged.select(spec.column_names).cast(spec.arrow_schema)
    return merged.sort_by([("pool_a", "ascending"), ("pool_b", "ascending")])


def with_custody_links(warehouse: Warehouse, tables: dict[str, pa.Table], report: ValidationReport | None,
                       context: Mapping[str, Any] | None, attribution_version: str | None
                       ) -> tuple[dict[str, pa.Table], ValidationReport | None]:
    """The batch plus its recomputed custody_links (validated here when the batch was: the links
    depend on what is stored at commit time), or the batch unchanged when it cannot change them,
    or when it failed validation already (the gate quarantines it), or without an attribution
    version (no pools to link). The caller holds the writer lock."""
    if attribution_version is None or (report is not None and not report.ok):
        return tables, report
    links = links_after(warehouse, tables, attribution_version)
    if links is None:
        return tables, report
    out = {**tables, "custody_links": links}
    if report is None:
        return out, None
    from pipeline.store.validation import validate_batch

    return out, validate_batch(out, context, only=["custody_links"]).merged(report)


def recompute_custody_links(warehouse: Warehouse, validate: bool = True) -> int:
    """Recompute and commit custody_links from what is stored (after a re-attribution or a reorg
    rollback); returns the number of links. The caller holds the writer lock."""
    from pipeline.store.validation import gate, validate_batch

    version = warehouse.attribution_version
    if version is None:
        return 0
    links = links_after(warehouse, {}, version, force=True)
    assert links is not None
    report = validate_batch({"custody_links": links}) if validate else None
    gate(warehouse, {"custody_links": links}, report)
    return links.num_rows


__all__ = ["custody_links", "links_after", "recompute_custody_links", "with_custody_links"]
