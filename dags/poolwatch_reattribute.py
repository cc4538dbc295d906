"""poolwatch_reattribute: re-attribute all stored blocks with the configured pool registry.

Runs when the registry Asset (poolwatch://registry) is updated (poolwatch_incremental's
watch_registry does that when the registry file or the Variable naming it changes), or by hand.
Reads stored coinbases only (no node); results of each registry version are kept side by side. A
malformed registry fails this run with the problem named, and loads keep attributing with the last
valid registry. Updates the attributions Asset (extra: old and new registry version), which
triggers poolwatch_metrics.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipeline import orchestration as o

ATTRIBUTIONS = Asset(o.ATTRIBUTIONS_ASSET)


@dag(
    dag_id="poolwatch_reattribute",
    schedule=[Asset(o.REGISTRY_ASSET)],
    start_date=o.DAG_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=o.DAG_DEFAULT_ARGS,
    tags=o.DAG_TAGS,
    doc_md=__doc__,
)
def poolwatch_reattribute():
    @task(outlets=[ATTRIBUTIONS])
    def reattribute(outlet_events=None) -> dict:
        result = o.run_task(o.reattribute_history)
        outlet_events[ATTRIBUTIONS].extra = result
        return result

    @task
    def refresh_views(done: dict) -> dict:
        return o.run_task(o.refresh_views)

    refresh_views(reattribute())


poolwatch_reattribute()
