"""The one loop: heights -> raw blocks -> decoded blocks -> tables -> attributions -> validation -> commit.

Every caller (``poolwatch sync``, the Airflow loads, re-syncs of a range, the benchmarks) loads
through ``load``. A range is cut into batches (default 1,000 blocks); each batch goes through the
same stages, each a plain function here:

    locate      the node's active-chain hashes and median times (``BlockSource.locate``)
    read        raw or head bytes (``BlockSource.read``), in slices of 16 blocks
    decode      bytes -> ``DecodedBlock`` (``decode_raw``: the whole block when the head is not enough)
    build       decoded blocks -> Arrow tables + attributions (``pipeline.load.tables.build_tables``)
    validate    Great Expectations suites + invariants (``pipeline.store.validation.validate_batch``)
    commit      in height order, under the writer lock: link checks, quarantine or commit

``workers`` says where the stages run, not which code runs them:

* ``workers=1`` (default): for a range of several batches, a thread locates, reads and decodes
  batch k+1 (it mostly waits on the node's socket or runs the C transaction walk, both outside the
  GIL) while this thread builds batch k and one helper process validates it (Great Expectations is
  CPU-bound Python: here it would hold the GIL the reading thread needs). A single batch runs in
  this process alone (no helper start-up for a few new blocks).
* ``workers=N``: N helper processes each run every stage but the commit for whole batches; at most
  N + N batches are in flight, so memory stays bounded.

Helper processes are fresh interpreters (``pipeline.load.processes``), never ``multiprocessing``
children: those re-import the parent's main module, which inside an Airflow task is the ``airflow``
script. If one cannot start, its work is done in this process and the log says so.

Commits are the caller's alone and in height order (the warehouse has one writer). A batch that no
longer links to what is stored (the node reorganized during the run) raises ``ChainChangedError``;
a batch attributed with another registry than the warehouse's (a re-attribution by another run)
raises ``RegistryChangedError``: nothing of either batch is stored, and the job repairs and resumes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.chain.decode import DecodedBlock, DecodeError, decode_block, decode_block_head
from pipeline.load.custody import with_custody_links
from pipeline.load.processes import HelperDiedError, HelperPool, HelperStartError
from pipeline.load.spends import NOT_RECORDED, SKIP_OFF, SKIP_WORKERS, SpendRecorder
from pipeline.load.tables import build_tables
from pipeline.source.base import BlockSource, Located, RawBlock, SourceRecipe
from pipeline.source.choice import open_source

if TYPE_CHECKING:
    from pipeline.attribution.registry import Registry
    from pipeline.store.validation import ValidationReport
    from pipeline.store.warehouse import Warehouse

log = logging.getLogger("pipeline.load.loop")

# Raw blocks held in memory at once (up to ~4 MB each): a batch's memory stays bounded whatever its
# size, and the next slice is read while this one decodes.
READ_SLICE = 16
# A batch commit takes well under a second; a run waits this long for another run's commit.
COMMIT_LOCK_WAIT = 120.0
# Core's default -rpcthreads before v29; a worker beyond the node's RPC threads only queues.
MAX_DEFAULT_WORKERS = 4
# load keeps no result of a batch that passes (a rejected one is validated again with every failing
# row, and quarantined): the cheapest GX result format is enough for passing tables.
PASSING_DETAIL = "BOOLEAN_ONLY"
# The costliest suite (about 3/4 of a batch's validation). At the end of a range, when nothing is
# left to read and this process has Great Expectations loaded, the validating process takes it
# while this process validates the other tables, so the run's last wait is for that suite alone.
_SHARED_SUITE = "blocks"


# glibc serves allocations above its mmap threshold (128 kB at first, adapting up to 32 MB only
# after such a block is freed) with fresh mmap()ed pages, and trims freed heap back to the OS: each
# 1-4 MB block buffer (read, XOR-undone, sliced, decoded) then costs page faults on every use. On a
# 2-CPU machine that was most of the block-file path's decode stage (5.2 -> 1.4 s per 400 blocks of
# 1.5 MB). Blocks are at most 4 MB; these keep such buffers on the reused heap.
_MALLOC_MMAP_THRESHOLD = 16 << 20
_MALLOC_TRIM_THRESHOLD = 64 << 20
_heap_tuned: bool | None = None


def keep_block_buffers_on_the_heap() -> bool:
    """Tune glibc's allocator once per process for block-sized buffers (see above); False where
    the C library has no ``mallopt`` (not glibc) or refuses: results are the same, only slower."""
    global _heap_tuned
    if _heap_tuned is None:
        import ctypes

        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _heap_tuned = False
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _heap_tuned = (mallopt(m_mmap_threshold, _MALLOC_MMAP_THRESHOLD) == 1
                           and mallopt(m_trim_threshold, _MALLOC_TRIM_THRESHOLD) == 1)
    return _heap_tuned


def plan_chunks(start: int, end: int, chunk_size: int) -> list[tuple[int, int]]:
    """Split the inclusive range [start, end] into inclusive chunks of at most chunk_size heights."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    if end < start:
        return []
    return [(lo, min(lo + chunk_size - 1, end)) for lo in range(start, end + 1, chunk_size)]


