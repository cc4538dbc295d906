"""Parquet warehouse: partitioned tables, atomic multi-table commits, writer lock, DuckDB catalog.

Layout (see docs/warehouse.md for the reasoning behind every choice)::

    <root>/.writer.lock                    flock'ed by the one writer; holds its pid and start time
    <root>/meta.json                       chain, genesis hash, registry version, schema version
    <root>/poolwatch.duckdb                catalog of views, rebuilt in a temp file and renamed over
    <root>/journal/<id>.json               redo journal of a commit being applied
    <root>/data/<table>/_schema.parquet    zero-row file: views work (typed) on an empty table
    <root>/data/<table>/[<col>=<v>/][bucket=<n>/]part.parquet   one file per partition

Data files have stable names and are replaced in place with ``os.replace`` (never deleted; a
partition emptied by a rollback becomes a zero-row file). Every new version gets an mtime (whole
seconds) strictly greater than the one it replaces, because DuckDB's external file cache validates
cached blocks by path + second-resolution mtime; without that a concurrent reader could combine an
old footer with new bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store.schemas import TableSpec, all_table_specs, table_spec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CATALOG_NAME = "poolwatch.duckdb"
# Beside the catalog: the digest of the statements it was built from (``_catalog_is_current``).
CATALOG_DIGEST_NAME = "poolwatch.duckdb.inputs"
# The catalog file is written in DuckDB's v1.0.0 storage format, not the library's own (duckdb 2.0
# writes storage version 69, which no 1.x release opens): it holds only views, so nothing is lost,
# and every DuckDB from 0.10 on, the CLIs on PyPI (duckdb-cli 1.4.x/1.5.x) included, opens it.
# Measured and tested: docs/warehouse.md, tests/test_duckdb_cli.py.
CATALOG_STORAGE_VERSION = "v1.0.0"
LOCK_NAME = ".writer.lock"
SCHEMA_FILE = "_schema.parquet"
PART_FILE = "part.parquet"
TMP_SUFFIX = ".tmp"  # never matches the views' `*.parquet` glob (DuckDB's glob does match dot-files)
NULL_PARTITION = "__null__"
# Extra views: every `<view name>.sql` file under this folder (any depth, e.g. sql/metrics/),
# holding one query over the table views (or over other extra views).
DEFAULT_VIEWS_DIR = Path(__file__).resolve().parent.parent / "sql"

_DUCKDB_TYPES = {
    "bool": "BOOLEAN",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "string": "VARCHAR",
    "timestamp[s, tz=UTC]": "TIMESTAMPTZ",
    "date32": "DATE",
    "list<string>": "VARCHAR[]",
}


class WarehouseError(RuntimeError):
    """Base of the warehouse's own errors."""


class StagedOverlapError(WarehouseError):
    """A commit was staged over files that another staged commit, not yet published, writes."""


@dataclass
class StagedCommit:
    """A commit written but not yet published (``Warehouse.stage``)."""

    commit_id: str
    tables: dict[str, pa.Table]          # conformed: what meta.json's bookkeeping is worked out from
    files: list[tuple[Path, Path]]       # (temporary file, the file it replaces)
    derived_from: str | None = None
    derived_meta: dict[str, object] | None = None


class WarehouseBusyError(WarehouseError):
    """Another process holds the writer lock."""


class WriterLockRequiredError(WarehouseError):
    """A mutation was attempted outside ``with warehouse.writer():``."""


class UniqueViolationError(WarehouseError, ValueError):
    """A batch (or batch + stored rows) holds two rows with the same unique key."""


class ChainMismatchError(WarehouseError):
    """The warehouse already holds data of another chain."""


def default_root() -> Path:
    return Path(os.environ.get("POOLWATCH_WAREHOUSE", "warehouse"))


# ----------------------------------------------------------------------------- small file helpers


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # A rename or unlink is durable only once its directory is synced.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _next_mtime(final: Path) -> int:
    """A whole-second mtime strictly after the file being replaced (see module docstring)."""
    now = int(time.time())
    try:
        return max(now, int(os.stat(final).st_mtime) + 1)
    except FileNotFoundError:
        return now


def _write_parquet_tmp(table: pa.Table, final: Path, commit_id: str, spec: TableSpec) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.{commit_id}{TMP_SUFFIX}")
    # One chunk per column: the writer cuts pages along chunk boundaries, so the same rows split
    # differently in memory would give other bytes (free when the rows are one chunk already).
    dictionary = [c for c in spec.dictionary_columns if c in table.column_names]
    pq.write_table(table.combine_chunks(), tmp, compression="zstd", row_group_size=1 << 20, use_dictionary=dictionary)
    mtime = _next_mtime(final)
    os.utime(tmp, (mtime, mtime))
    _fsync_file(tmp)
    return tmp


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _host() -> str:
    """This machine's name as recorded in the lock file and temp names (a PID alone says nothing
    on a warehouse shared by several hosts)."""
    return os.uname().nodename


# ----------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class _Partition:
    """One data file: the values of the by-value columns and the height bucket (None if unused)."""

    values: tuple[str, ...]  # encoded by-value directory values, in spec order
    bucket: int | None

    def path(self, table_dir: Path, spec: TableSpec) -> Path:
        parts = [f"{col}={val}" for col, val in zip(spec.partition_by_value, self.values)]
        if self.bucket is not None:
            parts.append(f"bucket={self.bucket}")
        return table_dir.joinpath(*parts, PART_FILE)


def _encode_value(value: object) -> str:
    if value is None:
        return NULL_PARTITION
    return urllib.parse.quote(str(value), safe="-_.")


def _partition_rows(spec: TableSpec, table: pa.Table) -> dict[_Partition, np.ndarray]:
    """The row indices (ascending) of ``table`` in each partition. Vectorised: every distinct
    partition value is encoded once, not once per row (per-row Python cost ~100 ms per 20,000 rows,
    which made a whole-history re-attribution and every metrics commit scale with the rows)."""
    n = table.num_rows
    if n == 0:
        return {}
    codes: list[np.ndarray] = []
    labels: list[list[str]] = []
    for col in spec.partition_by_value:
        encoded = pc.dictionary_encode(table.column(col).combine_chunks(), null_encoding="encode")
        codes.append(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))
        labels.append([_encode_value(v) for v in encoded.dictionary.to_pylist()])
    if spec.partition_column is not None:
        values = table.column(spec.partition_column).combine_chunks().to_numpy(zero_copy_only=False)
        codes.append(np.floor_divide(values.astype(np.int64), spec.bucket_size or 1))
    if not codes:
        return {_Partition((), None): np.arange(n, dtype=np.int64)}
    # One int64 key per row (mixed radix over the columns' code ranges): a 1-D unique is far
    # cheaper than a row-wise one.
    combined = np.zeros(n, dtype=np.int64)
    for c in codes:
        combined = combined * int(c.max() - c.min() + 1) + (c - c.min())
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # rows of one partition stay in table order
    bounds = np.searchsorted(inverse[order], np.arange(len(first) + 1))
    out: dict[_Partition, np.ndarray] = {}
    for g, row in enumerate(first.tolist()):
        values_part = tuple(labels[i][int(codes[i][row])] for i in range(len(labels)))
        bucket = int(codes[-1][row]) if spec.partition_column is not None else None
        out[_Partition(values_part, bucket)] = order[bounds[g]:bounds[g + 1]]
    return out


