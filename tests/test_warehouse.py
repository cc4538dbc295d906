"""Warehouse: commit/replace semantics, rollback, catalog, meta, partition layout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipeline.store.schemas import table_spec
from pipeline.store.warehouse import (
    ChainMismatchError,
    UniqueViolationError,
    Warehouse,
    WriterLockRequiredError,
)
from tests.synthetic import block_hash, output_count, synthetic_tables

REPO = Path(__file__).resolve().parent.parent


def _snapshot(wh: Warehouse) -> dict[str, list]:
    con = wh.connect()
    return {t: con.sql(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in ("blocks", "coinbase_outputs")}


def _data_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*.parquet"))}


def test_commit_then_read_back(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 50)))
    blocks = wh.read("blocks")
    assert blocks.schema.equals(table_spec("blocks").arrow_schema)
    assert blocks.column("height").to_pylist() == list(range(50))
    outs = wh.read("coinbase_outputs", where="height = 4", columns=["height", "output_index"])
    assert outs.to_pylist() == [{"height": 4, "output_index": i} for i in range(output_count(4))]
    assert wh.stored_range() == (0, 49)
    assert wh.max_height() == 49
    assert wh.gaps() == []


def test_replace_by_height_never_duplicates(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 100)))
        wh.commit(synthetic_tables(range(40, 60), salt="reorg"))
    blocks = wh.read("blocks")
    assert blocks.column("height").to_pylist() == list(range(100))
    hashes = wh.stored_hashes(39, 60)
    assert hashes[39] == block_hash(39) and hashes[60] == block_hash(60)
    assert all(hashes[h] == block_hash(h, "reorg") for h in range(40, 60))
    outs = wh.read("coinbase_outputs", where="height BETWEEN 40 AND 59")
    assert set(outs.column("block_hash").to_pylist()) == {block_hash(h, "reorg") for h in range(40, 60)}
    assert outs.num_rows == sum(output_count(h) for h in range(40, 60))


def test_same_batch_twice_is_idempotent(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 300)))
        first = _snapshot(wh)
        wh.commit(synthetic_tables(range(0, 300)))
        assert _snapshot(wh) == first
        wh.commit(synthetic_tables(range(100, 200)))
        assert _snapshot(wh) == first


def test_unique_violation_refused_and_nothing_changes(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 10)))
        before = _data_files(wh.root)
        bad = synthetic_tables(range(10, 20))
        bad["coinbase_outputs"] = pa.concat_tables([bad["coinbase_outputs"], bad["coinbase_outputs"].slice(3, 1)])
        with pytest.raises(UniqueViolationError) as err:
            wh.commit(bad)
        msg = str(err.value)
        assert "coinbase_outputs" in msg and "output_index" in msg
        assert str(bad["coinbase_outputs"].column("height")[3].as_py()) in msg
        assert _data_files(wh.root) == before
        assert not list(wh.root.rglob("*.tmp"))
        assert wh.stored_range() == (0, 9)


def test_bad_columns_and_nulls_refused(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        batch = synthetic_tables(range(0, 3))
        with pytest.raises(ValueError, match="missing columns"):
            wh.commit({"blocks": batch["blocks"].drop_columns(["hash"])})
        nulls = batch["blocks"].set_column(1, "hash", pa.array([None, "a", "b"], pa.string()))
        with pytest.raises(ValueError, match="column hash is declared not null"):
            wh.commit({"blocks": nulls})
        assert wh.stored_range() is None


def test_mutations_need_the_writer_lock(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with pytest.raises(WriterLockRequiredError, match="writer lock"):
        wh.commit(synthetic_tables(range(3)))
    with pytest.raises(WriterLockRequiredError):
        wh.delete_heights_from(0)
    with pytest.raises(WriterLockRequiredError):
        wh.set_meta(registry_version="x")


def test_delete_heights_from(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 25_000, 7)))
        wh.delete_heights_from(12_000)
        assert wh.max_height() == max(h for h in range(0, 25_000, 7) if h < 12_000)
        assert wh.read("coinbase_outputs", where="height >= 12000").num_rows == 0
        wh.delete_heights_from(0)
    assert wh.stored_range() is None
    assert wh.connect().execute("SELECT count(*) FROM coinbase_outputs").fetchall() == [(0,)]
    # Emptied partitions stay as zero-row files so a concurrent reader never misses a path.
    assert wh.file_count("blocks") == 3


def test_gaps(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables([*range(0, 10), *range(15, 20), 25]))
    assert wh.gaps() == [(10, 14), (20, 24)]


def test_empty_warehouse_views_have_declared_columns(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        pass
    for con in (wh.connect(), duckdb.connect(str(wh.catalog_path), read_only=True)):
        for name in ("blocks", "coinbase_outputs"):
            cols = [r[0] for r in con.sql(f"DESCRIBE {name}").fetchall()]
            assert cols == table_spec(name).column_names
            assert con.execute(f"SELECT count(*) FROM {name}").fetchall() == [(0,)]
        con.close()
    # A warehouse never opened for writing still answers (typed, empty views).
    fresh = Warehouse(warehouse_dir.parent / "never-written")
    assert [r[0] for r in fresh.connect().sql("DESCRIBE blocks").fetchall()] == table_spec("blocks").column_names
    assert fresh.stored_range() is None


def test_catalog_read_only_sees_new_data_without_refresh(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 10)))
        ro = duckdb.connect(str(wh.catalog_path), read_only=True)
        assert ro.execute("SELECT count(*) FROM blocks").fetchall() == [(10,)]
        wh.commit(synthetic_tables(range(10, 30)))
        wh.refresh_catalog()  # renamed over the file `ro` holds open: both keep working
        assert ro.execute("SELECT count(*) FROM blocks").fetchall() == [(30,)]
        ro2 = duckdb.connect(str(wh.catalog_path), read_only=True)
        assert ro2.execute("SELECT max(height) FROM blocks").fetchall() == [(29,)]
    ro.close()
    ro2.close()


def test_catalog_from_second_process_while_writer_commits(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    reader = textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(wh.catalog_path)!r}, read_only=True)
        last = 0
        deadline = time.time() + 20
        while time.time() < deadline:
            n, d, mx = con.execute("SELECT count(*), count(DISTINCT height), coalesce(max(height), -1) FROM blocks").fetchall()[0]
            assert n == d, (n, d)
            assert n >= last, (n, last)
            last = n
            if mx == 1999:
                break
        print(last)
    """)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 100)))
        proc = subprocess.Popen([sys.executable, "-c", reader], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        for lo in range(100, 2000, 100):
            wh.commit(synthetic_tables(range(lo, lo + 100)))
            wh.refresh_catalog()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "2000"


def test_partition_files_stay_few(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        for lo in range(0, 30_000, 3_000):
            wh.commit(synthetic_tables(range(lo, lo + 3_000)))
    assert wh.file_count("blocks") == 3
    assert wh.file_count("coinbase_outputs") == 3
    assert wh.stored_range() == (0, 29_999)
    assert len(list((wh.root / "data" / "blocks").rglob("*.parquet"))) == 4  # + _schema.parquet


def test_by_value_partitions_and_unpartitioned_tables(warehouse_dir: Path) -> None:
    """Any table with a schema file works: attributions (by registry_version) and pool_definitions."""
    wh = Warehouse(warehouse_dir)
    spec = table_spec("attributions")
    with wh.writer():
        batch = _fill(spec, [{"registry_version": "v1", "height": h} for h in range(5)])
        wh.commit({"attributions": batch})
        wh.commit({"attributions": _fill(spec, [{"registry_version": "v2", "height": h} for h in range(3)])})
        wh.commit({"attributions": _fill(spec, [{"registry_version": "v1", "height": h} for h in range(2)])})
        pools = table_spec("pool_definitions")
        wh.commit({"pool_definitions": _fill(pools, [{"registry_version": "v1"}])})
    assert (wh.root / "data/attributions/registry_version=v1/bucket=0/part.parquet").exists()
    assert (wh.root / "data/attributions/registry_version=v2/bucket=0/part.parquet").exists()
    got = wh.read("attributions", columns=["registry_version", "height"]).to_pylist()
    assert sorted((r["registry_version"], r["height"]) for r in got) == \
        sorted([("v1", h) for h in range(5)] + [("v2", h) for h in range(3)])
    assert wh.read("pool_definitions").num_rows == 1
    with wh.writer():
        wh.delete_heights_from(1)
    assert sorted(r["height"] for r in wh.read("attributions", columns=["height"]).to_pylist()) == [0, 0]


def _fill(spec, overrides: list[dict]) -> pa.Table:
    """Rows of ``spec`` with type-appropriate filler values, overridden per row."""
    filler = {"bool": False, "int8": 0, "int16": 0, "int32": 0, "int64": 0, "float64": 0.0, "string": "x",
              "timestamp[s, tz=UTC]": 0, "date32": 0, "list<string>": []}
    cols = {}
    for c in spec.columns:
        vals = [o.get(c.name, filler[c.type]) for o in overrides]
        typ = pa.int64() if c.type.startswith("timestamp") else (pa.int32() if c.type == "date32" else c.arrow)
        arr = pa.array(vals, typ)
        cols[c.name] = arr.cast(c.arrow) if typ != c.arrow else arr
    return pa.table(cols)


def test_replace_all_table_is_replaced_whole(warehouse_dir: Path) -> None:
    """A table declared replace_all (template_links) holds exactly the last batch committed to it:
    rows the new batch leaves out vanish, an empty batch empties it; other tables are untouched."""
    spec = table_spec("template_links")
    assert spec.replace_all and spec.replace_by == ()

    def links(*pairs: tuple[str, str]) -> pa.Table:
        return pa.Table.from_pylist([{"pool_a": a, "pool_b": b, "shared_groups": 1, "heights_seen": 1,
                                      "first_height": 5, "last_height": 5} for a, b in pairs], schema=spec.arrow_schema)

    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit({"blocks": synthetic_tables(range(3))["blocks"], "template_links": links(("a", "b"), ("a", "c"))})
        wh.commit({"template_links": links(("a", "c"), ("b", "c"))})
        assert wh.read("template_links").select(["pool_a", "pool_b"]).to_pylist() == [
            {"pool_a": "a", "pool_b": "c"}, {"pool_a": "b", "pool_b": "c"}]
        wh.commit({"template_links": links()})
        assert wh.read("template_links").num_rows == 0
        with pytest.raises(UniqueViolationError):
            wh.commit({"template_links": links(("a", "b"), ("a", "b"))})
    assert wh.read("blocks").num_rows == 3


def test_meta_and_bind_chain(warehouse_dir: Path) -> None:
    wh = Warehouse(warehouse_dir)
    assert wh.meta["schema_version"] == 1
    with wh.writer():
        wh.bind_chain("main", "000000000019d6")
        wh.bind_chain("main", "000000000019d6")  # same chain again: fine
        wh.set_meta(registry_version="2026-11-01")
        with pytest.raises(ChainMismatchError, match="holds chain 'main'.*not 'regtest'"):
            wh.bind_chain("regtest", "0f9188f13c")
    again = Warehouse(warehouse_dir).meta
    assert again["chain"] == "main" and again["registry_version"] == "2026-11-01"


def test_extra_views_from_sql_files(warehouse_dir: Path, tmp_path: Path) -> None:
    views = tmp_path / "views"
    views.mkdir()
    (views / "tall_blocks.sql").write_text("SELECT height FROM blocks WHERE height >= 5;\n")
    (views / "a_top.sql").write_text("SELECT max(height) AS top FROM tall_blocks")  # depends on another view
    wh = Warehouse(warehouse_dir, views_dir=views)
    with wh.writer():
        wh.commit(synthetic_tables(range(10)))
        wh.refresh_catalog()
    assert wh.connect().execute("SELECT top FROM a_top").fetchall() == [(9,)]
    assert _from_catalog(wh, "SELECT count(*) FROM tall_blocks") == [(5,)]
    (views / "broken.sql").write_text("SELECT nope FROM blocks")
    with wh.writer(), pytest.raises(ValueError, match="broken.sql"):
        wh.refresh_catalog()


def test_writer_rebuilds_the_catalog_only_when_its_statements_change(warehouse_dir: Path, tmp_path: Path) -> None:
    """Taking the writer lock (once per committed batch in a load) keeps a catalog built from the
    same statements, and rebuilds it when a view file appears or changes, the attribution version
    (a view placeholder) changes, or the catalog or its digest is gone."""
    views = tmp_path / "views"
    views.mkdir()
    wh = Warehouse(warehouse_dir, views_dir=views)
    with wh.writer():
        wh.commit(synthetic_tables(range(10)))
    with wh.writer():
        pass  # the first commit wrote meta.json: the freshness view now reads it

    def identity() -> tuple[int, int]:
        st = wh.catalog_path.stat()
        return st.st_ino, st.st_mtime_ns

    built = identity()
    with wh.writer():
        wh.commit(synthetic_tables(range(10, 20)))
    assert identity() == built  # same statements: kept (its views read the new files anyway)
    assert _from_catalog(wh, "SELECT count(*) FROM blocks") == [(20,)]

    (views / "tall_blocks.sql").write_text("SELECT height FROM blocks WHERE height >= 15")
    with wh.writer():
        pass
    assert identity() != built
    assert _from_catalog(wh, "SELECT count(*) FROM tall_blocks") == [(5,)]

    (views / "version.sql").write_text("SELECT {registry_version} AS v")
    with wh.writer():
        pass
    built = identity()
    with wh.writer():
        wh.set_meta(attribution_version="abc+rules-2")
    with wh.writer():
        pass
    assert identity() != built
    assert _from_catalog(wh, "SELECT v FROM version") == [("abc+rules-2",)]

    (wh.root / "poolwatch.duckdb.inputs").unlink()
    built = identity()
    with wh.writer():
        pass
    assert identity() != built and (wh.root / "poolwatch.duckdb.inputs").exists()
    wh.catalog_path.unlink()
    with wh.writer():
        pass
    assert wh.catalog_path.exists()


def _from_catalog(wh: Warehouse, sql: str) -> list[tuple]:
    """Rows of ``sql`` through the catalog file itself, opened read-only as a user's shell would."""
    ro = duckdb.connect(str(wh.catalog_path), read_only=True)
    try:
        return ro.execute(sql).fetchall()
    finally:
        ro.close()


def test_refresh_catalog_keeps_a_current_catalog_unless_forced(warehouse_dir: Path) -> None:
    """After every load and metrics refresh ``refresh_catalog()`` runs: with the statements unchanged
    it keeps the catalog (its views read the new files anyway); ``force`` rebuilds it."""
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(10)))
        wh.refresh_catalog()
        built = wh.catalog_path.stat().st_ino
        wh.commit(synthetic_tables(range(10, 15)))
        wh.refresh_catalog()
        assert wh.catalog_path.stat().st_ino == built
        wh.refresh_catalog(force=True)
        assert wh.catalog_path.stat().st_ino != built
    assert _from_catalog(wh, "SELECT count(*) FROM blocks") == [(15,)]