# The loop overlaps reading batch k+1 with building, validating and committing batch k: a range
# loaded as one batch overlaps nothing (every block is read, then all are validated, then committed).
# So a range of more than MIN_PIPELINED_BATCH blocks is loaded in at least PIPELINED_BATCHES batches.
# Not more: every batch costs a fixed validation pass (~0.2 s of Great Expectations per batch).
PIPELINED_BATCHES = 3
MIN_PIPELINED_BATCH = 100
READ_AHEAD_CHUNKS = 4  # decoded chunks the reading thread may hold for the consumer


def loop_chunks(start: int, end: int, batch_size: int) -> list[tuple[int, int]]:
    """The batches ``load`` makes of [start, end]: ``plan_chunks`` with batch_size, or smaller
    batches (never under MIN_PIPELINED_BATCH blocks) so that the range has PIPELINED_BATCHES of
    them. Batch boundaries change no stored row."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    total = max(0, end - start + 1)
    size = min(batch_size, max(MIN_PIPELINED_BATCH, -(-total // PIPELINED_BATCHES)))
    return plan_chunks(start, end, size)


def default_workers(cpu_count: int | None = None) -> int:
    """min(4, CPUs): decoding needs a core per worker, and 4 fits the smallest default -rpcthreads."""
    import os

    cpus = cpu_count if cpu_count is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                    else os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


@dataclass(frozen=True)
class BatchPlan:
    """How decoded blocks become a batch: the registry and settings they are attributed with, and
    whether the batch is validated."""

    registry: Registry | None
    chain: str
    allow_cross_network: bool = False
    validate: bool = True
    record_spends: bool = True  # walk whole blocks with the coinbase index (pipeline.load.spends)

    @property
    def attribution_version(self) -> str | None:
        from pipeline.attribution.engine import attribution_version

        return attribution_version(self.registry.version, self.allow_cross_network) if self.registry else None


@dataclass
class PreparedBatch:
    """A batch built (and, where it was validated, with its report): the commit stage's input."""

    lo: int
    hi: int
    tables: dict[str, pa.Table]
    report: ValidationReport | None
    blocks: int
    previous_hash: str | None     # the node's hash at lo - 1 the batch must link to (None: not asked)
    last_hash: str
    broken_link: int | None = None  # first height whose prev_hash does not link (node changed mid-read)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, where they ran


class ChainChangedError(RuntimeError):
    """The node's active chain changed under a running load (a reorg). ``height``: the first height
    that no longer links; ``resume_from``: the first height not stored (the refused batch's start).
    Repair (``pipeline.load.jobs.check_and_repair_reorg``) and resume from min(fork, resume_from)."""

    def __init__(self, message: str, height: int, resume_from: int) -> None:
        super().__init__(message)
        self.height = height
        self.resume_from = resume_from


class RegistryChangedError(RuntimeError):
    """The warehouse's registry changed (another run re-attributed) while this run's batches were
    attributed with the previous one; nothing from ``resume_from`` on was stored."""

    def __init__(self, message: str, resume_from: int, current_version: str | None) -> None:
        super().__init__(message)
        self.resume_from = resume_from
        self.current_version = current_version


