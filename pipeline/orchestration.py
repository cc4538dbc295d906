"""Task-level functions the Airflow DAGs call (and nothing Airflow-specific beyond settings lookup).

Each function takes and returns small JSON-able values (they travel as XCom), opens the warehouse
and the node itself, and calls the same ``pipeline`` functions as the CLI (``pipeline.sync``,
``pipeline.metrics``). Keeping this layer out of ``dags/`` keeps the DAG files to wiring only and
lets these functions be tested without a scheduler.

Settings (first found wins):

- warehouse: Airflow Variable ``poolwatch_warehouse``, env ``POOLWATCH_WAREHOUSE``,
  ``$AIRFLOW_HOME/../warehouse`` when AIRFLOW_HOME is set, else ``./warehouse``;
- registry file: Variable ``poolwatch_registry``, env ``POOLWATCH_REGISTRY``, else the shipped one;
- cross-network registry matching (regtest demos only): Variable / env
  ``poolwatch_cross_network_registry`` / ``POOLWATCH_CROSS_NETWORK_REGISTRY`` = true;
- writer wait (seconds a task waits for another run holding the warehouse writer lock):
  Variable ``poolwatch_writer_wait`` / env ``POOLWATCH_WRITER_WAIT``, default 900.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pipeline.node import NodeClient
    from pipeline.registry import Registry
    from pipeline.warehouse import Warehouse

log = logging.getLogger("pipeline.orchestration")

DEFAULT_CONN_ID = "bitcoin_default"
DEFAULT_WRITER_WAIT = 900.0
DEFAULT_BACKFILL_CHUNK = 10_000
# One incremental run loads at most this many blocks, so a node that jumped far ahead (or a first
# run on an empty warehouse) does not make one 10-minute run last hours; the next runs continue.
DEFAULT_INCREMENTAL_MAX_BLOCKS = 5_000
_TRUE = {"1", "true", "yes", "on"}

# ------------------------------------------------------------------------ shared DAG wiring values
# Plain values (no Airflow import here): the DAG files wrap the URIs in airflow.sdk.Asset.
BLOCKS_ASSET = "poolwatch://warehouse/blocks"
ATTRIBUTIONS_ASSET = "poolwatch://warehouse/attributions"
METRICS_ASSET = "poolwatch://warehouse/metrics"
REGISTRY_ASSET = "poolwatch://registry"
DAG_START_DATE = datetime(2024, 1, 1, tzinfo=UTC)
DAG_TAGS = ["poolwatch"]
# Node hiccups (warming up, restarts, idle-closed connections, a busy writer lock) heal by waiting:
# retry with exponential backoff. Bad data and bad parameters do not: run_task fails those at once.
DAG_DEFAULT_ARGS: dict[str, Any] = {
    "owner": "poolwatch",
    "retries": 4,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=15),
}

T = TypeVar("T")


def run_task(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a task function from an Airflow task; errors no retry can fix fail the task for good.

    A rejected batch (``BatchRejected``: its message names the failed expectations, the rows and the
    quarantine folder) and a bad parameter (``ValueError``) would fail the same way on every retry.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline.validation import BatchRejected

    try:
        return fn(*args, **kwargs)
    except (BatchRejected, ValueError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _setting(variable: str, env: str) -> str | None:
    """An Airflow Variable when running under Airflow, else the environment variable."""
    value = os.environ.get(env)
    try:
        from airflow.sdk import Variable

        found = Variable.get(variable, default=None)
    except Exception:  # noqa: BLE001 - not under Airflow, or no API server reachable: env decides
        found = None
    return found if found not in (None, "") else value


def warehouse_root() -> Path:
    """Where the warehouse lives (see the module docstring for the lookup order)."""
    value = _setting("poolwatch_warehouse", "POOLWATCH_WAREHOUSE")
    if value:
        return Path(value).expanduser()
    airflow_home = os.environ.get("AIRFLOW_HOME")
    if airflow_home:
        return Path(airflow_home).expanduser().resolve().parent / "warehouse"
    return Path("warehouse")


def writer_wait() -> float:
    value = _setting("poolwatch_writer_wait", "POOLWATCH_WRITER_WAIT")
    return float(value) if value else DEFAULT_WRITER_WAIT


def cross_network_registry() -> bool:
    value = _setting("poolwatch_cross_network_registry", "POOLWATCH_CROSS_NETWORK_REGISTRY")
    return bool(value) and value.strip().lower() in _TRUE


def load_registry() -> Registry:
    from pipeline.registry import load_registry as _load

    path = _setting("poolwatch_registry", "POOLWATCH_REGISTRY")
    return _load(Path(path).expanduser() if path else None)


def open_warehouse() -> Warehouse:
    from pipeline.warehouse import Warehouse

    return Warehouse(warehouse_root())


def node_client(conn_id: str = DEFAULT_CONN_ID) -> NodeClient:
    from pipeline.node import NodeClient, NodeConfig

    return NodeClient(NodeConfig.from_airflow_connection(conn_id))


def _sync_summary(result: Any) -> dict[str, Any]:
    summary = asdict(result)
    summary["blocks_per_second"] = round(result.blocks_per_second, 1)
    return summary


# ------------------------------------------------------------------------------------------ tasks


def check_node(conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Fail fast (with the node's own actionable message) when the node is not usable yet."""
    client = node_client(conn_id)
    info = client.check_ready()
    status = {"chain": client.network().name, "tip": int(info["blocks"]),
              "warehouse": str(warehouse_root())}
    log.info("node on %s at height %d; warehouse %s", status["chain"], status["tip"], status["warehouse"])
    return status


