"""Jobs: load a height range from the node, detect and repair reorgs, re-attribute stored history.

The CLI (`poolwatch sync`, `poolwatch attribute`) and the Airflow DAGs call these functions; nothing
here knows about either. Loading itself is the one loop (``pipeline.load.loop.load``); a job decides
what to load (the range, the registry and settings, under the writer lock), repairs a reorg found
before or during the run, and resumes. A failure leaves every committed batch in place, so a re-run
resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.load.custody import links_after, recompute_custody_links
from pipeline.load.loop import (COMMIT_LOCK_WAIT, BackgroundValidator, BatchPlan, ChainChangedError, PendingReport,
                                RegistryChangedError, ValidatorStart, in_order, load, loop_chunks)
from pipeline.load.spends import UncheckedSpends, unchecked_spends
from pipeline.source.choice import open_block_source
from pipeline.source.client import NodeClient
from pipeline.source.errors import HeightAboveTipError, NodeError

if TYPE_CHECKING:
    from pipeline.attribution.changes import RuleChanges
    from pipeline.attribution.registry import Registry
    from pipeline.source.base import BlockSource
    from pipeline.store.warehouse import StagedCommit, Warehouse

log = logging.getLogger("pipeline.load.jobs")

Progress = Callable[[int], None]

# How far below the stored tip a routine reorg check looks; deeper forks are found by widening.
REORG_CHECK_DEPTH = 12
# Reorgs seen during one run before it gives up (each is repaired; more means the node is flapping).
MAX_RELINKS = 3


@dataclass
class SyncResult:
    start: int | None
    end: int | None
    blocks_loaded: int = 0
    batches: int = 0
    reorg_fork_height: int | None = None
    reattributed: int = 0
    seconds: float = 0.0
    chain: str = ""
    registry_version: str | None = None  # the attribution version the loaded blocks were attributed with
    stages: dict[str, float] = field(default_factory=dict)  # seconds per loop stage (pipeline.load.loop.load)
    notes: list[str] = field(default_factory=list)
    spends_checked: int = 0  # blocks whose coinbase spends were recorded (the others: notes say why)

    @property
    def blocks_per_second(self) -> float:
        return self.blocks_loaded / self.seconds if self.seconds > 0 else 0.0


def find_fork_height(client: NodeClient, warehouse: Warehouse, depth: int = REORG_CHECK_DEPTH,
                     tip: int | None = None) -> int | None:
    """Lowest stored height whose hash is no longer on the node's active chain, or None.

    Checks the top ``depth`` stored heights and widens (doubling) while everything checked differs,
    so a fork of any depth is found with few RPC round trips.
    """
    stored = warehouse.stored_range()
    if stored is None:
        return None
    low, high = stored
    tip = client.tip_height() if tip is None else tip
    fork: int | None = None
    if high > tip:
        fork = tip + 1  # the node's chain is now shorter than what we stored
    span = depth
    while True:
        check_lo = max(low, min(high, tip) - span + 1)
        check_hi = min(high, tip)
        if check_hi < check_lo:
            return low  # the node's tip is below everything stored: all of it is stale
        stored_hashes = warehouse.stored_hashes(check_lo, check_hi)
        heights = sorted(stored_hashes)
        # Only hashes are compared: a pruned node may still answer for heights it has no blocks of.
        node_hashes = dict(zip(heights, client.block_hashes(heights, require_blocks=False), strict=True))
        mismatched = [h for h in heights if node_hashes[h] != stored_hashes[h]]
        if not mismatched:
            return fork
        fork = min(mismatched)
        if fork > check_lo or check_lo == low:
            return fork
        span *= 2


def repair_reorg(warehouse: Warehouse, fork_height: int) -> None:
    """Roll back every height-keyed table to below the fork; the caller reloads from there."""
    log.warning("reorg: stored blocks from height %d are no longer on the node's active chain; "
                "rolling back and reloading them", fork_height)
    warehouse.delete_heights_from(fork_height)
    # The rolled-back blocks' spends are gone: the links they made go with them.
    recompute_custody_links(warehouse)


def check_and_repair_reorg(client: NodeClient, warehouse: Warehouse, depth: int = REORG_CHECK_DEPTH,
                           full: bool = False) -> int | None:
    """Detect a reorg (at any stored height when ``full``) and roll back above the fork."""
    if full:
        stored = warehouse.stored_range()
        depth = (stored[1] - stored[0] + 1) if stored else depth
    fork = find_fork_height(client, warehouse, depth=depth)
    if fork is not None:
        repair_reorg(warehouse, fork)
    return fork


def current_registry(warehouse: Warehouse) -> Registry | None:
    """The registry the warehouse attributes with (its current version, reloaded from the copy kept in
    ``pool_definitions``), or None before the first attribution."""
    from pipeline.attribution.engine import registry_from_definitions

    version = warehouse.meta.get("registry_version")
    if not version:
        return None
    escaped = str(version).replace("'", "''")
    definitions = warehouse.read("pool_definitions", where=f"registry_version = '{escaped}' AND kind = 'document'")
    return registry_from_definitions(definitions, version)


class SettingsChangeError(ValueError):
    """A run would change an attribution setting the warehouse recorded, without being told to."""


def reattribute(warehouse: Warehouse, registry: Registry, *, allow_cross_network: bool = False,
                chunk_size: int = 50_000, validate: bool = True, progress: Progress | None = None,
                stats: dict[str, int] | None = None, again: bool = False) -> int:
    """Re-attribute the whole stored history from stored coinbases (no node) with ``registry`` and
    the cross-network setting.

    Results of each attribution version (registry version + settings) are kept side by side
    (attributions are partitioned by it); the warehouse's current version, registry and settings
    become these. When the current version's rows are complete and were computed under the same
    engine rules and settings, only the blocks the registry update can change are attributed again
    (``pipeline.attribution.changes``); the others' rows are relabelled. When the version is the
    current one and its rows cover every stored block, nothing is done (``stats["current"]``: the
    blocks covered) unless ``again``: then every block is attributed again (the same rows, rewritten).
    Returns the blocks done; ``stats`` (if given) also gets how many of them were attributed again.
    The caller holds the writer lock.
    """
    from pipeline.attribution.engine import (AttributionSettings, attribute_tables, attribution_version,
                                             compiled_matcher, pool_definitions_table)
    from pipeline.store.validation import gate, validate_batch
    from pipeline.store.warehouse import StagedOverlapError

    stored = warehouse.stored_range()
    chain = warehouse.meta.get("chain", "main")
    version = attribution_version(registry.version, allow_cross_network)
    context = {"chain": chain, "registry_version": version, "pool_ids": sorted({p.id for p in registry.pools})}
    if not again and stored is not None and warehouse.attribution_version == version \
            and rows_cover_blocks(warehouse, version):
        # The version names the registry's content, the settings and the engine rules, and every stored
        # block has its row under it: attributing again would write the same bytes (minutes at
        # mainnet height), so nothing is done.
        log.info("attribution version %s is current and every stored block has its row under it: nothing to "
                 "attribute again", version)
        if stats is not None:
            stats.update(blocks=0, attributed_again=0, current=stored[1] - stored[0] + 1)
        return 0
    done = matched = 0  # blocks done; of them, matched again by the engine (the rest relabelled)
    planned = planned_changes(warehouse, registry, allow_cross_network) if stored is not None else None
    # Nothing is validated when no rule changed (every row relabelled): no helper then. When rules
    # changed, blocks will be attributed again whatever the stored rows hold: the helper starts
    # now (Great Expectations' import takes seconds) while they are checked.
    validator = BackgroundValidator() if validate and stored is not None and not (planned and planned[1].none) \
        else None
    reuse = reuse_plan(warehouse, registry, allow_cross_network, planned) if planned is not None else None
    if reuse is not None:
        log.info("registry %s against the stored %s: %s; attributing again only the blocks these can change, "
                 "relabelling the other stored attributions as %s", registry.version, reuse.source,
                 reuse.changes.describe(), version)
    elif validator is None and validate and stored is not None:  # the stored rows cannot be carried over
        validator = BackgroundValidator()
    waiting: list[tuple[dict, StagedCommit, PendingReport | None]] = []

    def commit_ready(hold: int) -> None:
        """Publish, in order, the groups whose validation is in; while more than ``hold`` groups
        are held, wait for the oldest (what is held stays bounded; 0 publishes everything)."""
        while waiting and (len(waiting) > hold or waiting[0][2] is None or waiting[0][2].done()):
            previous, staged, report = waiting[0]
            gate(warehouse, previous, report() if report is not None else None, staged=staged)
            waiting.pop(0)

    def hand_over(tables: dict, checked: dict | None) -> None:
        """Validate this group (``checked``: its rows not validated before) in the background,
        write its files meanwhile (staged: published once its report is in, discarded if it
        fails), and publish what is ready, holding at most two groups."""
        checked_rows = checked is not None and checked["attributions"].num_rows
        report = validator.submit(checked, context) if validator and checked_rows else None
        try:
            staged = warehouse.stage(tables)
        except StagedOverlapError:  # shares a partition file with a held group: that one goes first
            commit_ready(hold=0)
            staged = warehouse.stage(tables)
        waiting.append((tables, staged, report))
        commit_ready(hold=2)

    try:
        if stored is not None and reuse is None:
            for lo, hi in aligned_chunks(stored[0], stored[1], chunk_size):
                where = f"height BETWEEN {lo} AND {hi}"
                blocks = warehouse.read("blocks", where=where)
                outputs = warehouse.read("coinbase_outputs", where=where)
                tables = attribute_tables(blocks, outputs, registry, chain, allow_cross_network=allow_cross_network)
                hand_over(tables, tables)
                done += blocks.num_rows
                matched += blocks.num_rows
                if progress:
                    progress(blocks.num_rows)
        elif stored is not None:
            matcher = compiled_matcher(registry, chain, allow_cross_network)
            pending: list[_Carried] = []
            # Chunks are read, matched and relabelled by two threads, ahead of the commits (the
            # reads, Arrow kernels and Parquet writes run without the interpreter lock).
            chunks = aligned_chunks(stored[0], stored[1], chunk_size)
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="poolwatch-reattribute") as threads:
                carried_chunks = in_order(chunks, lambda lo, hi: threads.submit(_carried_over, warehouse, reuse,
                                                                               matcher, lo, hi), in_flight=3)
                for carried in carried_chunks:
                    pending.append(carried)
                    # In groups: one validation per chunk_size blocks attributed again (carried rows
                    # were validated when first committed), at most 8 chunks of rows per commit.
                    if sum(c.fresh["attributions"].num_rows for c in pending) >= chunk_size or len(pending) >= 8:
                        hand_over(_concat([c.tables for c in pending]), _concat([c.fresh for c in pending]))
                        pending.clear()
                    done += carried.rows
                    matched += carried.fresh["attributions"].num_rows
                    if progress:
                        progress(carried.rows)
            if pending:
                hand_over(_concat([c.tables for c in pending]), _concat([c.fresh for c in pending]))
        commit_ready(hold=0)
    finally:
        for _, staged, _ in waiting:  # a failure: what was written and not published goes
            warehouse.discard(staged)
        if validator is not None:
            validator.close()
    tables = {"pool_definitions": pool_definitions_table(registry)}
    links = links_after(warehouse, {}, version, force=True)
    if links is not None:  # the spent coinbases' pools under the new version, in the same commit
        tables["custody_links"] = links
    # No links (a new warehouse, or no coinbase ever co-spent): nothing to check, and validating an
    # empty table would import Great Expectations (seconds) before a new warehouse's first batch.
    report = validate_batch({"custody_links": links}, {"pool_ids": sorted({p.id for p in registry.pools})}) \
        if validate and links is not None and links.num_rows else None
    gate(warehouse, tables, report)
    warehouse.set_meta(registry_version=registry.version, attribution_version=version,
                       attribution_settings=AttributionSettings(allow_cross_network).to_meta())
    log.info("attribution version %s: %d stored block(s), %d attributed again, %d relabelled", version, done,
             matched, done - matched)
    if stats is not None:
        stats.update(blocks=done, attributed_again=matched)
    return done


def aligned_chunks(start: int, end: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end] in chunks that end where multiples of chunk_size begin (the first may be
    shorter): with the default 50,000 (a multiple of the attribution tables' 10,000-height buckets)
    two chunks never write the same partition file, whatever height the stored history starts at."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    edges = [start, *range((start // chunk_size + 1) * chunk_size, end + 1, chunk_size), end + 1]
    return [(lo, nxt - 1) for lo, nxt in zip(edges, edges[1:]) if lo < nxt]


@dataclass(frozen=True)
class Reuse:
    """The stored version a re-attribution starts from, and what the new registry changes.
    ``bucketed``: blocks and coinbase outputs lie wholly in their height buckets' files."""

    source: str
    changes: RuleChanges
    bucketed: bool = True


