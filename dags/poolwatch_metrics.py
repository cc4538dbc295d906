"""poolwatch_metrics: recompute the centralization metrics tables when attributions change.

Scheduled on the attributions Asset (updated by the incremental, backfill and reattribute DAGs);
can also be triggered by hand. Then rebuilds the catalog and the Data Docs (so they include the
metrics batches' validation) and updates the metrics Asset (extra: registry version, windows).
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipeline import orchestration as o

METRICS = Asset(o.METRICS_ASSET)


@dag(
    dag_id="poolwatch_metrics",
    schedule=[Asset(o.ATTRIBUTIONS_ASSET)],
    start_date=o.DAG_START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=o.DAG_DEFAULT_ARGS,
    tags=o.DAG_TAGS,
    doc_md=__doc__,
)
def poolwatch_metrics():
    @task
    def recompute_metrics() -> dict:
        return o.run_task(o.recompute_metrics)

    @task(outlets=[METRICS])
    def refresh_views(metrics: dict, outlet_events=None) -> dict:
        views = o.run_task(o.refresh_views)
        outlet_events[METRICS].extra = {k: v for k, v in metrics.items() if k != "note"}
        return views

    refresh_views(recompute_metrics())


poolwatch_metrics()
