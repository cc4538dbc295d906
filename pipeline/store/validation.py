"""Batch validation: Great Expectations suites and invariants, quarantine of rejected batches.

Every batch (a dict of Arrow tables: blocks, coinbase_outputs, attributions, ...) is checked before
it is committed, against one declaration per table, ``schemas/expectations/<table>.json``:

* ``expectations``: column- and table-level rules in Great Expectations 1.x terms (value ranges,
  sets, regexes, uniqueness, column pairs), run by GX on the table's own columns;
* ``invariants``: rules that span rows or tables (height links, sums per window, consensus rules,
  the registry the batch was attributed with), each a plain typed function of
  ``pipeline.store.checks`` named in the declaration with the rule it protects.

On top, the table schema (``schemas/tables``) contributes the exact column set (a GX expectation)
and "no null in any non-nullable column" (the ``required_not_null`` invariant: one check naming each
failing row and its null columns, where one GX expectation per column cost half a batch's
validation: GX's cost is ~6 ms per expectation whatever the row count).

GX takes 3-4 s to import, so it is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.checks import INVARIANTS, CheckContext, Violation
from pipeline.store.schemas import TableSpec, schemas_dir, table_spec

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.store.warehouse import StagedCommit

# GX phones home unless told not to; a pipeline must not.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Before GX is ever imported: its import alone logs ~200 INFO lines ("Skipping registering function
# ...") that would bury poolwatch's own lines in task logs. Its warnings still show.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

# How many failing rows / values a summary line shows (the JSON keeps them all).
SUMMARY_ROWS = 10
# Saved results of accepted batches kept under <warehouse>/validations/.
SAVED_REPORTS_KEPT = 500


# --------------------------------------------------------------------------------------------
# Suite declarations (plain JSON, no GX needed to read them)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectationDecl:
    type: str  # GX 1.x expectation type name, e.g. "expect_column_values_to_be_unique"
    kwargs: dict[str, Any]
    why: str  # shown in failure summaries; tells the reader what the rule protects

    def describe(self) -> str:
        target = self.kwargs.get("column") or self.kwargs.get("column_list") or ""
        if isinstance(target, list):
            target = ", ".join(target)
        extras = {k: v for k, v in self.kwargs.items() if k not in ("column", "column_list", "column_set")}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in extras.items())
        return f"{self.type}({target}{', ' if target and shown else ''}{shown})"


@dataclass(frozen=True)
class SuiteDecl:
    table: str
    description: str
    row_id: tuple[str, ...]  # columns that name a failing row in summaries
    invariants: dict[str, str]  # pipeline.store.checks invariant -> the rule it protects
    expectations: tuple[ExpectationDecl, ...]

    def all_expectations(self, spec: TableSpec) -> list[ExpectationDecl]:
        """The schema-derived column-set expectation first, then the declared ones."""
        out = [ExpectationDecl("expect_table_columns_to_match_set",
                               {"column_set": spec.column_names, "exact_match": True},
                               f"the batch has exactly the columns declared in schemas/tables/{spec.name}.json")]
        return out + list(self.expectations)

    def all_invariants(self, spec: TableSpec) -> dict[str, str]:
        """The schema-derived not-null invariant first (when the table has required columns), then
        the declared ones."""
        out = {}
        if _required_columns(spec):
            out[NOT_NULL] = (f"no null in the columns declared non-nullable in schemas/tables/{spec.name}.json "
                             f"({', '.join(_required_columns(spec))}); a failing row's value lists its null columns")
        return {**out, **self.invariants}


# Schema-derived invariant: no null in a non-nullable column.
NOT_NULL = "required_not_null"


def _required_columns(spec: TableSpec) -> list[str]:
    return [c.name for c in spec.columns if not c.nullable]


def _null_required(table: pa.Table, spec: TableSpec) -> Violation:
    """Rows with a null in a non-nullable column; each row's value names its null columns."""
    required = [c for c in _required_columns(spec) if c in table.column_names]  # a missing column: the column set
    nulls: dict[int, list[str]] = {}
    for name in required:
        column = table.column(name)
        if column.null_count:
            for i, valid in enumerate(column.is_valid().to_pylist()):
                if not valid:
                    nulls.setdefault(i, []).append(name)
    rows = sorted(nulls)
    return Violation(rows, [", ".join(nulls[i]) for i in rows])