def planned_changes(warehouse: Warehouse, registry: Registry,
                    allow_cross_network: bool) -> tuple[str, RuleChanges] | None:
    """(the warehouse's current attribution version, the registry's rule changes against that
    version's registry) when the current version was computed under the same engine rules and
    settings (``attribution_version`` of its registry under this setting is the current version)
    and its registry is readable; else None. Cheap (no stored row is read): ``reuse_plan`` then
    checks the stored rows."""
    from pipeline.attribution.changes import rule_changes
    from pipeline.attribution.engine import attribution_version, compiled_matcher

    current = warehouse.attribution_version
    version = attribution_version(registry.version, allow_cross_network)
    if current is None or current == version:
        return None
    try:
        old = current_registry(warehouse)
    except (ValueError, KeyError):  # an unreadable stored registry: attribute again
        return None
    if old is None or attribution_version(old.version, allow_cross_network) != current:
        return None
    chain = warehouse.meta.get("chain", "main")
    return current, rule_changes(compiled_matcher(old, chain, allow_cross_network),
                                 compiled_matcher(registry, chain, allow_cross_network))


def rows_cover_blocks(warehouse: Warehouse, version: str) -> bool:
    """Whether ``version``'s attribution rows cover the stored blocks exactly: a row (same height
    and hash) for every stored block, and none for a block not stored (e.g. one rolled back by a
    reorg). One row per block is the commit's own check (the unique key, validated)."""
    if not warehouse.table_dir("attributions").is_dir():
        return False
    con = warehouse.connect()
    try:
        missing, extra = con.execute("""
            SELECT count(*) FILTER (WHERE a.height IS NULL), count(*) FILTER (WHERE b.height IS NULL)
            FROM blocks b FULL OUTER JOIN
                 (SELECT height, block_hash FROM attributions WHERE registry_version = ?) a
                 ON a.height = b.height AND a.block_hash = b.hash""", [version]).fetchone()
    finally:
        con.close()
    return (missing, extra) == (0, 0)


