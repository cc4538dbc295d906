"""Shared block templates from stratum captures: reading captures, resolving pools, grouping jobs.

A stratum job carries the merkle branches of the block a pool wants mined: the hashes that connect
the coinbase to the merkle root, fixed by the ordered list of the other transactions. Two jobs with
identical branches for the same previous block were built from the same transaction list, i.e. the
same template (up to a SHA-256 collision). Pools that hand out the same template choose the same
blocks: ``template_groups`` holds each such set of jobs and ``template_links`` the pool pairs.

Everything here is pure (bytes and tables in, tables out); ``pipeline.load.templates`` stores the
result through the warehouse's validation gate, and docs/templates.md states the formats, the
grouping rule and its limits.

Two capture formats:

* mempool: the JSON document mempool.space's websocket sends (``{"stratumJobs": {"<pool id>":
  {...}}, ...}``), pools named by their id in mempool's pools-v2 list;
* JSON lines, our own: one job per line, ``{"pool", "height", "prevhash", "coinbase1", "coinbase2",
  "merkle_branches", "time"}`` plus optional ``"source"`` and ``"job_id"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.attribution.importers import normalize_name
from pipeline.attribution.registry import Registry
from pipeline.chain.decode import bip34_height
from pipeline.store.schemas import table_spec

FORMATS = ("auto", "mempool", "jsonl")
MEMPOOL_SOURCE = "mempool stratumJobs"  # capture_source of jobs read from a mempool capture
MEMPOOL_PREFIX = "mempool:"  # pool reference to an id of mempool's pools-v2 list
UNMAPPED_PREFIX = "unmapped:"  # pool_id of a reference no registry pool matches (no registry id has ':')
POOL_MATCHES = ("id", "slug", "name", "mempool-id", "unmapped")
EMPTY_BRANCH_HASH = hashlib.sha256(b"").hexdigest()

JSONL_REQUIRED = ("pool", "height", "prevhash", "coinbase1", "coinbase2", "merkle_branches", "time")
JSONL_OPTIONAL = ("source", "job_id")
MEMPOOL_REQUIRED = ("pool", "height", "prevHash", "coinbase1", "coinbase2", "merkleBranches", "received")

# A merkle path of 32 levels covers 2^32 transactions; no block comes near (a 4 MWU block holds < 2^15).
MAX_BRANCHES = 32
# A coinbase transaction is part of a block of at most 4,000,000 weight units, so under 4 MB.
MAX_COINBASE_HEX = 8_000_000
MAX_POOL_REF = 200
# Header times are uint32: a later time is not a job's (most often milliseconds given as seconds).
MAX_TIME = 2**32 - 1
EARLIEST_TIME = 1231006505  # mainnet genesis (2009-01-03): no job is older
_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2})*$")
_HASH_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_NULL_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"


class CaptureError(ValueError):
    """A capture (or pool list) that cannot be imported; the message names the file, the line or
    record and the field."""


# ------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class StratumJob:
    """One job as the capture gives it, checked and normalized (hex in lowercase, time in epoch s)."""

    record: str  # where in the file: 'line 3' or 'stratumJobs["2"]'
    pool_ref: str  # the pool as the capture names it ('mempool:<id>' for mempool's ids)
    height: int
    prev_hash: str
    coinbase1: str
    coinbase2: str
    merkle_branches: tuple[str, ...]
    observed_at: int
    job_id: str | None = None
    capture_source: str | None = None


@dataclass(frozen=True)
class Capture:
    name: str  # file name (provenance; the folder is not part of it)
    sha256: str  # of the file's bytes
    format: str  # mempool | jsonl
    jobs: tuple[StratumJob, ...]

    @property
    def mempool_ids(self) -> list[str]:
        """Pool references that need mempool's pool list to resolve."""
        return sorted({j.pool_ref for j in self.jobs if j.pool_ref.startswith(MEMPOOL_PREFIX)})