def expectations_dir() -> Path:
    return schemas_dir() / "expectations"


def _parse_suite(doc: dict, source: Path) -> SuiteDecl:
    try:
        expectations = tuple(ExpectationDecl(e["type"], dict(e.get("kwargs", {})), e.get("meta", {}).get("why", ""))
                             for e in doc["expectations"])
        decl = SuiteDecl(table=doc["table"], description=doc.get("description", ""),
                         row_id=tuple(doc.get("row_id", [])), invariants=dict(doc.get("invariants", {})),
                         expectations=expectations)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"expectation suite {source} is malformed: missing or bad {exc}") from None
    unknown = [name for name in decl.invariants if name not in INVARIANTS]
    if unknown:
        raise ValueError(f"expectation suite {source} declares invariants {unknown} that pipeline/store/checks.py "
                         f"does not define; known: {sorted(INVARIANTS)}")
    return decl


@lru_cache(maxsize=None)
def suite_decl(table: str) -> SuiteDecl | None:
    """The declared suite for ``table``, or None when the table has no suite file."""
    path = expectations_dir() / f"{table}.json"
    if not path.exists():
        return None
    return _parse_suite(json.loads(path.read_text()), path)


def all_suite_decls() -> list[SuiteDecl]:
    return [d for p in sorted(expectations_dir().glob("*.json")) if (d := suite_decl(p.stem)) is not None]


def _empty_decl(table: str) -> SuiteDecl:
    return SuiteDecl(table, "", (), {}, ())


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _short(v: Any, limit: int = 60) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        v = int(v)  # GX turns integer bounds into floats; show them as declared
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_row(row: Any) -> str:
    if isinstance(row, dict):
        return "(" + ", ".join(f"{k}={v}" for k, v in row.items()) + ")" if len(row) > 1 else \
            ", ".join(f"{k}={v}" for k, v in row.items())
    return f"row {row}"


@dataclass
class Failure:
    """One failed check (a GX expectation or an invariant) on one table."""

    table: str
    expectation: str  # e.g. expect_column_values_to_be_unique(height), invariant(prev_link_ok)
    why: str
    unexpected_count: int | None = None
    element_count: int | None = None
    rows: list[Any] = field(default_factory=list)  # row ids ({"height": 5, ...}) of failing rows
    values: list[Any] = field(default_factory=list)  # the failing values
    observed: Any = None  # for table-level expectations
    error: str | None = None  # the expectation could not run (e.g. missing column)

    def line(self) -> str:
        parts = [f"{self.table}: {self.expectation}"]
        if self.error:
            parts.append(f"could not be evaluated: {self.error}")
        elif self.unexpected_count is not None:
            parts.append(f"failed on {self.unexpected_count} of {self.element_count} rows")
            if self.rows:
                more = f" (+{len(self.rows) - SUMMARY_ROWS} more)" if len(self.rows) > SUMMARY_ROWS else ""
                parts.append("at " + "; ".join(_format_row(r) for r in self.rows[:SUMMARY_ROWS]) + more)
            if self.values:
                shown = ", ".join(_short(v, 70) for v in self.values[:SUMMARY_ROWS])
                parts.append(f"values: {shown}")
        else:
            parts.append(f"failed; observed {_short(self.observed, 200)}")
        text = " ".join(parts[:2]) + (" " + " - ".join(parts[2:]) if len(parts) > 2 else "")
        return text + (f". Rule: {self.why}" if self.why else "")


