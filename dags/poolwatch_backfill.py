"""poolwatch_backfill: load a height range in parallel chunks (trigger with params from/to).

plan -> load_chunk (dynamic task mapping: one mapped task per chunk, each idempotent and
retryable alone; as many run at once as the executor has slots) -> refresh_views -> publish
(blocks/attributions Assets). ``to`` defaults to the node's tip.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task

from pipeline import orchestration as o


@dag(
    dag_id="poolwatch_backfill",
    schedule=None,
    start_date=o.DAG_START_DATE,
    catchup=False,
    default_args=o.DAG_DEFAULT_ARGS,
    tags=o.DAG_TAGS,
    doc_md=__doc__,
    params={
        "from": Param(0, type="integer", minimum=0, description="First height to load"),
        "to": Param(None, type=["null", "integer"], minimum=0, description="Last height (empty: node tip)"),
        "chunk_size": Param(o.DEFAULT_BACKFILL_CHUNK, type="integer", minimum=1,
                            description="Heights per mapped task"),
        "conn_id": Param(o.DEFAULT_CONN_ID, type="string",
                         description="Airflow connection of the Bitcoin node"),
    },
)
def poolwatch_backfill():
    @task
    def plan(params=None) -> list[dict]:
        end = params["to"]
        if end is None:
            end = o.run_task(o.check_node, params["conn_id"])["tip"]
        return o.run_task(o.plan_backfill, params["from"], end, params["chunk_size"])

    @task(execution_timeout=timedelta(hours=6), map_index_template="{{ task.op_kwargs['start'] }}")
    def load_chunk(start: int, end: int, params=None) -> dict:
        return o.run_task(o.backfill_chunk, start, end, params["conn_id"])

    @task
    def refresh_views(chunks: list) -> dict:
        return o.run_task(o.refresh_views)

    @task(outlets=[Asset(o.BLOCKS_ASSET), Asset(o.ATTRIBUTIONS_ASSET)])
    def publish(chunks: list, views: dict) -> dict:
        return {"chunks": len(chunks), "blocks_loaded": sum(c["blocks_loaded"] for c in chunks)}

    loaded = load_chunk.expand_kwargs(plan())
    publish(loaded, refresh_views(loaded))


poolwatch_backfill()
