"""Batch validation with Great Expectations 1.x, quarantine of rejected batches, Data Docs.

Every batch (a dict of Arrow tables: blocks, coinbase_outputs, attributions, ...) is checked before
it is committed. The checks are declared as JSON, one suite per table, in
``schemas/expectations/<table>.json`` next to the table schemas; this module turns them into GX
``ExpectationSuite`` objects and runs them on pandas frames in an ephemeral GX context.

Checks GX cannot express on one column (contiguous heights, prev-hash links across rows and batches,
Core's median-time-past rule, sums across tables...) are computed first as *derived columns*
(``DERIVED``) and then checked by ordinary GX expectations on those columns; the suite JSON declares
which derived columns it uses and why. A derived value of null means "cannot be decided from this
batch and its context" (e.g. the first row's link when the stored predecessor is unknown) and is not
counted as a failure, because GX map expectations skip nulls.

On top of each declared suite, the table schema itself contributes two expectations: the exact
column set, and no null in any non-nullable column (declared once, in ``schemas/tables``). The
latter is one expectation on the derived column ``NULLS_COLUMN`` (per row, the non-nullable columns
that are null, "" when none), not one per column: GX's cost is almost all per expectation (measured:
~6 ms each, whatever the row count), and a per-column null check made up 136 of 196 expectations of
a sync batch, half of its validation time. A failure still names each row and its null columns.

GX takes 3-4 s to import, so it is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.chain.networks import Network, block_subsidy, network_for_chain
from pipeline.store.schemas import TableSpec, schemas_dir, table_spec

if TYPE_CHECKING:
    import pandas as pd

# GX phones home unless told not to; a pipeline must not.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Before GX is ever imported: its import alone logs ~200 INFO lines ("Skipping registering function
# ...") that would bury poolwatch's own lines in task logs. Its warnings still show.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

# Core rejects a block whose time is more than 2 h ahead of its network-adjusted time
# (MAX_FUTURE_BLOCK_TIME). Any stored block was accepted at some moment <= now, so "now + 2 h" is
# a bound every valid stored block satisfies.
MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60
# Core's GetMedianTimePast window.
MEDIAN_TIME_SPAN = 11
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
    derived: dict[str, str]  # derived column -> what it means
    parameters: dict[str, str]  # run-time expectation parameter -> how its value is chosen
    expectations: tuple[ExpectationDecl, ...]

    def all_expectations(self, spec: TableSpec) -> list[ExpectationDecl]:
        """Schema-derived expectations first (column set, not-null), then the declared ones."""
        required = _required_columns(spec)
        columns = spec.column_names + list(self.derived) + ([NULLS_COLUMN] if required else [])
        out = [ExpectationDecl("expect_table_columns_to_match_set", {"column_set": columns, "exact_match": True},
                               f"the batch has exactly the columns declared in schemas/tables/{spec.name}.json")]
        if required:
            out.append(ExpectationDecl(
                "expect_column_values_to_be_in_set", {"column": NULLS_COLUMN, "value_set": [""]},
                f"no null in the columns declared non-nullable in schemas/tables/{spec.name}.json "
                f"({', '.join(required)}); a failing row's value lists its null columns"))
        return out + list(self.expectations)


# Schema-derived column: per row, the non-nullable columns that are null ("" when none).
NULLS_COLUMN = "null_required_columns"


def _required_columns(spec: TableSpec) -> list[str]:
    return [c.name for c in spec.columns if not c.nullable]


def null_required_columns(frame: pd.DataFrame, required: Sequence[str]) -> pd.Series:
    """NULLS_COLUMN of ``frame``: comma-separated null non-nullable columns per row, "" when none."""
    import pandas as pd

    present = [c for c in required if c in frame.columns]  # a missing column fails the column-set check
    out = pd.Series("", index=frame.index, dtype=object)
    if not present:
        return out
    isna = frame[present].isna()
    bad = isna.any(axis=1)
    if bad.any():
        names = isna[bad].apply(lambda row: ", ".join(c for c, null in row.items() if null), axis=1)
        out.loc[bad] = names
    return out


def expectations_dir() -> Path:
    return schemas_dir() / "expectations"


def _parse_suite(doc: dict, source: Path) -> SuiteDecl:
    try:
        expectations = tuple(ExpectationDecl(e["type"], dict(e.get("kwargs", {})), e.get("meta", {}).get("why", ""))
                             for e in doc["expectations"])
        decl = SuiteDecl(table=doc["table"], description=doc.get("description", ""),
                         row_id=tuple(doc.get("row_id", [])), derived=dict(doc.get("derived_columns", {})),
                         parameters=dict(doc.get("parameters", {})), expectations=expectations)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"expectation suite {source} is malformed: missing or bad {exc}") from None
    unknown = [d for d in decl.derived if d not in DERIVED]
    if unknown:
        raise ValueError(f"expectation suite {source} declares derived columns {unknown} that "
                         f"pipeline/validation.py does not compute; known: {sorted(DERIVED)}")
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
    return SuiteDecl(table, "", (), {}, {}, ())


# --------------------------------------------------------------------------------------------
# Derived columns: cross-row / cross-table / cross-batch facts, checked afterwards by GX
# --------------------------------------------------------------------------------------------


@dataclass
class BatchView:
    """What a derived column may look at: the whole batch (as pandas) and the caller's context."""

    frames: dict[str, pd.DataFrame]
    context: Mapping[str, Any]

    @property
    def network(self) -> Network | None:
        chain = self.context.get("chain")
        return network_for_chain(chain) if chain else None

    @property
    def previous_height(self) -> int | None:
        h = self.context.get("previous_height")
        return int(h) if h is not None else None


