"""poolwatch: who mines Bitcoin. Node -> decoded blocks -> attributions -> validated batches -> Parquet -> DuckDB."""

__version__ = "0.1.0"