def reuse_plan(warehouse: Warehouse, registry: Registry, allow_cross_network: bool,
               planned: tuple[str, RuleChanges] | None = None) -> Reuse | None:
    """The warehouse's current attribution version and the registry's rule changes against it
    (``planned_changes``, or ``planned`` when already worked out), when that version's rows can be
    carried over: besides ``planned_changes``' conditions, one row under it for every stored
    block (same height and hash, nothing more). Else None: every block is attributed again.

    Attribution is the whole-history pass that cannot be made cheaper per block (per-block Python
    matching, ~30-100 us a block): a registry update that touches a few pools would cost minutes at
    mainnet height for rows that are mostly byte-identical."""
    if planned is None:
        planned = planned_changes(warehouse, registry, allow_cross_network)
    if planned is None:
        return None
    current, changes = planned
    if not rows_cover_blocks(warehouse, current):
        return None
    bucketed = all(warehouse.in_declared_layout(t) for t in ("blocks", "coinbase_outputs"))
    return Reuse(current, changes, bucketed)


def reusable_version(warehouse: Warehouse, registry: Registry, allow_cross_network: bool) -> str | None:
    """The current version when ``registry`` changes no rule a block is matched by (e.g. only its
    description differs): every stored row is relabelled, none attributed again. Else None."""
    reuse = reuse_plan(warehouse, registry, allow_cross_network)
    return reuse.source if reuse is not None and reuse.changes.none else None


