"""Task-level functions the Airflow DAGs call, plus the Airflow adapters (settings, connection).

Each function takes and returns small JSON-able values (they travel as XCom), opens the warehouse
and the node itself, and calls the same ``pipeline`` functions as the CLI (``pipeline.load.jobs``,
``pipeline.metrics.compute``). Keeping this layer out of ``dags/`` keeps the DAG files to wiring only and
lets these functions be tested without a scheduler.

Settings (first found wins):

- warehouse: Airflow Variable ``poolwatch_warehouse``, env ``POOLWATCH_WAREHOUSE``,
  ``$AIRFLOW_HOME/../warehouse`` when AIRFLOW_HOME is set, else ``./warehouse``;
- registry file: Variable ``poolwatch_registry``, env ``POOLWATCH_REGISTRY``, else the shipped one.
  Loads attribute new blocks with the registry the warehouse already uses (the last valid one
  applied); a changed registry is applied by ``poolwatch_reattribute`` only (``registry_change``
  notices it), so a broken registry file never stops block ingestion;
- cross-network registry matching (regtest demos only): Variable / env
  ``poolwatch_cross_network_registry`` / ``POOLWATCH_CROSS_NETWORK_REGISTRY`` = true; used when a
  warehouse gets its first registry, afterwards the warehouse's recorded setting holds;
- writer wait (seconds a task waits for another run holding the warehouse writer lock):
  Variable ``poolwatch_writer_wait`` / env ``POOLWATCH_WRITER_WAIT``, default 900.

DAG-parse-time settings (environment only: a DAG file must not query Variables while it is parsed):
``POOLWATCH_LOAD_CONCURRENCY`` (load tasks of one DAG running at once, default 2) and
``POOLWATCH_AIRFLOW_POOL`` (an Airflow pool for every load task, default none).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pipeline.source.client import NodeClient
    from pipeline.source.config import NodeConfig
    from pipeline.attribution.registry import Registry
    from pipeline.store.warehouse import Warehouse

log = logging.getLogger("pipeline.orchestration")

DEFAULT_CONN_ID = "bitcoin_default"
DEFAULT_WRITER_WAIT = 900.0
DEFAULT_BACKFILL_CHUNK = 10_000
# One incremental run loads at most this many blocks, so a node that jumped far ahead (or a first
# run on an empty warehouse) does not make one 10-minute run last hours; the next runs continue.
DEFAULT_INCREMENTAL_MAX_BLOCKS = 5_000
# Load tasks of one DAG that may run at once. Commits are serialised by the warehouse's writer
# lock anyway; more than a couple of loads at once only queue there, holding executor slots and
# ~0.5-1 GB of memory each, and the node serves a few requests at a time.
DEFAULT_LOAD_CONCURRENCY = 2
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
# How mapped backfill chunks are labelled in the UI and logs (rendered before the task runs, so a
# failed chunk is labelled too).
CHUNK_LABEL = "heights {{ task.op_kwargs['start'] }}..{{ task.op_kwargs['end'] }}"


def load_task_options() -> dict[str, Any]:
    """Operator arguments of the tasks that load blocks (read when a DAG file is parsed)."""
    options: dict[str, Any] = {"max_active_tis_per_dag": _int_env("POOLWATCH_LOAD_CONCURRENCY",
                                                                  DEFAULT_LOAD_CONCURRENCY)}
    pool = os.environ.get("POOLWATCH_AIRFLOW_POOL")
    if pool:
        options["pool"] = pool
    return options


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {number}")
    return number


T = TypeVar("T")


def permanent_error(exc: BaseException) -> bool:
    """True for errors that fail the same way on every retry: bad parameters or data (ValueError,
    incl. a bad registry), a rejected batch, a missing connection, refused credentials, a pruned
    node, a height above the tip, a warehouse of another chain. An unreachable, busy or warming-up
    node and a busy writer lock are not: waiting can fix those."""
    from pipeline.source.errors import HeightAboveTipError, NodeAuthError, NodeConfigError, NodePrunedError
    from pipeline.store.validation import BatchRejected
    from pipeline.store.warehouse import ChainMismatchError

    return isinstance(exc, (BatchRejected, ValueError, NodeAuthError, NodeConfigError, NodePrunedError,
                            HeightAboveTipError, ChainMismatchError))


def run_task(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a task function from an Airflow task; errors no retry can fix fail the task for good
    (``AirflowFailException``, with the error's own message, which names the fix)."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if permanent_error(exc):
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        raise


# ------------------------------------------------------------------------------------- settings


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


def registry_path() -> Path | None:
    """The configured registry file, or None for the registry shipped with poolwatch."""
    value = _setting("poolwatch_registry", "POOLWATCH_REGISTRY")
    return Path(value).expanduser() if value else None


def load_registry() -> Registry:
    """The configured registry (RegistryError, a ValueError, when it is malformed)."""
    from pipeline.attribution.registry import load_registry as _load

    return _load(registry_path())


def open_warehouse() -> Warehouse:
    from pipeline.store.warehouse import Warehouse

    return Warehouse(warehouse_root())


# ----------------------------------------------------------------------------- the node connection


def node_config(conn_id: str = DEFAULT_CONN_ID) -> NodeConfig:
    """The node's ``NodeConfig`` from an Airflow connection (host/port/login/password, or extra
    {"cookie_file": ..., "use_rest": true, "timeout": s, "retries": n}). ``NodeConfigError`` when the
    connection does not exist, with the command that creates it."""
    from airflow.sdk import BaseHook  # lazy: importing Airflow costs seconds and needs its config

    from pipeline.source.config import NodeConfig
    from pipeline.source.errors import NodeConfigError

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # AirflowNotFoundException and friends: no secret in those messages
        reason = f"{type(exc).__name__}: {exc}"
    else:
        return NodeConfig.from_connection_fields(conn.host, conn.port, conn.login, conn.password,
                                                 conn.extra_dejson or {}, getattr(conn, "schema", None))
    raise NodeConfigError(
        f"Airflow connection {conn_id!r} not usable ({reason}); create it, e.g. "
        f"`airflow connections add {conn_id} --conn-type generic --conn-host 127.0.0.1 --conn-port 8332 "
        "--conn-extra '{\"cookie_file\": \"~/.bitcoin/.cookie\"}'` or "
        f"AIRFLOW_CONN_{conn_id.upper()}='{{\"conn_type\": \"generic\", \"host\": \"127.0.0.1\", "
        "\"port\": 8332, \"extra\": {\"cookie_file\": \"~/.bitcoin/.cookie\"}}'")


def node_client(conn_id: str = DEFAULT_CONN_ID) -> NodeClient:
    from pipeline.source.client import NodeClient

    return NodeClient(node_config(conn_id))


# ------------------------------------------------------------------------------------- registry


def registry_change(previous_fingerprint: str | None) -> dict[str, Any] | None:
    """What changed in the configured registry since the last ``poolwatch://registry`` event, or
    None when nothing did.

    The fingerprint covers the registry's location and its bytes, so a malformed file is noticed
    too: its event carries the parse error, and the re-attribution it triggers fails with it while
    loads keep attributing with the last valid registry. Without an earlier event, a change is a
    registry whose version differs from the warehouse's current one.
    """
    from pipeline.attribution.registry import RegistryError, default_registry_path
    from pipeline.load.jobs import current_registry

    path = registry_path()
    source = str(path) if path is not None else str(default_registry_path())
    try:
        content = Path(source).read_bytes()
    except OSError as exc:
        content = f"unreadable: {type(exc).__name__}: {exc}".encode()
    fingerprint = hashlib.sha256(source.encode() + b"\0" + content).hexdigest()[:16]
    if fingerprint == previous_fingerprint:
        return None
    version: str | None = None
    error: str | None = None
    try:
        version = load_registry().version
    except RegistryError as exc:
        error = str(exc)
    warehouse = open_warehouse()
    current = current_registry(warehouse) if warehouse.meta_path.exists() else None
    if previous_fingerprint is None and error is None and (current is None or current.version == version):
        return None  # nothing to apply: the warehouse already uses it (or will on its first load)
    change = {"fingerprint": fingerprint, "source": source, "registry_version": version, "error": error,
              "previous_registry_version": current.version if current is not None else None}
    if error:
        log.warning("registry %s changed and is malformed: %s; loads keep attributing with registry version %s",
                    source, error, change["previous_registry_version"])
    else:
        log.info("registry %s changed: version %s (the warehouse uses %s); poolwatch_reattribute applies it",
                 source, version, change["previous_registry_version"])
    return change


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
    from pipeline.load.jobs import check_and_repair_reorg

    warehouse = open_warehouse()
    if warehouse.stored_range() is None:
        return {"fork_height": None, "note": "empty warehouse: nothing to compare"}
    client = node_client(conn_id)
    with warehouse.writer(wait=writer_wait()):
        fork = check_and_repair_reorg(client, warehouse)
    if fork is not None:
        log.warning("reorg: rolled back stored blocks from height %d; they are reloaded next", fork)
    return {"fork_height": fork}


def _sync_summary(result: Any) -> dict[str, Any]:
    summary = asdict(result)
    summary["blocks_per_second"] = round(result.blocks_per_second, 1)
    log.info("loaded %d blocks (%s..%s); attributed with registry version %s", result.blocks_loaded, result.start,
             result.end, result.registry_version)
    return summary


def _load(client: NodeClient, warehouse: Warehouse, start: int | None, end: int | None) -> Any:
    """``sync_range`` as loads run under Airflow: attribute with the warehouse's current registry
    (the last valid one applied: a changed or broken registry file is poolwatch_reattribute's
    business), or the configured one for a warehouse's first load."""
    from pipeline.load.jobs import sync_range

    return sync_range(client, warehouse, start, end, registry=None, default_registry=load_registry,
                      allow_cross_network=None, default_cross_network=cross_network_registry(),
                      writer_wait=writer_wait())