@dataclass
class ValidationReport:
    batch_id: str
    created: str  # ISO-8601 UTC
    row_counts: dict[str, int]
    heights: tuple[int, int] | None
    failures: list[Failure]
    evaluated: int  # number of rules (GX expectations and invariants) evaluated over all tables
    context: dict[str, Any]  # JSON-safe summary of the validation context
    gx_results: dict[str, dict] = field(default_factory=dict, repr=False)  # table -> GX result JSON
    # table -> {invariant: {"success", "unexpected_count", "why"}}
    invariant_results: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        counts = ", ".join(f"{t}: {n} rows" for t, n in self.row_counts.items())
        span = f"heights {self.heights[0]}..{self.heights[1]}" if self.heights else "no heights"
        head = f"batch {self.batch_id} ({span}; {counts})"
        if self.ok:
            return f"{head}: all {self.evaluated} checks passed"
        lines = [f"{head}: {len(self.failures)} of {self.evaluated} checks failed"]
        lines += [f"  - {f.line()}" for f in self.failures]
        return "\n".join(lines)

    def merged(self, other: ValidationReport) -> ValidationReport:
        """This report joined with ``other``, made on the other tables of the same batch
        (``validate_batch(..., only=...)``): one verdict, this report's id, tables in batch order."""
        rank = {t: i for i, t in enumerate(self.row_counts)}  # row_counts names every table of the batch
        failures = sorted(self.failures + other.failures, key=lambda f: rank[f.table])
        results = sorted({**self.gx_results, **other.gx_results}.items(), key=lambda kv: rank[kv[0]])
        invariants = sorted({**self.invariant_results, **other.invariant_results}.items(), key=lambda kv: rank[kv[0]])
        return replace(self, failures=failures, evaluated=self.evaluated + other.evaluated, gx_results=dict(results),
                       invariant_results=dict(invariants))

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "created": self.created, "ok": self.ok,
            "row_counts": self.row_counts, "heights": list(self.heights) if self.heights else None,
            "evaluated": self.evaluated, "context": self.context,
            "failures": [f.__dict__ for f in self.failures], "summary": self.summary(),
            "gx_results": self.gx_results, "invariant_results": self.invariant_results,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> ValidationReport:
        d = json.loads(text)
        return cls(batch_id=d["batch_id"], created=d["created"], row_counts=d["row_counts"],
                   heights=tuple(d["heights"]) if d.get("heights") else None,  # type: ignore[arg-type]
                   failures=[Failure(**f) for f in d["failures"]], evaluated=d["evaluated"],
                   context=d.get("context", {}), gx_results=d.get("gx_results", {}),
                   invariant_results=d.get("invariant_results", {}))


class BatchRejected(Exception):
    """A batch failed validation and was not loaded; ``quarantine_path`` holds it and its result."""

    def __init__(self, summary: str, quarantine_path: Path | None = None):
        self.summary = summary
        self.quarantine_path = quarantine_path
        where = (f"It is kept with its validation result in {quarantine_path}. " if quarantine_path
                 else "")
        super().__init__(
            f"batch rejected by validation, nothing was loaded and earlier data is untouched.\n{summary}\n"
            f"{where}Check the node's data and the decoder/registry for the rows named above, then re-run "
            f"the same height range (loading is idempotent).")


# --------------------------------------------------------------------------------------------
# Running the suites
# --------------------------------------------------------------------------------------------


def _json_safe_context(context: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in context.items():
        if isinstance(v, (list, tuple, set, frozenset)) and len(v) > 20:
            out[k] = f"<{len(v)} values>"
        else:
            out[k] = v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v)
    return out


def _batch_heights(tables: Mapping[str, pa.Table]) -> tuple[int, int] | None:
    import pyarrow.compute as pc

    lows, highs = [], []
    for t in tables.values():
        if "height" in t.column_names and t.num_rows:
            mm = pc.min_max(t["height"]).as_py()
            if mm["min"] is not None:
                lows.append(mm["min"])
                highs.append(mm["max"])
    return (min(lows), max(highs)) if lows else None


