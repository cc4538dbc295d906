"""poolwatch_incremental: keep the warehouse at the node's tip, every 10 minutes.

check_node -> repair_reorg -> load_new_blocks (fetch, decode, attribute, validate, commit)
-> refresh_views (DuckDB catalog + Data Docs) -> publish (updates the blocks/attributions Assets
with the loaded height range and registry version as extra; skipped when nothing changed).
Beside it, watch_registry updates the registry Asset when the registry file (or the Variable naming
it) changed, which schedules poolwatch_reattribute. One run at a time, no catch-up: a late run just
loads more blocks.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task

from pipeline import orchestration as o

BLOCKS = Asset(o.BLOCKS_ASSET)
ATTRIBUTIONS = Asset(o.ATTRIBUTIONS_ASSET)
REGISTRY = Asset(o.REGISTRY_ASSET)


@dag(
    dag_id="poolwatch_incremental",
    schedule=timedelta(minutes=10),
    start_date=o.DAG_START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args=o.DAG_DEFAULT_ARGS,
    tags=o.DAG_TAGS,
    doc_md=__doc__,
    params={
        "conn_id": Param(o.DEFAULT_CONN_ID, type="string",
                         description="Airflow connection of the Bitcoin node"),
        "max_blocks": Param(o.DEFAULT_INCREMENTAL_MAX_BLOCKS, type="integer", minimum=1,
                            description="At most this many new blocks per run; later runs continue"),
    },
)
def poolwatch_incremental():
    @task
    def check_node(params=None) -> dict:
        return o.run_task(o.check_node, params["conn_id"])

    @task
    def repair_reorg(node: dict, params=None) -> dict:
        return o.run_task(o.repair_reorg, params["conn_id"])

    @task(execution_timeout=timedelta(hours=1), **o.load_task_options())
    def load_new_blocks(reorg: dict, params=None) -> dict:
        result = o.run_task(o.load_new_blocks, params["conn_id"], params["max_blocks"])
        result["reorg_fork_height"] = result.get("reorg_fork_height") or reorg.get("fork_height")
        return result

    @task
    def refresh_views(loaded: dict) -> dict:
        return o.run_task(o.refresh_views)

    @task(outlets=[BLOCKS, ATTRIBUTIONS])
    def publish(loaded: dict, views: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        if not loaded["blocks_loaded"] and loaded.get("reorg_fork_height") is None and not loaded["reattributed"]:
            raise AirflowSkipException("no new blocks: assets not updated")
        extra = o.load_event_extra(loaded)
        outlet_events[BLOCKS].extra = extra
        outlet_events[ATTRIBUTIONS].extra = extra
        return extra

    @task(inlets=[REGISTRY], outlets=[REGISTRY])
    def watch_registry(inlet_events=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        last = list(inlet_events[REGISTRY].ascending(False).limit(1))
        previous = (last[0].extra or {}).get("fingerprint") if last else None
        change = o.run_task(o.registry_change, previous)
        if change is None:
            raise AirflowSkipException("registry unchanged")
        outlet_events[REGISTRY].extra = change
        return change

    loaded = load_new_blocks(repair_reorg(check_node()))
    publish(loaded, refresh_views(loaded))
    watch_registry()


poolwatch_incremental()