def load_new_blocks(conn_id: str = DEFAULT_CONN_ID,
                    max_blocks: int | None = DEFAULT_INCREMENTAL_MAX_BLOCKS) -> dict[str, Any]:
    """Load from the stored tip + 1 up to the node's tip (at most ``max_blocks``): fetch, decode,
    attribute, validate (a failing batch is quarantined and fails the task), commit, refresh views."""
    warehouse = open_warehouse()
    client = node_client(conn_id)
    end = None
    if max_blocks is not None:
        stored = warehouse.stored_range()
        start = stored[1] + 1 if stored else 0
        end = min(client.tip_height(), start + max_blocks - 1)
        if end < start:
            end = None  # up to date: let sync_range report it
    return _sync_summary(_load(client, warehouse, None, end))


def refresh_views(build_docs: bool = True) -> dict[str, Any]:
    """Rebuild the DuckDB catalog (views over the Parquet files) and the Data Docs site."""
    from pipeline.store.datadocs import build_data_docs

    warehouse = open_warehouse()
    with warehouse.writer(wait=writer_wait()):
        warehouse.refresh_catalog()
        out: dict[str, Any] = {"catalog": str(warehouse.catalog_path), "stored_range": warehouse.stored_range()}
        if build_docs:
            out["data_docs"] = str(build_data_docs(warehouse.root))
    return out


