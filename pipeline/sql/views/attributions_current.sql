-- Attributions under the warehouse's current registry version (meta.json), one row per block.
-- The catalog is rebuilt whenever the current version changes.
SELECT * FROM attributions WHERE registry_version = {registry_version}