def repair_reorg(conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Compare stored hashes with the node's chain; roll back above a fork (the load task reloads)."""
    from pipeline.sync import check_and_repair_reorg

    warehouse = open_warehouse()
    if warehouse.stored_range() is None:
        return {"fork_height": None, "note": "empty warehouse: nothing to compare"}
    client = node_client(conn_id)
    with warehouse.writer(wait=writer_wait()):
        fork = check_and_repair_reorg(client, warehouse)
    if fork is not None:
        log.warning("reorg: rolled back stored blocks from height %d; they are reloaded next", fork)
    return {"fork_height": fork}


def load_new_blocks(conn_id: str = DEFAULT_CONN_ID,
                    max_blocks: int | None = DEFAULT_INCREMENTAL_MAX_BLOCKS) -> dict[str, Any]:
    """Load from the stored tip + 1 up to the node's tip (at most ``max_blocks``): fetch, decode,
    attribute, validate (a failing batch is quarantined and fails the task), commit, refresh views."""
    from pipeline.sync import sync_range

    warehouse = open_warehouse()
    client = node_client(conn_id)
    end = None
    if max_blocks is not None:
        stored = warehouse.stored_range()
        start = stored[1] + 1 if stored else 0
        end = min(client.tip_height(), start + max_blocks - 1)
        if end < start:
            end = None  # up to date: let sync_range report it
    result = sync_range(client, warehouse, None, end, registry=load_registry(),
                        allow_cross_network=cross_network_registry(), writer_wait=writer_wait())
    return _sync_summary(result)


def refresh_views(build_docs: bool = True) -> dict[str, Any]:
    """Rebuild the DuckDB catalog (views over the Parquet files) and the Data Docs site."""
    from pipeline.validation import build_data_docs

    warehouse = open_warehouse()
    warehouse.refresh_catalog()
    out: dict[str, Any] = {"catalog": str(warehouse.catalog_path), "stored_range": warehouse.stored_range()}
    if build_docs:
        out["data_docs"] = str(build_data_docs(warehouse.root))
    return out


def plan_backfill(start: int, end: int, chunk_size: int = DEFAULT_BACKFILL_CHUNK) -> list[dict[str, int]]:
    """Chunks of the inclusive range, one mapped task each (each idempotent, retryable alone)."""
    from pipeline.sync import plan_chunks

    if start < 0 or end < start:
        raise ValueError(f"backfill range from {start} to {end} is empty or negative; "
                         "trigger the DAG with params from <= to, both >= 0")
    return [{"start": lo, "end": hi} for lo, hi in plan_chunks(int(start), int(end), int(chunk_size))]


def backfill_chunk(start: int, end: int, conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Load heights [start, end]; rows are replaced by height, so a retry or re-run is harmless."""
    from pipeline.sync import sync_range

    warehouse = open_warehouse()
    client = node_client(conn_id)
    result = sync_range(client, warehouse, int(start), int(end), registry=load_registry(),
                        allow_cross_network=cross_network_registry(), writer_wait=writer_wait())
    return _sync_summary(result)


def reattribute_history() -> dict[str, Any]:
    """Re-attribute every stored block with the current registry, from stored coinbases (no node)."""
    from pipeline.sync import reattribute

    warehouse = open_warehouse()
    registry = load_registry()
    if warehouse.stored_range() is None:
        return {"reattributed": 0, "registry_version": registry.version, "note": "empty warehouse"}
    with warehouse.writer(wait=writer_wait()):
        done = reattribute(warehouse, registry, allow_cross_network=cross_network_registry())
        warehouse.refresh_catalog()
    return {"reattributed": done, "registry_version": registry.version}


def recompute_metrics() -> dict[str, Any]:
    """Recompute the centralization metrics tables from the current attributions."""
    from pipeline.metrics import refresh_metrics

    warehouse = open_warehouse()
    if warehouse.stored_range() is None:
        return {"note": "empty warehouse: no metrics to compute"}
    return {"rows": refresh_metrics(warehouse)}