DerivedFn = Callable[["pd.DataFrame", BatchView], "pd.Series"]
DERIVED: dict[str, DerivedFn] = {}


def derived(name: str) -> Callable[[DerivedFn], DerivedFn]:
    def register(fn: DerivedFn) -> DerivedFn:
        DERIVED[name] = fn
        return fn
    return register


def _series(df: pd.DataFrame, values: Sequence[Any], dtype: str = "boolean") -> pd.Series:
    import pandas as pd

    return pd.Series(list(values), index=df.index, dtype=dtype)


def _unix_seconds(col: pd.Series) -> list[int | None]:
    """Timestamp column (tz-aware or not) -> epoch seconds, None for nulls."""
    import pandas as pd

    out: list[int | None] = []
    for v in col:
        if v is None or v is pd.NaT or (isinstance(v, float) and v != v):
            out.append(None)
        elif isinstance(v, (int,)):
            out.append(int(v))
        else:
            out.append(int(pd.Timestamp(v).timestamp()))
    return out


def _first_by_height(df: pd.DataFrame, column: str) -> dict[int, Any]:
    """height -> value of the first row with that height (duplicates are caught by uniqueness)."""
    out: dict[int, Any] = {}
    for h, v in zip(df["height"].tolist(), df[column].tolist(), strict=True):
        out.setdefault(int(h), v)
    return out


@derived("time_unix")
def _time_unix(df: pd.DataFrame, view: BatchView) -> pd.Series:
    return _series(df, _unix_seconds(df["time"]), "Int64")


@derived("height_contiguous")
def _height_contiguous(df: pd.DataFrame, view: BatchView) -> pd.Series:
    heights = [int(h) for h in df["height"].tolist()]
    order = sorted(range(len(heights)), key=lambda i: heights[i])
    result: list[bool | None] = [None] * len(heights)
    prev = view.previous_height
    for pos, i in enumerate(order):
        before = heights[order[pos - 1]] if pos > 0 else prev
        result[i] = None if before is None else heights[i] == before + 1
    return _series(df, result)


GENESIS_PREV_HASH = "0" * 64


