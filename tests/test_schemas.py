"""Schemas are declared once (schemas/tables/*.json); the docs are generated from them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.store.schemas import all_table_specs, render_markdown, schemas_dir, table_spec


def test_docs_tables_md_is_generated_from_the_declarations():
    target = schemas_dir().parent / "docs" / "tables.md"
    assert target.read_text() == render_markdown(), "docs/tables.md is stale: run `poolwatch docs`"


def test_every_declaration_is_complete_and_consistent():
    specs = all_table_specs()
    assert {"blocks", "coinbase_outputs", "attributions", "pool_definitions"} <= {s.name for s in specs}
    for spec in specs:
        names = spec.column_names
        assert len(names) == len(set(names)), spec.name
        assert set(spec.replace_by) <= set(names) and set(spec.unique) <= set(names), spec.name
        assert all(c.description for c in spec.columns), spec.name
        assert isinstance(spec.arrow_schema, pa.Schema)


def test_conform_refuses_missing_and_extra_columns():
    spec = table_spec("coinbase_outputs")
    table = pa.table({"height": [1]})
    with pytest.raises(ValueError, match="missing columns"):
        spec.conform(table)
    with pytest.raises(KeyError, match="no schema declared"):
        table_spec("no_such_table")