class ReadCancelled(Exception):
    """A read was told to stop (its consumer went away); nothing was half-returned."""


def _timed(timings: dict[str, float], stage: str, started: float) -> float:
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - started
    return now


# ------------------------------------------------------------------------------------------ stages


def decode_raw(source: BlockSource, raw: RawBlock, spends: SpendRecorder | None = None) -> DecodedBlock:
    """A source's bytes as a ``DecodedBlock``: from the head when that is exact (no witness
    commitment, so no witness bytes anywhere), else from the whole block (read now if needed).
    The bytes must hash to the block the node located: anything else is never stored.

    ``spends``: the run's coinbase index. A block whose lower heights are all in it is read whole
    (even where its head would do) and walked with the lookup (its ``spends`` set); without a
    recorder (spends switched off) a head is enough, and the recorder says which blocks it skipped."""
    where = f"block {raw.hash} at height {raw.height}" + (f" ({raw.where})" if raw.where else "")
    coinbases = spends.index if spends is not None and spends.ready(raw.height) else None
    try:
        block = None
        if not raw.whole and coinbases is not None:
            raw = source.read_whole(raw)  # the other transactions are what the lookup reads
        if not raw.whole:
            block = decode_block_head(raw.data, raw.size, source.network, height=raw.height,
                                      median_time=raw.median_time)
            if block is None:
                raw = source.read_whole(raw)
        if block is None:
            block = decode_block(raw.data, source.network, height=raw.height, median_time=raw.median_time,
                                 coinbases=coinbases)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from exc
    if block.hash != raw.hash:
        raise DecodeError(f"the source returned block {block.hash} for height {raw.height}, expected {raw.hash}")
    if spends is not None:
        spends.decoded(block)
    return block


def read_decoded(source: BlockSource, located: Located, *, cancelled: Callable[[], bool] | None = None,
                 timings: dict[str, float] | None = None, spends: SpendRecorder | None = None) -> list[DecodedBlock]:
    """Read and decode a located batch, ``READ_SLICE`` blocks at a time: the next slice is read by a
    helper thread (the source's only user meanwhile) while this one is decoded, so at most two
    slices of raw blocks are in memory and decoding adds nothing to the time spent waiting for the
    source. ``cancelled`` is polled between slices. ``spends``: see ``decode_raw`` (blocks are
    decoded in height order, as the recorder needs)."""
    timings = timings if timings is not None else {}
    if spends is not None and located.heights:
        spends.prepare(located.heights[0])
    n = len(located.heights)
    starts = range(0, n, READ_SLICE)
    blocks: list[DecodedBlock] = []
    if len(starts) <= 1:
        mark = time.perf_counter()
        raws = source.read(located, 0, n)
        mark = _timed(timings, "read", mark)
        blocks = [decode_raw(source, raw, spends) for raw in raws]
        _timed(timings, "decode", mark)
        return blocks
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolwatch-read") as reader:
        upcoming = reader.submit(source.read, located, 0, READ_SLICE)
        for i in starts:
            mark = time.perf_counter()
            raws = upcoming.result()
            mark = _timed(timings, "read_wait", mark)
            if cancelled is not None and cancelled():
                raise ReadCancelled(f"read of heights {located.heights[0]}..{located.heights[-1]} cancelled")
            if i + READ_SLICE < n:
                upcoming = reader.submit(source.read, located, i + READ_SLICE, i + 2 * READ_SLICE)
            blocks += [decode_raw(source, raw, spends) for raw in raws]
            _timed(timings, "decode", mark)
    return blocks


def first_broken_link(blocks: Sequence[DecodedBlock], previous_hash: str | None) -> int | None:
    """Height of the first block whose prev_hash is not the hash before it (the node's block at
    lo - 1 for the first, when known), or None when the blocks form one chain."""
    expected = previous_hash
    for block in blocks:
        if expected is not None and block.prev_hash != expected:
            return block.height
        expected = block.hash
    return None