def new_batch_id(tables: Mapping[str, pa.Table]) -> str:
    """Sortable and unique: UTC time, height span, random suffix."""
    span = _batch_heights(tables)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    heights = f"h{span[0]}-{span[1]}" if span else "nh"
    return f"{stamp}-{heights}-{uuid.uuid4().hex[:6]}"


def quiet_great_expectations() -> None:
    """Keep only Great Expectations' warnings: it logs INFO lines for every data source, asset and
    batch it registers, which would bury poolwatch's own lines in task logs and the CLI's output.
    Explicit levels are set on its existing loggers too (some set their own level)."""
    for name in list(logging.root.manager.loggerDict):
        if name == "great_expectations" or name.startswith("great_expectations."):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET or logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


class _GX:
    """One ephemeral GX context per process, with a pandas asset and a suite per table."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        quiet_great_expectations()
        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        # tqdm bars from inside an Airflow task or the CLI's rich progress are noise.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_pandas("poolwatch")
        self._batch_defs: dict[str, Any] = {}
        self._suites: dict[str, Any] = {}
        quiet_great_expectations()  # loggers made while the context was set up

    def batch_definition(self, table: str) -> Any:
        if table not in self._batch_defs:
            asset = self.source.add_dataframe_asset(table)
            self._batch_defs[table] = asset.add_batch_definition_whole_dataframe(f"{table}_batch")
        return self._batch_defs[table]

    def suite(self, table: str, decl: SuiteDecl, spec: TableSpec) -> Any:
        if table not in self._suites:
            self._suites[table] = build_gx_suite(decl, spec)
        return self._suites[table]


@lru_cache(maxsize=1)
def _gx() -> _GX:
    return _GX()


def warm_up() -> None:
    """Import Great Expectations and make this process's GX context now (a few seconds, once),
    so the first batch validated here does not pay for it."""
    _gx()


def is_warm() -> bool:
    """Whether this process has made its GX context already (validating here costs no import)."""
    return _gx.cache_info().currsize > 0


def build_gx_suite(decl: SuiteDecl, spec: TableSpec, *, name: str | None = None) -> Any:
    """The GX ExpectationSuite for a table: the schema's column set plus the declared expectations."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    suite = gx.ExpectationSuite(name=name or decl.table)
    for e in decl.all_expectations(spec):
        config = ExpectationConfiguration(type=e.type, kwargs=dict(e.kwargs), meta={"why": e.why})
        suite.add_expectation_configuration(config)
    return suite


def _frame(table: pa.Table) -> pd.DataFrame:
    # Plain numpy/object columns: GX's pandas metrics are written for them.
    return table.to_pandas(types_mapper=None, timestamp_as_object=False)


def _row_ids(rows: Sequence[Any], row_id: Sequence[str]) -> list[Any]:
    """GX adds the checked column to each failing row's index dict; keep only the row-id columns."""
    if not row_id:
        return list(rows)
    return [{k: r[k] for k in row_id if k in r} if isinstance(r, dict) else r for r in rows]


def _failures_from(table: str, result: dict, row_id: Sequence[str]) -> list[Failure]:
    failures = []
    for r in result["results"]:
        if r["success"]:
            continue
        cfg = r["expectation_config"]
        kwargs = {k: v for k, v in cfg["kwargs"].items() if k != "batch_id"}
        desc = ExpectationDecl(cfg["type"], kwargs, "").describe()
        why = (cfg.get("meta") or {}).get("why", "")
        res = r.get("result") or {}
        exc = r.get("exception_info") or {}
        error = exc.get("exception_message") if exc.get("raised_exception") else None
        failures.append(Failure(
            table=table, expectation=desc, why=why,
            unexpected_count=res.get("unexpected_count"), element_count=res.get("element_count"),
            rows=_row_ids(res.get("unexpected_index_list") or [], row_id), values=list(res.get("unexpected_list") or []),
            observed=res.get("observed_value"), error=error))
    return failures


