"""The catalog file opens in a DuckDB shell a user can install (PyPI's duckdb-cli), every view included.

duckdb 2.0 writes storage version 69 by default, which no 1.x shell reads; the catalog is written in
the v1.0.0 format instead (docs/warehouse.md). These tests run the real shells, as subprocesses.
"""

from __future__ import annotations

import csv
import io
import struct
import subprocess
from pathlib import Path

import duckdb
import pytest
from conftest import duckdb_cli, pinned_duckdb_cli_version
from test_metrics import build_warehouse, demo_pools

# The oldest duckdb-cli release on PyPI (1.4.4) and the one the project installs.
CLI_VERSIONS = sorted({"1.4.4", pinned_duckdb_cli_version()})


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """A warehouse with blocks, attributions and metrics, and its catalog file."""
    from pipeline.metrics import compute as metrics

    wh = build_warehouse(tmp_path_factory.mktemp("cli") / "wh", demo_pools(900))
    metrics.refresh_metrics(wh, draws=50)
    with wh.writer():
        wh.refresh_catalog()
    return wh.catalog_path


def in_process(catalog: Path, sql: str) -> list[tuple[str, ...]]:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return [tuple("" if v is None else str(v) for v in row) for row in con.execute(sql).fetchall()]
    finally:
        con.close()


def in_cli(cli: Path, catalog: Path, sql: str) -> list[tuple[str, ...]]:
    run = subprocess.run([str(cli), "-readonly", "-csv", "-noheader", str(catalog), "-c", sql],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and not run.stderr.strip(), f"{cli}: {run.stderr or run.stdout}"
    return [tuple(row) for row in csv.reader(io.StringIO(run.stdout))]


def view_names(catalog: Path) -> list[str]:
    return [r[0] for r in in_process(catalog, "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1")]


def test_catalog_file_is_in_the_v1_0_0_storage_format(catalog):
    """Header: 8-byte checksum, b'DUCK', then the storage version number (64 = v0.10/v1.0 format)."""
    from pipeline.store.warehouse import CATALOG_STORAGE_VERSION

    header = catalog.read_bytes()[:20]
    assert header[8:12] == b"DUCK"
    assert CATALOG_STORAGE_VERSION == "v1.0.0"
    assert struct.unpack_from("<Q", header, 12)[0] == 64


@pytest.mark.parametrize("version", CLI_VERSIONS)
def test_installable_duckdb_cli_queries_every_view(catalog, version):
    cli = duckdb_cli(version)
    views = view_names(catalog)
    # every table and extra view of the catalog (pipeline/sql/**), metrics included
    assert {"blocks", "attributions_current", "centralization_week", "pool_share_legal_epoch", "centralization_inferred_week"} <= set(views)
    assert len(views) >= 20
    counts = " UNION ALL ".join(f"SELECT '{v}', count(*) FROM \"{v}\"" for v in views) + " ORDER BY 1"
    expected = in_process(catalog, counts)
    assert in_cli(cli, catalog, counts) == expected
    assert dict(expected)["blocks"] == "900" and int(dict(expected)["centralization_week"]) > 0

    shares = ("SELECT coalesce(pool_name, 'unknown'), count(*) FROM attributions_current "
              "GROUP BY ALL ORDER BY 2 DESC, 1")
    assert in_cli(cli, catalog, shares) == in_process(catalog, shares)
    week = "SELECT COLUMNS(*)::VARCHAR FROM centralization_week ORDER BY ALL"
    assert in_cli(cli, catalog, week) == in_process(catalog, week)


def test_readme_duckdb_line_with_the_installed_cli(catalog):
    """`duckdb -readonly <warehouse>/poolwatch.duckdb`, as the README writes it, SQL typed on stdin."""
    cli = duckdb_cli(pinned_duckdb_cli_version())
    run = subprocess.run([str(cli), "-readonly", str(catalog)], input="SELECT count(*) AS n FROM blocks;\n",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "900" in run.stdout and "Error" not in run.stdout + run.stderr
