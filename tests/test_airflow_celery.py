"""The DAGs on a real CeleryExecutor deployment: Debian's redis-server as the broker, the scheduler,
dag-processor and api-server, and two Celery workers, each on its own host name (a UTS namespace
per worker when the machine allows it, so the warehouse really sees two hosts writing to one shared
folder). Everything listens on 127.0.0.1 only; the fixtures stop every process they start.

``.ci/run`` installs redis-server; without it this module skips locally and fails under CI.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from airflow_deploy import AirflowDeployment, RedisServer, can_use_uts_namespace, listening_addresses
from deploy_support import (ALL_DAGS, chain_env, max_overlap, mine, only_loopback, stopped_everything,
                            task_result, warehouse_tables)

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.deployment]

CHAIN_BLOCKS = 3000
HOSTS = ("poolwatch-host-a", "poolwatch-host-b")


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
        stopped_everything([server.proc.pid])


@pytest.fixture(scope="module")
def node(regtest_binary, tmp_path_factory):
    from pipeline.devnode.node import RegtestNode

    with RegtestNode(binary=regtest_binary, datadir=tmp_path_factory.mktemp("celery-node")) as node:
        mine(node, CHAIN_BLOCKS)
        yield node


@pytest.fixture(scope="module")
def deployment(node, redis, tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow-celery")
    dep = AirflowDeployment(root / "airflow", "CeleryExecutor", env=chain_env(node, root / "warehouse"),
                            broker_url=redis.url)
    try:
        dep.start()
        for i, host in enumerate(HOSTS):
            dep.start_celery_worker(f"worker{i + 1}", hostname=host)
        dep.wait_for_dags(ALL_DAGS)
        dep.warehouse = root / "warehouse"
        dep.unpause(*ALL_DAGS)
        yield dep
    finally:
        pids = dep.pids()
        dep.stop()
        stopped_everything(pids)


def test_mapped_backfill_chunks_land_on_both_workers(deployment, node):
    tip = node.tip().height
    run_id = deployment.trigger("poolwatch_backfill", {"from": 0, "to": tip, "chunk_size": 750})
    run = deployment.wait_for_run("poolwatch_backfill", run_id, timeout=1200)
    tasks = deployment.task_instances("poolwatch_backfill", run_id)
    assert run["state"] == "success", tasks
    chunks = [t for t in tasks if t["task_id"] == "load_chunk"]
    assert len(chunks) == 5 and all(t["state"] == "success" for t in chunks)
    assert chunks[0]["rendered_map_index"] == "heights 0..749"
    hosts = {t["hostname"] for t in chunks}
    if can_use_uts_namespace():
        assert hosts == set(HOSTS), hosts  # each worker on its own host took chunks
    assert max_overlap(chunks) <= 2

    tables = warehouse_tables(deployment.warehouse)
    assert tables["heights"] == list(range(0, tip + 1)) and tables["attributed_heights"] == tip + 1
    assert task_result(deployment, "poolwatch_backfill", run_id, "publish")["chunks"] == 5
    # the writer lock records who wrote last: a host and a pid, not a pid alone
    holder = json.loads((deployment.warehouse / ".writer.lock").read_text())
    assert holder["host"] in hosts | {os.uname().nodename} and holder["pid"] > 0


def test_incremental_run_after_3000_new_blocks(deployment, node):
    before = node.tip().height
    mine(node, CHAIN_BLOCKS)
    tip = node.tip().height
    run_id = deployment.trigger("poolwatch_incremental")
    run = deployment.wait_for_run("poolwatch_incremental", run_id, timeout=1200)
    tasks = {t["task_id"]: t for t in deployment.task_instances("poolwatch_incremental", run_id)}
    assert run["state"] == "success", tasks
    load = task_result(deployment, "poolwatch_incremental", run_id, "load_new_blocks")
    assert (load["start"], load["end"], load["blocks_loaded"]) == (before + 1, tip, CHAIN_BLOCKS)
    assert load["batches"] == 3
    assert warehouse_tables(deployment.warehouse)["heights"] == list(range(0, tip + 1))
    extra = deployment.asset_events("poolwatch://warehouse/blocks")[-1]["extra"]
    assert (extra["from_height"], extra["to_height"]) == (before + 1, tip)


def test_everything_listens_on_loopback_only(deployment, redis):
    addresses = listening_addresses(deployment.pids() + [redis.proc.pid])
    assert any(a.endswith(f":{redis.port}") for a in addresses)
    assert only_loopback(addresses), addresses
