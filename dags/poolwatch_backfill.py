"""poolwatch_backfill: load a height range in parallel chunks (trigger with params from/to).

plan (checks the range against the node's tip, once) -> load_chunk (dynamic task mapping: one
mapped task per chunk, labelled by its height range, each idempotent and retryable alone; at most
POOLWATCH_LOAD_CONCURRENCY run at once) -> check_spends (records the coinbase spends of the blocks
the chunks could not check: a chunk loaded while a lower one was still loading checks none;
docs/custody.md) -> refresh_views -> publish (blocks/attributions Assets, with the loaded range,
registry version and spends checked as extra). ``to`` defaults to the node's tip.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task

from pipeline import orchestration as o

BLOCKS = Asset(o.BLOCKS_ASSET)
ATTRIBUTIONS = Asset(o.ATTRIBUTIONS_ASSET)


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
        return o.run_task(o.plan_backfill, params["from"], params["to"], params["chunk_size"], params["conn_id"])

    @task(execution_timeout=timedelta(hours=6), map_index_template=o.CHUNK_LABEL, **o.load_task_options())
    def load_chunk(start: int, end: int, params=None) -> dict:
        return o.run_task(o.backfill_chunk, start, end, params["conn_id"])

    @task(execution_timeout=timedelta(hours=24), **o.load_task_options())
    def check_spends(chunks: list, params=None) -> dict:
        return o.run_task(o.check_spends, params["conn_id"])

    @task
    def refresh_views(spends: dict) -> dict:
        return o.run_task(o.refresh_views)

    @task(outlets=[BLOCKS, ATTRIBUTIONS])
    def publish(chunks: list, spends: dict, views: dict, outlet_events=None) -> dict:
        extra = o.backfill_summary(list(chunks), spends)
        outlet_events[BLOCKS].extra = extra
        outlet_events[ATTRIBUTIONS].extra = extra
        return extra

    loaded = load_chunk.expand_kwargs(plan())
    spends = check_spends(loaded)
    publish(loaded, spends, refresh_views(spends))


poolwatch_backfill()
