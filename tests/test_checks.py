"""Invariants (pipeline.store.checks): each one passes on good data and fails, at the right row, on
one corruption. No Great Expectations here (these are plain functions); test_validation runs them
through validate_batch."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pipeline.store.checks import INVARIANTS, CheckContext, Violation
from pipeline.store.schemas import table_spec
from pipeline.store.validation import all_suite_decls
from test_custody import custody_batch
from test_templates import template_batch
from test_validation import GENESIS_CONTEXT, build_chain, replace

NOW = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def batch() -> dict[str, pa.Table]:
    """20 regtest blocks with outputs, attributions, evidence rows, and one window of metric rows."""
    from pipeline.attribution.engine import attribute_tables
    from pipeline.attribution.registry import load_registry

    tables = build_chain(20)
    registry = load_registry()
    tables.update(attribute_tables(tables["blocks"], tables["coinbase_outputs"], registry, "regtest"))
    tables["pool_share"] = _share_rows()
    tables["centralization"] = _centralization_rows()
    tables.update(template_batch(registry))
    tables.update(custody_batch(tables, [p.id for p in registry.pools]))
    return tables


def _share_rows() -> pa.Table:
    rows = []
    for i, (entity, blocks) in enumerate([("a", 3), ("b", 1)]):
        rows.append({"window_kind": "day", "window_id": "2024-01-01", "window_start": NOW, "window_end": NOW,
                     "first_height": 1, "last_height": 4, "level": "pool", "entity_id": entity,
                     "entity_name": entity, "is_unknown": False, "rank": i + 1, "blocks": blocks,
                     "blocks_total": 4, "share": blocks / 4, "share_lo": 0.1, "share_hi": 0.9,
                     "share_of_known": blocks / 4, "work_share": blocks / 4, "hashrate": None,
                     "low_sample": True, "complete": True, "registry_version": None})
    return pa.Table.from_pylist(rows, schema=table_spec("pool_share").arrow_schema)


def _centralization_rows() -> pa.Table:
    spec = table_spec("centralization")
    row = {c.name: None for c in spec.columns}
    row.update(window_kind="day", window_id="2024-01-01", window_start=NOW, window_end=NOW, first_height=1,
               last_height=4, level="pool", unknown_treatment="excluded", blocks_total=4, unknown_blocks=0,
               unknown_share=0.0, blocks=4, n_entities=2, known_entities=2, top1_share_of_known=0.75,
               top3_share_of_known=1.0, top5_share_of_known=1.0, top1_share_of_all=0.75, top3_share_of_all=1.0,
               top5_share_of_all=1.0, hhi=0.625, nakamoto=1, low_sample=True, complete=True,
               hashrate_method="fixed_time")
    return pa.Table.from_pylist([row], schema=spec.arrow_schema)


def _context(batch: dict[str, pa.Table]) -> CheckContext:
    from pipeline.attribution.registry import load_registry

    registry = load_registry()
    return CheckContext.from_mapping(dict(GENESIS_CONTEXT, registry_version=batch["attributions"]["registry_version"][0]
                                          .as_py(), pool_ids=[p.id for p in registry.pools],
                                          now=int(NOW.timestamp()) + 10 * 365 * 86400))


def _time(batch: dict[str, pa.Table], row: int, **change) -> datetime:
    return batch["blocks"]["time"][row].as_py().replace(**change)


# (invariant, table it runs on, corruption of the batch, the row positions that must fail)
Corruption = Callable[[dict[str, pa.Table]], dict[str, pa.Table]]


def _set(table: str, column: str, row: int, value) -> Corruption:
    return lambda b: dict(b, **{table: replace(b[table], column, row, value)})


def _dup_row(table: str, row: int) -> Corruption:
    return lambda b: dict(b, **{table: pa.concat_tables([b[table], b[table].slice(row, 1)])})


CASES: list[tuple[str, str, Corruption, list[int]]] = [
    ("height_contiguous", "blocks", _set("blocks", "height", 7, 30), [7, 8]),  # the gap and the stray
    ("prev_link_ok", "blocks", _set("blocks", "prev_hash", 4, "ab" * 32), [4]),
    ("time_in_bounds", "blocks", lambda b: _set("blocks", "time", 9, _time(b, 9, year=2200))(b), [9]),
    ("time_after_mtp", "blocks", lambda b: _set("blocks", "time", 15, _time(b, 15, year=2000))(b), [15]),
    ("median_time_consistent", "blocks",
     lambda b: _set("blocks", "median_time", 12, _time(b, 12, year=2001))(b), [12]),
    ("subsidy_ok", "blocks", _set("blocks", "subsidy_sat", 3, 1), [3]),
    ("outputs_sum_ok", "blocks", _set("blocks", "coinbase_value_sat", 5, 7), [5]),
    ("output_count_ok", "blocks", _set("blocks", "output_count", 6, 9), [6]),
    ("attribution_count", "blocks", lambda b: dict(b, attributions=b["attributions"].slice(1)), [0]),
    ("block_hash_ok", "coinbase_outputs", _set("coinbase_outputs", "block_hash", 2, "cd" * 32), [2]),
    ("address_presence_ok", "coinbase_outputs", _set("coinbase_outputs", "address", 0, None), [0]),
    ("pool_id_known", "attributions", _set("attributions", "pool_id", 3, "no-such-pool"), [3]),
    ("registry_version_ok", "attributions", _set("attributions", "registry_version", 4, "0" * 16), [4]),
    ("unknown_consistent", "attributions", _set("attributions", "method", 5, "tag"), [5]),
    ("share_sum_ok", "pool_share", _set("pool_share", "share", 1, 0.5), [0, 1]),
    ("share_of_known_sum_ok", "pool_share", _set("pool_share", "share_of_known", 0, 0.5), [0, 1]),
    ("blocks_sum_ok", "pool_share", _set("pool_share", "blocks", 0, 2), [0, 1]),
    ("share_in_interval", "pool_share", _set("pool_share", "share_hi", 0, 0.5), [0]),
    ("hhi_in_bounds", "centralization", _set("centralization", "hhi", 0, 0.3), [0]),
    ("top_shares_ordered", "centralization", _set("centralization", "top1_share_of_all", 0, 0.8), [0]),
    ("nakamoto_in_bounds", "centralization", _set("centralization", "nakamoto", 0, 3), [0]),
    ("template_branch_hash_ok", "template_observations", _set("template_observations", "branch_hash", 1, "00" * 32),
     [1]),
    ("template_height_matches_coinbase", "template_observations", _set("template_observations", "height", 3, 900002),
     [3]),
    ("template_one_height_per_prev_hash", "template_observations",  # rows 0-2 share a previous block
     _set("template_observations", "height", 2, 899999), [0, 1, 2]),
    ("template_pool_ref_ok", "template_observations", _set("template_observations", "pool_id", 1, "no-such-pool"),
     [1]),
    ("template_observed_at_in_bounds", "template_observations",
     _set("template_observations", "observed_at", 2, datetime(2200, 1, 1, tzinfo=UTC)), [2]),
    ("template_observation_grouped", "template_observations", _set("template_observations", "pool_id", 0, "f2pool"),
     [0]),
    ("template_group_ok", "template_groups", _set("template_groups", "pools", 0, 3), [0]),
    ("template_group_pairs_linked", "template_groups", lambda b: dict(b, template_links=b["template_links"].slice(1)),
     [0]),
    ("template_link_counts_ok", "template_links", _set("template_links", "heights_seen", 0, 2), [0]),
    ("spend_scanned", "coinbase_spends", lambda b: dict(b, spend_scans=b["spend_scans"].slice(0, 15)), [0]),
    ("coinbase_ok", "coinbase_spends", _set("coinbase_spends", "coinbase_vout", 0, 9), [0]),
    ("spend_count_ok", "spend_scans", _set("spend_scans", "spends", 4, 1), [4]),
    ("inputs_cover_transactions", "spend_scans", _set("blocks", "tx_count", 6, 3), [6]),
    ("custody_pair_ordered", "custody_links", _set("custody_links", "pool_a", 0, "zzzz"), [0]),
    ("custody_pools_known", "custody_links", _set("custody_links", "pool_b", 0, "zzzz-no-such-pool"), [0]),
]


@pytest.mark.parametrize("name,table,corrupt,rows", CASES, ids=[c[0] for c in CASES])
def test_invariant_passes_on_good_data_and_names_the_broken_row(batch, name, table, corrupt, rows):
    check = INVARIANTS[name]
    ctx = _context(batch)
    assert check(batch[table], batch, ctx) == Violation(), f"{name} fails on a valid batch"
    bad = corrupt(batch)
    got = check(bad[table], bad, ctx)
    assert got.rows == rows, f"{name}: {got}"
    assert len(got.values) == len(rows)


def test_every_invariant_is_declared_by_a_suite_and_has_a_failing_case():
    declared = {name for decl in all_suite_decls() for name in decl.invariants}
    assert declared == set(INVARIANTS)
    assert {c[0] for c in CASES} == set(INVARIANTS)


def test_undecidable_rows_are_not_failures(batch):
    """Without the stored predecessor the first row's link and height cannot be decided; without a
    chain the subsidy cannot; without the registry the pool ids cannot."""
    tail = batch["blocks"].slice(10)
    bare = CheckContext.from_mapping({})
    for name in ("height_contiguous", "prev_link_ok", "time_after_mtp", "subsidy_ok"):
        assert INVARIANTS[name](tail, {"blocks": tail}, bare) == Violation(), name
    odd = replace(batch["attributions"], "pool_id", 0, "no-such-pool")
    assert INVARIANTS["pool_id_known"](odd, batch, bare) == Violation()


def test_a_rule_that_cannot_run_fails_the_batch(batch):
    """A missing column stops an invariant: that is a failure with the reason, not a pass."""
    from pipeline.store.validation import validate_batch

    blocks = batch["blocks"].drop_columns(["prev_hash"])
    report = validate_batch({"blocks": blocks}, GENESIS_CONTEXT)
    link = next(f for f in report.failures if f.expectation == "invariant(prev_link_ok)")
    assert "prev_hash" in (link.error or "")
    assert report.invariant_results["blocks"]["prev_link_ok"]["success"] is False


def test_a_suite_naming_an_unknown_invariant_is_refused(tmp_path):
    from pipeline.store.validation import _parse_suite

    doc = {"table": "blocks", "invariants": {"no_such_rule": "why"}, "expectations": []}
    with pytest.raises(ValueError, match="no_such_rule"):
        _parse_suite(doc, tmp_path / "blocks.json")