def batch_context(plan: BatchPlan, lo: int, previous: tuple[str | None, int | None]) -> dict[str, Any]:
    """What validating batch [lo, ..] needs from outside it: the node's block at lo - 1, the registry."""
    context: dict[str, Any] = {"chain": plan.chain}
    previous_hash, previous_median_time = previous
    if previous_hash is not None:
        context["previous_height"] = lo - 1
        context["previous_hash"] = previous_hash
        if previous_median_time is not None:
            context["previous_median_time"] = previous_median_time
    if plan.registry is not None:
        context["registry_version"] = plan.attribution_version
        context["pool_ids"] = sorted({p.id for p in plan.registry.pools})
    return context


def build(blocks: list[DecodedBlock], located: Located, plan: BatchPlan,
          timings: dict[str, float] | None = None) -> PreparedBatch:
    """A batch's tables (blocks, outputs, attributions) and link check; not yet validated."""
    timings = timings if timings is not None else {}
    mark = time.perf_counter()
    tables = build_tables(blocks, plan.registry, plan.chain, plan.allow_cross_network)
    _timed(timings, "build", mark)
    lo, hi = located.heights[0], located.heights[-1]
    return PreparedBatch(lo=lo, hi=hi, tables=tables, report=None, blocks=len(blocks),
                         previous_hash=located.previous[0], last_hash=blocks[-1].hash if blocks else "",
                         broken_link=first_broken_link(blocks, located.previous[0]), timings=timings)


def validate(batch: PreparedBatch, plan: BatchPlan, previous: tuple[str | None, int | None],
             only: Sequence[str] | None = None) -> ValidationReport:
    from pipeline.store.validation import validate_batch

    mark = time.perf_counter()
    report = validate_batch(batch.tables, batch_context(plan, batch.lo, previous), only=only,
                            passing_detail=PASSING_DETAIL)
    _timed(batch.timings, "validate", mark)
    return report


def locate(source: BlockSource, lo: int, hi: int) -> tuple[Located, dict[str, float]]:
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    located = source.locate(lo, hi, with_previous=True)
    _timed(timings, "locate", mark)
    return located, timings


def prepare(source: BlockSource, located: Located, timings: dict[str, float] | None, plan: BatchPlan,
            spends: SpendRecorder | None = None) -> PreparedBatch:
    """Every stage after locating and before the commit, for one batch, in this process."""
    timings = dict(timings or {})
    batch = build(read_decoded(source, located, timings=timings, spends=spends), located, plan, timings)
    if plan.validate:
        batch.report = validate(batch, plan, located.previous)
    return batch


# ----------------------------------------------------------------------- where the stages run


# Per worker process, set once by the pool's initializer.
_worker_source: BlockSource | None = None
_worker_plan: BatchPlan | None = None


def _init_worker(recipe: SourceRecipe, plan: BatchPlan) -> None:
    global _worker_source, _worker_plan
    keep_block_buffers_on_the_heap()
    _worker_source = open_source(recipe)
    _worker_plan = plan
    if plan.validate:
        from pipeline.store.validation import warm_up

        warm_up()  # Great Expectations' multi-second import, once per worker, before any batch


def _prepare_in_worker(located: Located, timings: dict[str, float]) -> PreparedBatch:
    assert _worker_source is not None and _worker_plan is not None, "worker not initialised"
    return prepare(_worker_source, located, timings, _worker_plan)


def _init_validator() -> None:
    from pipeline.store.validation import warm_up

    warm_up()


def _validate_remote(tables: dict[str, pa.Table], context: dict[str, Any], only: Sequence[str] | None = None
                     ) -> tuple[ValidationReport, float]:
    from pipeline.store.validation import validate_batch

    started = time.perf_counter()
    report = validate_batch(tables, context, only=only, passing_detail=PASSING_DETAIL)
    return report, time.perf_counter() - started


def _start_pool(workers: int, initializer: Callable[..., Any], initargs: tuple, name: str) -> HelperPool | None:
    pool = HelperPool(workers, initializer=initializer, initargs=initargs, name=name)
    try:
        pool.start()
    except HelperStartError as exc:
        log.warning("cannot start %s process(es) (%s); doing their work in this process instead (slower, same "
                    "result)", name, exc)
        pool.shutdown()
        return None
    return pool


