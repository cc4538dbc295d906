"""poolwatch_metrics: recompute the centralization metrics tables when attributions change.

Scheduled on the attributions Asset (updated by the incremental, backfill and reattribute DAGs);
can also be triggered by hand. Updates the metrics Asset.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipeline import orchestration as o


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
    @task(outlets=[Asset(o.METRICS_ASSET)])
    def recompute_metrics() -> dict:
        return o.run_task(o.recompute_metrics)

    recompute_metrics()


poolwatch_metrics()
