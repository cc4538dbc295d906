"""The DAGs on a real Airflow deployment: api-server + scheduler + dag-processor with LocalExecutor,
each its own process on 127.0.0.1, a regtest node of more than 3,000 blocks (real Bitcoin Core
when ../shared/bitcoin-core or POOLWATCH_BITCOIND is there).

Runs are scheduled or triggered through the airflow CLI and executed by the executor's worker
processes (task processes whose main module is the ``airflow`` script), exactly as deployed;
nothing runs in-process (that is tests/test_dags.py). Task states, asset events and logs are read
from the deployment's metadata database and log folder.
"""

from __future__ import annotations

import json

import pytest

from airflow_deploy import AirflowDeployment, listening_addresses
from deploy_support import (ALL_DAGS, chain_env, max_overlap, mine, only_loopback, poolwatch_lines,
                            stopped_everything, task_result, warehouse_tables)

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.deployment]

CHAIN_BLOCKS = 3000


@pytest.fixture(scope="module")
def node(regtest_binary, tmp_path_factory):
    from pipeline.devnode.node import RegtestNode

    with RegtestNode(binary=regtest_binary, datadir=tmp_path_factory.mktemp("deploy-node")) as node:
        mine(node, CHAIN_BLOCKS)
        yield node


@pytest.fixture(scope="module")
def deployment(node, tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow-local")
    dep = AirflowDeployment(root / "airflow", "LocalExecutor", env=chain_env(node, root / "warehouse"))
    try:
        dep.start()
        dep.wait_for_dags(ALL_DAGS)
        dep.warehouse = root / "warehouse"
        yield dep
    finally:
        pids = dep.pids()
        dep.stop()
        stopped_everything(pids)


def test_components_listen_on_loopback_only(deployment):
    addresses = listening_addresses(deployment.pids())
    assert addresses and only_loopback(addresses), addresses  # the api-server, and no log server anywhere


def test_scheduled_incremental_run_loads_3000_blocks(deployment, node):
    """The first users' path: unpause the DAGs, the scheduler starts the incremental run itself and a
    LocalExecutor worker loads the whole chain in one task (default max_blocks, several batches, so
    the validating helper process runs inside the task process)."""
    tip = node.tip().height
    deployment.unpause("poolwatch_incremental", "poolwatch_metrics", "poolwatch_reattribute")
    run = deployment.wait_for_run("poolwatch_incremental", run_type="scheduled", timeout=900)
    tasks = {t["task_id"]: t for t in deployment.task_instances("poolwatch_incremental", run["run_id"])}
    assert run["state"] == "success", tasks
    assert tasks["load_new_blocks"]["state"] == "success" and tasks["load_new_blocks"]["try_number"] == 1

    tables = warehouse_tables(deployment.warehouse)
    assert tables["heights"] == list(range(0, tip + 1))
    assert tables["attributed_heights"] == tip + 1

    log = deployment.task_log("poolwatch_incremental", run["run_id"], "load_new_blocks")
    assert "registry version" in log and "multiprocessing" not in log and "BrokenProcessPool" not in log
    ours, gx = poolwatch_lines(log)
    assert gx == 0 and ours >= 2, log[-3000:]  # Great Expectations' INFO noise filtered out

    events = deployment.asset_events("poolwatch://warehouse/blocks")
    extra = events[-1]["extra"]
    assert (extra["from_height"], extra["to_height"], extra["blocks_loaded"]) == (0, tip, tip + 1)
    # The event carries the attribution version the rows were written with: the registry's content
    # hash plus "+<setting>" for each non-default setting (the chain env turns cross-network on).
    meta = json.loads((deployment.warehouse / "meta.json").read_text())
    assert extra["registry_version"] == meta["attribution_version"]
    assert extra["registry_version"].startswith(meta["registry_version"]) and len(meta["registry_version"]) == 16

    # The attributions event schedules poolwatch_metrics, which rebuilds the Data Docs.
    metrics = deployment.wait_for_run("poolwatch_metrics", run_type="asset_triggered", timeout=900)
    assert metrics["state"] == "success", deployment.task_instances("poolwatch_metrics", metrics["run_id"])
    assert deployment.asset_events("poolwatch://warehouse/metrics")[-1]["extra"]["registry_version"] \
        == extra["registry_version"]
    index = (deployment.warehouse / "data_docs" / "index.html").read_text()
    assert index.count("class=\"passed\"") >= 4  # every committed batch (blocks 0..3000 in 4 batches) + metrics


def test_mapped_backfill_of_3000_blocks(deployment, node):
    """A mapped backfill over the same range: chunks of more than one batch, labelled by their height
    range, at most two at once (max_active_tis_per_dag), idempotent (same tables after)."""
    before = warehouse_tables(deployment.warehouse)
    tip = node.tip().height
    deployment.unpause("poolwatch_backfill")
    run_id = deployment.trigger("poolwatch_backfill", {"from": 0, "to": tip, "chunk_size": 1200})
    run = deployment.wait_for_run("poolwatch_backfill", run_id, timeout=900)
    tasks = deployment.task_instances("poolwatch_backfill", run_id)
    assert run["state"] == "success", tasks
    chunks = [t for t in tasks if t["task_id"] == "load_chunk"]
    assert [t["rendered_map_index"] for t in chunks] == ["heights 0..1199", "heights 1200..2399",
                                                         f"heights 2400..{tip}"]
    assert all(t["state"] == "success" and t["try_number"] == 1 for t in chunks)
    assert max_overlap(chunks) <= 2

    assert warehouse_tables(deployment.warehouse) == before
    summary = task_result(deployment, "poolwatch_backfill", run_id, "publish")
    assert (summary["from_height"], summary["to_height"], summary["chunks"]) == (0, tip, 3)
    extra = deployment.asset_events("poolwatch://warehouse/attributions")[-1]["extra"]
    assert (extra["from_height"], extra["to_height"]) == (0, tip)


def test_what_no_retry_can_fix_fails_at_once(deployment, node, tmp_path):
    tip = node.tip().height
    run_id = deployment.trigger("poolwatch_backfill", {"from": 0, "to": tip + 10})
    run = deployment.wait_for_run("poolwatch_backfill", run_id, timeout=600)
    plan = next(t for t in deployment.task_instances("poolwatch_backfill", run_id) if t["task_id"] == "plan")
    assert run["state"] == "failed" and plan["state"] == "failed" and plan["try_number"] == 1
    log = deployment.task_log("poolwatch_backfill", run_id, "plan")
    assert f"the node's tip is {tip}" in log and "HeightAboveTipError" in log

    run_id = deployment.trigger("poolwatch_backfill", {"from": 0, "to": 10, "conn_id": "no_such_node"})
    run = deployment.wait_for_run("poolwatch_backfill", run_id, timeout=600)
    plan = next(t for t in deployment.task_instances("poolwatch_backfill", run_id) if t["task_id"] == "plan")
    assert run["state"] == "failed" and plan["try_number"] == 1
    assert "airflow connections add no_such_node --conn-type generic" in \
        deployment.task_log("poolwatch_backfill", run_id, "plan")

    # A chunk that fails for good (the warehouse, switched by its Variable, holds mainnet) fails at
    # once and keeps its height-range label.
    other = tmp_path / "mainnet-warehouse"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"chain": "main", "genesis_hash": "00" * 32, "schema_version": 1}))
    deployment.cli("variables", "set", "poolwatch_warehouse", str(other))
    try:
        run_id = deployment.trigger("poolwatch_backfill", {"from": 0, "to": 19, "chunk_size": 10})
        run = deployment.wait_for_run("poolwatch_backfill", run_id, timeout=600)
    finally:
        deployment.cli("variables", "delete", "poolwatch_warehouse", check=False)
    chunks = [t for t in deployment.task_instances("poolwatch_backfill", run_id) if t["task_id"] == "load_chunk"]
    assert run["state"] == "failed"
    assert [(t["rendered_map_index"], t["state"], t["try_number"]) for t in chunks] == [
        ("heights 0..9", "failed", 1), ("heights 10..19", "failed", 1)]
    log = deployment.task_log("poolwatch_backfill", run_id, "load_chunk", map_index=0)
    assert "ChainMismatchError" in log and "holds chain 'main'" in log


