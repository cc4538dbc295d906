"""Readers holding the catalog open (read-only and read-write) never block or break the writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.store.warehouse import Warehouse, WarehouseBusyError
from tests.synthetic import synthetic_tables

REPO = Path(__file__).resolve().parent.parent
TOP = 1500

# Queries the catalog in a loop until it sees the last height; every answer must be internally
# consistent (no duplicate rows, never fewer rows than before) and no query may raise.
READER = textwrap.dedent("""
    import json, sys, time
    import duckdb
    path, mode, top = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "glob":  # bare read_parquet over the data files, DuckDB's default file cache on
        con = duckdb.connect()
        src = "read_parquet('" + path + "/data/blocks/**/*.parquet')"
    else:
        con = duckdb.connect(path + "/poolwatch.duckdb", read_only=(mode == "ro"))
        src = "blocks"
    print("ready", flush=True)
    last, queries = 0, 0
    deadline = time.time() + 40
    while time.time() < deadline:
        n, d, mx = con.execute(f"SELECT count(*), count(DISTINCT height), coalesce(max(height), -1) FROM {src}").fetchall()[0]
        o = con.execute("SELECT count(*) FROM coinbase_outputs").fetchall()[0][0] if mode != "glob" else 0
        assert n == d, ("duplicate rows", n, d)
        assert n >= last, ("rows went missing", n, last)
        last, queries = n, queries + 1
        time.sleep(0.01)  # leave CPU to the writer on a small machine
        if mx == top - 1:
            break
    print(json.dumps({"rows": last, "queries": queries}), flush=True)
""")


def _start_reader(root: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", READER, str(root), mode, str(TOP)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


@pytest.mark.parametrize("catalog_mode", ["ro", "rw"])
def test_readers_while_writer_commits_and_refreshes(warehouse_dir: Path, catalog_mode: str) -> None:
    """A reader holds poolwatch.duckdb open (read-only, or read-write as `duckdb file` does: then no
    second process could even open it), plus one reading the Parquet files directly."""
    wh = Warehouse(warehouse_dir)
    with wh.writer():
        wh.commit(synthetic_tables(range(0, 100)))
    readers = {mode: _start_reader(warehouse_dir, mode) for mode in (catalog_mode, "glob")}
    try:
        with wh.writer():
            for lo in range(100, TOP, 100):
                wh.commit(synthetic_tables(range(lo, lo + 100)))
                # Re-load part of it (a reorg): rewrites files readers are scanning right now.
                wh.commit(synthetic_tables(range(lo - 50, lo + 100), salt=f"s{lo}"))
                wh.refresh_catalog()  # renamed over the file the ro/rw readers hold open
        results = {}
        for mode, proc in readers.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{mode} reader broke: {err}"
            results[mode] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in readers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for mode, res in results.items():
        assert res["rows"] == TOP, (mode, res)
        assert res["queries"] >= 1
    # A new read-only reader of the refreshed catalog sees everything.
    assert wh.stored_range() == (0, TOP - 1)


def test_second_writer_gets_busy_error_naming_the_holder(warehouse_dir: Path) -> None:
    holder = textwrap.dedent("""
        import sys, time
        from pipeline.store.warehouse import Warehouse
        with Warehouse(sys.argv[1]).writer():
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder, str(warehouse_dir)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "locked"
        wh = Warehouse(warehouse_dir)
        with pytest.raises(WarehouseBusyError) as err:
            with wh.writer(wait=0):
                pass
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "started" in msg and "busy" in msg
        t0 = time.monotonic()
        with pytest.raises(WarehouseBusyError, match="waited 0.3 s"):
            with wh.writer(wait=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
        # The waiting writer gets the lock as soon as the holder lets go.
        proc.stdin.write("\n")
        proc.stdin.flush()
        with wh.writer(wait=20):
            wh.commit(synthetic_tables(range(3)))
        assert wh.stored_range() == (0, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_two_writers_in_one_process(warehouse_dir: Path) -> None:
    first, second = Warehouse(warehouse_dir), Warehouse(warehouse_dir)
    with first.writer():
        with pytest.raises(WarehouseBusyError, match=f"pid {os.getpid()}"):
            with second.writer():
                pass
        with first.writer():  # re-entrant for the holder
            first.commit(synthetic_tables(range(2)))
    with second.writer():
        second.commit(synthetic_tables(range(2, 4)))
    assert second.stored_range() == (0, 3)
