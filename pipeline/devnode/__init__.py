"""Development and demo tooling: a regtest node to try poolwatch (and its Airflow DAGs) without a
node of your own. Not used by the pipeline itself."""
