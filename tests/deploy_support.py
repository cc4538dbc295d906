"""Shared pieces of the real-deployment tests (tests/test_airflow_local.py, test_airflow_celery.py)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

ALL_DAGS = ("poolwatch_incremental", "poolwatch_backfill", "poolwatch_metrics", "poolwatch_reattribute")


def mine(node, n: int) -> list[str]:
    """``n`` more regtest blocks with coinbases of the shipped registry's pools."""
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs

    specs = demo_specs(load_registry(), n, seed=node.tip().height + 1, allow_p2sh=node.flavor == "core")
    return mine_chain(node, specs)


def chain_env(node, warehouse: Path) -> dict[str, str]:
    """The environment every component gets: the node connection, the warehouse, regtest matching."""
    config = node.client_config()
    host, port = config.url.split("://", 1)[1].rsplit(":", 1)
    connection = {"conn_type": "generic", "host": host, "port": int(port),
                  "extra": {"cookie_file": str(node.cookie_file)}}
    return {"AIRFLOW_CONN_BITCOIN_DEFAULT": json.dumps(connection), "POOLWATCH_WAREHOUSE": str(warehouse),
            "POOLWATCH_CROSS_NETWORK_REGISTRY": "true", "POOLWATCH_WRITER_WAIT": "600"}


def warehouse_tables(root: Path) -> dict:
    """What the warehouse holds, for comparisons: heights, hashes, attributions, coinbase outputs."""
    from pipeline.store.warehouse import Warehouse

    con = Warehouse(root).connect()
    try:
        rows = con.execute("SELECT height, hash FROM blocks ORDER BY height").fetchall()
        attributed = con.execute("SELECT count(DISTINCT height) FROM attributions_current").fetchone()[0]
        pools = con.execute("SELECT height, pool_id FROM attributions_current ORDER BY height").fetchall()
        outputs = con.execute("SELECT count(*), sum(value_sat) FROM coinbase_outputs").fetchone()
    finally:
        con.close()
    return {"heights": [h for h, _ in rows], "hashes": [x for _, x in rows], "attributed_heights": attributed,
            "pools": pools, "outputs": outputs}


def only_loopback(addresses: list[str]) -> bool:
    return all(a.rsplit(":", 1)[0] in ("127.0.0.1", "::1") for a in addresses)


def poolwatch_lines(log: str) -> tuple[int, int]:
    """(poolwatch's own log lines, Great Expectations' lines) in a task log (JSON lines)."""
    ours = gx = 0
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        name = str(record.get("logger", ""))
        if name.startswith("pipeline"):
            ours += 1
        elif name.startswith("great_expectations"):
            gx += 1
    return ours, gx


def stopped_everything(pids: list[int], timeout: float = 30) -> None:
    """Every process a deployment started (and their children) is gone."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.2)
    assert not alive, f"processes still running after stop: {alive}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def max_overlap(tasks: list[dict]) -> int:
    """Most tasks that ran at the same moment (from their start and end dates)."""
    spans = [(datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"])) for t in tasks]
    return max(sum(1 for a, b in spans if a <= start < b) for start, _ in spans)


def task_result(deployment, dag_id: str, run_id: str, task_id: str):
    """A task's return value (its XCom) from the metadata database."""
    rows = deployment.query("SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? "
                            "AND key = 'return_value'", (dag_id, run_id, task_id))
    assert rows, f"no return value of {dag_id}.{task_id} in {run_id}"
    value = rows[0]["value"]
    return json.loads(value) if isinstance(value, (str, bytes)) else value