@dataclass(frozen=True)
class _Carried:
    tables: dict          # the chunk's rows under the new version: carried over + attributed again
    fresh: dict           # the rows of the blocks attributed again
    rows: int             # blocks in the chunk


def _carried_over(warehouse: Warehouse, reuse: Reuse, matcher, lo: int, hi: int) -> _Carried:
    """Heights [lo, hi] under ``matcher``'s version: the blocks ``reuse.changes`` can alter are
    attributed again, the others' stored rows relabelled. Only the columns the changes are found
    by are read for every block (scriptSigs for tags, output scripts for addresses); block hashes
    come from the stored attributions (one block per height, checked), not read again."""
    from pipeline.attribution.changes import affected_heights
    from pipeline.attribution.engine import attribute_with

    old = _relabelled(warehouse, reuse.source, matcher.version, lo, hi)
    stored = old["attributions"]
    empty = {t: old[t].schema.empty_table() for t in old}
    changes = reuse.changes
    if changes.none:
        return _Carried(old, empty, stored.num_rows)
    bucketed = reuse.bucketed
    blocks = _stored_rows(warehouse, "blocks", BLOCK_COLUMNS, lo, hi, stored, bucketed) if changes.tags else None
    outputs = _stored_rows(warehouse, "coinbase_outputs", OUTPUT_COLUMNS, lo, hi, stored, bucketed) \
        if changes.scripts else None
    again = affected_heights(changes, blocks if blocks is not None else BLOCKS_NONE.empty_table(),
                             outputs if outputs is not None else OUTPUTS_NONE.empty_table(), stored)
    if not len(again):
        return _Carried(old, empty, stored.num_rows)
    if blocks is None:
        blocks = _stored_rows(warehouse, "blocks", BLOCK_COLUMNS, lo, hi, stored, bucketed)
    if outputs is None:
        outputs = _stored_rows(warehouse, "coinbase_outputs", OUTPUT_COLUMNS, lo, hi, stored, bucketed)
    blocks = blocks.filter(pc.is_in(blocks["height"], value_set=again))
    hashes = stored.filter(pc.is_in(stored["height"], value_set=again))["block_hash"]  # same heights, same order
    blocks = blocks.append_column("hash", hashes)
    outputs = outputs.filter(pc.is_in(outputs["height"], value_set=again))
    outputs = outputs.append_column("block_hash", pc.take(blocks["hash"], pc.index_in(outputs["height"],
                                                                                      value_set=blocks["height"])))
    fresh = attribute_with(matcher, blocks, outputs)
    return _Carried({t: _merged(old[t], fresh[t], again) for t in old}, fresh, stored.num_rows)