def _tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tmp"))


def test_staged_commit_is_invisible_until_published_and_meta_follows_the_publish_order(warehouse_dir: Path) -> None:
    from pipeline.store.warehouse import StagedCommit

    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 10)))
        revision = wh.meta["data_revision"]
        before = _data_files(warehouse_dir)
        # Two batches in different height buckets (blocks: 10,000 heights a bucket), staged at once.
        first = wh.stage(synthetic_tables(range(20_000, 20_010)))
        second = wh.stage(synthetic_tables(range(30_000, 30_010)))
        assert isinstance(first, StagedCommit) and _tmp_files(warehouse_dir)
        assert _data_files(warehouse_dir) == before and wh.stored_range() == (0, 9)
        assert wh.meta["data_revision"] == revision
        wh.publish(first)
        wh.publish(second)
        assert not _tmp_files(warehouse_dir)
        # meta.json is worked out at each publish: both bumps and both dirty spans are kept.
        assert wh.meta["data_revision"] == revision + 2
        assert wh.meta["dirty"][1] == 30_009
        with pytest.raises(Exception, match="not staged"):
            wh.publish(first)
    assert wh.read("blocks").column("height").to_pylist() == [*range(10), *range(20_000, 20_010), *range(30_000, 30_010)]


def test_discarded_overlapping_and_forgotten_stagings_change_nothing(warehouse_dir: Path) -> None:
    from pipeline.store.warehouse import StagedOverlapError

    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 10)))
        before = _data_files(warehouse_dir)
        staged = wh.stage(synthetic_tables(range(5, 15), salt="other"))
        # The same partition files again while the first is pending: refused, the first intact.
        with pytest.raises(StagedOverlapError, match="staging"):
            wh.stage(synthetic_tables(range(8, 12), salt="third"))
        assert len(_tmp_files(warehouse_dir)) == len(staged.files)
        wh.discard(staged)
        assert not _tmp_files(warehouse_dir) and _data_files(warehouse_dir) == before
        wh.stage(synthetic_tables(range(10, 20)))  # never published: dropped when the lock goes
    assert not _tmp_files(warehouse_dir) and _data_files(warehouse_dir) == before
    assert wh.stored_range() == (0, 9)
    with pytest.raises(WriterLockRequiredError):
        wh.stage(synthetic_tables(range(10, 20)))