def _row_id_of(table: pa.Table, row_id: Sequence[str], rows: Sequence[int]) -> list[Any]:
    if not row_id:
        return [f"row {i}" for i in rows]
    columns = {c: table.column(c) for c in row_id}
    return [{c: columns[c][i].as_py() for c in row_id} for i in rows]


def check_invariants(table: str, tables: Mapping[str, pa.Table], context: CheckContext,
                     decl: SuiteDecl, spec: TableSpec) -> tuple[dict[str, dict], list[Failure]]:
    """Run a table's invariants: ({name: {"success", "unexpected_count"}}, failures)."""
    data = tables[table]
    row_id = [c for c in (decl.row_id or spec.unique) if c in data.column_names]
    outcomes: dict[str, dict] = {}
    failures: list[Failure] = []
    for name, why in decl.all_invariants(spec).items():
        try:
            violation = _null_required(data, spec) if name == NOT_NULL else INVARIANTS[name](data, tables, context)
        except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
            # A missing or mistyped column (also reported by the column-set expectation): the rule
            # could not run, which fails the batch rather than passing it unchecked.
            outcomes[name] = {"success": False, "unexpected_count": None, "why": why, "error": str(exc)}
            failures.append(Failure(table=table, expectation=f"invariant({name})", why=why,
                                    error=f"{type(exc).__name__}: {exc}"))
            continue
        outcomes[name] = {"success": not violation.rows, "unexpected_count": len(violation.rows), "why": why}
        if violation.rows:
            failures.append(Failure(table=table, expectation=f"invariant({name})", why=why,
                                    unexpected_count=len(violation.rows), element_count=data.num_rows,
                                    rows=_row_id_of(data, row_id, violation.rows), values=violation.values))
    return outcomes, failures


def validate_table(table: str, tables: Mapping[str, pa.Table], context: CheckContext,
                   passing_detail: str = "BASIC") -> tuple[dict, dict[str, dict], list[Failure], int]:
    """Run one table's GX suite and invariants: (GX result as JSON, invariant outcomes, failures,
    rules evaluated).

    ``passing_detail``: the GX result format kept when the table passes ("BASIC", or "BOOLEAN_ONLY"
    when the caller keeps no result of a passing batch); a failing table always gets COMPLETE."""
    spec = table_spec(table)
    decl = suite_decl(table) or _empty_decl(table)
    frame = _frame(tables[table])
    runtime = _gx()
    suite = runtime.suite(table, decl, spec)
    row_id = [c for c in (decl.row_id or spec.unique) if c in frame.columns]
    batch = runtime.batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
    # Two passes: BASIC (counts, observed values, a sample of unexpected values) costs ~35% less
    # than COMPLETE, BOOLEAN_ONLY ~45% less, and nearly every batch passes. Only a table that
    # fails is validated again with COMPLETE, which names every failing row: same verdict, full
    # detail where it is read.
    result = batch.validate(suite, result_format={"result_format": passing_detail})
    if not result.success:
        complete: dict[str, Any] = {"result_format": "COMPLETE"}
        if row_id:
            complete["unexpected_index_column_names"] = row_id
        result = batch.validate(suite, result_format=complete)
    as_json = result.to_json_dict()
    outcomes, invariant_failures = check_invariants(table, tables, context, decl, spec)
    return (as_json, outcomes, _failures_from(table, as_json, row_id) + invariant_failures,
            len(result.results) + len(outcomes))


