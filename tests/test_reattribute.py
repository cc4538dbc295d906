"""Whole-history re-attribution (``pipeline.load.jobs.reattribute``): a new registry version
attributes again only the stored blocks its rule changes can alter (``pipeline.attribution.changes``)
and relabels the other rows; one that changes no rule (only its description differs) relabels every
row. Either way the rows, and the files, are those of attributing every block from scratch."""

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


def _files(warehouse: Warehouse, table: str, version: str) -> dict[str, bytes]:
    from urllib.parse import quote

    folder = warehouse.table_dir(table) / f"registry_version={quote(version, safe='')}"
    files = {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*.parquet"))}
    assert files, folder
    return files


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
    monkeypatch.setattr(jobs, "reuse_plan", lambda *args: None)
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


def test_the_current_version_with_every_row_attributes_nothing_unless_asked_again(tmp_path, shipped, monkeypatch):
    warehouse = _warehouse(tmp_path / "a", shipped)
    version = attribution_version(shipped.version, False)
    files = _files(warehouse, "attributions", version)
    matched: list[int] = []
    from pipeline.attribution import engine  # reattribute imports the engine's function when called

    original = engine.attribute_tables

    def counting(blocks, *args, **kwargs):
        matched.append(blocks.num_rows)
        return original(blocks, *args, **kwargs)

    monkeypatch.setattr(engine, "attribute_tables", counting)
    stats: dict[str, int] = {}
    with warehouse.writer():
        assert reattribute(warehouse, shipped, chunk_size=1000, validate=False, stats=stats) == 0
    assert stats == {"blocks": 0, "attributed_again": 0, "current": BLOCKS} and matched == []
    assert _files(warehouse, "attributions", version) == files

    # Asked again: every block matched again, the same bytes written.
    with warehouse.writer():
        assert reattribute(warehouse, shipped, chunk_size=1000, validate=False, again=True, stats=stats) == BLOCKS
    assert sum(matched) == BLOCKS and stats["attributed_again"] == BLOCKS
    assert _files(warehouse, "attributions", version) == files

    # A stored block without its row: the current version is not complete, every block is done.
    with warehouse.writer():
        warehouse.delete_heights_from(BLOCKS - 1, tables=["attributions"])
    assert not jobs.rows_cover_blocks(warehouse, version)
    matched.clear()
    with warehouse.writer():
        assert reattribute(warehouse, shipped, chunk_size=1000, validate=False) == BLOCKS
    assert sum(matched) == BLOCKS and jobs.rows_cover_blocks(warehouse, version)
    assert _files(warehouse, "attributions", version) == files


# ------------------------------------------------------------------- rule changes: only affected blocks


def _by_id(document: dict, pool_id: str) -> dict:
    return next(p for p in document["pools"] if p["id"] == pool_id)


def _busiest(warehouse: Warehouse, version: str, method: str) -> list[str]:
    """Pool ids by stored blocks won with ``method`` evidence, most first."""
    rows = _rows(warehouse, version)["attributions"]
    counts: dict[str, int] = {}
    for pid, m in zip(rows["pool_id"].to_pylist(), rows["method"].to_pylist()):
        if m in (method, "both"):
            counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts, key=lambda p: (-counts[p], p))