def _merged(old: pa.Table, fresh: pa.Table, again: pa.Array) -> pa.Table:
    """``old``'s rows at heights not in ``again`` and all of ``fresh``, in height order (both are;
    a block's rows keep their order): one take, no sort."""
    import numpy as np

    old_heights = old["height"].to_numpy()
    keep = np.flatnonzero(~np.isin(old_heights, again.to_numpy()))
    fresh_heights = fresh["height"].to_numpy()
    heights = np.concatenate([old_heights[keep], fresh_heights])
    rows = np.concatenate([keep, old.num_rows + np.arange(len(fresh_heights))])
    order = rows[np.argsort(heights, kind="stable")]
    return pa.concat_tables([old, fresh]).take(pa.array(order))


# What attribution reads of the stored blocks and coinbase outputs besides the block hash (taken
# from the stored attributions: the hash strings are a large part of both tables' bytes).
BLOCK_COLUMNS = ("height", "time", "coinbase_script_sig_hex")
OUTPUT_COLUMNS = ("height", "output_index", "value_sat", "script_hex")
# Schemas, not empty tables: making a pyarrow table imports pandas (a quarter of a second), which
# must not happen when `poolwatch` starts.
BLOCKS_NONE = pa.schema([("height", pa.int32()), ("coinbase_script_sig_hex", pa.string())])
OUTPUTS_NONE = pa.schema([("height", pa.int32()), ("value_sat", pa.int64()), ("script_hex", pa.string())])


def _stored_rows(warehouse: Warehouse, table: str, columns: tuple[str, ...], lo: int, hi: int,
                 attributions: pa.Table, bucketed: bool) -> pa.Table:
    """``columns`` of ``table`` at heights [lo, hi]: from the height buckets' files (``read_range``:
    no view over every file) when the table has no file of another layout (``bucketed``), else
    through the catalog's view (``read``: every file). Its blocks must be those of
    ``attributions`` (complete under the source version and one per height, checked by
    ``reuse_plan``); a bucket read that misses one is read again through the view."""
    where = f"height BETWEEN {lo} AND {hi}"
    if not bucketed:
        return warehouse.read(table, where=where, columns=columns)
    rows = warehouse.read_range(table, {}, lo, hi, columns=columns)
    heights = rows["height"].combine_chunks()
    if table != "blocks":  # an output table: each stored block's heights once (every coinbase has an output)
        heights = pc.unique(heights)
    if heights.equals(attributions["height"].combine_chunks()):
        return rows
    log.info("heights %d..%d: %s rows are not all in their height buckets' files; reading every file", lo, hi, table)
    return warehouse.read(table, where=where, columns=columns)


def _concat(parts: list[dict]) -> dict:
    """The chunks' tables, in chunk order: chunks are ascending height ranges, each in height order,
    so the result is too (the commit cuts it into partitions by slicing)."""
    return {t: pa.concat_tables([p[t] for p in parts]) for t in parts[0]}


def _relabelled(warehouse: Warehouse, source: str, version: str, lo: int, hi: int) -> dict:
    """The attributions and candidates of ``source`` at heights [lo, hi], labelled ``version`` (read
    from the source version's partition files alone: the work follows the rows relabelled)."""
    out = {}
    for table in ("attributions", "attribution_candidates"):
        rows = warehouse.read_range(table, {"registry_version": source}, lo, hi)
        column = rows.schema.get_field_index("registry_version")
        field = rows.schema.field(column)
        out[table] = rows.set_column(column, field, pa.repeat(pa.scalar(version, field.type), rows.num_rows))
    return out