def _read_input(path: Path, what: str, directory_note: str = "") -> bytes:
    """The bytes of an input file, or a CaptureError naming ``what`` it was and why it can't be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CaptureError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CaptureError(f"{what} {path} is a directory{directory_note}") from None
    except PermissionError:
        raise CaptureError(f"{what} {path} cannot be read (permission denied)") from None


def read_capture(path: Path, fmt: str = "auto") -> Capture:
    path = Path(path)
    return parse_capture(_read_input(path, "capture file"), path.name, fmt)


def parse_capture(data: bytes, name: str, fmt: str = "auto") -> Capture:
    """Jobs of a capture's bytes; ``fmt`` auto: a JSON document with ``stratumJobs`` is a mempool
    capture, anything else is read as JSON lines."""
    if fmt not in FORMATS:
        raise CaptureError(f"unknown capture format {fmt!r}; expected one of {', '.join(FORMATS)}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise CaptureError(f"{name}: line {line}: not UTF-8 text (byte {exc.start}: "
                           f"{data[exc.start:exc.start + 1]!r})") from None
    if not text.strip():
        raise CaptureError(f"{name}: the file is empty: no stratum job to import")
    if fmt == "auto":
        fmt = "mempool" if _is_mempool_document(text) else "jsonl"
    jobs = _mempool_jobs(text, name) if fmt == "mempool" else _jsonl_jobs(text, name)
    if not jobs:
        raise CaptureError(f"{name}: no stratum job in the file")
    _check_heights_agree(jobs, name)
    return Capture(name, digest, fmt, tuple(jobs))


def _is_mempool_document(text: str) -> bool:
    if not text.lstrip().startswith("{"):
        return False
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return False  # several lines of JSON: JSON lines (or broken; its reader says where)
    return isinstance(doc, dict) and "stratumJobs" in doc


def _mempool_jobs(text: str, name: str) -> list[StratumJob]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"{name}: not a mempool capture: invalid JSON at line {exc.lineno} column {exc.colno} "
                           f"({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stratumJobs"), dict):
        raise CaptureError(f"{name}: not a mempool capture: expected a JSON object whose 'stratumJobs' is an object "
                           "of jobs by pool id")
    jobs = []
    for key, raw in doc["stratumJobs"].items():
        where = f'stratumJobs["{key}"]'
        if not isinstance(raw, dict):
            raise CaptureError(f"{name}: {where}: expected a job object, got {_kind(raw)}")
        fields = _Fields(raw, f"{name}: {where}")
        fields.require(MEMPOOL_REQUIRED)
        pool = fields.integer("pool", minimum=0)
        received = fields.integer("received", minimum=0)  # milliseconds since 1970 (JavaScript time)
        jobs.append(StratumJob(
            record=where, pool_ref=f"{MEMPOOL_PREFIX}{pool}", height=fields.height("height"),
            prev_hash=fields.hash("prevHash"), coinbase1=fields.coinbase1("coinbase1", "height"),
            coinbase2=fields.hex("coinbase2"), merkle_branches=fields.branches("merkleBranches"),
            observed_at=fields.check_time("received", received // 1000),
            job_id=fields.optional_text("jobId"), capture_source=MEMPOOL_SOURCE))
    return jobs


def _jsonl_jobs(text: str, name: str) -> list[StratumJob]:
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CaptureError(f"{name}: {where}: not valid JSON at column {exc.colno} ({exc.msg}); each line holds "
                               "one job object (docs/templates.md)") from None
        if not isinstance(raw, dict):
            raise CaptureError(f"{name}: {where}: expected a job object, got {_kind(raw)}")
        fields = _Fields(raw, f"{name}: {where}")
        fields.require(JSONL_REQUIRED)
        unknown = sorted(set(raw) - set(JSONL_REQUIRED) - set(JSONL_OPTIONAL))
        if unknown:
            raise CaptureError(f"{name}: {where}: unknown field(s) {', '.join(map(repr, unknown))}; a job has "
                               f"{', '.join(JSONL_REQUIRED)} and optionally {', '.join(JSONL_OPTIONAL)}")
        jobs.append(StratumJob(
            record=where, pool_ref=fields.pool_ref("pool"), height=fields.height("height"),
            prev_hash=fields.hash("prevhash"), coinbase1=fields.coinbase1("coinbase1", "height"),
            coinbase2=fields.hex("coinbase2"), merkle_branches=fields.branches("merkle_branches"),
            observed_at=fields.time("time"), job_id=fields.optional_text("job_id"),
            capture_source=fields.optional_text("source")))
    return jobs


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class _Fields:
    """Typed access to one job's fields; every problem names the file, the record and the field."""

    raw: Mapping[str, Any]
    where: str

    def fail(self, key: str, problem: str) -> CaptureError:
        return CaptureError(f"{self.where}: field {key!r}: {problem}")

    def require(self, keys: Iterable[str]) -> None:
        missing = [k for k in keys if k not in self.raw]
        if missing:
            raise CaptureError(f"{self.where}: missing field(s) {', '.join(map(repr, missing))}")

    def integer(self, key: str, minimum: int) -> int:
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {_kind(value)} {_short(value)}")
        if value < minimum:
            raise self.fail(key, f"{value} is below {minimum}")
        return value

    def height(self, key: str) -> int:
        value = self.integer(key, minimum=1)  # a job builds on a previous block
        if value >= 2**31:
            raise self.fail(key, f"{value} is not a block height")
        return value

    def hex(self, key: str) -> str:
        value = self.raw[key]
        if not isinstance(value, str):
            raise self.fail(key, f"expected a hex string, got {_kind(value)}")
        if len(value) > MAX_COINBASE_HEX:
            raise self.fail(key, f"{len(value):,} hex digits, more than a coinbase transaction can hold")
        if not _HEX_RE.match(value):
            bad = next((i for i, c in enumerate(value) if c not in "0123456789abcdefABCDEF"), None)
            problem = (f"not hex: {value[bad]!r} at position {bad}" if bad is not None
                       else f"odd number of hex digits ({len(value)}): not whole bytes")
            raise self.fail(key, problem)
        return value.lower()

    def hash(self, key: str) -> str:
        value = self.raw[key]
        if not isinstance(value, str) or not _HASH_RE.match(value):
            raise self.fail(key, f"expected a block hash (64 hex digits, display order), got {_short(value)}")
        return value.lower()

    def coinbase1(self, key: str, height_key: str) -> str:
        value = self.hex(key)
        found = coinbase1_height(bytes.fromhex(value))
        if isinstance(found, str):
            raise self.fail(key, found)
        height = self.raw[height_key]
        if found != height:
            raise self.fail(key, f"commits to height {found} (BIP34 push in its scriptSig), the job says "
                                 f"{height_key} {height}")
        return value

    def branches(self, key: str) -> tuple[str, ...]:
        value = self.raw[key]
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of 64-hex-digit hashes, got {_kind(value)}")
        if len(value) > MAX_BRANCHES:
            raise self.fail(key, f"{len(value)} branches: a merkle path is at most {MAX_BRANCHES} long")
        out = []
        for i, branch in enumerate(value):
            if not isinstance(branch, str) or not _HASH_RE.match(branch):
                raise self.fail(key, f"item {i}: expected 64 hex digits (32 bytes), got {_short(branch)}")
            out.append(branch.lower())
        return tuple(out)

    def time(self, key: str) -> int:
        value = self.raw[key]
        if isinstance(value, bool):
            raise self.fail(key, "expected unix seconds or an ISO 8601 time, got a boolean")
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise self.fail(key, f"{value} is not a time")
            return self.check_time(key, math.floor(value))
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise self.fail(key, f"{_short(value)} is neither unix seconds (a JSON number) nor an ISO 8601 "
                                     "time") from None
            if parsed.tzinfo is None:
                raise self.fail(key, f"{value!r} has no UTC offset: add 'Z' or '+00:00' (local time is ambiguous)")
            return self.check_time(key, math.floor(parsed.timestamp()))
        raise self.fail(key, f"expected unix seconds or an ISO 8601 time, got {_kind(value)}")

    def check_time(self, key: str, seconds: int) -> int:
        if seconds > MAX_TIME:
            raise self.fail(key, f"{seconds} seconds is after 2106 (milliseconds given as seconds?)")
        if seconds < EARLIEST_TIME:
            raise self.fail(key, f"{seconds} is before the first Bitcoin block (2009-01-03)")
        return seconds

    def pool_ref(self, key: str) -> str:
        value = self.raw[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a pool id, slug or name (a non-empty string), got {_short(value)}")
        if len(value) > MAX_POOL_REF or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise self.fail(key, f"{_short(value)} is not a pool name (control characters or over "
                                 f"{MAX_POOL_REF} characters)")
        if value.startswith(MEMPOOL_PREFIX) and not value[len(MEMPOOL_PREFIX):].isdigit():
            raise self.fail(key, f"{value!r}: '{MEMPOOL_PREFIX}' must be followed by a pool id of mempool's list")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.fail(key, f"expected a string, got {_kind(value)}")
        return str(value)


def coinbase1_height(coinbase1: bytes) -> int | str:
    """The BIP34 height pushed first in a stratum coinbase1's scriptSig, or what is wrong with it.

    coinbase1 is the coinbase transaction up to the extranonces, in the legacy serialization that
    stratum uses (txid form): version (4 bytes), input count 1, the null prevout (32 zero bytes and
    index 0xffffffff), the scriptSig's length (one byte: a coinbase scriptSig is 2-100 bytes), then
    the scriptSig's start, whose first push is the height (BIP34)."""
    if len(coinbase1) < 42:
        return f"{len(coinbase1)} bytes, too short to hold a coinbase input and its scriptSig's start"
    if coinbase1[4] != 1:
        return (f"byte 4 is {coinbase1[4]:#04x}, not an input count of 1 (coinbase1 starts with the version, "
                "then the single coinbase input; witness serialization is not stratum's)")
    if coinbase1[5:41] != _NULL_PREVOUT:
        return "the input does not spend the null prevout (32 zero bytes, index ffffffff): not a coinbase"
    if coinbase1[41] > 100:
        return f"scriptSig length {coinbase1[41]} is over the coinbase limit of 100 bytes"
    height = bip34_height(coinbase1[42:])
    if height is None:
        return "its scriptSig does not start with a BIP34 height push"
    return height


def _check_heights_agree(jobs: Sequence[StratumJob], name: str) -> None:
    by_prev: dict[str, dict[int, str]] = {}
    for job in jobs:
        by_prev.setdefault(job.prev_hash, {}).setdefault(job.height, job.record)
    for prev, heights in by_prev.items():
        if len(heights) > 1:
            claims = ", ".join(f"{h} ({record})" for h, record in sorted(heights.items()))
            raise CaptureError(f"{name}: jobs on previous block {prev} claim different heights: {claims}")


# ------------------------------------------------------------------------------------- pool names


@dataclass(frozen=True)
class MempoolPoolList:
    """Pool ids -> names of mempool's ``pools-v2.json`` (github.com/mempool/mining-pools): the ids
    mempool's captures name pools by. Ids are mempool's ``unique_id``, never reused."""

    name: str
    sha256: str
    names: Mapping[int, str]


def read_mempool_pool_list(path: Path) -> MempoolPoolList:
    path = Path(path)
    data = _read_input(path, "mempool pool list", ", not pools-v2.json")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptureError(f"mempool pool list {path}: not JSON ({exc})") from None
    if not isinstance(doc, list):
        raise CaptureError(f"mempool pool list {path}: expected pools-v2.json's array of {{id, name, ...}}")
    names: dict[int, str] = {}
    for i, entry in enumerate(doc):
        pid = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(pid, bool) or not isinstance(pid, int) or not isinstance(name, str) or not name.strip():
            raise CaptureError(f"mempool pool list {path}: [{i}]: expected an integer 'id' and a non-empty 'name'")
        if pid in names:
            raise CaptureError(f"mempool pool list {path}: [{i}]: id {pid} appears twice ({names[pid]!r}, {name!r})")
        names[pid] = name
    return MempoolPoolList(path.name, hashlib.sha256(data).hexdigest(), names)


def default_mempool_list_path(registry: Registry, lists_dir: Path) -> Path:
    """Where mempool's list lies among the pool lists: the path the registry records for its
    mempool-v2 source (the list it was imported from), else that list's usual place."""
    from pipeline.attribution.importers import DEFAULT_SOURCES

    for source in registry.document.get("sources", []):
        if source.get("kind") == "mempool-v2" and source.get("path"):
            recorded = Path(source["path"])
            return recorded if recorded.is_absolute() else lists_dir / recorded
    return lists_dir / next(rel for _, kind, rel in DEFAULT_SOURCES if kind == "mempool-v2")


@dataclass(frozen=True)
class PoolMatch:
    pool_id: str
    match: str  # one of POOL_MATCHES
    detail: str


@dataclass
class PoolResolver:
    """Capture pool references -> registry pools.

    In order: a registry pool id; a slug (when one pool has it); then a name compared as the
    importers identify pools (``normalize_name``: case and punctuation ignored) against every pool's
    name, former names, slug and id, when exactly one pool matches. ``mempool:<id>`` is first turned
    into mempool's name for the id (``MempoolPoolList``), then resolved as a name. A reference that
    matches no pool, or several, stays unmapped (``unmapped:<reference>``), with the reason."""

    registry: Registry
    mempool: MempoolPoolList | None = None
    _slugs: dict[str, list[str]] = field(default_factory=dict, init=False)
    _names: dict[str, list[str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for pool in self.registry.pools:
            self._slugs.setdefault(pool.slug, []).append(pool.id)
            for text in {pool.name, *pool.former_names, pool.slug, pool.id}:
                ids = self._names.setdefault(normalize_name(text), [])
                if pool.id not in ids:
                    ids.append(pool.id)

    def resolve(self, ref: str) -> PoolMatch:
        if ref.startswith(MEMPOOL_PREFIX):
            return self._mempool(ref)
        return self._registry(ref, ref)

    def _registry(self, ref: str, text: str) -> PoolMatch:
        if text in self.registry.by_id:
            return PoolMatch(text, "id", f"registry pool id {text!r}")
        if len(self._slugs.get(text, ())) == 1:
            pid = self._slugs[text][0]
            return PoolMatch(pid, "slug", f"slug of registry pool {pid!r} ({self.registry.by_id[pid].name})")
        ids = sorted(self._names.get(normalize_name(text), ()))
        if len(ids) == 1:
            pool = self.registry.by_id[ids[0]]
            return PoolMatch(pool.id, "name", f"{text!r} is registry pool {pool.id!r} ({pool.name})")
        if ids:
            return PoolMatch(UNMAPPED_PREFIX + ref, "unmapped",
                             f"{text!r} matches several registry pools ({', '.join(ids)})")
        return PoolMatch(UNMAPPED_PREFIX + ref, "unmapped",
                         f"{text!r} matches no pool id, slug or name of registry {self.registry.version}")

    def _mempool(self, ref: str) -> PoolMatch:
        if self.mempool is None:
            raise CaptureError(f"pool {ref!r} is an id of mempool's pool list, and no list was given")
        number = int(ref[len(MEMPOOL_PREFIX):])
        source = f"{self.mempool.name} sha256 {self.mempool.sha256}"
        name = self.mempool.names.get(number)
        if name is None:
            return PoolMatch(UNMAPPED_PREFIX + ref, "unmapped", f"mempool id {number} is not in {source}")
        found = self._registry(ref, name)
        if found.match == "unmapped":
            return PoolMatch(found.pool_id, "unmapped", f"mempool id {number} is {name!r} in {source}; {found.detail}")
        return PoolMatch(found.pool_id, "mempool-id", f"mempool id {number} is {name!r} in {source}; {found.detail}")


# ------------------------------------------------------------------------------------------- tables


def branch_hash(branches: Sequence[str]) -> str:
    """SHA-256 of the branches' bytes concatenated in the order sent (the grouping key)."""
    return hashlib.sha256(b"".join(bytes.fromhex(b) for b in branches)).hexdigest()


def group_id(prev_hash: str, branches_hash: str) -> str:
    return hashlib.sha256((prev_hash + branches_hash).encode("ascii")).hexdigest()[:16]


def observation_id(pool_ref: str, job: StratumJob) -> str:
    """Content key: the same job (pool reference, block, coinbase parts, branches, time seen, job id)
    gets the same id in whichever file it is imported from."""
    key = [pool_ref, job.height, job.prev_hash, job.coinbase1, job.coinbase2, list(job.merkle_branches),
           job.observed_at, job.job_id]
    return hashlib.sha256(json.dumps(key, separators=(",", ":")).encode("utf-8")).hexdigest()[:32]


def _build(name: str, cols: Mapping[str, list]) -> pa.Table:
    spec = table_spec(name)
    arrays = [pa.array(cols[f.name], type=f.type) for f in spec.arrow_schema]
    return spec.conform(pa.Table.from_arrays(arrays, schema=spec.arrow_schema))


@dataclass(frozen=True)
class Observations:
    table: pa.Table  # template_observations rows, one per distinct job
    repeated: int  # jobs of the capture identical to an earlier one of the same capture (kept once)
    matches: dict[str, PoolMatch]  # pool reference -> how it resolved


def observations_table(capture: Capture, resolver: PoolResolver) -> Observations:
    """template_observations rows of a capture, pools resolved with ``resolver``'s registry."""
    matches = {ref: resolver.resolve(ref) for ref in sorted({j.pool_ref for j in capture.jobs})}
    cols: dict[str, list] = {name: [] for name in table_spec("template_observations").column_names}
    seen: set[str] = set()
    repeated = 0
    for job in capture.jobs:
        oid = observation_id(job.pool_ref, job)
        if oid in seen:
            repeated += 1
            continue
        seen.add(oid)
        match = matches[job.pool_ref]
        row = {"observation_id": oid, "pool_id": match.pool_id, "pool_name_raw": job.pool_ref,
               "pool_match": match.match, "pool_match_detail": match.detail,
               "registry_version": resolver.registry.version, "height": job.height, "prev_hash": job.prev_hash,
               "merkle_branches": list(job.merkle_branches), "branch_hash": branch_hash(job.merkle_branches),
               "coinbase1": job.coinbase1, "coinbase2": job.coinbase2, "job_id": job.job_id,
               "observed_at": job.observed_at, "capture_source": job.capture_source, "source_file": capture.name,
               "source_sha256": capture.sha256, "source_record": job.record}
        for name, value in row.items():
            cols[name].append(value)
    return Observations(_build("template_observations", cols), repeated, matches)


def height_conflicts(observations: pa.Table) -> dict[str, list[int]]:
    """prev_hash -> its heights, for previous blocks that rows place at more than one height."""
    heights: dict[str, set[int]] = {}
    for prev, height in zip(observations.column("prev_hash").to_pylist(), observations.column("height").to_pylist(),
                            strict=True):
        heights.setdefault(prev, set()).add(height)
    return {prev: sorted(hs) for prev, hs in sorted(heights.items()) if len(hs) > 1}


def template_groups(observations: pa.Table) -> pa.Table:
    """One row per (prev_hash, branch_hash) of the jobs with branches: its pools, counts, first and
    last time seen. Jobs without branches (empty blocks) share no transaction selection and form
    no group. Needs the columns prev_hash, branch_hash, merkle_branches, height, pool_id, observed_at."""
    conflicts = height_conflicts(observations)
    if conflicts:
        raise ValueError("jobs on the same previous block claim different heights: "
                         + "; ".join(f"{prev}: {hs}" for prev, hs in conflicts.items()))
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    columns = [observations.column(c).to_pylist()
               for c in ("prev_hash", "branch_hash", "merkle_branches", "height", "pool_id", "observed_at")]
    for prev, bhash, branches, height, pool, seen in zip(*columns, strict=True):
        if not branches:
            continue
        seconds = int(seen.timestamp()) if isinstance(seen, datetime) else int(seen)
        group = groups.setdefault((prev, bhash), {"height": height, "branch_count": len(branches), "pools": set(),
                                                  "observations": 0, "first": seconds, "last": seconds})
        group["pools"].add(pool)
        group["observations"] += 1
        group["first"] = min(group["first"], seconds)
        group["last"] = max(group["last"], seconds)
    ordered = sorted(groups.items(), key=lambda kv: (kv[1]["height"], kv[0]))
    cols = {
        "group_id": [group_id(prev, bhash) for (prev, bhash), _ in ordered],
        "prev_hash": [prev for (prev, _), _ in ordered],
        "branch_hash": [bhash for (_, bhash), _ in ordered],
        "height": [g["height"] for _, g in ordered],
        "branch_count": [g["branch_count"] for _, g in ordered],
        "pool_ids": [sorted(g["pools"]) for _, g in ordered],
        "pools": [len(g["pools"]) for _, g in ordered],
        "observations": [g["observations"] for _, g in ordered],
        "first_seen": [g["first"] for _, g in ordered],
        "last_seen": [g["last"] for _, g in ordered],
    }
    return _build("template_groups", cols)


def template_links(groups: pa.Table) -> pa.Table:
    """Pool pairs (pool_a < pool_b) that share at least one group: how many groups, at how many
    distinct heights, first and last height. A group of one pool makes no link."""
    heights: dict[tuple[str, str], list[int]] = {}
    for members, height in zip(groups.column("pool_ids").to_pylist(), groups.column("height").to_pylist(),
                               strict=True):
        ordered = sorted(set(members))
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                heights.setdefault((a, b), []).append(height)
    pairs = sorted(heights)
    cols = {
        "pool_a": [a for a, _ in pairs], "pool_b": [b for _, b in pairs],
        "shared_groups": [len(heights[p]) for p in pairs],
        "heights_seen": [len(set(heights[p])) for p in pairs],
        "first_height": [min(heights[p]) for p in pairs], "last_height": [max(heights[p]) for p in pairs],
    }
    return _build("template_links", cols)


def match_counts(matches: Mapping[str, PoolMatch]) -> dict[str, int]:
    counts = Counter(m.match for m in matches.values())
    return {kind: counts[kind] for kind in POOL_MATCHES if counts[kind]}