def _change(name: str, document: dict, tagged: list[str], paid: list[str]) -> None:
    """Registry edits as users make them, on pools that win blocks in the test warehouse."""
    a, b = _by_id(document, tagged[0]), _by_id(document, tagged[1])
    if name == "tag removed":
        a["tags"] = a["tags"][1:]
    elif name == "tag moved":  # the lists disagreed on whose tag it is
        a["tags"] = a["tags"] + [b["tags"][0]]
        b["tags"] = b["tags"][1:]
    elif name == "tag inside another pool's tag added":  # found only through the longer tag's inner tags
        longest = max((t["tag"] for t in b["tags"]), key=len)
        a["tags"] = a["tags"] + [{"tag": longest[1:], "sources": []}]
    elif name == "tag window closed":
        a["tags"] = [dict(a["tags"][0], to_height=BLOCKS // 2)] + a["tags"][1:]
    elif name == "address moved":
        p, q = _by_id(document, paid[0]), _by_id(document, paid[1])
        q["addresses"] = q["addresses"] + [p["addresses"][0]]
        p["addresses"] = p["addresses"][1:]
    elif name == "pool renamed":
        a["name"] = a["name"] + " (renamed)"
    elif name == "family changed":
        a["family"] = [{"family": document["families"][0]["id"], "from_height": BLOCKS // 3, "sources": []}]
    elif name == "pools reordered":
        document["pools"] = list(reversed(document["pools"]))
    elif name == "pool removed":
        document["pools"] = [p for p in document["pools"] if p["id"] != tagged[0]]
    elif name == "family removed":
        gone = next(m["family"] for pid in tagged for m in _by_id(document, pid).get("family") or [])
        document["families"] = [f for f in document["families"] if f["id"] != gone]
        for p in document["pools"]:
            p["family"] = [m for m in p.get("family") or [] if m["family"] != gone]
            if not p["family"]:
                del p["family"]
    else:
        raise AssertionError(name)


CHANGES = ["tag removed", "tag moved", "tag inside another pool's tag added", "tag window closed", "address moved", "pool renamed",
           "family changed", "pools reordered", "pool removed", "family removed"]


@pytest.fixture(scope="module")
def attributed(tmp_path_factory, shipped):
    """One warehouse attributed with the shipped registry, copied per test (built once)."""
    root = tmp_path_factory.mktemp("attributed") / "w"
    warehouse = _warehouse(root, shipped)
    version = attribution_version(shipped.version, False)
    return root, _busiest(warehouse, version, "tag"), _busiest(warehouse, version, "address")


@pytest.mark.parametrize("name", CHANGES)
def test_a_rule_change_attributes_again_only_what_it_can_change_and_gives_a_full_pass_rows(
        name, tmp_path, shipped, attributed, monkeypatch):
    import shutil

    from pipeline.attribution import engine

    root, tagged, paid = attributed
    document = copy.deepcopy(shipped.document)
    _change(name, document, tagged, paid)
    updated = parse_registry(document)
    shutil.copytree(root, tmp_path / "a")
    carried = Warehouse(tmp_path / "a")
    reuse = jobs.reuse_plan(carried, updated, False)
    # Pool order is no rule: no tag or script is filed under two pools (the registry refuses that).
    reordered = name == "pools reordered"
    assert reuse is not None and reuse.changes.none == reordered, name

    attributed_again = []
    real = engine.attribute_with
    monkeypatch.setattr(engine, "attribute_with",
                        lambda m, blocks, outputs: attributed_again.append(blocks.num_rows) or real(m, blocks, outputs))
    with carried.writer():
        assert reattribute(carried, updated, chunk_size=1000) == BLOCKS
    if reordered:
        assert not attributed_again
    else:
        assert 0 < sum(attributed_again) < BLOCKS, (name, attributed_again)  # some blocks, not every one

    # The same stored blocks, every one attributed again by the engine.
    monkeypatch.setattr(jobs, "reuse_plan", lambda *args: None)
    attributed_again.clear()
    shutil.copytree(root, tmp_path / "b")
    scratch = Warehouse(tmp_path / "b")
    with scratch.writer():
        reattribute(scratch, updated, chunk_size=1000, validate=False)
    assert sum(attributed_again) == BLOCKS
    version = attribution_version(updated.version, False)
    ours, theirs = _rows(carried, version), _rows(scratch, version)
    assert ours["attributions"].num_rows == BLOCKS
    for table in ours:
        assert ours[table].equals(theirs[table]), (name, table)
    for table in ours:  # and the same bytes on disk, file for file
        assert _files(carried, table, version) == _files(scratch, table, version), (name, table)
    # The change did change something: the test would pass vacuously otherwise.
    before = _rows(carried, attribution_version(shipped.version, False))
    assert before["attributions"].drop_columns(["registry_version"]).equals(
        ours["attributions"].drop_columns(["registry_version"])) == reordered, name


def test_a_new_tag_no_block_carries_attributes_nothing_again(tmp_path, shipped, attributed, monkeypatch):
    import shutil

    from pipeline.attribution import engine

    root, _, _ = attributed
    shutil.copytree(root, tmp_path / "a")
    warehouse = Warehouse(tmp_path / "a")
    updated = updated_registry(shipped)  # the benchmark's "new tag" case
    reuse = jobs.reuse_plan(warehouse, updated, False)
    assert reuse.changes.tags and not reuse.changes.scripts
    monkeypatch.setattr(engine, "attribute_with", lambda *args: pytest.fail("no block carries the new tag"))
    with warehouse.writer():
        assert reattribute(warehouse, updated, chunk_size=1000) == BLOCKS
    old, new = (_rows(warehouse, attribution_version(r.version, False))["attributions"] for r in (shipped, updated))
    assert old.drop_columns(["registry_version"]).equals(new.drop_columns(["registry_version"]))


def test_the_hex_search_finds_a_tag_exactly_where_the_engine_does():
    """``hex_pattern`` over a scriptSig's hex text agrees with "a key in the ASCII-lowered bytes" (the
    engine's rule): byte-aligned only, ASCII letters either case, other bytes (UTF-8 included)
    exact, hex digits of either case."""
    import random

    import pyarrow.compute as pc

    from pipeline.attribution.changes import hex_pattern

    rnd = random.Random(5)
    keys = frozenset([b"/slush/", b"mined by ab", "\u4e0a".encode(), b"z9", b"\x07a"])
    alphabet = b"/slushSLUSHminedbyMINEDBY abAB z9Z9\x07\x7a\x70\xa7" + "\u4e0a".encode() + b"\x00\xff"
    sigs = [bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(20_000)]
    expected = [any(k in s.lower() for k in keys) for s in sigs]
    assert 1000 < sum(expected) < 19_000  # both outcomes well represented
    for text in ([s.hex() for s in sigs], [s.hex().upper() for s in sigs]):
        assert pc.match_substring_regex(pa.array(text), hex_pattern(keys)).to_pylist() == expected
    # A key's hex found across a byte boundary is not a match: "a7" inside "0a 70" is not byte a7.
    assert not pc.match_substring_regex(pa.array([b"\x0a\x70".hex()]), hex_pattern(frozenset([b"\xa7"]))).to_pylist()[0]


def test_rows_missing_from_the_height_buckets_are_read_through_the_catalog(tmp_path, shipped, attributed,
                                                                           monkeypatch):
    """Carrying rows over reads blocks and outputs from their height buckets' files; if those miss a
    stored block (files of another layout), the chunk is read through the catalog's views instead
    and the result is still that of attributing from scratch."""
    import shutil

    root, tagged, paid = attributed
    document = copy.deepcopy(shipped.document)
    _change("tag removed", document, tagged, paid)
    updated = parse_registry(document)
    for name in ("a", "b"):
        shutil.copytree(root, tmp_path / name)
    real = Warehouse.read_range
    short = []

    def missing_one(self, table, values, lo, hi, columns=None):
        rows = real(self, table, values, lo, hi, columns=columns)
        if table in ("blocks", "coinbase_outputs") and rows.num_rows:
            short.append(table)
            return rows.slice(1)
        return rows

    monkeypatch.setattr(Warehouse, "read_range", missing_one)
    carried = Warehouse(tmp_path / "a")
    with carried.writer():
        reattribute(carried, updated, chunk_size=1000, validate=False)
    assert short
    # A stored file in another layout (e.g. from before the height buckets): no bucket read at all.
    short.clear()
    monkeypatch.setattr(Warehouse, "in_declared_layout", lambda self, table: table != "coinbase_outputs")
    shutil.copytree(root, tmp_path / "c")
    other = Warehouse(tmp_path / "c")
    with other.writer():
        reattribute(other, updated, chunk_size=1000, validate=False)
    assert not short
    monkeypatch.setattr(Warehouse, "read_range", real)
    monkeypatch.setattr(jobs, "reuse_plan", lambda *args: None)
    scratch = Warehouse(tmp_path / "b")
    with scratch.writer():
        reattribute(scratch, updated, chunk_size=1000, validate=False)
    version = attribution_version(updated.version, False)
    theirs = _rows(scratch, version)
    for warehouse in (carried, other):
        ours = _rows(warehouse, version)
        for table in ours:
            assert ours[table].equals(theirs[table]), table


class _Ready:
    def __init__(self, report):
        self.report = report

    def done(self) -> bool:
        return True

    def __call__(self):
        return self.report


class _SecondGroupFails:
    """A validator whose second report fails (the others pass): stands in for Great Expectations."""

    def __init__(self):
        self.calls = 0

    def submit(self, tables, context):
        from pipeline.store.validation import Failure, ValidationReport

        self.calls += 1
        failures = [Failure("attributions", "invariant(test)", "made to fail")] if self.calls == 2 else []
        return _Ready(ValidationReport(f"b{self.calls}", "2026-01-01T00:00:00Z",
                                       {t: v.num_rows for t, v in tables.items()}, None, failures, 1, {}))

    def close(self) -> None:
        pass


def test_a_group_that_fails_validation_is_never_published_and_leaves_no_file(tmp_path, shipped, attributed,
                                                                             monkeypatch):
    """Groups are written (staged) while validated: a rejected one is discarded, not published,
    and the groups after it are discarded too; the warehouse keeps its current version."""
    import shutil

    from pipeline.store.validation import BatchRejected

    root, tagged, paid = attributed
    document = copy.deepcopy(shipped.document)
    _change("tag removed", document, tagged, paid)
    updated = parse_registry(document)
    shutil.copytree(root, tmp_path / "a")
    warehouse = Warehouse(tmp_path / "a")
    before = warehouse.attribution_version
    validator = _SecondGroupFails()
    monkeypatch.setattr(jobs, "BackgroundValidator", lambda: validator)
    with warehouse.writer(), pytest.raises(BatchRejected, match="made to fail"):
        reattribute(warehouse, updated, chunk_size=100)  # 25 chunks: groups of at most 8
    assert validator.calls >= 2
    assert not list((tmp_path / "a").rglob("*.tmp"))
    assert warehouse.attribution_version == before
    assert list((tmp_path / "a" / "quarantine").iterdir())
    published = _rows(warehouse, attribution_version(updated.version, False))["attributions"]
    assert 0 < published.num_rows < BLOCKS  # the first group only
    assert published["height"].to_pylist() == sorted(published["height"].to_pylist())


class _Later(_Ready):
    def done(self) -> bool:  # never in before it is asked for: every group is held while staged
        return False


def test_groups_sharing_a_partition_file_while_validated_are_published_in_order(tmp_path, shipped, attributed,
                                                                              monkeypatch):
    """Chunks of 100 heights in 10,000-height buckets: every group writes the same partition files.
    A group staged while an earlier one over the same files waits for its report goes after that
    one is published; the result is the full pass's, file for file."""
    import shutil

    from pipeline.store.validation import ValidationReport

    root, tagged, paid = attributed
    document = copy.deepcopy(shipped.document)
    _change("tag removed", document, tagged, paid)
    updated = parse_registry(document)

    class Passing(_SecondGroupFails):
        def submit(self, tables, context):
            self.calls += 1
            report = ValidationReport(f"b{self.calls}", "2026-01-01T00:00:00Z",
                                      {t: v.num_rows for t, v in tables.items()}, None, [], 1, {})
            return _Later(report)

    validator = Passing()
    monkeypatch.setattr(jobs, "BackgroundValidator", lambda: validator)
    shutil.copytree(root, tmp_path / "a")
    carried = Warehouse(tmp_path / "a")
    with carried.writer():
        reattribute(carried, updated, chunk_size=100)
    assert validator.calls > 2 and not list((tmp_path / "a").rglob("*.tmp"))
    shutil.copytree(root, tmp_path / "b")
    scratch = Warehouse(tmp_path / "b")
    monkeypatch.setattr(jobs, "reuse_plan", lambda *args: None)
    with scratch.writer():
        reattribute(scratch, updated, validate=False)
    version = attribution_version(updated.version, False)
    assert carried.attribution_version == version
    for table in ("attributions", "attribution_candidates"):
        assert _files(carried, table, version) == _files(scratch, table, version), table


def test_the_reattribute_dag_task_does_nothing_for_the_current_registry(tmp_path, shipped, monkeypatch):
    """``poolwatch_reattribute``'s task (``orchestration.reattribute_history``): run by hand, or by a
    registry update that leaves its content as it was, it attributes nothing and says so."""
    import json

    from pipeline import orchestration

    warehouse = _warehouse(tmp_path / "wh", shipped)
    monkeypatch.setenv("POOLWATCH_WAREHOUSE", str(warehouse.root))
    result = orchestration.reattribute_history()
    assert result["reattributed"] == 0 and result["note"] == "attributions current"
    updated = relabelled_registry(shipped)
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(updated.document))
    monkeypatch.setenv("POOLWATCH_REGISTRY", str(path))
    result = orchestration.reattribute_history()
    assert result["reattributed"] == BLOCKS and "note" not in result
    assert Warehouse(warehouse.root).attribution_version == attribution_version(updated.version, False)