class ValidatorStart:
    """The validating process of a pipelined load, started before the load itself: a caller that
    knows its range early (``sync_range`` with both heights given) starts it first, so the helper's
    interpreter and Great Expectations' multi-second import run while the caller still opens the
    warehouse and applies the registry, on a CPU that would otherwise wait. The caller passes it to
    ``load``; the first pipelined, validating load takes it (``take``) and shuts the helper down when
    it ends. The caller always calls ``close`` at its end: it stops a start no load took (a load of
    one batch, a set-up that failed), once it is up, without waiting here."""

    def __init__(self) -> None:
        starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolwatch-validator-start")
        self._future: Future | None = starter.submit(_start_pool, 1, _init_validator, (), "poolwatch-validator")
        starter.shutdown(wait=False)

    @classmethod
    def for_range(cls, lo: int, hi: int, batch_size: int, validate: bool, workers: int) -> ValidatorStart | None:
        """A start when ``load`` would validate [lo, hi] in a helper (several batches, one process),
        else None: a load of one batch validates in its own process and never waits for a helper."""
        return cls() if validate and workers == 1 and len(loop_chunks(lo, hi, batch_size)) > 1 else None

    def take(self) -> Future | None:
        future, self._future = self._future, None
        return future

    def close(self) -> None:
        future, self._future = self._future, None
        if future is not None:
            future.add_done_callback(_shutdown_started)


def _shutdown_started(future: Future) -> None:
    pool = future.result()
    if pool is not None:
        pool.shutdown()


@dataclass
class PendingReport:
    """A batch's report from ``BackgroundValidator``: ``done()`` without waiting, the report when
    called (validated in this process when there was no helper, or again when it failed)."""

    future: Future
    tables: dict[str, pa.Table]
    context: dict[str, Any]

    def done(self) -> bool:
        return self.future.done()

    def __call__(self) -> ValidationReport:
        from pipeline.store.validation import validate_batch

        result = self.future.result()
        return result if result is not None and result.ok else validate_batch(self.tables, self.context)


class BackgroundValidator:
    """Validation of whole batches in a helper process that starts now, in the background (its
    interpreter and Great Expectations' multi-second import overlap the caller's work); in this
    process when the helper cannot start or dies (slower, same result). ``submit`` returns at once
    with a callable giving the report, so the caller computes its next batch meanwhile (a batch
    submitted before the helper is up waits for it in a thread of this process, not in the caller).
    Reports of passing tables carry the cheapest detail (``PASSING_DETAIL``); a failing batch is
    validated again here with every failing row, for its quarantine."""

    def __init__(self) -> None:
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolwatch-validator")
        self._starting: Future = self._threads.submit(_start_pool, 1, _init_validator, (), "poolwatch-validator")
        self._pool: HelperPool | None = None
        self._lost = False

    def _remote(self, tables: dict[str, pa.Table], context: dict[str, Any]) -> ValidationReport | None:
        """In the thread: the helper's report, or None when there is no helper (any more)."""
        if self._pool is None and not self._lost:
            self._pool = self._starting.result()
            self._lost = self._pool is None
        if self._pool is None:
            return None
        try:
            return self._pool.submit(_validate_remote, tables, context).result()[0]
        except HelperDiedError as exc:
            log.warning("the validating process died (%s); validating in this process (slower, same result)", exc)
            self._pool.shutdown()
            self._pool, self._lost = None, True
            return None

    def submit(self, tables: dict[str, pa.Table], context: dict[str, Any]) -> PendingReport:
        return PendingReport(self._threads.submit(self._remote, tables, context), tables, context)

    def close(self) -> None:
        """Stop the helper once what was submitted is done, without waiting here for it to exit."""
        self._threads.submit(self._stop)
        self._threads.shutdown(wait=False)

    def _stop(self) -> None:
        pool = self._pool if self._pool is not None else self._starting.result()
        self._pool = None
        if pool is not None:
            pool.shutdown()