def test_registry_changes_reattribute_and_a_broken_registry_never_stops_ingestion(deployment, node, tmp_path):
    """A malformed registry file: the change is noticed, poolwatch_reattribute fails naming the problem,
    and new blocks keep loading with the last valid registry. A fixed file is then applied."""
    from pipeline.attribution.registry import load_registry

    shipped = load_registry()
    old_version = json.loads((deployment.warehouse / "meta.json").read_text())["registry_version"]
    assert old_version == shipped.version
    broken = tmp_path / "registry.json"
    broken.write_text('{"format": "poolwatch-registry", "pools": [')  # truncated
    deployment.cli("variables", "set", "poolwatch_registry", str(broken))
    try:
        reattribute_runs = len(deployment.runs("poolwatch_reattribute"))
        tip_before = node.tip().height
        mine(node, 20)
        run_id = deployment.trigger("poolwatch_incremental")
        run = deployment.wait_for_run("poolwatch_incremental", run_id, timeout=600)
        tasks = {t["task_id"]: t for t in deployment.task_instances("poolwatch_incremental", run_id)}
        assert run["state"] == "success", tasks
        assert tasks["watch_registry"]["state"] == "success"
        event = deployment.asset_events("poolwatch://registry/")[-1]["extra"]
        assert event["source"] == str(broken) and "not valid JSON" in event["error"]
        log = deployment.task_log("poolwatch_incremental", run_id, "load_new_blocks")
        assert f"registry version {old_version}" in log
        assert warehouse_tables(deployment.warehouse)["heights"][-1] == tip_before + 20

        failed = deployment.wait_for_run("poolwatch_reattribute", run_type="asset_triggered", after=reattribute_runs,
                                         timeout=600)
        assert failed["state"] == "failed"
        task = deployment.task_instances("poolwatch_reattribute", failed["run_id"])[0]
        assert task["try_number"] == 1  # no retry for a bad registry
        log = deployment.task_log("poolwatch_reattribute", failed["run_id"], "reattribute")
        assert str(broken) in log and "not valid JSON" in log and f"registry version {old_version}" in log
        assert json.loads((deployment.warehouse / "meta.json").read_text())["registry_version"] == old_version

        # A valid, changed registry (one pool fewer) is applied by the next change it triggers.
        document = dict(shipped.document)
        document["pools"] = shipped.document["pools"][1:]
        broken.write_text(json.dumps(document))
        new_version = load_registry(broken).version
        run_id = deployment.trigger("poolwatch_incremental")
        assert deployment.wait_for_run("poolwatch_incremental", run_id, timeout=600)["state"] == "success"
        applied = deployment.wait_for_run("poolwatch_reattribute", run_type="asset_triggered",
                                          after=reattribute_runs + 1, timeout=600)
        assert applied["state"] == "success"
        assert json.loads((deployment.warehouse / "meta.json").read_text())["registry_version"] == new_version
        extra = deployment.asset_events("poolwatch://warehouse/attributions")[-1]["extra"]
        assert (extra["registry_version"], extra["previous_registry_version"]) == (new_version, old_version)
    finally:
        deployment.cli("variables", "delete", "poolwatch_registry", check=False)

