-- Generated from pipeline.metrics.metric_views(); tests/test_metrics.py keeps it in sync.
SELECT * EXCLUDE (window_kind, level) FROM pool_share WHERE window_kind = 'month' AND level = 'family'
