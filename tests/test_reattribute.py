"""Whole-history re-attribution (``pipeline.load.jobs.reattribute``): a new registry version that
matches blocks exactly as the current one does (only its description differs) relabels the stored
rows instead of attributing every block again, and the result is byte-identical to attributing
from scratch; any change a matching rule reads attributes again."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest

from benchmarks.metrics_bench import build_warehouse, relabelled_registry, updated_registry
from pipeline.attribution.engine import attribution_version
from pipeline.attribution.registry import load_registry, parse_registry
from pipeline.load import jobs
from pipeline.load.jobs import reattribute, reusable_version
from pipeline.store.warehouse import Warehouse

BLOCKS = 2500


@pytest.fixture(scope="module")
def shipped():
    return load_registry()


def _rows(warehouse: Warehouse, version: str) -> dict[str, pa.Table]:
    escaped = version.replace("'", "''")
    return {t: warehouse.read(t, where=f"registry_version = '{escaped}'")
            for t in ("attributions", "attribution_candidates")}


def _warehouse(root, registry) -> Warehouse:
    build_warehouse(root, BLOCKS, registry, batch=1000)
    warehouse = Warehouse(root)
    with warehouse.writer():
        reattribute(warehouse, registry, chunk_size=1000, validate=False)
    return warehouse


def test_a_description_change_relabels_and_gives_the_rows_a_full_pass_gives(tmp_path, shipped, monkeypatch):
    updated = relabelled_registry(shipped)
    relabelled = _warehouse(tmp_path / "a", shipped)
    assert reusable_version(relabelled, updated, False) == attribution_version(shipped.version, False)
    with relabelled.writer():
        assert reattribute(relabelled, updated, chunk_size=1000) == BLOCKS

    # From scratch, with the relabel path off: every block attributed by the engine.
    monkeypatch.setattr(jobs, "reusable_version", lambda *args: None)
    scratch = _warehouse(tmp_path / "b", updated)
    version = attribution_version(updated.version, False)
    assert relabelled.attribution_version == scratch.attribution_version == version
    ours, theirs = _rows(relabelled, version), _rows(scratch, version)
    for table in ours:
        assert ours[table].num_rows > 0
        assert ours[table].equals(theirs[table]), table
    # The previous version's rows are kept side by side, as after any re-attribution.
    assert _rows(relabelled, attribution_version(shipped.version, False))["attributions"].num_rows == BLOCKS


def test_a_change_a_rule_reads_or_a_missing_row_attributes_again(tmp_path, shipped):
    warehouse = _warehouse(tmp_path / "a", shipped)
    document = copy.deepcopy(shipped.document)
    pool = next(p for p in document["pools"] if p.get("tags"))
    pool["tags"] = pool["tags"][1:]  # one tag fewer: other attributions
    assert reusable_version(warehouse, parse_registry(document), False) is None
    assert reusable_version(warehouse, updated_registry(shipped), False) is None  # the benchmark's update: a new tag
    assert reusable_version(warehouse, relabelled_registry(shipped), True) is None  # another setting
    # A stored block without a row under the current version: no relabelling.
    with warehouse.writer():
        warehouse.delete_heights_from(BLOCKS - 1, tables=["attributions"])
    assert reusable_version(warehouse, relabelled_registry(shipped), False) is None