def in_order(chunks: Sequence[tuple[int, int]], submit: Callable[[int, int], Future],
              in_flight: int) -> Iterator[Any]:
    """Results of ``submit`` per chunk in order, at most ``in_flight`` at once."""
    pending: deque[Future] = deque()
    todo = iter(chunks)
    try:
        for lo, hi in todo:
            pending.append(submit(lo, hi))
            if len(pending) >= in_flight:
                break
        while pending:
            future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:  # keep the pool full while this result is consumed
                pending.append(submit(*nxt))
            yield future.result()
    finally:
        for future in pending:
            future.cancel()


def _in_workers(source: BlockSource, chunks: Sequence[tuple[int, int]], plan: BatchPlan,
                workers: int, spends: SpendRecorder | None = None) -> Iterator[PreparedBatch]:
    """N helper processes, each reading, decoding, building and validating whole batches that this
    process located (two batched RPCs per batch: the node alone knows its active chain).

    Coinbase spends are not recorded there: a worker's batch may spend coinbases of batches other
    workers are still decoding, which no index holds yet; ``spends`` is told so per batch."""
    pool = _start_pool(workers, _init_worker, (source.recipe(), plan), "poolwatch-worker")
    if pool is None:
        for lo, hi in chunks:
            yield prepare(source, *locate(source, lo, hi), plan, spends)
        return
    if spends is not None and chunks:
        spends.skip(SKIP_WORKERS, chunks[0][0], chunks[-1][1])
    try:
        yield from in_order(chunks, lambda lo, hi: pool.submit(_prepare_in_worker, *locate(source, lo, hi)),
                             2 * workers)
    finally:
        pool.shutdown()


