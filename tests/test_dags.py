"""The Airflow DAGs: every file imports cleanly (DagBag), and the incremental and backfill DAGs run
end to end with dag.test() against a real regtest node, asserting run state and warehouse tables.

Airflow's environment (AIRFLOW_HOME, SQLite, dags folder) is set in tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAG_IDS = {"poolwatch_incremental", "poolwatch_backfill", "poolwatch_reattribute", "poolwatch_metrics"}

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_IDS <= set(dagbag.dag_ids)


def test_incremental_schedule_and_wiring(dagbag):
    dag = dagbag.dags["poolwatch_incremental"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    order = [t.task_id for t in dag.topological_sort() if t.task_id != "watch_registry"]
    assert order == ["check_node", "repair_reorg", "load_new_blocks", "refresh_views", "publish"]
    publish = dag.get_task("publish")
    assert {o.uri for o in publish.outlets} == {"poolwatch://warehouse/blocks", "poolwatch://warehouse/attributions"}
    load = dag.get_task("load_new_blocks")
    assert load.retries >= 1 and load.max_active_tis_per_dag == 2
    watch = dag.get_task("watch_registry")
    assert not watch.upstream_task_ids and not watch.downstream_task_ids  # never holds up ingestion
    assert [a.uri for a in watch.inlets] == [a.uri for a in watch.outlets] == ["poolwatch://registry/"]


def test_asset_driven_dags(dagbag):
    reattribute = dagbag.dags["poolwatch_reattribute"]
    metrics = dagbag.dags["poolwatch_metrics"]
    assert "poolwatch://registry" in str(reattribute.timetable.asset_condition)
    assert "poolwatch://warehouse/attributions" in str(metrics.timetable.asset_condition)


def test_backfill_maps_chunks(dagbag):
    dag = dagbag.dags["poolwatch_backfill"]
    load = dag.get_task("load_chunk")
    assert load.is_mapped and load.max_active_tis_per_dag == 2
    assert "heights" in load.map_index_template and "end" in load.map_index_template
    assert set(dag.params) >= {"from", "to", "chunk_size", "conn_id"}
    # The spends catch-up runs once every chunk is stored, before the views and the Asset events.
    assert [t.task_id for t in dag.topological_sort()] == ["plan", "load_chunk", "check_spends", "refresh_views",
                                                           "publish"]
    assert dag.get_task("check_spends").upstream_task_ids == {"load_chunk"}
    assert dag.get_task("publish").upstream_task_ids == {"load_chunk", "check_spends", "refresh_views"}


def test_load_concurrency_and_pool_come_from_the_environment(monkeypatch):
    from pipeline.orchestration import load_task_options

    monkeypatch.setenv("POOLWATCH_LOAD_CONCURRENCY", "3")
    monkeypatch.setenv("POOLWATCH_AIRFLOW_POOL", "poolwatch")
    assert load_task_options() == {"max_active_tis_per_dag": 3, "pool": "poolwatch"}
    monkeypatch.setenv("POOLWATCH_LOAD_CONCURRENCY", "zero")
    with pytest.raises(ValueError, match="POOLWATCH_LOAD_CONCURRENCY='zero'"):
        load_task_options()


def test_plan_backfill_rejects_bad_ranges(monkeypatch):
    from pipeline import orchestration
    from pipeline.source.errors import HeightAboveTipError

    monkeypatch.setattr(orchestration, "check_node", lambda conn_id: {"tip": 30, "chain": "regtest"})
    assert orchestration.plan_backfill(0, 24, 10) == [{"start": 0, "end": 9}, {"start": 10, "end": 19},
                                                      {"start": 20, "end": 24}]
    assert orchestration.plan_backfill(25, None, 10) == [{"start": 25, "end": 30}]  # to: the node's tip
    with pytest.raises(ValueError, match="from 10 to 5"):
        orchestration.plan_backfill(10, 5)
    with pytest.raises(HeightAboveTipError, match="up to 31 but the node's tip is 30"):
        orchestration.plan_backfill(0, 31)


def test_warehouse_setting_lookup(monkeypatch, tmp_path):
    from pipeline import orchestration

    monkeypatch.setenv("POOLWATCH_WAREHOUSE", str(tmp_path / "wh"))
    assert orchestration.warehouse_root() == tmp_path / "wh"
    monkeypatch.delenv("POOLWATCH_WAREHOUSE")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    assert orchestration.warehouse_root() == tmp_path / "warehouse"


# ----------------------------------------------------------------------------------- end to end


def _connection_env(node) -> str:
    config = node.client_config()
    host, port = config.url.split("://", 1)[1].rsplit(":", 1)
    return json.dumps({"conn_type": "generic", "host": host, "port": int(port),
                       "extra": {"cookie_file": str(node.cookie_file)}})


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata tables in the per-session SQLite file (AIRFLOW_HOME from conftest)."""
    from airflow.utils.db import initdb

    initdb()


@pytest.fixture()
def airflow_env(airflow_db, regtest_node, tmp_path, monkeypatch):
    warehouse = tmp_path / "warehouse"
    monkeypatch.setenv("AIRFLOW_CONN_BITCOIN_DEFAULT", _connection_env(regtest_node))
    monkeypatch.setenv("POOLWATCH_WAREHOUSE", str(warehouse))
    monkeypatch.setenv("POOLWATCH_CROSS_NETWORK_REGISTRY", "true")  # regtest chain, mainnet registry
    monkeypatch.setenv("POOLWATCH_WRITER_WAIT", "120")
    return warehouse