@dataclass(frozen=True)
class RegistryChoice:
    """Which registry and settings a load attributes with, decided under the writer lock (``resolve``).

    Registry: ``explicit`` is applied (stored history is re-attributed first when it differs from
    the warehouse's). Otherwise the warehouse's current registry, or ``default()`` for a warehouse
    that has none yet (not called otherwise, so a broken default never stops a warehouse that has
    a registry). Neither: no attribution.

    Cross-network setting: ``cross_network`` None keeps the warehouse's recorded setting (or
    ``default_cross_network`` for a warehouse that has none); a value that differs from the recorded
    one is refused (``SettingsChangeError``) unless ``change_settings``: results would change.
    """

    explicit: Registry | None = None
    cross_network: bool | None = None
    default: Callable[[], Registry] | None = None
    default_cross_network: bool = False
    change_settings: bool = False

    def resolve(self, warehouse: Warehouse) -> tuple[Registry | None, bool]:
        from pipeline.attribution.engine import recorded_settings

        recorded = recorded_settings(warehouse.meta)
        if self.cross_network is None:
            cross = recorded.cross_network if recorded is not None else self.default_cross_network
        else:
            cross = self.cross_network
            if recorded is not None and recorded.cross_network != cross and not self.change_settings:
                raise SettingsChangeError(
                    f"warehouse {warehouse.root} attributes with {recorded.describe()} (recorded in meta.json); this "
                    f"run asks for cross-network matching {'on' if cross else 'off'}, which changes the attribution "
                    "of stored blocks. Leave the option out to keep the recorded setting, or confirm the change "
                    "(`--change-settings` on the command line): every stored block is then re-attributed.")
        if self.explicit is not None:
            return self.explicit, cross
        current = current_registry(warehouse)
        if current is not None:
            return current, cross
        if self.default is not None:
            return self.default(), cross
        return None, False


def sync_range(client: NodeClient, warehouse: Warehouse, start: int | None = None, end: int | None = None, *,
               registry: Registry | None = None, allow_cross_network: bool | None = None, validate: bool = True,
               batch_size: int = 1000, check_reorg: bool = True, progress: Progress | None = None,
               on_plan: Callable[[int, int], None] | None = None, writer_wait: float = 0.0,
               workers: int = 1, source: str = "node", datadir: Path | None = None,
               default_registry: Callable[[], Registry] | None = None, default_cross_network: bool = False,
               change_settings: bool = False, record_spends: bool = True, refresh: bool = True) -> SyncResult:
    """Load heights [start, end] (default: from the stored tip + 1 to the node's tip).

    ``registry``: apply this registry (history is re-attributed first if the warehouse uses another);
    None: attribute with the warehouse's current registry, or ``default_registry()`` when it has
    none yet. ``allow_cross_network`` None keeps the warehouse's recorded setting (a differing value
    needs ``change_settings``; see ``RegistryChoice``). The choice is made under the writer lock, and every commit
    checks that the warehouse's registry is still the one the batch was attributed with: a
    re-attribution by another run in between makes this run follow it (or, with an explicit
    ``registry``, stop with ``RegistryChangedError``), never undo it.

    Order: node readiness -> chain check -> reorg check/repair -> batches of fetch, decode,
    attribute, validate, commit -> catalog refresh. The writer lock is held for the set-up and for
    each commit (never while reading the node), so two runs never both write and parallel backfill
    workers only queue for the short commits. ``refresh`` False leaves the catalog refresh (and Data
    Docs) to the caller, which loads more ranges (``check_spends``).
    """
    choice = RegistryChoice(registry, allow_cross_network, default_registry, default_cross_network, change_settings)
    started = time.monotonic()
    info = client.check_ready()
    network = client.network()
    genesis = client.block_hashes([0], require_blocks=False)[0]
    tip = int(info["blocks"])
    result = SyncResult(start=start, end=end, chain=network.name)
    incremental = check_reorg and start is None
    if end is not None and end > tip:
        raise HeightAboveTipError(f"asked for blocks up to height {end} but the node's tip is {tip}; "
                                  f"wait for the node to catch up or lower --to", height=end, tip=tip)
    # A range given in full is known before the set-up: its validating process (if it needs one)
    # starts now and imports Great Expectations while the set-up below runs.
    early = ValidatorStart.for_range(start, end, batch_size, validate, workers) \
        if start is not None and end is not None and start >= 0 else None
    try:
        # Set-up under the writer lock: chain binding, registry, reorg repair, the range.
        with warehouse.writer(wait=writer_wait):
            warehouse.bind_chain(network.name, genesis)
            registry, allow_cross_network = _apply_registry(warehouse, choice, result, validate)
            if incremental:
                result.reorg_fork_height = check_and_repair_reorg(client, warehouse)
            stored = warehouse.stored_range()

        if start is None:
            start = stored[1] + 1 if stored else 0
        if end is None:
            end = tip
        if end > tip:
            raise HeightAboveTipError(f"asked for blocks up to height {end} but the node's tip is {tip}; "
                                      f"wait for the node to catch up or lower --to", height=end, tip=tip)
        if start < 0:
            raise ValueError(f"bad height range: from {start} to {end} (heights start at 0)")
        result.start, result.end = start, end
        if on_plan:
            on_plan(start, end)
        if early is None:  # a range worked out from the warehouse: its validating process starts here
            early = ValidatorStart.for_range(start, end, batch_size, validate, workers)
        log.info("loading heights %d..%d (%d blocks) from a %s node in %d batches", start, end,
                 max(0, end - start + 1), network.name, len(loop_chunks(start, end, batch_size)))
        blocks = open_block_source(client, network, source, datadir)
        next_lo = start
        try:
            while True:
                plan = BatchPlan(registry, network.name, allow_cross_network, validate, record_spends)
                try:
                    _load_resuming(client, warehouse, blocks, next_lo, end, result, plan=plan,
                                   batch_size=batch_size, progress=progress, writer_wait=writer_wait,
                                   workers=workers, early=early)
                    break
                except RegistryChangedError as exc:
                    if choice.explicit is not None:
                        raise
                    log.warning("%s; continuing from height %d with the warehouse's new registry", exc,
                                exc.resume_from)
                    with warehouse.writer(wait=max(writer_wait, COMMIT_LOCK_WAIT)):
                        registry, allow_cross_network = _apply_registry(warehouse, choice, result, validate)
                    next_lo = exc.resume_from
        finally:
            blocks.close()
        # The registry version was made current (pool_definitions + meta) by reattribute() in the set-up.
        if refresh:
            _refresh(warehouse, writer_wait, validate and result.batches > 0)
    finally:
        if early is not None:
            early.close()
    result.seconds = time.monotonic() - started
    return result