def _read_ahead(source: BlockSource, chunks: Sequence[tuple[int, int]], spends: SpendRecorder | None = None
                ) -> Iterator[tuple[Located, list[DecodedBlock], dict[str, float]]]:
    """(located, decoded blocks, timings) per chunk, in order, made by one background thread up to
    ``READ_AHEAD_CHUNKS`` chunks ahead of the consumer. The thread has its own source (connections
    and file handles); a second helper thread, with a source of its own, locates the next chunk
    (two batched RPCs) while this one is read, so reads never wait for them. Exceptions are re-raised here; when the
    consumer stops early the threads are told to stop and give up within a few blocks."""
    # Decoded blocks are small (header and coinbase): several chunks may wait, so reading goes on
    # while the consumer waits for the validating process to start (seconds) or for a long validation.
    results: queue.Queue = queue.Queue(maxsize=READ_AHEAD_CHUNKS)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        reader, locator_source = source.clone(), source.clone()
        locator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolwatch-locate")

        def locate(chunk: tuple[int, int]) -> tuple[Located, float]:
            started = time.perf_counter()
            located = locator_source.locate(*chunk, with_previous=True)
            return located, time.perf_counter() - started

        try:
            upcoming = locator.submit(locate, chunks[0]) if chunks else None
            for i in range(len(chunks)):
                if stop.is_set():
                    return
                assert upcoming is not None
                located, seconds = upcoming.result()
                upcoming = locator.submit(locate, chunks[i + 1]) if i + 1 < len(chunks) else None
                timings = {"locate": seconds}
                blocks = read_decoded(reader, located, cancelled=stop.is_set, timings=timings, spends=spends)
                put(("chunk", (located, blocks, timings)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", exc))
        finally:
            locator.shutdown(wait=True, cancel_futures=True)
            reader.close()
            locator_source.close()
            put(("done", None))

    thread = threading.Thread(target=produce, name="poolwatch-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _pipelined(source: BlockSource, chunks: Sequence[tuple[int, int]], plan: BatchPlan,
               spends: SpendRecorder | None = None, early: ValidatorStart | None = None) -> Iterator[PreparedBatch]:
    """One process, three stages at once: a thread reads and decodes batch k+1 while this thread
    builds batch k and a helper process validates it; batches come out in order. Each batch is
    handed to the commit as soon as it is validated, so the end of a range waits only for the last
    batch's validation and commit.

    The validating process starts in the background (its interpreter, imports and Great
    Expectations' multi-second import) while the first batch is read: nothing waits for it before
    the first batch is built (or earlier: ``early``, the caller's ``ValidatorStart``, taken here).
    This process imports Great Expectations only if it has to validate (the helper could not start
    or died)."""
    starting: Future | None = None
    if plan.validate:
        starting = early.take() if early is not None else None
        if starting is None:
            starting = ValidatorStart().take()
    validator: HelperPool | None = None
    try:
        with closing(_read_ahead(source, chunks, spends)) as ahead:
            for i, (located, blocks, timings) in enumerate(ahead):
                batch = build(blocks, located, plan, timings)
                if not plan.validate:
                    yield batch
                    continue
                if starting is not None:
                    mark = time.perf_counter()
                    validator, starting = starting.result(), None
                    # What the validator's start-up added to the first batch (0 when reading took longer).
                    batch.timings["validator_start_wait"] = time.perf_counter() - mark
                if validator is not None:
                    try:
                        batch.report = _validate_in(validator, batch, plan, located.previous,
                                                    share=i == len(chunks) - 1)
                    except HelperDiedError as exc:
                        log.warning("the validating process died (%s); validating in this process from heights "
                                    "%d..%d on (slower, same result)", exc, batch.lo, batch.hi)
                        validator.shutdown()
                        validator = None
                if validator is None:
                    batch.report = validate(batch, plan, located.previous)
                yield batch
    finally:
        if starting is not None:  # stopped before the first batch was validated: the start still ends
            validator = starting.result()
        if validator is not None:
            validator.shutdown()


def _validate_in(validator: HelperPool, batch: PreparedBatch, plan: BatchPlan,
                 previous: tuple[str | None, int | None], share: bool) -> ValidationReport:
    from pipeline.store.validation import is_warm

    context = batch_context(plan, batch.lo, previous)
    mark = time.perf_counter()
    # Sharing the last batch only pays where this process has Great Expectations loaded already:
    # importing it here would cost more than the suites it would take over.
    if not share or not is_warm() or _SHARED_SUITE not in batch.tables or len(batch.tables) < 2:
        report, seconds = validator.submit(_validate_remote, batch.tables, context).result()
    else:
        theirs = validator.submit(_validate_remote, batch.tables, context, [_SHARED_SUITE])
        ours = validate(batch, plan, previous, only=[t for t in batch.tables if t != _SHARED_SUITE])
        report, seconds = theirs.result()
        report = report.merged(ours)
    batch.timings["validate_wait"] = batch.timings.get("validate_wait", 0.0) + time.perf_counter() - mark
    batch.timings["validate"] = batch.timings.get("validate", 0.0) + seconds
    return report


def prepared_batches(source: BlockSource, chunks: Sequence[tuple[int, int]], plan: BatchPlan,
                     workers: int = 1, spends: SpendRecorder | None = None,
                     validator: ValidatorStart | None = None) -> Iterator[PreparedBatch]:
    """Built (and validated) batches per chunk, in order; ``workers`` places the stages; ``spends``
    (the run's coinbase index) is used by the one thread that decodes, in height order.
    ``validator``: the caller's early start of the validating process, which a pipelined load takes
    (the caller closes it whatever happened)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1:
        yield from _in_workers(source, chunks, plan, workers, spends)
    elif len(chunks) <= 1:
        for lo, hi in chunks:
            yield prepare(source, *locate(source, lo, hi), plan, spends)
    else:
        yield from _pipelined(source, chunks, plan, spends, validator)


# ------------------------------------------------------------------------------------------- commit


@dataclass
class LoadResult:
    blocks: int = 0
    batches: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    spends_checked: int = 0  # blocks whose coinbase spends were recorded (spend_scans rows)
    spends_skipped: list[str] = field(default_factory=list)  # why other blocks were not checked (SpendRecorder.summary)


def load(source: BlockSource, warehouse: Warehouse, lo: int, hi: int, plan: BatchPlan, *, batch_size: int = 1000,
         workers: int = 1, progress: Callable[[int], None] | None = None,
         lock_wait: float = COMMIT_LOCK_WAIT, stages: dict[str, float] | None = None,
         validator: ValidatorStart | None = None) -> LoadResult:
    """Load heights [lo, hi] from ``source`` into ``warehouse``: every stage, every batch, in order.

    The commit of each batch happens under the warehouse's writer lock (taken per commit,
    re-entrant if the caller holds it): the batch must link to the block stored at lo - 1 (or
    committed just before) and be attributed with the warehouse's current registry; a rejected
    batch is quarantined (``BatchRejected``); else it is committed and its validation summary kept
    for Data Docs. ``stages`` (optional) accumulates seconds per stage, measured where each ran,
    plus ``wait`` (for batches: what the commits did not hide) and ``commit``. ``validator``: the
    caller's early start of the validating process (``ValidatorStart``; the caller closes it).
    """
    from pipeline.store.validation import gate

    keep_block_buffers_on_the_heap()
    result = LoadResult(stages=stages if stages is not None else {})
    timings = result.stages
    spends = SpendRecorder.for_warehouse(warehouse) if plan.record_spends else None
    expected_registry = plan.attribution_version
    last_hash: str | None = None
    last_height: int | None = None
    mark = time.perf_counter()
    with closing(prepared_batches(source, loop_chunks(lo, hi, batch_size), plan, workers, spends,
                                  validator)) as batches:
        for batch in batches:
            got = time.perf_counter()
            with warehouse.writer(wait=lock_wait):
                if expected_registry is not None and warehouse.attribution_version != expected_registry:
                    raise RegistryChangedError(
                        f"the warehouse's registry changed to version {warehouse.attribution_version} (another "
                        f"run re-attributed) while heights {batch.lo}..{batch.hi} were attributed with "
                        f"{expected_registry}", resume_from=batch.lo, current_version=warehouse.attribution_version)
                if batch.broken_link is not None:
                    raise ChainChangedError(f"the node's chain changed while batch {batch.lo}..{batch.hi} was read "
                                            f"(block {batch.broken_link} does not link); run sync again: it repairs "
                                            "reorgs", height=batch.broken_link, resume_from=batch.lo)
                if batch.previous_hash is not None:
                    stored_prev = last_hash if last_height == batch.lo - 1 else \
                        warehouse.stored_hashes(batch.lo - 1, batch.lo - 1).get(batch.lo - 1)
                    if stored_prev is not None and stored_prev != batch.previous_hash:
                        raise ChainChangedError(
                            f"the node's block at height {batch.lo - 1} is now {batch.previous_hash}, not the stored "
                            f"{stored_prev}: its chain changed during the load. Run sync again: it repairs reorgs",
                            height=batch.lo - 1, resume_from=batch.lo)
                custody_started = time.perf_counter()
                tables, report = with_custody_links(warehouse, batch.tables, batch.report,
                                                    batch_context(plan, batch.lo, (None, None)), expected_registry)
                _timed(timings, "custody", custody_started)  # part of "commit": links follow what is stored
                gate(warehouse, tables, report)
            done = time.perf_counter()
            for stage, seconds in batch.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            timings["wait"] = timings.get("wait", 0.0) + got - mark
            timings["commit"] = timings.get("commit", 0.0) + done - got
            mark = done
            last_hash, last_height = batch.last_hash, batch.hi
            result.blocks += batch.blocks
            result.batches += 1
            if progress:
                progress(batch.blocks)
    if spends is not None:
        result.spends_checked = spends.checked
        result.spends_skipped = spends.summary()
    elif result.blocks:
        result.spends_skipped = [f"{NOT_RECORDED} for {result.blocks} block(s) ({SKIP_OFF}): "
                                 f"heights {lo}..{hi}"]
    for line in result.spends_skipped:
        log.warning("%s; the spends catch-up (pipeline.load.jobs.check_spends: `poolwatch sync` runs it, and "
                    "`poolwatch sync --check-spends`) checks them once the heights below are stored "
                    "(docs/custody.md)", line)
    return result


__all__ = ["BatchPlan", "COMMIT_LOCK_WAIT", "ChainChangedError", "LoadResult", "MAX_DEFAULT_WORKERS", "PreparedBatch",
           "READ_SLICE", "ReadCancelled", "RegistryChangedError", "ValidatorStart", "batch_context", "build",
           "decode_raw", "default_workers", "first_broken_link", "keep_block_buffers_on_the_heap", "load",
           "loop_chunks", "plan_chunks", "prepare", "prepared_batches", "read_decoded", "validate"]