def _stored_partitions(spec: TableSpec, table_dir: Path) -> dict[_Partition, Path]:
    return _scan_files(spec, table_dir)[0]


def _scan_files(spec: TableSpec, table_dir: Path) -> tuple[dict[_Partition, Path], list[Path]]:
    """One walk of a table's data files: (the partitions of its declared layout, the files laid out
    for another partitioning of it, sorted). The latter (e.g. the metric tables' one file from before
    they were partitioned by window kind and first height) are read into the current layout by the
    table's next commit and left as zero-row files, in the same journal."""
    out: dict[_Partition, Path] = {}
    other: list[Path] = []
    if not table_dir.is_dir():
        return out, other
    depth = len(spec.partition_by_value) + (spec.partition_column is not None)
    for path in table_dir.rglob(PART_FILE):
        rel = path.relative_to(table_dir).parts[:-1]
        if len(rel) != depth:
            other.append(path)
            continue
        values = tuple(p.split("=", 1)[1] for p in rel[: len(spec.partition_by_value)])
        bucket = None
        if spec.partition_column is not None:
            bucket = int(rel[len(spec.partition_by_value)].split("=", 1)[1])
        out[_Partition(values, bucket)] = path
    return out, sorted(other)


def _rows_at(table: pa.Table, idx: np.ndarray | None) -> pa.Table:
    """``table``'s rows at ascending indices ``idx``: a zero-copy slice when they are consecutive (a
    batch sorted by height falls into its buckets that way), else a take."""
    if idx is None or not len(idx):
        return table.slice(0, 0)
    if int(idx[-1]) - int(idx[0]) + 1 == len(idx):
        return table.slice(int(idx[0]), len(idx))
    return table.take(pa.array(idx, pa.int64()))


def _duplicate_keys(table: pa.Table, columns: Iterable[str], limit: int = 5) -> list[dict]:
    """Up to ``limit`` key values that occur more than once in ``table``."""
    columns = list(columns)
    if not columns or table.num_rows < 2:
        return []
    # Fast path (a partition of attributions: one registry_version, heights): key columns holding
    # one value throughout cannot tell rows apart; when what is left is one integer column without
    # nulls, numpy finds its repeats far faster than a hash group-by.
    varying = [c for c in columns if table.column(c).null_count or pc.count_distinct(table.column(c)).as_py() > 1]
    if (len(varying) == 1 and pa.types.is_integer(table.schema.field(varying[0]).type)
            and not table.column(varying[0]).null_count):
        values = table.column(varying[0]).to_numpy()
        ordered = np.sort(values, kind="stable")
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])[:limit]
        if not len(repeated):
            return []
        rows = table.filter(pc.is_in(table.column(varying[0]), value_set=pa.array(repeated.tolist())))
        first = rows.select(columns).group_by(columns).aggregate([])
        return first.slice(0, limit).to_pylist()
    if not varying:
        return table.select(columns).slice(0, 1).to_pylist()
    counts = table.select(columns).group_by(columns).aggregate([([], "count_all")])
    dups = counts.filter(pc.greater(counts.column("count_all"), 1))
    return dups.select(columns).slice(0, limit).to_pylist()


def _rows_matching(table: pa.Table, keys: pa.Table) -> pa.Array:
    """Boolean mask: rows of ``table`` whose (keys.column_names) values occur in ``keys``."""
    cols = keys.column_names
    if table.num_rows == 0:
        return pa.array([], pa.bool_())
    if len(cols) == 1:
        return pc.fill_null(pc.is_in(table.column(cols[0]), value_set=keys.column(0).combine_chunks()), False)
    idx = table.select(cols).append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    hit = idx.join(keys.group_by(cols).aggregate([]), keys=cols, join_type="left semi").column("__row")
    return pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=hit.combine_chunks())


def _sort(spec: TableSpec, table: pa.Table) -> pa.Table:
    if not spec.sort_by or table.num_rows < 2:
        return table
    if _in_order(table, spec.sort_by):
        return table
    return table.sort_by([(c, "ascending") for c in spec.sort_by])


def _in_order(table: pa.Table, columns: Sequence[str]) -> bool:
    """Whether ``table`` is already sorted by ``columns`` (a batch built in height order, rows read
    back from height buckets): a stable sort would give the same table, so one vectorised pass of
    comparisons replaces a sort and a take. Tables with nulls in a key are left to the sort."""
    keys = [table.column(c) for c in columns]
    if any(k.null_count for k in keys):
        return False
    # Row i <= row i+1 lexicographically: built from the last key column backwards.
    ok = pc.less_equal(keys[-1][:-1], keys[-1][1:])
    for key in reversed(keys[:-1]):
        a, b = key[:-1], key[1:]
        ok = pc.or_(pc.less(a, b), pc.and_(pc.equal(a, b), ok))
    return bool(pc.all(ok).as_py())


# ----------------------------------------------------------------------------- journal


@dataclass
class _Plan:
    """Files staged by one commit: temp -> final renames (relative to root) and deletions."""

    commit_id: str
    renames: list[tuple[str, str]]
    deletes: list[str]


def _apply_plan(root: Path, renames: list[list[str]] | list[tuple[str, str]], deletes: list[str]) -> None:
    """Idempotent: safe to repeat after a crash half-way through (a missing temp = already renamed)."""
    dirs: set[Path] = set()
    for tmp_rel, final_rel in renames:
        tmp, final = root / tmp_rel, root / final_rel
        if tmp.exists():
            os.replace(tmp, final)
            dirs.add(final.parent)
    for rel in deletes:
        with contextlib.suppress(FileNotFoundError):
            (root / rel).unlink()
            dirs.add((root / rel).parent)
    for d in dirs:
        _fsync_dir(d)


# ----------------------------------------------------------------------------- the warehouse


