"""Batch validation (Great Expectations suites), quarantine and Data Docs; no node, no Airflow."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.chain.decode import decode_block
from pipeline.load.tables import blocks_to_tables
from pipeline.chain.networks import REGTEST
from pipeline.devnode.blocks import build_block, CoinbaseSpec
from pipeline.devnode.chains import block_times
from pipeline.store.schemas import all_table_specs, table_spec
from pipeline.store.checks import INVARIANTS
from pipeline.store.datadocs import build_data_docs
from pipeline.store.validation import (
    BatchRejected,
    ValidationReport,
    all_suite_decls,
    suite_decl,
    validate_batch,
)

REGTEST_GENESIS_TIME = 1296688602
P2PKH = bytes.fromhex("76a914" + "11" * 20 + "88ac")
OP_RETURN = bytes.fromhex("6a04abcd1234")


def build_chain(n: int, start_time: int = 1_700_000_000) -> dict[str, pa.Table]:
    """A valid regtest chain of heights 1..n built offline (no node): real blocks, real decoder."""
    times = {0: REGTEST_GENESIS_TIME}
    prev = REGTEST.genesis_hash
    blocks = []
    for height, t in enumerate(block_times(n, start_time), start=1):
        times[height] = t
        raw = build_block(prev, height, t, CoinbaseSpec(tag=b"/poolwatch test/", payouts=[(P2PKH, 1)],
                                                        extra_outputs=[(OP_RETURN, 0)]))
        window = sorted(times[h] for h in range(max(0, height - 10), height + 1))
        block = decode_block(raw, REGTEST, height=height, median_time=window[len(window) // 2])
        blocks.append(block)
        prev = block.hash
    return blocks_to_tables(blocks)


GENESIS_CONTEXT = {"chain": "regtest", "previous_height": 0, "previous_hash": REGTEST.genesis_hash,
                   "previous_median_time": REGTEST_GENESIS_TIME}


@pytest.fixture(scope="module")
def chain() -> dict[str, pa.Table]:
    return build_chain(60)


def replace(table: pa.Table, column: str, index: int, value) -> pa.Table:
    values = table[column].to_pylist()
    values[index] = value
    pos = table.column_names.index(column)
    return table.set_column(pos, table.field(pos), pa.array(values, table.schema.field(column).type))


def failed(report: ValidationReport) -> set[tuple[str, str]]:
    return {(f.table, f.expectation.split("(")[1].split(",")[0].rstrip(")")) for f in report.failures}


def test_every_table_has_a_suite_whose_columns_exist():
    suites = {d.table: d for d in all_suite_decls()}
    assert set(suites) == {s.name for s in all_table_specs()}
    for spec in all_table_specs():
        decl = suites[spec.name]
        columns = set(spec.column_names)
        for e in decl.expectations:
            named = [e.kwargs.get("column"), e.kwargs.get("column_A"), e.kwargs.get("column_B"),
                     *e.kwargs.get("column_list", [])]
            for col in filter(None, named):
                assert col in columns, f"{spec.name}: {e.type} names unknown column {col}"
        assert set(decl.invariants) <= set(INVARIANTS)
        assert set(decl.row_id) <= set(spec.column_names)


def test_suites_load_into_gx():
    from pipeline.store.validation import build_gx_suite

    for decl in all_suite_decls():
        suite = build_gx_suite(decl, table_spec(decl.table))
        assert len(suite.expectations) == len(decl.all_expectations(table_spec(decl.table)))


def test_valid_chain_passes(chain):
    report = validate_batch(chain, GENESIS_CONTEXT)
    assert report.ok, report.summary()
    assert report.evaluated > 40
    assert report.heights == (1, 60)
    assert "all" in report.summary() and "passed" in report.summary()


def test_duplicated_height_and_negative_value_are_named(chain):
    blocks = replace(chain["blocks"], "height", 5, 5)  # row 5 (height 6) claims height 5
    outputs = replace(chain["coinbase_outputs"], "value_sat", 7, -1)
    report = validate_batch({"blocks": blocks, "coinbase_outputs": outputs}, GENESIS_CONTEXT)
    assert not report.ok
    got = failed(report)
    assert ("blocks", "height") in got  # unique
    assert ("blocks", "height_contiguous") in got
    assert ("coinbase_outputs", "value_sat") in got
    text = report.summary()
    assert "expect_column_values_to_be_unique(height)" in text
    assert "height=5" in text
    neg = next(f for f in report.failures if f.table == "coinbase_outputs" and "value_sat" in f.expectation)
    assert neg.values == [-1]
    assert neg.rows == [{"height": 4, "output_index": 1}]


def test_consensus_and_format_rules_name_their_rows(chain):
    """Several independent corruptions in one batch (one GX run): each is reported at its row."""
    t = chain["blocks"]["time"][30].as_py()
    blocks = replace(chain["blocks"], "prev_hash", 10, "ab" * 32)  # height 11 links to a wrong hash
    blocks = replace(blocks, "hash", 20, "XYZ")  # height 21: not 64 hex; height 22 now links nowhere
    blocks = replace(blocks, "time", 30, t.replace(year=t.year - 1))  # height 31: before the MTP
    blocks = replace(blocks, "time", 40, t.replace(year=2100))  # height 41: far in the future
    blocks = replace(blocks, "subsidy_sat", 3, 1)  # height 4: off the halving schedule
    blocks = replace(blocks, "fees_sat", 4, 2_000 * 100_000_000)  # height 5: implausible fees
    outputs = replace(chain["coinbase_outputs"], "script_type", 0, "p2something")
    report = validate_batch({"blocks": blocks, "coinbase_outputs": outputs}, GENESIS_CONTEXT)

    def rows(column: str) -> set[int]:
        f = next(f for f in report.failures if f"({column}" in f.expectation)
        return {r["height"] for r in f.rows}

    assert rows("prev_link_ok") == {11, 22}
    assert rows("hash") == {21}
    assert 31 in rows("time_after_mtp")
    assert rows("time_in_bounds") == {41}
    assert rows("subsidy_ok") == {4}
    assert rows("fees_sat") == {5}
    assert rows("script_type") == {1}
    assert not report.ok and len(report.failures) >= 7


def test_link_to_the_stored_predecessor_is_checked(chain):
    first = chain["blocks"].slice(30)
    report = validate_batch({"blocks": first}, {"chain": "regtest", "previous_height": 30,
                                                "previous_hash": "00" * 32})
    link = next(f for f in report.failures if "prev_link_ok" in f.expectation)
    assert link.rows == [{"height": 31}]
    # Without context the first row's link cannot be decided and is not a failure.
    assert validate_batch({"blocks": first}, {"chain": "regtest"}).ok


def test_attributions_one_per_block_and_known_pools(chain):
    from pipeline.attribution.engine import attribute_tables, attribution_version, pool_definitions_table
    from pipeline.attribution.registry import load_registry

    registry = load_registry()
    tables = dict(chain)
    tables.update(attribute_tables(chain["blocks"], chain["coinbase_outputs"], registry, "regtest"))
    tables["pool_definitions"] = pool_definitions_table(registry)
    context = dict(GENESIS_CONTEXT, registry_version=attribution_version(registry.version, False),
                   pool_ids=sorted(p.id for p in registry.pools))
    assert validate_batch(tables, context).ok
    attributions = tables["attributions"]
    doubled = dict(tables, attributions=pa.concat_tables([attributions, attributions.slice(2, 1)]))
    got = failed(validate_batch(doubled, context))
    assert ("blocks", "attribution_count") in got
    assert ("attributions", "registry_version") in got  # compound unique key
    stranger = dict(tables, attributions=replace(replace(attributions, "pool_id", 0, "no-such-pool"),
                                                 "method", 0, "tag"))
    assert ("attributions", "pool_id_known") in failed(validate_batch(stranger, context))


def test_metric_suites_catch_bad_shares_and_hhi():
    from datetime import UTC, datetime

    now = datetime(2024, 1, 1, tzinfo=UTC)
    spec = table_spec("pool_share")
    rows = []
    for i, (entity, blocks) in enumerate([("a", 3), ("b", 1)]):
        rows.append({"window_kind": "day", "window_id": "2024-01-01", "window_start": now, "window_end": now,
                     "first_height": 1, "last_height": 4, "level": "pool", "entity_id": entity,
                     "entity_name": entity, "is_unknown": False, "rank": i + 1, "blocks": blocks,
                     "blocks_total": 4, "share": blocks / 4, "share_lo": 0.0, "share_hi": 1.0,
                     "share_of_known": blocks / 4, "work_share": blocks / 4, "hashrate": None,
                     "low_sample": True, "complete": True, "registry_version": None})
    share = pa.Table.from_pylist(rows, schema=spec.arrow_schema)
    assert validate_batch({"pool_share": share}).ok
    bad = replace(share, "share", 1, 0.5)  # 0.75 + 0.5 != 1
    assert ("pool_share", "share_sum_ok") in failed(validate_batch({"pool_share": bad}))

    cspec = table_spec("centralization")
    row = {c.name: None for c in cspec.columns}
    row.update(window_kind="day", window_id="2024-01-01", window_start=now, window_end=now, first_height=1,
               last_height=4, level="pool", unknown_treatment="excluded", blocks_total=4, unknown_blocks=0,
               unknown_share=0.0, blocks=4, n_entities=2, known_entities=2, top1_share_of_known=0.75,
               top3_share_of_known=1.0, top5_share_of_known=1.0, top1_share_of_all=0.75, top3_share_of_all=1.0,
               top5_share_of_all=1.0, hhi=0.625, nakamoto=1, low_sample=True, complete=True,
               hashrate_method="fixed_time")
    cent = pa.Table.from_pylist([row], schema=cspec.arrow_schema)
    assert validate_batch({"centralization": cent}).ok
    low = replace(cent, "hhi", 0, 0.3)  # below 1/n = 0.5
    assert ("centralization", "hhi_in_bounds") in failed(validate_batch({"centralization": low}))
    above = replace(cent, "top1_share_of_all", 0, 0.8)  # more of all blocks than of the known ones
    assert ("centralization", "top_shares_ordered") in failed(validate_batch({"centralization": above}))
    # The interval is for the population HHI: below 1/n and below the plug-in hhi is fine ...
    interval = replace(replace(cent, "hhi_lo", 0, 0.2), "hhi_hi", 0, 0.6)
    assert validate_batch({"centralization": interval}).ok
    # ... a reversed interval or one outside [0, 1] is not.
    reversed_ = replace(interval, "hhi_lo", 0, 0.7)
    assert ("centralization", "column_A=hhi_hi") in failed(validate_batch({"centralization": reversed_}))
    negative = replace(interval, "hhi_lo", 0, -0.1)
    assert ("centralization", "hhi_lo") in failed(validate_batch({"centralization": negative}))


def test_unknown_table_is_an_error(chain):
    with pytest.raises(KeyError, match="no declared schema"):
        validate_batch({"nonsense": chain["blocks"]})


def test_rejected_batch_is_quarantined_and_not_loaded(chain, tmp_path: Path):
    """The one gate (loads, re-attribution, metrics): validate, quarantine on failure, raise; stored
    data stays untouched."""
    from pipeline.store.validation import gate
    from pipeline.store.warehouse import Warehouse

    warehouse = Warehouse(tmp_path / "warehouse")
    good = {name: t.filter(pa.compute.less_equal(t["height"], 30)) for name, t in chain.items()}
    with warehouse.writer():
        gate(warehouse, good, validate_batch(good, GENESIS_CONTEXT))
    before = warehouse.read("blocks").sort_by("height")
    assert before.num_rows == 30

    rest = {name: t.filter(pa.compute.greater(t["height"], 30)) for name, t in chain.items()}
    rest["blocks"] = replace(rest["blocks"], "height", 3, 33)  # duplicated height
    rest["coinbase_outputs"] = replace(rest["coinbase_outputs"], "value_sat", 1, -5)  # negative value
    context = {"chain": "regtest", "previous_height": 30, "previous_hash": before["hash"][-1].as_py()}
    with warehouse.writer(), pytest.raises(BatchRejected) as caught:
        gate(warehouse, rest, validate_batch(rest, context))
    err = caught.value
    assert "expect_column_values_to_be_unique(height)" in str(err)
    assert "value_sat" in str(err)
    folder = err.quarantine_path
    assert folder is not None and folder.parent == warehouse.root / "quarantine"
    assert pq.read_table(folder / "blocks.parquet").num_rows == rest["blocks"].num_rows
    assert -5 in pq.read_table(folder / "coinbase_outputs.parquet")["value_sat"].to_pylist()
    saved = json.loads((folder / "validation.json").read_text())
    assert saved["ok"] is False and any("value_sat" in f["expectation"] for f in saved["failures"])
    assert warehouse.read("blocks").sort_by("height").equals(before)
    assert warehouse.read("coinbase_outputs").num_rows == good["coinbase_outputs"].num_rows


def test_gate_and_data_docs(chain, tmp_path: Path):
    from pipeline.store.validation import gate
    from pipeline.store.warehouse import Warehouse

    warehouse = Warehouse(tmp_path / "warehouse")
    root = warehouse.root
    with warehouse.writer():
        gate(warehouse, chain, validate_batch(chain, GENESIS_CONTEXT))
        broken = dict(chain, blocks=replace(chain["blocks"], "height", 1, 1))
        with pytest.raises(BatchRejected) as caught:
            gate(warehouse, broken, validate_batch(broken, GENESIS_CONTEXT))
    assert caught.value.quarantine_path.is_dir()
    index = build_data_docs(root)
    assert index == root / "data_docs" / "index.html" and index.exists()
    text = index.read_text()
    from pipeline.store.datadocs import saved_results
    from pipeline.store.validation import all_suite_decls

    kept = saved_results(root)
    assert len(kept) == 2 and sum(q for _, _, q in kept) == 1  # the good batch and the quarantined one
    for batch_id, _, _ in kept:
        assert batch_id in text and (root / "data_docs" / "results" / f"{batch_id}.html").exists()
    assert "QUARANTINED" in text and "passed" in text
    for decl in all_suite_decls():  # every declared suite, each with its own page
        assert f"suites/{decl.table}.html" in text
        assert (root / "data_docs" / "suites" / f"{decl.table}.html").exists()
    pages = [p.read_text() for p in (root / "data_docs").rglob("*.html")]
    assert all(external_references(p) == [] for p in pages)  # reads offline: no CDN, no script
    assert external_references('<link href="https://cdn.example/x.css">') == ["https://cdn.example/x.css"]
    failed = next(p for p in pages if "expect_column_values_to_be_unique(height)" in p and "FAILED" in p)
    assert "height=1" in failed


def external_references(page: str) -> list[str]:
    """URLs a page would load from the network (src/href of link, script, img, iframe)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class _Scan(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            for name, value in attrs:
                if value and name in ("src", "href") and tag in ("link", "script", "img", "iframe", "source") \
                        and "://" in value:
                    found.append(value)
            if tag == "script":
                found.append("<script>")

    _Scan().feed(page)
    return found


def test_report_json_round_trip(chain):
    report = validate_batch({"blocks": replace(chain["blocks"], "nonce", 2, -1)}, GENESIS_CONTEXT)
    again = ValidationReport.from_json(report.to_json())
    assert again.summary() == report.summary()
    assert not again.ok


def test_suite_decl_missing_returns_none():
    assert suite_decl("no_such_table") is None


def test_null_in_a_non_nullable_column_is_rejected_and_named(chain) -> None:
    # One schema-derived invariant covers every non-nullable column; the failure names the row
    # (by its row id) and which of its columns are null.
    tables = dict(chain)
    blocks = replace(replace(tables["blocks"], "merkle_root", 3, None), "nonce", 3, None)
    blocks = replace(blocks, "bits", 7, None)
    tables["blocks"] = blocks
    report = validate_batch(tables, GENESIS_CONTEXT)
    assert not report.ok
    nulls = [f for f in report.failures if "required_not_null" in f.expectation]
    assert len(nulls) == 1 and nulls[0].table == "blocks" and nulls[0].unexpected_count == 2
    assert sorted(nulls[0].values) == ["bits", "merkle_root, nonce"]
    assert "non-nullable" in nulls[0].why
    heights = sorted(r["height"] if isinstance(r, dict) else r for r in nulls[0].rows)
    assert heights == [4, 8]
    # The other tables' null checks passed: a complete row is "".
    assert validate_batch(dict(chain), GENESIS_CONTEXT).ok


def test_a_failing_table_names_every_failing_row_not_a_sample(chain):
    """Batches are first validated with GX's BASIC result format (a sample of at most 20 values, no
    row ids); a table that fails is validated again with COMPLETE, so all 25 bad rows are named,
    while the tables that passed keep their BASIC result."""
    bad = list(range(10, 35))
    fees = chain["blocks"]["fees_sat"].to_pylist()
    for i in bad:
        fees[i] = 2_000 * 100_000_000 + i
    pos = chain["blocks"].column_names.index("fees_sat")
    blocks = chain["blocks"].set_column(pos, chain["blocks"].field(pos), pa.array(fees, pa.int64()))
    report = validate_batch({"blocks": blocks, "coinbase_outputs": chain["coinbase_outputs"]}, GENESIS_CONTEXT)
    fee_failure = next(f for f in report.failures if "(fees_sat" in f.expectation)
    assert {r["height"] for r in fee_failure.rows} == {i + 1 for i in bad}
    assert sorted(fee_failure.values) == sorted(fees[i] for i in bad)
    assert fee_failure.unexpected_count == 25
    assert "unexpected_index_list" in json.dumps(report.gx_results["blocks"])  # COMPLETE where it failed
    assert "unexpected_index_list" not in json.dumps(report.gx_results["coinbase_outputs"])  # BASIC where it passed


def test_a_batch_validated_in_two_shares_gives_the_whole_verdict(chain):
    """The end of a range is validated by two processes, one suite each side (pipeline.load.loop):
    the merged report equals the one-call report, failures in the same order, whichever side they are on."""
    blocks = replace(chain["blocks"], "subsidy_sat", 3, 1)
    outputs = replace(chain["coinbase_outputs"], "value_sat", 7, -1)
    tables = {"blocks": blocks, "coinbase_outputs": outputs}
    whole = validate_batch(tables, GENESIS_CONTEXT)
    theirs = validate_batch(tables, GENESIS_CONTEXT, only=["blocks"])
    ours = validate_batch(tables, GENESIS_CONTEXT, only=["coinbase_outputs"])
    assert set(theirs.gx_results) == {"blocks"} and set(ours.gx_results) == {"coinbase_outputs"}
    for merged in (theirs.merged(ours), ours.merged(theirs)):
        assert not merged.ok
        assert merged.evaluated == whole.evaluated
        assert [(f.table, f.expectation, f.rows) for f in merged.failures] == \
               [(f.table, f.expectation, f.rows) for f in whole.failures]
        assert list(merged.gx_results) == list(whole.gx_results)
    assert theirs.merged(ours).batch_id == theirs.batch_id
