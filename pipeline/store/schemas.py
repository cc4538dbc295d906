"""Table schemas, declared once as JSON in the top-level ``schemas/`` folder.

The writer (``pipeline.store.warehouse``), the validator (``pipeline.store.validation``) and the docs
(``docs/tables.md``) all read these declarations; nothing else defines a column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa


def schemas_dir() -> Path:
    """The ``schemas/`` folder: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent.parent  # the package: pipeline/
    for candidate in (here.parent / "schemas", here / "_schemas"):
        if (candidate / "tables").is_dir():
            return candidate
    raise FileNotFoundError(f"no schemas/ folder next to {here} (broken install?)")


_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "timestamp[s, tz=UTC]": pa.timestamp("s", tz="UTC"),
    "date32": pa.date32(),
    "list<string>": pa.list_(pa.string()),
}


def arrow_type(name: str) -> pa.DataType:
    try:
        return _SIMPLE_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown column type {name!r} in a schema declaration; known: {sorted(_SIMPLE_TYPES)}") from None


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    description: str
    # False for values (nearly) unique per row (hashes, txids, scriptSigs): a Parquet dictionary
    # would only be built to be abandoned, costing write time and file size.
    dictionary: bool = True

    @property
    def arrow(self) -> pa.DataType:
        return arrow_type(self.type)


@dataclass(frozen=True)
class TableSpec:
    name: str
    description: str
    columns: tuple[Column, ...]
    replace_by: tuple[str, ...]
    unique: tuple[str, ...]
    partition_column: str | None
    bucket_size: int | None
    partition_by_value: tuple[str, ...]
    sort_by: tuple[str, ...]
    # Computed from other tables (the metrics): may be deleted and recomputed, and is "stale" when
    # the tables it is computed from changed after it (pipeline.store.warehouse.Warehouse.freshness).
    derived: bool = False
    # Every commit of the table replaces all its stored rows: for tables recomputed whole from other
    # rows (template groups and links), where a key that no longer follows must vanish, which
    # replace_by (it replaces only the keys the batch holds) cannot express.
    replace_all: bool = False

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow, nullable=c.nullable) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def dictionary_columns(self) -> list[str]:
        """The columns written with a Parquet dictionary (``dictionary`` not false)."""
        return [c.name for c in self.columns if c.dictionary]

    def conform(self, table: pa.Table) -> pa.Table:
        """Reorder and cast ``table`` to this schema; a missing or extra column is an error."""
        missing = [c for c in self.column_names if c not in table.column_names]
        extra = [c for c in table.column_names if c not in self.column_names]
        if missing or extra:
            raise ValueError(f"table {self.name}: missing columns {missing}, unexpected columns {extra}")
        return table.select(self.column_names).cast(self.arrow_schema)


def _parse(doc: dict) -> TableSpec:
    part = doc.get("partition") or {}
    return TableSpec(
        name=doc["table"],
        description=doc["description"],
        columns=tuple(Column(c["name"], c["type"], bool(c["nullable"]), c["description"], bool(c.get("dictionary", True)))
                      for c in doc["columns"]),
        replace_by=tuple(doc["replace_by"]),
        unique=tuple(doc["unique"]),
        partition_column=part.get("column"),
        bucket_size=part.get("bucket_size"),
        partition_by_value=tuple(part.get("by_value", [])),
        sort_by=tuple(doc.get("sort_by", [])),
        derived=bool(doc.get("derived", False)),
        replace_all=bool(doc.get("replace_all", False)),
    )


@lru_cache(maxsize=None)
def table_spec(name: str) -> TableSpec:
    path = schemas_dir() / "tables" / f"{name}.json"
    if not path.exists():
        raise KeyError(f"no schema declared for table {name!r} ({path} missing)")
    return _parse(json.loads(path.read_text()))


def all_table_specs() -> list[TableSpec]:
    return [table_spec(p.stem) for p in sorted((schemas_dir() / "tables").glob("*.json"))]


def render_markdown() -> str:
    """docs/tables.md, generated from the declarations (a test keeps the file in sync)."""
    out = ["# Tables", "", "Generated from `schemas/tables/*.json` by `poolwatch docs`; do not edit by hand.", ""]
    for spec in all_table_specs():
        out += [f"## `{spec.name}`", "", spec.description, ""]
        replaced = ("Every commit replaces the whole table" if spec.replace_all
                    else f"Rows are replaced by ({', '.join(spec.replace_by)})")
        out += [f"{replaced}; unique on ({', '.join(spec.unique)})."
                + (" Derived: computed from the other tables, and marked stale when they change after it "
                   "(view `freshness`)." if spec.derived else ""), ""]
        out += ["| column | type | null | meaning |", "|---|---|---|---|"]
        for c in spec.columns:
            out.append(f"| `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.description} |")
        out.append("")
    return "\n".join(out)