def _refresh(warehouse: Warehouse, writer_wait: float, data_docs: bool) -> None:
    with warehouse.writer(wait=max(writer_wait, COMMIT_LOCK_WAIT)):
        warehouse.refresh_catalog()
        if data_docs:
            _build_data_docs(warehouse)


@dataclass
class SpendCheckResult:
    """What ``check_spends`` did: the stored heights it loaded again to record their coinbase spends
    (``ranges``), how many blocks that checked, and what is still unchecked afterwards (``left``)."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    blocks_loaded: int = 0
    spends_checked: int = 0
    left: UncheckedSpends = field(default_factory=lambda: UncheckedSpends([]))
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # the loads' own notes (heights they could not check, why)

    def describe(self) -> list[str]:
        lines = []
        if self.ranges:
            shown = ", ".join(f"{lo}..{hi}" for lo, hi in self.ranges[:5])
            more = f" and {len(self.ranges) - 5} more range(s)" if len(self.ranges) > 5 else ""
            lines.append(f"checked coinbase spends of {self.spends_checked} stored block(s) left unchecked by "
                         f"earlier loads (heights {shown}{more}), in {self.seconds:.1f} s")
        return lines + self.notes + self.left.describe()


def spends_left_behind(warehouse: Warehouse, result: SyncResult) -> bool:
    """Whether a load may have left blocks that ``check_spends`` can check now, told from the load
    itself and one lookup: it skipped some of its blocks, or the block just above its range is
    stored without a ``spend_scans`` row (a higher chunk loaded earlier, waiting for this one)."""
    if result.blocks_loaded and result.spends_checked < result.blocks_loaded:
        return True
    if result.end is None or not result.blocks_loaded:
        return False
    above = result.end + 1
    where = f"height = {int(above)}"
    return (warehouse.read("blocks", where=where, columns=["height"]).num_rows > 0
            and warehouse.read("spend_scans", where=where, columns=["height"]).num_rows == 0)


def check_spends(client: NodeClient, warehouse: Warehouse, *, validate: bool = True, batch_size: int = 1000,
                 writer_wait: float = 0.0, source: str = "node", datadir: Path | None = None,
                 progress: Progress | None = None, on_plan: Callable[[int], None] | None = None) -> SpendCheckResult:
    """Record the coinbase spends of every stored block that has none recorded yet and can be checked
    (every lower height stored; ``pipeline.load.spends.unchecked_spends``): left by parallel backfill
    chunks loaded out of order, ``--workers N``, a gap since filled, or ``--no-spends``.

    Each range is loaded again through the one loop, in one process with spends on, with the
    warehouse's current registry and settings: the blocks and attributions come out byte-identical
    (same chain, registry, settings), and the loop adds the spend_scans / coinbase_spends rows and
    recomputes custody_links in each commit, so the result is what a sequential load gives.
    ``on_plan`` is told the number of blocks to load first.
    """
    started = time.monotonic()
    todo = unchecked_spends(warehouse)
    result = SpendCheckResult(ranges=list(todo.ranges))
    if on_plan:
        on_plan(todo.blocks)
    if todo.ranges:
        log.info("recording coinbase spends of %d stored block(s) in %d range(s) left unchecked by earlier loads",
                 todo.blocks, len(todo.ranges))
    for lo, hi in todo.ranges:
        loaded = sync_range(client, warehouse, lo, hi, validate=validate, batch_size=batch_size, check_reorg=False,
                            progress=progress, writer_wait=writer_wait, workers=1, source=source, datadir=datadir,
                            record_spends=True, refresh=False)
        result.blocks_loaded += loaded.blocks_loaded
        result.spends_checked += loaded.spends_checked
        result.notes += loaded.notes
    if todo.ranges:
        _refresh(warehouse, writer_wait, validate)
        result.left = unchecked_spends(warehouse)
    else:
        result.left = todo
    result.seconds = time.monotonic() - started
    for line in result.describe():
        log.info("%s", line)
    return result


def _apply_registry(warehouse: Warehouse, choice: RegistryChoice, result: SyncResult,
                    validate: bool) -> tuple[Registry | None, bool]:
    """Resolve the registry (under the writer lock) and make it the warehouse's: a registry version
    other than the warehouse's re-attributes stored history first, so every stored block has an
    attribution under the version the new batches use."""
    from pipeline.attribution.engine import attribution_version

    registry, cross = choice.resolve(warehouse)
    if registry is None:
        result.registry_version = None
        return registry, cross
    version = attribution_version(registry.version, cross)
    if warehouse.attribution_version != version:
        # A new registry or setting (or a warehouse from before settings were recorded): stored
        # history is re-attributed first, so every stored block has a row under this version.
        current = warehouse.attribution_version
        if current is not None:
            log.warning("attribution version %s -> %s: re-attributing the stored blocks first", current, version)
        result.reattributed += reattribute(warehouse, registry, allow_cross_network=cross, validate=validate)
    result.registry_version = version
    return registry, cross


def _load_resuming(client: NodeClient, warehouse: Warehouse, blocks: BlockSource, start: int, end: int,
                   result: SyncResult, *, plan: BatchPlan, batch_size: int, progress: Progress | None,
                   writer_wait: float, workers: int, early: ValidatorStart | None = None) -> None:
    """``load`` [start, end]; when the node's chain changed during the run (a batch did not link, or
    batches read ahead were stale by the time the run ended), repair as at the start and resume from
    the fork."""
    def on_batch(n: int) -> None:
        result.blocks_loaded += n
        result.batches += 1
        if progress:
            progress(n)

    lock_wait = max(writer_wait, COMMIT_LOCK_WAIT)
    next_lo, relinks = start, 0
    while next_lo <= end:
        try:
            loaded = load(blocks, warehouse, next_lo, end, plan, batch_size=batch_size, workers=workers,
                          progress=on_batch, lock_wait=lock_wait, stages=result.stages,
                          validator=early)
            result.spends_checked += loaded.spends_checked
            result.notes += loaded.spends_skipped
            changed_at, resume_from = _stale_end(client, warehouse, end), None
            if changed_at is None:
                break
        except ChainChangedError as exc:
            changed_at, resume_from = exc.height, exc.resume_from
        relinks += 1
        if relinks > MAX_RELINKS:
            raise NodeError(f"the node's chain changed {relinks} times during this run (last at height "
                            f"{changed_at}); nothing unlinked was stored: run the sync again") from None
        with warehouse.writer(wait=lock_wait):
            fork = check_and_repair_reorg(client, warehouse)
        if fork is not None:
            earlier = result.reorg_fork_height
            result.reorg_fork_height = fork if earlier is None else min(fork, earlier)
        if fork is None and resume_from is None:
            break  # the stale tip was repaired by another run meanwhile: nothing left to do here
        next_lo = min(x for x in (fork, resume_from) if x is not None)
        end = result.end = min(end, client.tip_height())


def _stale_end(client: NodeClient, warehouse: Warehouse, end: int) -> int | None:
    """``end`` when the block stored there is no longer the node's (a reorg during the run), else None."""
    stored = warehouse.stored_hashes(end, end).get(end)
    if stored is None:
        return None
    try:
        node = client.block_hashes([end], require_blocks=False)[0]
    except HeightAboveTipError:
        return end  # the node's chain is now shorter than what this run stored
    return end if node != stored else None


def _build_data_docs(warehouse: Warehouse) -> None:
    from pipeline.store.datadocs import build_data_docs

    try:
        build_data_docs(warehouse.root)
    except OSError as exc:  # docs are a by-product: never fail a load that is already committed
        log.warning("could not build Data Docs in %s: %s", warehouse.root / "data_docs", exc)