def plan_backfill(start: int, end: int | None, chunk_size: int = DEFAULT_BACKFILL_CHUNK,
                  conn_id: str = DEFAULT_CONN_ID) -> list[dict[str, int]]:
    """Chunks of the inclusive range, one mapped task each (each idempotent, retryable alone).
    ``end`` None means the node's tip; an ``end`` above the tip fails here, once, before any chunk."""
    from pipeline.source.errors import HeightAboveTipError
    from pipeline.load.loop import plan_chunks

    tip = check_node(conn_id)["tip"]
    if end is None:
        end = tip
    if start < 0 or end < start:
        raise ValueError(f"backfill range from {start} to {end} is empty or negative; "
                         "trigger the DAG with params from <= to, both >= 0")
    if end > tip:
        raise HeightAboveTipError(f"backfill asks for heights up to {end} but the node's tip is {tip}: trigger it "
                                  f"with \"to\" <= {tip}, or leave \"to\" empty for the tip", height=end, tip=tip)
    chunks = [{"start": lo, "end": hi} for lo, hi in plan_chunks(int(start), int(end), int(chunk_size))]
    log.info("backfill of heights %d..%d in %d chunk(s) of up to %d blocks", start, end, len(chunks), chunk_size)
    return chunks


def backfill_chunk(start: int, end: int, conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Load heights [start, end]; rows are replaced by height, so a retry or re-run is harmless."""
    return _sync_summary(_load(node_client(conn_id), open_warehouse(), int(start), int(end)))


def check_spends(conn_id: str = DEFAULT_CONN_ID) -> dict[str, Any]:
    """Record the coinbase spends of every stored block left unchecked whose lower heights are all
    stored (``pipeline.load.jobs.check_spends``): after a mapped backfill, every chunk but the lowest
    was loaded while lower chunks were still loading, so its blocks were not checked."""
    from pipeline.load.jobs import check_spends as _check_spends

    done = _check_spends(node_client(conn_id), open_warehouse(), writer_wait=writer_wait())
    log.info("checked coinbase spends of %d block(s) in %d range(s); %d stored block(s) still unchecked%s",
             done.spends_checked, len(done.ranges), done.left.blocks + done.left.waiting,
             f" (height {done.left.first_missing} is not stored)" if done.left.waiting else "")
    return {"spends_checked": done.spends_checked, "ranges": [list(r) for r in done.ranges],
            "blocks_reloaded": done.blocks_loaded, "unchecked": done.left.blocks + done.left.waiting,
            "first_missing": done.left.first_missing, "seconds": round(done.seconds, 1)}


def backfill_summary(chunks: list[dict[str, Any]], spends: dict[str, Any] | None = None) -> dict[str, Any]:
    """One summary (and asset-event extra) for the chunks of a backfill run (``spends``: what
    ``check_spends`` did after them)."""
    versions = sorted({c.get("registry_version") for c in chunks if c.get("registry_version")})
    summary = {"from_height": min((c["start"] for c in chunks), default=None),
               "to_height": max((c["end"] for c in chunks), default=None),
               "chunks": len(chunks), "blocks_loaded": sum(c["blocks_loaded"] for c in chunks),
               "registry_version": versions[0] if len(versions) == 1 else versions,
               "chain": next((c["chain"] for c in chunks if c.get("chain")), None)}
    if spends is not None:
        summary["spends_checked_after_chunks"] = spends["spends_checked"]
        summary["spends_unchecked"] = spends["unchecked"]
    return summary


def load_event_extra(loaded: dict[str, Any]) -> dict[str, Any]:
    """What an incremental run changed, as asset-event extra (JSON)."""
    return {"from_height": loaded.get("start"), "to_height": loaded.get("end"),
            "blocks_loaded": loaded.get("blocks_loaded", 0), "chain": loaded.get("chain"),
            "registry_version": loaded.get("registry_version"),
            "reorg_fork_height": loaded.get("reorg_fork_height"), "reattributed": loaded.get("reattributed", 0)}


def reattribute_history() -> dict[str, Any]:
    """Re-attribute every stored block with the configured registry, from stored coinbases (no node).

    A malformed registry fails here (``RegistryError``: permanent) with the problem named; the
    warehouse keeps its current registry, which loads go on using."""
    from pipeline.attribution.registry import RegistryError
    from pipeline.load.jobs import current_registry, reattribute

    warehouse = open_warehouse()
    current = current_registry(warehouse)
    try:
        registry = load_registry()
    except RegistryError as exc:
        kept = current.version if current is not None else None
        raise RegistryError(f"{exc}. Nothing was re-attributed; new blocks keep being attributed with registry "
                            f"version {kept}. Fix the file (check it with `poolwatch pools validate FILE`).") from None
    previous = current.version if current is not None else None
    if warehouse.stored_range() is None:
        return {"reattributed": 0, "registry_version": registry.version, "previous_registry_version": previous,
                "note": "empty warehouse"}
    from pipeline.attribution.engine import recorded_settings

    with warehouse.writer(wait=writer_wait()):
        recorded = recorded_settings(warehouse.meta)
        cross = recorded.cross_network if recorded is not None else cross_network_registry()
        stats: dict[str, int] = {}
        done = reattribute(warehouse, registry, allow_cross_network=cross, stats=stats)  # the recorded setting is kept
        warehouse.refresh_catalog()
    result = {"reattributed": done, "registry_version": registry.version, "previous_registry_version": previous}
    if stats.get("current"):
        log.info("registry version %s is current: its rows cover all %d stored blocks, nothing attributed again",
                 registry.version, stats["current"])
        return {**result, "note": "attributions current"}
    log.info("re-attributed %d stored blocks: registry version %s -> %s", done, previous, registry.version)
    return result


def recompute_metrics() -> dict[str, Any]:
    """Recompute the centralization metrics tables from the current attributions."""
    from pipeline.metrics.compute import MATERIALIZED_WINDOWS, refresh_metrics

    warehouse = open_warehouse()
    if warehouse.stored_range() is None:
        return {"note": "empty warehouse: no metrics to compute"}
    done = refresh_metrics(warehouse, wait=writer_wait())
    return {"rows": done.rows, "mode": done.mode, "windows_recomputed": done.windows_recomputed,
            "registry_version": warehouse.attribution_version,
            "windows": list(MATERIALIZED_WINDOWS)}
