-- Generated from pipeline.metrics.metric_views(); tests/test_metrics.py keeps it in sync.
SELECT * EXCLUDE (window_kind, level) FROM centralization WHERE window_kind = 'week' AND level = 'pool'