@derived("prev_link_ok")
def _prev_link_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    hash_at = _first_by_height(df, "hash")
    prev_h, prev_hash = view.previous_height, view.context.get("previous_hash")
    result: list[bool | None] = []
    for h, ph in zip(df["height"].tolist(), df["prev_hash"].tolist(), strict=True):
        h = int(h)
        if h == 0:
            result.append(ph == GENESIS_PREV_HASH)
        elif h - 1 in hash_at:
            result.append(ph == hash_at[h - 1])
        elif prev_hash is not None and prev_h == h - 1:
            result.append(ph == prev_hash)
        else:
            result.append(None)
    return _series(df, result)


def _median_time_past(times: dict[int, int | None], height: int) -> int | None:
    """Core's GetMedianTimePast of the block at ``height`` from header times, or None if unknown."""
    window = [times.get(h) for h in range(max(0, height - MEDIAN_TIME_SPAN + 1), height + 1)]
    if any(t is None for t in window):
        return None
    ordered = sorted(window)  # type: ignore[type-var]
    return ordered[len(ordered) // 2]


@derived("time_after_mtp")
def _time_after_mtp(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """Core: a block's time must exceed the median time past of its predecessor."""
    times = dict(zip((int(h) for h in df["height"].tolist()), _unix_seconds(df["time"]), strict=True))
    node_mtp = dict(zip((int(h) for h in df["height"].tolist()), _unix_seconds(df["median_time"]), strict=True))
    ctx_mtp = view.context.get("previous_median_time")
    result: list[bool | None] = []
    for h, t in zip(df["height"].tolist(), _unix_seconds(df["time"]), strict=True):
        h = int(h)
        if h == 0 or t is None:
            result.append(None if t is None else True)  # genesis has no predecessor rule
            continue
        mtp = _median_time_past(times, h - 1)
        if mtp is None:
            mtp = node_mtp.get(h - 1)
        if mtp is None and ctx_mtp is not None and view.previous_height == h - 1:
            mtp = int(ctx_mtp)
        result.append(None if mtp is None else t > mtp)
    return _series(df, result)


@derived("median_time_consistent")
def _median_time_consistent(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """The node's reported median_time equals the median of the header times it covers."""
    times = dict(zip((int(h) for h in df["height"].tolist()), _unix_seconds(df["time"]), strict=True))
    result: list[bool | None] = []
    for h, mt in zip(df["height"].tolist(), _unix_seconds(df["median_time"]), strict=True):
        expected = _median_time_past(times, int(h))
        result.append(None if mt is None or expected is None else mt == expected)
    return _series(df, result)


@derived("subsidy_ok")
def _subsidy_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    network = view.network
    if network is None:
        return _series(df, [None] * len(df))
    return _series(df, [int(s) == block_subsidy(int(h), network)
                        for h, s in zip(df["height"].tolist(), df["subsidy_sat"].tolist(), strict=True)])


def _outputs_by_height(view: BatchView) -> tuple[dict[int, int], dict[int, int]] | None:
    outputs = view.frames.get("coinbase_outputs")
    if outputs is None:
        return None
    total: dict[int, int] = {}
    count: dict[int, int] = {}
    for h, v in zip(outputs["height"].tolist(), outputs["value_sat"].tolist(), strict=True):
        total[int(h)] = total.get(int(h), 0) + int(v)
        count[int(h)] = count.get(int(h), 0) + 1
    return total, count


@derived("outputs_sum_ok")
def _outputs_sum_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    by_height = _outputs_by_height(view)
    if by_height is None:
        return _series(df, [None] * len(df))
    total, _ = by_height
    return _series(df, [total.get(int(h), 0) == int(v)
                        for h, v in zip(df["height"].tolist(), df["coinbase_value_sat"].tolist(), strict=True)])


@derived("output_count_ok")
def _output_count_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    by_height = _outputs_by_height(view)
    if by_height is None:
        return _series(df, [None] * len(df))
    _, count = by_height
    return _series(df, [count.get(int(h), 0) == int(n)
                        for h, n in zip(df["height"].tolist(), df["output_count"].tolist(), strict=True)])


@derived("attribution_count")
def _attribution_count(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """Attributions rows per block in this batch (null when the batch carries no attributions)."""
    attributions = view.frames.get("attributions")
    if attributions is None:
        return _series(df, [None] * len(df), "Int64")
    counts = attributions["height"].value_counts().to_dict()
    return _series(df, [int(counts.get(h, 0)) for h in df["height"].tolist()], "Int64")


@derived("block_hash_ok")
def _block_hash_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """A row's block_hash is the hash of the block at its height in the same batch."""
    blocks = view.frames.get("blocks")
    if blocks is None:
        return _series(df, [None] * len(df))
    hash_at = _first_by_height(blocks, "hash")
    return _series(df, [hash_at.get(int(h)) == bh
                        for h, bh in zip(df["height"].tolist(), df["block_hash"].tolist(), strict=True)])


# Script types with an address on every network, and those that never have one
# (schemas/tables/coinbase_outputs.json, pipeline.chain.scripts).
_ADDRESS_REQUIRED = frozenset({"p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr"})
_ADDRESS_FORBIDDEN = frozenset({"p2pk", "multisig", "op_return", "nonstandard", "witness_commitment"})


@derived("address_presence_ok")
def _address_presence_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    result: list[bool | None] = []
    for st, addr in zip(df["script_type"].tolist(), df["address"].tolist(), strict=True):
        has = isinstance(addr, str) and addr != ""
        if st in _ADDRESS_REQUIRED:
            result.append(has)
        elif st in _ADDRESS_FORBIDDEN:
            result.append(not has)
        else:
            result.append(None)
    return _series(df, result)


UNKNOWN_POOL_ID = "unknown"  # pipeline.attribution.engine's id for blocks no rule matched


@derived("pool_id_known")
def _pool_id_known(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """pool_id is 'unknown' or a pool of the registry version used (null: no registry in context)."""
    pool_ids = view.context.get("pool_ids")
    if pool_ids is None:
        return _series(df, [None] * len(df))
    known = set(pool_ids) | {UNKNOWN_POOL_ID}
    return _series(df, [p in known for p in df["pool_id"].tolist()])


@derived("registry_version_ok")
def _registry_version_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """Rows carry the registry version the batch was attributed with (null: not in context)."""
    version = view.context.get("registry_version")
    if version is None:
        return _series(df, [None] * len(df))
    return _series(df, [v == version for v in df["registry_version"].tolist()])


@derived("unknown_consistent")
def _unknown_consistent(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """A block is 'unknown' exactly when no evidence (method none) decided it."""
    return _series(df, [(p == UNKNOWN_POOL_ID) == (m == "none")
                        for p, m in zip(df["pool_id"].tolist(), df["method"].tolist(), strict=True)])


# Shares and indices are floats computed by DuckDB/numpy; sums may differ from 1 in the last bits.
FLOAT_TOLERANCE = 1e-9


def _window_groups(df: pd.DataFrame) -> list[Any]:
    """Group keys of a metrics table: one window of one kind at one level."""
    return [df["window_kind"], df["window_id"], df["level"]]


@derived("share_sum_ok")
def _share_sum_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """Shares of all entities of a window (the unknown row included) sum to 1."""
    sums = df.groupby(_window_groups(df), dropna=False)["share"].transform("sum")
    return _series(df, ((sums - 1.0).abs() <= FLOAT_TOLERANCE).tolist())


@derived("share_of_known_sum_ok")
def _share_of_known_sum_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """share_of_known over the known entities of a window sums to 1 (null: no known entity)."""
    known = df["share_of_known"].where(~df["is_unknown"].astype(bool))
    sums = known.groupby(_window_groups(df), dropna=False).transform("sum")
    counts = known.groupby(_window_groups(df), dropna=False).transform("count")
    return _series(df, [None if c == 0 else abs(s - 1.0) <= FLOAT_TOLERANCE
                        for s, c in zip(sums.tolist(), counts.tolist(), strict=True)])


@derived("blocks_sum_ok")
def _blocks_sum_ok(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """Blocks of all entities of a window add up to the window's blocks_total."""
    sums = df.groupby(_window_groups(df), dropna=False)["blocks"].transform("sum")
    return _series(df, (sums == df["blocks_total"]).tolist())


@derived("share_in_interval")
def _share_in_interval(df: pd.DataFrame, view: BatchView) -> pd.Series:
    lo, share, hi = df["share_lo"], df["share"], df["share_hi"]
    return _series(df, ((lo <= share + FLOAT_TOLERANCE) & (share <= hi + FLOAT_TOLERANCE)).tolist())


@derived("hhi_in_bounds")
def _hhi_in_bounds(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """HHI lies in [1/n, 1] for n entities (null when the window counts no block)."""
    result: list[bool | None] = []
    for hhi, n in zip(df["hhi"].tolist(), df["n_entities"].tolist(), strict=True):
        if hhi is None or hhi != hhi or not n:
            result.append(None)
        else:
            result.append(1.0 / n - FLOAT_TOLERANCE <= hhi <= 1.0 + FLOAT_TOLERANCE)
    return _series(df, result)


@derived("top_shares_ordered")
def _top_shares_ordered(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """0 < top1 <= top3 <= top5 <= 1 of known blocks; each share of all <= its share of known
    (null when no block is known)."""
    result: list[bool | None] = []
    known = zip(df["top1_share_of_known"].tolist(), df["top3_share_of_known"].tolist(),
                df["top5_share_of_known"].tolist(), df["top1_share_of_all"].tolist(),
                df["top3_share_of_all"].tolist(), df["top5_share_of_all"].tolist(), strict=True)
    e = FLOAT_TOLERANCE
    for k1, k3, k5, a1, a3, a5 in known:
        if any(v is None or v != v for v in (k1, k3, k5, a1, a3, a5)):
            result.append(None)
        else:
            result.append(0 < k1 <= k3 + e and k3 <= k5 + e and k5 <= 1 + e
                          and a1 <= k1 + e and a3 <= k3 + e and a5 <= k5 + e and a1 > 0)
    return _series(df, result)


@derived("nakamoto_in_bounds")
def _nakamoto_in_bounds(df: pd.DataFrame, view: BatchView) -> pd.Series:
    """1 <= Nakamoto coefficient <= number of entities (null when not computed)."""
    result: list[bool | None] = []
    for k, n in zip(df["nakamoto"].tolist(), df["n_entities"].tolist(), strict=True):
        if k is None or k != k:
            result.append(None)
        else:
            result.append(1 <= k <= n)
    return _series(df, result)


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _short(v: Any, limit: int = 60) -> str:
    if isinstance(v, dict) and "$PARAMETER" in v:
        return f"${v['$PARAMETER']}"
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
    """One failed expectation on one table."""

    table: str
    expectation: str  # e.g. expect_column_values_to_be_unique(height)
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
    evaluated: int  # number of expectations evaluated over all tables
    context: dict[str, Any]  # JSON-safe summary of the validation context
    gx_results: dict[str, dict] = field(default_factory=dict, repr=False)  # table -> GX result JSON

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        counts = ", ".join(f"{t}: {n} rows" for t, n in self.row_counts.items())
        span = f"heights {self.heights[0]}..{self.heights[1]}" if self.heights else "no heights"
        head = f"batch {self.batch_id} ({span}; {counts})"
        if self.ok:
            return f"{head}: all {self.evaluated} expectations passed"
        lines = [f"{head}: {len(self.failures)} of {self.evaluated} expectations failed"]
        lines += [f"  - {f.line()}" for f in self.failures]
        return "\n".join(lines)

    def merged(self, other: ValidationReport) -> ValidationReport:
        """This report joined with ``other``, made on the other tables of the same batch
        (``validate_batch(..., only=...)``): one verdict, this report's id, tables in batch order."""
        rank = {t: i for i, t in enumerate(self.row_counts)}  # row_counts names every table of the batch
        failures = sorted(self.failures + other.failures, key=lambda f: rank[f.table])
        results = sorted({**self.gx_results, **other.gx_results}.items(), key=lambda kv: rank[kv[0]])
        return replace(self, failures=failures, evaluated=self.evaluated + other.evaluated, gx_results=dict(results))

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "created": self.created, "ok": self.ok,
            "row_counts": self.row_counts, "heights": list(self.heights) if self.heights else None,
            "evaluated": self.evaluated, "context": self.context,
            "failures": [f.__dict__ for f in self.failures], "summary": self.summary(),
            "gx_results": self.gx_results,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> ValidationReport:
        d = json.loads(text)
        return cls(batch_id=d["batch_id"], created=d["created"], row_counts=d["row_counts"],
                   heights=tuple(d["heights"]) if d.get("heights") else None,  # type: ignore[arg-type]
                   failures=[Failure(**f) for f in d["failures"]], evaluated=d["evaluated"],
                   context=d.get("context", {}), gx_results=d.get("gx_results", {}))


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


def parameter_values(context: Mapping[str, Any]) -> dict[str, Any]:
    """Values of the run-time expectation parameters declared in the suites."""
    now = int(context.get("now") or datetime.now(UTC).timestamp())
    return {"max_block_time": now + MAX_FUTURE_BLOCK_TIME}


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
        self._suites: dict[tuple[str, tuple[str, ...]], Any] = {}
        quiet_great_expectations()  # loggers made while the context was set up

    def batch_definition(self, table: str) -> Any:
        if table not in self._batch_defs:
            asset = self.source.add_dataframe_asset(table)
            self._batch_defs[table] = asset.add_batch_definition_whole_dataframe(f"{table}_batch")
        return self._batch_defs[table]

    def suite(self, table: str, decl: SuiteDecl, spec: TableSpec, skip_params: tuple[str, ...]) -> Any:
        key = (table, skip_params)
        if key not in self._suites:
            self._suites[key] = build_gx_suite(decl, spec, skip_params=skip_params,
                                               name=f"{table}" + (f"__without_{'_'.join(skip_params)}" if skip_params else ""))
        return self._suites[key]


@lru_cache(maxsize=1)
def _gx() -> _GX:
    return _GX()


def warm_up() -> None:
    """Import Great Expectations and make this process's GX context now (a few seconds, once),
    so the first batch validated here does not pay for it."""
    _gx()


def _uses_parameter(kwargs: Mapping[str, Any], names: tuple[str, ...]) -> bool:
    return any(isinstance(v, dict) and v.get("$PARAMETER") in names for v in kwargs.values())


def build_gx_suite(decl: SuiteDecl, spec: TableSpec, *, skip_params: tuple[str, ...] = (),
                   name: str | None = None) -> Any:
    """The GX ExpectationSuite for a table: schema-derived expectations plus the declared ones.

    Expectations that use a run-time parameter listed in ``skip_params`` are left out (the caller has
    no value for it, e.g. no registry in context).
    """
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    suite = gx.ExpectationSuite(name=name or decl.table)
    for e in decl.all_expectations(spec):
        if _uses_parameter(e.kwargs, skip_params):
            continue
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


def validate_table(table: str, view: BatchView, params: Mapping[str, Any],
                   passing_detail: str = "BASIC") -> tuple[dict, list[Failure], int]:
    """Run one table's suite; returns (GX result as JSON dict, failures, expectations evaluated).

    ``passing_detail``: the GX result format kept when the table passes ("BASIC", or "BOOLEAN_ONLY"
    when the caller keeps no result of a passing batch); a failing table always gets COMPLETE."""
    spec = table_spec(table)
    decl = suite_decl(table) or _empty_decl(table)
    frame = view.frames[table].copy()
    for name in decl.derived:
        frame[name] = DERIVED[name](view.frames[table], view)
    required = _required_columns(spec)
    if required:
        frame[NULLS_COLUMN] = null_required_columns(view.frames[table], required)
    skip = tuple(sorted(p for p, v in params.items() if v is None))
    runtime = _gx()
    suite = runtime.suite(table, decl, spec, skip)
    row_id = [c for c in (decl.row_id or spec.unique) if c in frame.columns]
    batch = runtime.batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
    used = {k: v for k, v in params.items() if v is not None}
    # Two passes: BASIC (counts, observed values, a sample of unexpected values) costs ~35% less
    # than COMPLETE, BOOLEAN_ONLY ~45% less, and nearly every batch passes. Only a table that
    # fails is validated again with COMPLETE, which names every failing row: same verdict, full
    # detail where it is read.
    result = batch.validate(suite, expectation_parameters=used, result_format={"result_format": passing_detail})
    if not result.success:
        complete: dict[str, Any] = {"result_format": "COMPLETE"}
        if row_id:
            complete["unexpected_index_column_names"] = row_id
        result = batch.validate(suite, expectation_parameters=used, result_format=complete)
    as_json = result.to_json_dict()
    return as_json, _failures_from(table, as_json, row_id), len(result.results)


def validate_batch(tables: Mapping[str, pa.Table], context: Mapping[str, Any] | None = None, *,
                   only: Collection[str] | None = None, passing_detail: str = "BASIC") -> ValidationReport:
    """Validate every table of a batch against its suite; never raises on bad data.

    ``only``: run just these tables' suites (every table still feeds the cross-table checks), so
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
    view = BatchView(frames={name: _frame(t) for name, t in tables.items()}, context=context)
    params = parameter_values(context)
    failures: list[Failure] = []
    gx_results: dict[str, dict] = {}
    evaluated = 0
    for name in tables:
        if only is not None and name not in only:
            continue
        result, table_failures, n = validate_table(name, view, params, passing_detail)
        gx_results[name] = result
        evaluated += n
        failures += table_failures
    return ValidationReport(
        batch_id=new_batch_id(tables), created=datetime.now(UTC).isoformat(timespec="seconds"),
        row_counts={name: t.num_rows for name, t in tables.items()}, heights=_batch_heights(tables),
        failures=failures, evaluated=evaluated, context=_json_safe_context(context), gx_results=gx_results)


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


def gate(warehouse: Any, tables: Mapping[str, pa.Table], report: ValidationReport | None, **commit: Any) -> None:
    """The one gate between a batch and the warehouse (loads, re-attribution, metrics): a failed
    report quarantines the batch and raises ``BatchRejected`` (nothing stored); a passing one is
    committed (``commit``: ``Warehouse.commit`` options) and its summary kept for Data Docs.
    ``report`` None: the caller chose not to validate."""
    if report is not None and not report.ok:
        raise BatchRejected(report.summary(), quarantine(warehouse.root, tables, report))
    warehouse.commit(tables, **commit)
    if report is not None:
        save_report(warehouse.root, report)


def check_batch(warehouse_root: Path | str, tables: Mapping[str, pa.Table],
                context: Mapping[str, Any] | None = None) -> ValidationReport:
    """validate_batch + quarantine on failure (raises BatchRejected) + save_report on success."""
    report = validate_batch(tables, context)
    if not report.ok:
        where = quarantine(warehouse_root, tables, report)
        raise BatchRejected(report.summary(), where)
    save_report(warehouse_root, report)
    return report


def build_data_docs(warehouse_root: Path | str, limit: int | None = None) -> Path:
    """Render the suites and the kept validation results as static, offline HTML in
    <warehouse>/data_docs/ (``pipeline.store.datadocs``); returns the path of index.html."""
    from pipeline.store.datadocs import DEFAULT_RESULTS, build_site

    return build_site(warehouse_root, limit or DEFAULT_RESULTS)