class Warehouse:
    """A folder of Parquet tables plus a DuckDB catalog; one writer at a time, any number of readers."""

    def __init__(self, root: Path | str | None = None, views_dir: Path | None = None) -> None:
        self.root = Path(root if root is not None else default_root()).resolve()
        self.views_dir = Path(views_dir) if views_dir is not None else DEFAULT_VIEWS_DIR
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._staged: dict[str, StagedCommit] = {}  # staged, not yet published or discarded
        self._view_files: dict[str, Path] = {}

    # -- paths
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def journal_dir(self) -> Path:
        return self.root / "journal"

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_NAME

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def table_dir(self, table: str) -> Path:
        return self.data_dir / table

    def table_glob(self, table: str) -> str:
        return str(self.table_dir(table) / "**" / "*.parquet")

    # -- writer lock
    @property
    def is_writer(self) -> bool:
        return self._lock_fd is not None

    @contextlib.contextmanager
    def writer(self, wait: float = 0) -> Iterator[Warehouse]:
        """Exclusive writer lock (flock on <root>/.writer.lock); re-entrant within this object.

        On first entry the warehouse is recovered: a complete journal is rolled forward, orphan
        temp files are removed, missing ``_schema.parquet`` files and the catalog are created.
        """
        if self._lock_fd is not None:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = self._acquire(wait)
        self._lock_fd, self._lock_depth = fd, 1
        try:
            self._recover()
            yield self
        finally:
            try:
                self._drop_unpublished()
            finally:
                self._lock_fd, self._lock_depth = None, 0
                os.close(fd)  # releases the flock

    def _acquire(self, wait: float) -> int:
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(wait, 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = self._holder_text(fd)
                    os.close(fd)
                    raise WarehouseBusyError(
                        f"warehouse {self.root} is busy: another writer ({holder}) holds {path}; "
                        f"waited {wait:g} s. Let it finish, or retry with a longer wait."
                    ) from None
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0.001)))
        info = {"pid": os.getpid(), "host": _host(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd

    @staticmethod
    def _holder_text(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "holder unknown: it has not written its pid yet"
        return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"

    def _require_writer(self, action: str) -> None:
        if self._lock_fd is None:
            raise WriterLockRequiredError(
                f"{action} needs the writer lock: use `with warehouse.writer(): ...` ({self.root})")

    # -- recovery
    def _recover(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        for journal in sorted(self.journal_dir.glob("*.json")):
            doc = json.loads(journal.read_text())
            _apply_plan(self.root, doc["renames"], doc["deletes"])
            journal.unlink()
            _fsync_dir(self.journal_dir)
        # Temp files left without a complete journal belong to a commit that never happened.
        for tmp in list(self.journal_dir.glob(f"*{TMP_SUFFIX}")) + list(self.data_dir.rglob(f"*{TMP_SUFFIX}")):
            tmp.unlink(missing_ok=True)
        for tmp in self.root.glob(f"*{TMP_SUFFIX}"):
            if tmp.name.startswith("meta.json."):
                tmp.unlink(missing_ok=True)
        self._remove_stale_catalog_temps()
        schemas_written = self._ensure_schema_files(all_table_specs())
        # Picks up tables and view files added since the last run; a broken view file must not stop
        # the writer (explicit refresh_catalog() calls do raise). Skipped when the catalog was built
        # from exactly the statements it would be built from now: a load takes the lock once per
        # batch, and rebuilding (binding every view over every Parquet file) cost more than the commit.
        if schemas_written or not self._catalog_is_current():
            self.refresh_catalog(strict=False, force=True)

    def _remove_stale_catalog_temps(self) -> None:
        """Leftovers of an interrupted catalog or Data Docs build. Every one of them is made under the
        writer lock, which this process now holds: whatever host or process made them is gone, so
        no liveness check (a PID means nothing on another host) is needed or attempted."""
        for tmp in self.root.glob(f".{CATALOG_NAME}.*"):
            tmp.unlink(missing_ok=True)
        for leftover in (self.root / ".data_docs.tmp", self.root / ".data_docs.old"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        for tmp in (self.root / "validations").glob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        quarantine = self.root / "quarantine"
        if quarantine.is_dir():
            for tmp in quarantine.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def _ensure_schema_files(self, specs: Iterable[TableSpec]) -> bool:
        """Write ``data/<table>/_schema.parquet`` where missing or stale; True if any was written.
        A file this process found (or wrote) right is not read again while its inode, size and
        mtime are unchanged (the writer lock is taken once per committed batch)."""
        changed = False
        for spec in specs:
            path = self.table_dir(spec.name) / SCHEMA_FILE
            key = str(path.resolve())
            stamp = _file_stamp(path)
            if stamp is not None and _SCHEMA_FILES_CHECKED.get(key) == (spec.name, stamp):
                continue
            expected = spec.arrow_schema.empty_table()
            if stamp is None or not pq.read_schema(path).remove_metadata().equals(
                    pq.read_table(_schema_probe(expected)).schema.remove_metadata()):
                tmp = _write_parquet_tmp(expected, path, secrets.token_hex(8), spec)
                os.replace(tmp, path)
                _fsync_dir(path.parent)
                changed = True
            stamp = _file_stamp(path)
            if stamp is not None:
                _SCHEMA_FILES_CHECKED[key] = (spec.name, stamp)
        return changed

    # -- meta
    @property
    def meta(self) -> dict:
        try:
            doc = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            doc = {}
        doc.setdefault("schema_version", SCHEMA_VERSION)
        return doc

    def set_meta(self, **kv: object) -> None:
        self._require_writer("set_meta")
        doc = self.meta
        doc.update(kv)
        _write_bytes_atomic(self.meta_path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def bind_chain(self, chain: str, genesis_hash: str) -> None:
        """Record which chain this warehouse holds; refuse to mix chains."""
        meta = self.meta
        held = (meta.get("chain"), meta.get("genesis_hash"))
        if held == (chain, genesis_hash):
            return
        if held != (None, None):
            raise ChainMismatchError(
                f"warehouse {self.root} holds chain {held[0]!r} (genesis {held[1]}), not {chain!r} "
                f"(genesis {genesis_hash}); use another warehouse folder (--warehouse / POOLWATCH_WAREHOUSE)")
        self.set_meta(chain=chain, genesis_hash=genesis_hash)

    @property
    def attribution_version(self) -> str | None:
        """The version label the current attribution rows carry (registry version + settings);
        warehouses written before settings were recorded label them with the registry version."""
        meta = self.meta
        return meta.get("attribution_version") or meta.get("registry_version")

    def freshness(self) -> dict[str, object]:
        """Whether the derived (metric) tables still follow from the stored blocks and attributions.

        ``stale`` is true when they were never computed, were computed from another attribution
        version, or blocks/attributions changed since (``dirty``: the lowest and highest height
        touched since; ``pipeline.metrics.refresh_metrics`` recomputes exactly the windows there).
        """
        meta = self.meta
        derived = meta.get("derived") or {}
        current = self.attribution_version
        dirty = meta.get("dirty")
        revision = int(meta.get("data_revision", 0))
        if not derived:
            reason = "never computed"
        elif derived.get("attribution_version") != current:
            reason = (f"computed from attribution version {derived.get('attribution_version')}, the warehouse's is "
                      f"{current}")
        elif dirty:
            reason = f"blocks or attributions at heights {dirty[0]}..{dirty[1]} changed after they were computed"
        elif derived.get("revision") is not None and int(derived["revision"]) < revision:
            # A commit of tables outside the chain (e.g. the evidence behind the inferred level)
            # touches no height, and may still change the metrics.
            reason = (f"tables changed after they were computed (data revision {revision}, computed at "
                      f"{derived['revision']})")
        else:
            reason = ""
        return {"stale": bool(reason), "reason": reason, "dirty": dirty, "data_revision": meta.get("data_revision", 0),
                "computed_at_revision": derived.get("revision"), "computed_from": derived.get("attribution_version"),
                "attribution_version": current}

    # -- commits
    def commit(self, tables: Mapping[str, pa.Table], *, derived_from: str | None = None,
               derived_meta: Mapping[str, object] | None = None,
               replace_range: Mapping[str, tuple[int, int]] | None = None) -> None:
        """Store ``tables`` atomically: either every table changes or none does.

        Rows replace every stored row with the same ``replace_by`` values (every stored row of a
        table declared ``replace_all``, even when the batch is empty); a batch that repeats a
        ``unique`` key, or that would duplicate a stored key, is refused before anything changes.

        The bookkeeping in meta.json changes in the same atomic step (same journal): a commit of
        base tables bumps ``data_revision`` and widens the ``dirty`` height range (of the
        height-partitioned chain tables) that the derived tables have not seen yet; a commit of derived tables (``derived_from``: the attribution
        version they were computed from, under the writer lock held since they were read) records
        that they follow from the current data and clears ``dirty``; ``derived_meta`` (top-level
        meta.json keys, e.g. the metrics' settings) is recorded in that same step.

        ``replace_range`` {table: (lo, hi)}: for a table with a partition column, the batch is the
        whole new content of the rows whose partition column lies in [lo, hi] (inclusive): those
        stored rows are replaced whatever their replace_by values, the rest are kept, and only the
        partitions overlapping the range (or receiving rows) are read and rewritten. Every batch row
        must lie in the range. The metrics' incremental refresh rewrites only the windows it
        recomputed this way, not the whole history's tables.
        """
        self.publish(self.stage(tables, derived_from=derived_from, derived_meta=derived_meta,
                                replace_range=replace_range))

    def stage(self, tables: Mapping[str, pa.Table], *, derived_from: str | None = None,
              derived_meta: Mapping[str, object] | None = None,
              replace_range: Mapping[str, tuple[int, int]] | None = None) -> StagedCommit:
        """The first half of ``commit``: every check, and the new data files written beside the
        stored ones under temporary names (invisible to readers, removed by recovery after a
        crash). Nothing changes until ``publish``; ``discard`` drops it. Lets a caller write a
        batch while its validation is still running. Several may be staged at once when they
        write different files (else: ``StagedOverlapError``); each is published under the same
        writer lock, and meta.json is worked out then, from the meta of the time."""
        self._require_writer("stage")
        conformed = {name: self._conform(table_spec(name), t) for name, t in tables.items()}
        specs = [table_spec(n) for n in conformed]
        if any(s.derived for s in specs) and derived_from is None:
            raise ValueError("committing derived tables needs derived_from (the attribution version they follow)")
        unknown = sorted(set(replace_range or {}) - set(conformed))
        if unknown:
            raise ValueError(f"replace_range names table(s) {unknown} that the commit does not hold")
        commit_id = self._new_commit_id()
        files: list[tuple[Path, Path]] = []
        try:
            self._ensure_schema_files(specs)
            for name, batch in conformed.items():
                files += self._stage_table(table_spec(name), batch, commit_id, (replace_range or {}).get(name))
            pending = {final for other in self._staged.values() for _, final in other.files}
            overlap = sorted(str(final) for _, final in files if final in pending)
            if overlap:
                raise StagedOverlapError(f"staging {overlap[0]} (and {len(overlap) - 1} more) again before the "
                                         "commit that staged it was published or discarded")
        except BaseException:
            for tmp, _ in files:
                tmp.unlink(missing_ok=True)
            raise
        staged = StagedCommit(commit_id, conformed, files, derived_from, dict(derived_meta or {}) or None)
        self._staged[commit_id] = staged
        return staged

    def publish(self, staged: StagedCommit) -> None:
        """The second half of ``commit``: meta.json as it must read after the staged tables, then
        journal and renames (atomic, as ``commit``)."""
        self._require_writer("publish")
        if self._staged.get(staged.commit_id) is not staged:
            raise WarehouseError(f"commit {staged.commit_id} is not staged here (published or discarded already?)")
        files = list(staged.files)
        try:
            meta = self._meta_after(staged.tables, staged.derived_from, staged.derived_meta)
            if meta is not None:
                files.append(self._stage_meta(meta, staged.commit_id))
        except BaseException:
            self.discard(staged)
            raise
        del self._staged[staged.commit_id]
        self._apply(staged.commit_id, files)

    def discard(self, staged: StagedCommit) -> None:
        """Drop a staged commit: its temporary files are removed, nothing stored changes."""
        self._staged.pop(staged.commit_id, None)
        for tmp, _ in staged.files:
            tmp.unlink(missing_ok=True)

    def _drop_unpublished(self) -> None:
        """At the writer lock's release: staged commits nobody published are discarded (their
        temporary files would otherwise wait for the next recovery)."""
        for staged in list(self._staged.values()):
            log.warning("commit %s was staged but never published; discarding it", staged.commit_id)
            self.discard(staged)

    def _meta_after(self, tables: Mapping[str, pa.Table], derived_from: str | None,
                    derived_meta: Mapping[str, object] | None = None) -> dict | None:
        """meta.json as it must read once ``tables`` are committed (None: unchanged)."""
        meta = self.meta
        base = {n: t for n, t in tables.items() if not table_spec(n).derived}
        if base:
            meta["data_revision"] = int(meta.get("data_revision", 0)) + 1
            # Heights of chain data only (the height-partitioned tables, which reorgs roll back):
            # a template observation's height is not a stored block's, and the windows around it
            # are not dirty.
            span = _height_span(t for n, t in base.items() if table_spec(n).partition_column == "height")
            if span is not None:
                meta["dirty"] = _widen(meta.get("dirty"), span)
        if derived_from is not None:
            meta["derived"] = {"attribution_version": derived_from, "revision": int(meta.get("data_revision", 0))}
            meta["dirty"] = None
            meta.update(derived_meta or {})
        return meta if (base or derived_from is not None) else None

    def _stage_meta(self, meta: dict, commit_id: str) -> tuple[Path, Path]:
        tmp = self.meta_path.with_name(f"{self.meta_path.name}.{commit_id}{TMP_SUFFIX}")
        with open(tmp, "wb") as fh:
            fh.write((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        return tmp, self.meta_path

    def delete_heights_from(self, height: int, tables: Iterable[str] | None = None) -> None:
        """Remove every row with ``height >= height`` (reorg rollback), atomically across tables."""
        self._require_writer("delete_heights_from")
        if tables is None:
            specs = [s for s in all_table_specs() if s.partition_column == "height"]
        else:
            specs = [table_spec(t) for t in tables]
        for spec in specs:
            if "height" not in spec.column_names:
                raise ValueError(f"table {spec.name} has no height column; cannot delete heights from it")
        commit_id = self._new_commit_id()
        staged: list[tuple[Path, Path]] = []
        try:
            for spec in specs:
                for part, path in sorted(_stored_partitions(spec, self.table_dir(spec.name)).items(),
                                         key=lambda kv: str(kv[1])):
                    if part.bucket is not None and spec.partition_column == "height" and \
                            (part.bucket + 1) * (spec.bucket_size or 1) <= height:
                        continue  # the whole bucket lies below the cut
                    stored = self._read_file(spec, path)
                    keep = stored.filter(pc.less(stored.column("height"), height))
                    if keep.num_rows != stored.num_rows:
                        # An emptied partition becomes a zero-row file, never a missing one: a
                        # reader that has just globbed the path must still find it.
                        staged.append((_write_parquet_tmp(keep, path, commit_id, spec), path))
            if staged:
                meta = self.meta
                top = self.max_height()
                meta["data_revision"] = int(meta.get("data_revision", 0)) + 1
                meta["dirty"] = _widen(meta.get("dirty"), (height, max(height, top if top is not None else height)))
                staged.append(self._stage_meta(meta, commit_id))
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        self._apply(commit_id, staged)

    @staticmethod
    def _new_commit_id() -> str:
        return f"{time.time_ns():020d}-{secrets.token_hex(4)}"

    def _conform(self, spec: TableSpec, table: pa.Table) -> pa.Table:
        for col in spec.columns:
            # Checked before the cast, whose own message does not name the table.
            if not col.nullable and col.name in table.column_names and table.column(col.name).null_count:
                raise ValueError(f"table {spec.name}: column {col.name} is declared not null but the batch "
                                 f"holds {table.column(col.name).null_count} null value(s)")
        try:
            out = spec.conform(table)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ValueError(f"table {spec.name}: cannot convert the batch to the declared schema: {exc}") from exc
        dups = _duplicate_keys(out, spec.unique)
        if dups:
            raise UniqueViolationError(
                f"table {spec.name}: the batch repeats unique key ({', '.join(spec.unique)}); "
                f"repeated values: {dups}")
        return out

    def _read_file(self, spec: TableSpec, path: Path, columns: list[str] | None = None) -> pa.Table:
        """One data file in the declared types; ``columns``: only these (the others are not decoded)."""
        # Read, not memory-mapped (~20% faster): on a warehouse shared over NFS another host may
        # replace the file meanwhile, and a mapped page that goes stale is a SIGBUS, not an error.
        if columns is None:
            return pq.read_table(path).select(spec.column_names).cast(spec.arrow_schema)
        return pq.read_table(path, columns=columns).select(columns).cast(
            pa.schema([spec.arrow_schema.field(c) for c in columns]))

    def _stage_table(self, spec: TableSpec, batch: pa.Table, commit_id: str,
                     scope: tuple[int, int] | None = None) -> list[tuple[Path, Path]]:
        table_dir = self.table_dir(spec.name)
        stored, other_layout = _scan_files(spec, table_dir)
        new_rows = _partition_rows(spec, batch)
        replace_keys = batch.select(list(spec.replace_by)).group_by(list(spec.replace_by)).aggregate([]) \
            if spec.replace_by and batch.num_rows and scope is None else None
        touched = set(new_rows)
        if scope is not None:
            touched |= self._partitions_in_range(spec, batch, stored, scope)
        elif spec.replace_all:
            touched |= set(stored)  # a stored partition the batch leaves out becomes a zero-row file
        elif replace_keys is not None:
            touched |= self._partitions_holding(spec, batch, stored)
        # Rows of files in another layout join their partition's stored rows; each such file becomes
        # a zero-row file in the same commit (never deleted: a reader may have just globbed it).
        legacy: dict[_Partition, list[pa.Table]] = {}
        emptied: list[tuple[Path, Path]] = []
        for path in other_layout:
            rows = self._read_file(spec, path)
            if not rows.num_rows:
                continue
            for part, idx in _partition_rows(spec, rows).items():
                legacy.setdefault(part, []).append(_rows_at(rows, idx))
                touched.add(part)
            emptied.append((_write_parquet_tmp(spec.arrow_schema.empty_table(), path, commit_id, spec), path))
        merged: dict[_Partition, pa.Table] = {}
        for part in sorted(touched, key=lambda p: (p.values, p.bucket if p.bucket is not None else -1)):
            path = part.path(table_dir, spec)
            old = self._read_file(spec, path) if part in stored and not spec.replace_all \
                else spec.arrow_schema.empty_table()
            if part in legacy and not spec.replace_all:
                old = pa.concat_tables([old, *legacy[part]])
            if scope is not None and old.num_rows:
                values = old.column(spec.partition_column)
                old = old.filter(pc.or_(pc.less(values, scope[0]), pc.greater(values, scope[1])))
            elif replace_keys is not None and old.num_rows:
                old = old.filter(pc.invert(_rows_matching(old, replace_keys)))
            fresh = _rows_at(batch, new_rows.get(part))
            table = _sort(spec, pa.concat_tables([old, fresh]))
            # Without stored rows the partition holds batch rows alone, checked whole by _conform.
            dups = _duplicate_keys(table, spec.unique) if old.num_rows else []
            if dups:
                raise UniqueViolationError(
                    f"table {spec.name}: the batch would duplicate stored rows on unique key "
                    f"({', '.join(spec.unique)}) with values {dups} (they are not replaced because "
                    f"their replace_by ({', '.join(spec.replace_by)}) values differ)")
            merged[part] = table
        self._check_unique_across_partitions(spec, stored, merged)
        # Two writers: encoding and compressing run without the interpreter lock, and a commit
        # of many partitions (a re-attribution writes hundreds) is mostly this.
        paths = [p.path(table_dir, spec) for p in merged]
        if len(paths) < 2:
            written = [_write_parquet_tmp(t, path, commit_id, spec) for t, path in zip(merged.values(), paths)]
        else:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="poolwatch-write") as writers:
                written = list(writers.map(lambda job: _write_parquet_tmp(job[0], job[1], commit_id, spec),
                                           zip(merged.values(), paths)))
        return emptied + list(zip(written, paths))

    @staticmethod
    def _partitions_in_range(spec: TableSpec, batch: pa.Table, stored: Mapping[_Partition, Path],
                             scope: tuple[int, int]) -> set[_Partition]:
        """Stored partitions whose bucket overlaps [lo, hi] (``commit``'s replace_range); refuses a
        batch row outside the range, which would replace nothing and duplicate a kept row."""
        if spec.partition_column is None:
            raise ValueError(f"table {spec.name} has no partition column: replace_range does not apply")
        lo, hi = int(scope[0]), int(scope[1])
        if batch.num_rows:
            bounds = pc.min_max(batch.column(spec.partition_column)).as_py()
            if bounds["min"] < lo or bounds["max"] > hi:
                raise ValueError(f"table {spec.name}: batch rows with {spec.partition_column} "
                                 f"{bounds['min']}..{bounds['max']} lie outside replace_range {lo}..{hi}")
        size = spec.bucket_size or 1
        return {p for p in stored if p.bucket is not None and p.bucket * size <= hi and (p.bucket + 1) * size > lo}

    @staticmethod
    def _partitions_holding(spec: TableSpec, batch: pa.Table, stored: Mapping[_Partition, Path]) -> set[_Partition]:
        """Stored partitions that may hold rows the batch replaces (prune on replace_by dimensions)."""
        value_sets: list[set[str] | None] = []
        for col in spec.partition_by_value:
            value_sets.append({_encode_value(v) for v in pc.unique(batch.column(col)).to_pylist()}
                              if col in spec.replace_by else None)
        buckets: set[int] | None = None
        if spec.partition_column is not None and spec.partition_column in spec.replace_by:
            size = spec.bucket_size or 1
            buckets = set(pc.unique(pc.divide(batch.column(spec.partition_column), size)).to_pylist())
        out = set()
        for part in stored:
            if buckets is not None and part.bucket not in buckets:
                continue
            if any(vs is not None and v not in vs for vs, v in zip(value_sets, part.values)):
                continue
            out.add(part)
        return out

    def _check_unique_across_partitions(self, spec: TableSpec, stored: Mapping[_Partition, Path],
                                        merged: Mapping[_Partition, pa.Table]) -> None:
        """Partitions split the unique key space only when the key contains every partition column."""
        dims = set(spec.partition_by_value) | ({spec.partition_column} if spec.partition_column else set())
        if not spec.unique or dims <= set(spec.unique) or not merged:
            return
        cols = list(spec.unique)
        key_schema = pa.schema([spec.arrow_schema.field(c) for c in cols])
        pieces = [t.select(cols) for t in merged.values()]
        # Partitions that differ in a by-value column of the key cannot share a key: not read.
        keyed = [i for i, col in enumerate(spec.partition_by_value) if col in spec.unique]
        wanted = {tuple(p.values[i] for i in keyed) for p in merged}
        # A stored row can equal a merged key only if each key column lies within the merged rows'
        # range: the other partitions are read with that filter, which Parquet statistics turn into
        # skipped row groups (the metric tables' day windows of the rest of the history).
        merged_keys = pa.concat_tables(pieces)
        filters = []
        for col in cols:
            values = merged_keys.column(col)
            kind = values.type
            if values.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_string(kind)):
                bounds = pc.min_max(values).as_py()
                filters += [(col, ">=", bounds["min"]), (col, "<=", bounds["max"])]
        pieces += [pq.read_table(path, columns=cols, filters=filters or None).cast(key_schema)
                   for part, path in stored.items()
                   if part not in merged and tuple(part.values[i] for i in keyed) in wanted]
        allrows = pa.concat_tables(pieces)
        dups = _duplicate_keys(allrows, cols)
        if dups:
            raise UniqueViolationError(
                f"table {spec.name}: the batch would duplicate stored rows on unique key ({', '.join(cols)}) "
                f"with values {dups}")

    def _apply(self, commit_id: str, staged: list[tuple[Path, Path]], deletes: Iterable[Path] = ()) -> None:
        """Journal then rename: after the journal is durable the commit is as good as done."""
        if not staged and not deletes:
            return
        renames = [[str(t.relative_to(self.root)), str(f.relative_to(self.root))] for t, f in staged]
        dels = [str(p.relative_to(self.root)) for p in deletes]
        doc = {"id": commit_id, "renames": renames, "deletes": dels}
        journal = self.journal_dir / f"{commit_id}.json"
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        _write_bytes_atomic(journal, json.dumps(doc).encode())
        _apply_plan(self.root, renames, dels)
        journal.unlink()
        _fsync_dir(self.journal_dir)

    # -- catalog
    def _view_sql(self, spec: TableSpec) -> str:
        if any(self.table_dir(spec.name).rglob("*.parquet")):
            # union_by_name stays off: with it DuckDB reads every footer at bind time and re-opens
            # the files at scan time, which tears when a file is replaced in between.
            return (f"SELECT * FROM read_parquet({_sql_str(self.table_glob(spec.name))}, "
                    f"hive_partitioning=false, union_by_name=false)")
        # Nothing on disk yet (never opened for writing): a typed, empty view.
        cols = ", ".join(f"CAST(NULL AS {_DUCKDB_TYPES[c.type]}) AS {_ident(c.name)}" for c in spec.columns)
        return f"SELECT {cols} WHERE false"

    def _fill_placeholders(self, sql: str) -> str:
        """'{warehouse_root}' and '{registry_version}' (the current attribution version as a SQL
        literal, NULL when unset) in view files."""
        version = self.attribution_version
        literal = "NULL" if version is None else _sql_str(str(version))
        return (sql.replace("{warehouse_root}", str(self.root.resolve()).replace("'", "''"))
                .replace("{registry_version}", literal))

    def extra_views(self) -> dict[str, str]:
        """Views declared as ``<views_dir>/**/<name>.sql`` (a query over the table views)."""
        self._view_files = {}
        if not self.views_dir.is_dir():
            return {}
        views: dict[str, str] = {}
        for path in sorted(self.views_dir.rglob("*.sql")):
            if path.stem in self._view_files:
                raise ValueError(f"two view files define view {path.stem}: {self._view_files[path.stem]} and {path}")
            self._view_files[path.stem] = path
            views[path.stem] = self._fill_placeholders(path.read_text().strip().rstrip(";"))
        return views

    def _freshness_sql(self) -> str:
        """The view ``freshness``: one row saying whether the derived tables follow from the data.
        It reads meta.json at query time (which every commit updates atomically with the data), so it
        is never older than the tables it describes; see ``freshness()``."""
        if not self.meta_path.exists():
            return ("SELECT true AS stale, 'never computed' AS reason, NULL::BIGINT AS dirty_from, "
                    "NULL::BIGINT AS dirty_to, 0::BIGINT AS data_revision, NULL::BIGINT AS computed_at_revision, "
                    "NULL::VARCHAR AS computed_from, NULL::VARCHAR AS attribution_version")
        columns = ("{'registry_version': 'VARCHAR', 'attribution_version': 'VARCHAR', 'data_revision': 'BIGINT', "
                   "'dirty': 'BIGINT[]', 'derived': 'STRUCT(attribution_version VARCHAR, revision BIGINT)'}")
        return f"""
            SELECT stale,
                   CASE WHEN derived IS NULL THEN 'never computed'
                        WHEN derived.attribution_version IS DISTINCT FROM current_version
                            THEN 'computed from attribution version ' || coalesce(derived.attribution_version, '?')
                                 || ', the warehouse''s is ' || coalesce(current_version, '?')
                        WHEN dirty IS NOT NULL
                            THEN 'blocks or attributions at heights ' || dirty[1] || '..' || dirty[2]
                                 || ' changed after they were computed'
                        WHEN derived.revision < coalesce(data_revision, 0)
                            THEN 'tables changed after they were computed (data revision ' || data_revision
                                 || ', computed at ' || derived.revision || ')'
                        ELSE '' END AS reason,
                   dirty[1] AS dirty_from, dirty[2] AS dirty_to, coalesce(data_revision, 0) AS data_revision,
                   derived.revision AS computed_at_revision, derived.attribution_version AS computed_from,
                   current_version AS attribution_version
            FROM (SELECT *, coalesce(attribution_version, registry_version) AS current_version,
                         derived IS NULL OR dirty IS NOT NULL
                         OR derived.attribution_version IS DISTINCT FROM coalesce(attribution_version, registry_version)
                         OR coalesce(derived.revision < coalesce(data_revision, 0), false)
                             AS stale
                  FROM read_json({_sql_str(str(self.meta_path))}, columns={columns}))"""

    def _create_views(self, con: duckdb.DuckDBPyConnection, strict: bool = True) -> bool:
        """Create every view; False when a view file failed and was left out (``strict`` false)."""
        for spec in all_table_specs():
            con.execute(f"CREATE OR REPLACE VIEW {_ident(spec.name)} AS {self._view_sql(spec)}")
        con.execute(f"CREATE OR REPLACE VIEW freshness AS {self._freshness_sql()}")
        pending = self.extra_views()
        # Views may build on each other: create in passes until nothing more succeeds.
        while pending:
            errors: dict[str, str] = {}
            before = len(pending)
            for name, sql in list(pending.items()):
                try:
                    con.execute(f"CREATE OR REPLACE VIEW {_ident(name)} AS {sql}")
                    del pending[name]
                except duckdb.Error as exc:
                    errors[name] = str(exc)
            if errors and len(pending) == before:
                detail = "; ".join(f"{self._view_files.get(n, n)}: {e}" for n, e in errors.items())
                if strict:
                    raise ValueError(f"cannot create view(s): {detail}")
                log.warning("catalog built without view(s) that fail: %s", detail)
                return False
        return True

    def connect(self) -> duckdb.DuckDBPyConnection:
        """In-memory DuckDB connection with every view; takes no file lock at all."""
        con = duckdb.connect(":memory:")
        self._create_views(con)
        return con

    def _catalog_inputs_digest(self) -> str:
        """A digest of every statement the catalog is built from (table views, freshness, view
        files with their placeholders filled) and of the DuckDB that builds it: equal digests
        build equal catalogs."""
        import hashlib

        h = hashlib.sha256(f"{duckdb.__version__}|{CATALOG_STORAGE_VERSION}|{SCHEMA_VERSION}".encode())
        for spec in all_table_specs():
            h.update(f"\0{spec.name}\0{self._view_sql(spec)}".encode())
        h.update(f"\0freshness\0{self._freshness_sql()}".encode())
        try:
            views = self.extra_views()
        except ValueError as exc:  # two files for one view: the build reports it, never skip it
            return f"unbuildable: {exc}"
        for name, sql in sorted(views.items()):
            h.update(f"\0{name}\0{sql}".encode())
        return h.hexdigest()

    @property
    def _catalog_digest_path(self) -> Path:
        return self.root / CATALOG_DIGEST_NAME

    def _catalog_is_current(self) -> bool:
        """The catalog file exists and was built from the statements it would be built from now."""
        if not self.catalog_path.exists():
            return False
        try:
            recorded = self._catalog_digest_path.read_text().strip()
        except OSError:
            return False
        return recorded == self._catalog_inputs_digest()

    def refresh_catalog(self, strict: bool = True, force: bool = False) -> None:
        """Rebuild poolwatch.duckdb in a temp file and rename it over the old one, unless it was
        built from exactly the statements it would be built from now (its inputs digest): the
        views read their Parquet files when queried, so new rows need no rebuild (``force``
        rebuilds anyway).

        Readers holding the old file open keep their (identical) views; nothing waits for them.
        A view file that fails raises ``ValueError`` (the old catalog stays) unless ``strict`` is
        false, in which case the catalog is built without it and a warning is logged. Needs the
        writer lock: two builders would race on the rename, and a crashed build's temp file is
        removed by the next writer (``_recover``), on whichever host.
        """
        self._require_writer("refresh_catalog")
        if not force and self._catalog_is_current():
            return
        tmp = self.root / f".{CATALOG_NAME}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        # The digest goes first (a crash after it leaves no digest: the next writer rebuilds) and is
        # written again only once the new catalog is in place.
        self._catalog_digest_path.unlink(missing_ok=True)
        try:
            digest = self._catalog_inputs_digest()
            con = duckdb.connect(str(tmp), config={"storage_compatibility_version": CATALOG_STORAGE_VERSION})
            try:
                complete = self._create_views(con, strict=strict)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            _fsync_file(tmp)
            os.replace(tmp, self.catalog_path)
            _fsync_dir(self.root)
            if complete:  # a catalog missing a failing view is never "current": the next call tries again
                self._catalog_digest_path.write_text(digest + "\n")
        finally:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}.wal").unlink(missing_ok=True)

    # -- queries
    def read(self, table: str, where: str | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """Rows of ``table`` (declared types, sorted by sort_by); ``where`` is a DuckDB SQL condition."""
        spec = table_spec(table)
        cols = list(columns) if columns is not None else spec.column_names
        unknown = [c for c in cols if c not in spec.column_names]
        if unknown:
            raise KeyError(f"table {table} has no column(s) {unknown}")
        sql = f"SELECT {', '.join(_ident(c) for c in cols)} FROM ({self._view_sql(spec)})"
        if where:
            sql += f" WHERE {where}"
        order = [c for c in spec.sort_by]
        if order:
            sql += " ORDER BY " + ", ".join(_ident(c) for c in order)
        with self._query_connection() as con:
            result = con.sql(sql).to_arrow_table()
        return result.cast(pa.schema([spec.arrow_schema.field(c) for c in cols]))

    @contextlib.contextmanager
    def _query_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = duckdb.connect(":memory:")
        try:
            yield con
        finally:
            con.close()

    def _scalar_rows(self, sql_tail: str, select: str) -> list[tuple]:
        spec = table_spec("blocks")
        with self._query_connection() as con:
            return con.execute(f"SELECT {select} FROM ({self._view_sql(spec)}) {sql_tail}").fetchall()

    def max_height(self) -> int | None:
        return self._scalar_rows("", "max(height)")[0][0]

    def stored_range(self) -> tuple[int, int] | None:
        lo, hi = self._scalar_rows("", "min(height), max(height)")[0]
        return None if lo is None else (int(lo), int(hi))

    def gaps(self) -> list[tuple[int, int]]:
        """Missing height ranges (inclusive) between the lowest and highest stored block."""
        rows = self._scalar_rows(
            ") WHERE nxt > height + 1 ORDER BY height",
            "height + 1, nxt - 1 FROM (SELECT height, lead(height) OVER (ORDER BY height) AS nxt")
        return [(int(a), int(b)) for a, b in rows]

    def stored_hashes(self, lo: int, hi: int) -> dict[int, str]:
        rows = self._scalar_rows(f"WHERE height BETWEEN {int(lo)} AND {int(hi)} ORDER BY height", "height, hash")
        return {int(h): str(x) for h, x in rows}

    def read_range(self, table: str, values: Mapping[str, object], lo: int, hi: int,
                   columns: Iterable[str] | None = None) -> pa.Table:
        """The rows of ``table`` whose by-value partition columns equal ``values`` and whose partition
        column lies in [lo, hi], read from those partitions' files alone (not through a view over
        every file), sorted by sort_by as ``read`` gives them. ``columns``: only these (they must
        include the partition and sort columns). Files in another layout (``_scan_files``) are not
        read: a caller that cannot rule them out checks what it got (or uses ``read``)."""
        spec = table_spec(table)
        if spec.partition_column is None or set(values) != set(spec.partition_by_value):
            raise ValueError(f"table {table}: read_range needs a value for each of {list(spec.partition_by_value)} "
                             "and a partitioned height column")
        cols = list(columns) if columns is not None else spec.column_names
        needed = [c for c in (spec.partition_column, *spec.sort_by) if c not in cols]
        if needed or any(c not in spec.column_names for c in cols):
            raise KeyError(f"table {table}: read_range columns {cols} must be declared columns and include {needed}")
        wanted = tuple(_encode_value(values[c]) for c in spec.partition_by_value)
        size = spec.bucket_size or 1
        paths = [_Partition(wanted, b).path(self.table_dir(table), spec) for b in range(lo // size, hi // size + 1)]
        pieces = [self._read_file(spec, path, cols) for path in paths if path.exists()]
        rows = pa.concat_tables(pieces) if pieces else pa.schema([spec.arrow_schema.field(c) for c in cols]).empty_table()
        heights = rows.column(spec.partition_column)
        bounds = pc.min_max(heights)
        if rows.num_rows and not (lo <= bounds["min"].as_py() and bounds["max"].as_py() <= hi):
            # Not a whole number of buckets: drop the rows outside (a filter copies every column).
            rows = rows.filter(pc.and_(pc.greater_equal(heights, lo), pc.less_equal(heights, hi)))
        return _sort(spec, rows)

    def in_declared_layout(self, table: str) -> bool:
        """Whether every data file of ``table`` lies in its declared partition layout (so that
        ``read_range`` over a height range sees all its rows); files with zero rows do not count."""
        spec = table_spec(table)
        _, other = _scan_files(spec, self.table_dir(table))
        return all(pq.read_metadata(path).num_rows == 0 for path in other)

    def row_count(self, table: str) -> int:
        """Rows stored in ``table`` (from the Parquet footers; no data is read)."""
        return sum(pq.read_metadata(path).num_rows for path in self.table_dir(table).rglob(PART_FILE))

    def file_count(self, table: str) -> int:
        """Number of data files of ``table`` (``_schema.parquet`` excluded)."""
        return sum(1 for _ in self.table_dir(table).rglob(PART_FILE))


def _height_span(tables: Iterable[pa.Table]) -> tuple[int, int] | None:
    lows, highs = [], []
    for t in tables:
        if "height" in t.column_names and t.num_rows:
            mm = pc.min_max(t.column("height")).as_py()
            lows.append(mm["min"])
            highs.append(mm["max"])
    return (int(min(lows)), int(max(highs))) if lows else None


def _widen(dirty: list[int] | None, span: tuple[int, int]) -> list[int]:
    if not dirty:
        return [span[0], span[1]]
    return [min(int(dirty[0]), span[0]), max(int(dirty[1]), span[1])]


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


# Schema files this process has checked: resolved path -> (table, stamp when checked).
_SCHEMA_FILES_CHECKED: dict[str, tuple[str, tuple[int, int, int]]] = {}


def _schema_probe(empty: pa.Table) -> pa.BufferReader:
    """The schema a Parquet round trip gives ``empty`` (e.g. timestamp[s] comes back as [ms])."""
    sink = pa.BufferOutputStream()
    pq.write_table(empty, sink)
    return pa.BufferReader(sink.getvalue())
