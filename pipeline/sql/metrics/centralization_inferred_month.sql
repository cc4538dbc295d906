-- Generated from pipeline.metrics.metric_views(); tests/test_metrics.py keeps it in sync.
SELECT t.* EXCLUDE (window_kind, level), f.stale FROM centralization t CROSS JOIN (SELECT stale FROM freshness) f WHERE t.window_kind = 'month' AND t.level = 'inferred'
