"""Store a stratum capture: observations, then template groups and links recomputed from all of them.

One commit through the validation gate (``pipeline.store.validation.gate``): the capture's
observations (replacing the rows of jobs already stored, so importing a file again adds nothing),
``template_groups`` and ``template_links`` recomputed from every stored observation plus the new
ones (whole tables: same observations, same bytes), and the registry used to resolve pools in
``pool_definitions`` when the warehouse does not hold that version yet. A rejected batch is
quarantined and nothing stored changes. Called by ``poolwatch templates import``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.attribution.registry import Registry
from pipeline.attribution.templates import (UNMAPPED_PREFIX, Capture, CaptureError, MempoolPoolList, PoolResolver,
                                            height_conflicts, match_counts, observations_table, template_groups,
                                            template_links)
from pipeline.store.warehouse import Warehouse

log = logging.getLogger(__name__)

# Columns of stored observations that grouping reads (not the coinbase parts).
_GROUPING_COLUMNS = ("observation_id", "prev_hash", "branch_hash", "merkle_branches", "height", "pool_id",
                     "observed_at")


@dataclass
class TemplateImport:
    """What an import did, for the command line and logs."""

    capture: str
    sha256: str
    format: str
    registry_version: str
    jobs: int  # jobs in the file
    repeated: int  # jobs identical to an earlier one of the same file (stored once)
    new: int  # observations not stored before
    replaced: int  # observations already stored (their rows rewritten with this import's provenance)
    pool_matches: dict[str, int]  # how the capture's pool references resolved: match kind -> references
    unmapped: dict[str, str] = field(default_factory=dict)  # pool reference -> why it resolved to no pool
    observations: int = 0  # stored after the import
    groups: int = 0
    shared_groups: int = 0  # groups of two or more pools
    links: int = 0
    # Groups of two or more pools that hold a job of this capture: group_id, height, pool_ids.
    shared: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def import_templates(warehouse: Warehouse, capture: Capture, registry: Registry, *,
                     mempool_list: MempoolPoolList | None = None, strict_pools: bool = False,
                     validate: bool = True, wait: float = 0.0) -> TemplateImport:
    """Resolve the capture's pools with ``registry`` (``mempool_list`` for mempool ids), then commit
    its observations with the recomputed groups and links under the writer lock.

    ``strict_pools``: a pool reference that resolves to no registry pool is an error (default: kept
    as ``unmapped:<reference>`` and reported). Raises ``CaptureError`` before anything is written,
    ``BatchRejected`` when validation refuses the batch (quarantined, nothing stored changes)."""
    from pipeline.store.validation import gate, validate_batch

    if capture.mempool_ids and mempool_list is None:
        raise CaptureError(f"{capture.name} names pools by their id in mempool's pool list "
                           f"({', '.join(capture.mempool_ids[:5])}{', ...' if len(capture.mempool_ids) > 5 else ''}): "
                           "give mempool's pools-v2.json to resolve them")
    resolver = PoolResolver(registry, mempool_list)
    made = observations_table(capture, resolver)
    unmapped = {ref: m.detail for ref, m in made.matches.items() if m.match == "unmapped"}
    if strict_pools and unmapped:
        first = {job.pool_ref: job.record for job in reversed(capture.jobs)}
        raise CaptureError(f"{capture.name}: pool(s) that resolve to no pool of registry {registry.version}: "
                           + "; ".join(f"{first[ref]}: {ref!r}: {why}" for ref, why in unmapped.items()))
    new = made.table
    with warehouse.writer(wait=wait):
        stored = warehouse.read("template_observations", columns=_GROUPING_COLUMNS)
        known = pc.is_in(stored.column("observation_id"), value_set=new.column("observation_id").combine_chunks())
        replaced = pc.sum(pc.cast(known, pa.int64())).as_py() or 0
        kept = stored.filter(pc.invert(known))
        merged = pa.concat_tables([kept, new.select(list(_GROUPING_COLUMNS))])
        conflicts = height_conflicts(merged)
        if conflicts:
            raise CaptureError(_conflict_message(capture, new, conflicts))
        groups = template_groups(merged)
        links = template_links(groups)
        tables = {"template_observations": new, "template_groups": groups, "template_links": links}
        if not _registry_stored(warehouse, registry.version):
            from pipeline.attribution.engine import pool_definitions_table

            # So every stored pool id can be traced to the registry that gave it (pools diff, reloads).
            tables["pool_definitions"] = pool_definitions_table(registry)
        report = None
        if validate:
            report = validate_batch(tables, {"registry_version": registry.version,
                                             "pool_ids": sorted(p.id for p in registry.pools)})
        gate(warehouse, tables, report)
        warehouse.refresh_catalog()
    result = TemplateImport(
        capture=capture.name, sha256=capture.sha256, format=capture.format, registry_version=registry.version,
        jobs=len(capture.jobs), repeated=made.repeated, new=new.num_rows - replaced, replaced=replaced,
        pool_matches=match_counts(made.matches), unmapped=unmapped, observations=merged.num_rows,
        groups=groups.num_rows, shared_groups=sum(1 for n in groups.column("pools").to_pylist() if n > 1),
        links=links.num_rows, shared=_shared_groups(groups, new))
    log.info("imported %s (%d jobs, %d new observations); %d groups, %d shared, %d links",
             capture.name, result.jobs, result.new, result.groups, result.shared_groups, result.links)
    for ref, why in unmapped.items():
        log.warning("pool %r kept as %s%s: %s", ref, UNMAPPED_PREFIX, ref, why)
    return result


def _shared_groups(groups: pa.Table, new: pa.Table) -> list[dict[str, Any]]:
    mine = set(zip(new.column("prev_hash").to_pylist(), new.column("branch_hash").to_pylist(), strict=True))
    return [{"group_id": g["group_id"], "height": g["height"], "pool_ids": g["pool_ids"]}
            for g in groups.select(["group_id", "prev_hash", "branch_hash", "height", "pool_ids"]).to_pylist()
            if len(g["pool_ids"]) > 1 and (g["prev_hash"], g["branch_hash"]) in mine]


def _registry_stored(warehouse: Warehouse, version: str) -> bool:
    escaped = version.replace("'", "''")
    found = warehouse.read("pool_definitions", where=f"registry_version = '{escaped}' AND kind = 'document'",
                           columns=["registry_version"])
    return found.num_rows > 0


def _conflict_message(capture: Capture, new: pa.Table, conflicts: dict[str, list[int]]) -> str:
    """Stored jobs place a previous block at another height than this capture does."""
    records: dict[str, list[str]] = {}
    for prev, height, record in zip(new.column("prev_hash").to_pylist(), new.column("height").to_pylist(),
                                    new.column("source_record").to_pylist(), strict=True):
        if prev in conflicts:
            records.setdefault(prev, []).append(f"{record} says {height}")
    parts = [f"previous block {prev}: stored jobs and this capture give heights {heights} "
             f"({'; '.join(records.get(prev, [])[:3])})" for prev, heights in conflicts.items()]
    return f"{capture.name}: " + "; ".join(parts) + ". A previous block has one height: check the capture."