def validate_batch(tables: Mapping[str, pa.Table], context: Mapping[str, Any] | None = None, *,
                   only: Collection[str] | None = None, passing_detail: str = "BASIC") -> ValidationReport:
    """Validate every table of a batch against its suite and invariants; never raises on bad data.

    ``only``: run just these tables' rules (every table still feeds the cross-table invariants), so
    two processes can share one batch; ``ValidationReport.merged`` joins their reports.
    ``passing_detail``: see ``validate_table`` (BASIC by default: saved results feed Data Docs).

    ``context`` (all optional): ``chain`` (network name, enables the subsidy check),
    ``previous_height`` / ``previous_hash`` / ``previous_median_time`` (the stored block the batch
    follows: contiguity, prev-hash link and time rule across batches), ``pool_ids`` and
    ``registry_version`` (the registry the attributions were made with), ``now`` (epoch seconds,
    for the future-time bound; default: the clock).
    """
    context = dict(context or {})
    unknown = [t for t in tables if not (schemas_dir() / "tables" / f"{t}.json").exists()]
    if unknown:
        raise KeyError(f"batch has tables with no declared schema: {unknown} (declare them in schemas/tables/)")
    check_context = CheckContext.from_mapping(context)
    failures: list[Failure] = []
    gx_results: dict[str, dict] = {}
    invariant_results: dict[str, dict] = {}
    evaluated = 0
    for name in tables:
        if only is not None and name not in only:
            continue
        result, outcomes, table_failures, n = validate_table(name, tables, check_context, passing_detail)
        gx_results[name] = result
        invariant_results[name] = outcomes
        evaluated += n
        failures += table_failures
    return ValidationReport(
        batch_id=new_batch_id(tables), created=datetime.now(UTC).isoformat(timespec="seconds"),
        row_counts={name: t.num_rows for name, t in tables.items()}, heights=_batch_heights(tables),
        failures=failures, evaluated=evaluated, context=_json_safe_context(context), gx_results=gx_results,
        invariant_results=invariant_results)


# --------------------------------------------------------------------------------------------
# Quarantine, saved results, Data Docs
# --------------------------------------------------------------------------------------------


def quarantine(warehouse_root: Path | str, tables: Mapping[str, pa.Table], report: ValidationReport) -> Path:
    """Keep a rejected batch as <warehouse>/quarantine/<batch-id>/<table>.parquet + validation.json.

    Written into a temporary folder and renamed, so a crash never leaves half a quarantine entry.
    """
    base = Path(warehouse_root) / "quarantine"
    base.mkdir(parents=True, exist_ok=True)
    final = base / report.batch_id
    tmp = base / f".tmp-{report.batch_id}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, table in tables.items():
        pq.write_table(table, tmp / f"{name}.parquet")
    (tmp / "validation.json").write_text(report.to_json())
    (tmp / "SUMMARY.txt").write_text(report.summary() + "\n")
    os.replace(tmp, final)
    return final


def save_report(warehouse_root: Path | str, report: ValidationReport) -> Path:
    """Keep an accepted batch's result under <warehouse>/validations/ for Data Docs (bounded)."""
    folder = Path(warehouse_root) / "validations"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report.batch_id}.json"
    tmp = path.with_suffix(".json.tmp")  # TMP_SUFFIX of pipeline.store.warehouse: removed by the next writer if left
    tmp.write_text(report.to_json())
    os.replace(tmp, path)
    for old in sorted(folder.glob("*.json"))[:-SAVED_REPORTS_KEPT]:
        old.unlink(missing_ok=True)
    return path


def gate(warehouse: Any, tables: Mapping[str, pa.Table], report: ValidationReport | None, *,
         staged: StagedCommit | None = None, **commit: Any) -> None:
    """The one gate between a batch and the warehouse (loads, re-attribution, metrics): a failed
    report quarantines the batch and raises ``BatchRejected`` (nothing stored); a passing one is
    committed (``commit``: ``Warehouse.commit`` options) and its summary kept for Data Docs.
    ``report`` None: the caller chose not to validate. ``staged``: the batch was already written
    by ``Warehouse.stage`` (while it was validated): published if it passes, else discarded."""
    if report is not None and not report.ok:
        if staged is not None:
            warehouse.discard(staged)
        raise BatchRejected(report.summary(), quarantine(warehouse.root, tables, report))
    if staged is not None:
        warehouse.publish(staged)
    else:
        warehouse.commit(tables, **commit)
    if report is not None:
        save_report(warehouse.root, report)