def _mine(node, n: int) -> list[str]:
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs

    specs = demo_specs(load_registry(), n, allow_p2sh=node.flavor == "core")
    return mine_chain(node, specs)


def _task_states(run) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
            for ti in run.get_task_instances()}


@pytest.mark.node
@pytest.mark.slow
def test_incremental_dag_end_to_end(dagbag, regtest_node, airflow_env):
    from pipeline.store.warehouse import Warehouse

    hashes = _mine(regtest_node, 40)
    dag = dagbag.dags["poolwatch_incremental"]
    run = dag.test()
    assert str(run.state) == "success", _task_states(run)

    warehouse = Warehouse(airflow_env)
    con = warehouse.connect()
    heights = [r[0] for r in con.execute("SELECT height FROM blocks ORDER BY height").fetchall()]
    assert heights == list(range(0, 41))
    stored = dict(con.execute("SELECT height, hash FROM blocks WHERE height > 0").fetchall())
    assert [stored[h] for h in range(1, 41)] == hashes
    assert con.execute("SELECT count(*), count(DISTINCT height) FROM attributions").fetchone() == (41, 41)
    assert (airflow_env / "poolwatch.duckdb").exists()
    assert (airflow_env / "data_docs" / "index.html").exists()
    assert not (airflow_env / "quarantine").exists() or not any((airflow_env / "quarantine").iterdir())

    # A second run with new blocks on top continues from the stored tip.
    more = _mine(regtest_node, 5)
    run = dag.test()
    assert str(run.state) == "success", _task_states(run)
    con = warehouse.connect()
    assert con.execute("SELECT max(height), count(*) FROM blocks").fetchone() == (45, 46)
    assert con.execute("SELECT hash FROM blocks WHERE height = 45").fetchone()[0] == more[-1]


@pytest.mark.node
@pytest.mark.slow
def test_backfill_dag_end_to_end(dagbag, regtest_node, airflow_env):
    from pipeline.store.warehouse import Warehouse

    hashes = _mine(regtest_node, 30)
    dag = dagbag.dags["poolwatch_backfill"]
    run = dag.test(run_conf={"from": 5, "to": 27, "chunk_size": 10})
    states = _task_states(run)
    assert str(run.state) == "success", states
    assert {k for k in states if k.startswith("load_chunk")} == {"load_chunk[0]", "load_chunk[1]", "load_chunk[2]"}

    con = Warehouse(airflow_env).connect()
    rows = con.execute("SELECT height, hash FROM blocks ORDER BY height").fetchall()
    assert [h for h, _ in rows] == list(range(5, 28))
    assert [h for _, h in rows] == hashes[4:27]
    assert con.execute("SELECT count(DISTINCT height) FROM attributions").fetchone()[0] == 23
    # Heights 0..4 are not stored: no block's coinbase spends can be checked yet, and check_spends says so.
    assert states["check_spends"] == "success"
    assert con.execute("SELECT count(*) FROM spend_scans").fetchone()[0] == 0

    # Chunks are idempotent: running an overlapping range again changes nothing and duplicates nothing.
    run = dag.test(run_conf={"from": 0, "to": 12, "chunk_size": 10})
    assert str(run.state) == "success", _task_states(run)
    con = Warehouse(airflow_env).connect()
    assert con.execute("SELECT count(*), count(DISTINCT height), min(height), max(height) FROM blocks").fetchone() \
        == (28, 28, 0, 27)
    # Now every height below 28 is stored: check_spends checked the blocks the chunks could not
    # (13..27, and whichever chunk ran before the lower one), so every block is checked.
    assert [h for (h,) in con.execute("SELECT height FROM spend_scans ORDER BY height").fetchall()] == list(range(28))


def _raiser(exc):
    def fn():
        raise exc
    return fn


def test_unfixable_errors_fail_without_retry_and_others_propagate():
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline.source import errors as node
    from pipeline.orchestration import run_task
    from pipeline.attribution.registry import RegistryError
    from pipeline.store.validation import BatchRejected
    from pipeline.store.warehouse import ChainMismatchError, WarehouseBusyError

    rejected = BatchRejected("blocks: expect_column_values_to_be_unique(height) failed", Path("/wh/quarantine/x"))
    with pytest.raises(AirflowFailException, match=r"(?s)unique\(height\).*/wh/quarantine/x"):
        run_task(_raiser(rejected))
    permanent = [
        node.NodeConfigError("Airflow connection 'x' not usable; create it"),
        node.NodeAuthError("the node refused the credentials (HTTP 401): check the cookie file"),
        node.NodePrunedError("pruned below 1000; start at >= 1000", prune_height=1000),
        node.HeightAboveTipError("height 50 is above the node's tip 40", height=50, tip=40),
        RegistryError("registry file r.json is not valid JSON"),
        ChainMismatchError("warehouse holds chain 'main', not 'regtest'"),
    ]
    for exc in permanent:
        with pytest.raises(AirflowFailException, match=type(exc).__name__) as failed:
            run_task(_raiser(exc))
        assert str(exc) in str(failed.value)  # the message that names the fix
    retried = [node.NodeWarmingUpError("node is loading the block index"),
               node.NodeUnreachableError("no answer from 127.0.0.1:8332 after 5 attempts"),
               node.NodeError("REST block: HTTP 503 (work queue depth exceeded); the node is overloaded"),
               WarehouseBusyError("warehouse is busy: another writer holds it")]
    for exc in retried:  # left to Airflow's retries with backoff
        with pytest.raises(type(exc)):
            run_task(_raiser(exc))
    assert run_task(lambda a, b=0: a + b, 1, b=2) == 3
