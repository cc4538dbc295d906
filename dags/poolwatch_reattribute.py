"""poolwatch_reattribute: re-attribute all stored blocks with the current pool registry.

Runs when the registry Asset (poolwatch://registry) is updated, or by hand. Reads stored coinbases
only (no node); results of each registry version are kept side by side. Updates the attributions
Asset, which triggers poolwatch_metrics.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipeline import orchestration as o


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
    @task(outlets=[Asset(o.ATTRIBUTIONS_ASSET)])
    def reattribute() -> dict:
        return o.run_task(o.reattribute_history)

    @task
    def refresh_views(done: dict) -> dict:
        return o.run_task(o.refresh_views)

    refresh_views(reattribute())


poolwatch_reattribute()
