"""The batch loop of every sync: fetch and decode height chunks ahead, validate, commit in order.

One process (``workers=1``, the default): for a range of several chunks, a thread fetches and
decodes ahead (``_prefetched``: it mostly waits on the node's socket or runs the C transaction walk,
both outside the GIL), one helper process validates, and the caller builds, attributes and commits
(``_pipelined``). A single chunk is done in the calling process alone.

Worker processes (``workers=N``): Great Expectations and the rest of a batch are CPU-bound Python,
which threads would serialize on the GIL; processes do not. Each worker holds its own
``NodeClient`` (python-bitcoinrpc is not thread- or fork-safe) or its own block-file reader, and
works on one chunk at a time, so the node never sees more than ``workers`` requests at once: keep
``workers`` at or below the node's ``-rpcthreads`` (Core: 4 before v29, 16 since) so no request
waits in its ``-rpcworkqueue`` (16 / 64). Workers also build each chunk's tables, attribute and
validate it, so all of that scales with the workers.

Either way the parent keeps the single-writer rule of the warehouse: it receives batches strictly
in height order, checks each one links to what is stored, and commits (``load_chunks``).

Sources:

* ``"node"``: ``pipeline.sync.fetch_blocks`` in slices of 16 blocks (REST ``/rest/block/<hash>.bin``
  when the node serves it, else ``getblock <hash> 0``);
* ``"blkfiles"``: the node's active-chain hashes and median times over RPC, the bytes from its block
  files (header and coinbase only when that is exact, see ``blockfiles.decode_located``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from contextlib import closing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.blockfiles import BlockFileReader, BlockFileSource, BlockLocation, decode_located
from pipeline.decode import DecodedBlock
from pipeline.networks import Network, network_for_chain
from pipeline.node import NodeClient, NodeConfig
from pipeline.processes import HelperDiedError, HelperPool, HelperStartError

if TYPE_CHECKING:
    from pipeline.registry import Registry
    from pipeline.validation import ValidationReport
    from pipeline.warehouse import Warehouse

log = logging.getLogger("pipeline.parallel")

SOURCES = ("node", "blkfiles")
# Core's default -rpcthreads before v29; a worker beyond the node's RPC threads only queues.
MAX_DEFAULT_WORKERS = 4


def default_workers(cpu_count: int | None = None) -> int:
    """min(4, CPUs): decoding needs a core per worker, and 4 fits the smallest default -rpcthreads."""
    cpus = cpu_count if cpu_count is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                    else os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


@dataclass(frozen=True)
class _WorkerSpec:
    """What a worker process needs to build its own connections (picklable; no open handles)."""

    network: str
    node: NodeConfig | None
    blocks_dir: str | None
    magic: bytes
    plan: BatchPlan | None = None


@dataclass(frozen=True)
class BatchPlan:
    """How a chunk of decoded blocks becomes a batch (what ``sync_range`` passes to build/validate)."""

    registry: Registry | None
    chain: str
    allow_cross_network: bool = False
    validate: bool = True


@dataclass
class PreparedBatch:
    """A chunk built and validated (in a worker): the parent only checks the link and commits."""

    lo: int
    hi: int
    tables: dict[str, pa.Table]
    report: ValidationReport | None
    blocks: int
    previous_hash: str | None     # the node's hash at lo - 1 the link was validated against
    last_hash: str
    broken_link: int | None = None  # first height whose prev_hash does not link (node changed mid-fetch)


# Per-process state, set once by the pool initializer.
_client: NodeClient | None = None
_reader: BlockFileReader | None = None
_network: Network | None = None
_plan: BatchPlan | None = None


def _init_worker(spec: _WorkerSpec) -> None:
    global _client, _reader, _network, _plan
    _network = network_for_chain(spec.network)
    _plan = spec.plan
    if spec.node is not None:
        _client = NodeClient(spec.node)
    if spec.blocks_dir is not None:
        _reader = BlockFileReader(spec.blocks_dir, spec.magic)
    if spec.plan is not None and spec.plan.validate:
        # Pay Great Expectations' multi-second import once per worker, at start, not in a batch.
        from pipeline.validation import warm_up

        warm_up()


def _init_validator() -> None:
    from pipeline.validation import warm_up

    warm_up()  # Great Expectations' multi-second import and its context, once, at start


# load_chunks keeps no result of a batch that passes (a rejected one is validated again with every
# failing row, and quarantined): the cheapest GX result format is enough for passing tables.
PASSING_DETAIL = "BOOLEAN_ONLY"

# The costliest suite (about 3/4 of a batch's validation). At the end of a range, when nothing is
# left to fetch, the validating process takes it while this process validates the other tables,
# so the run's last wait is for that suite alone.
_SHARED_SUITE = "blocks"


def _validate_in(validator: HelperPool, tables: dict[str, pa.Table], context: dict[str, Any],
                 share: bool) -> ValidationReport:
    from pipeline.validation import validate_batch

    if not share or _SHARED_SUITE not in tables or len(tables) < 2:
        return validator.submit(validate_batch, tables, context, passing_detail=PASSING_DETAIL).result()
    theirs = validator.submit(validate_batch, tables, context, only=[_SHARED_SUITE], passing_detail=PASSING_DETAIL)
    ours = validate_batch(tables, context, only=[t for t in tables if t != _SHARED_SUITE],
                          passing_detail=PASSING_DETAIL)
    return theirs.result().merged(ours)


@dataclass(frozen=True)
class Located:
    """A chunk's place on the node's active chain: what reading its blocks needs from the RPC."""

    heights: list[int]
    hashes: list[str]
    median_times: list[int | None]
    previous: tuple[str | None, int | None]  # the node's (hash, median time) at heights[0] - 1, if asked


def locate_chunk(client: NodeClient, lo: int, hi: int, with_previous: bool) -> Located:
    """Hashes and median times of [lo, hi] and, when asked, of lo - 1 (one batched RPC each)."""
    from pipeline.sync import locate_blocks

    heights = list(range(lo, hi + 1))
    skip = 1 if with_previous and lo > 0 else 0
    hashes, median_times = locate_blocks(client, [lo - 1, *heights] if skip else heights)
    previous = (hashes[0], median_times[0]) if skip else (None, None)
    return Located(heights, hashes[skip:], median_times[skip:], previous)


def fetch_decoded(client: NodeClient, located: Located, network: Network,
                  cancelled: Callable[[], bool] | None = None) -> list[DecodedBlock]:
    """``sync.fetch_blocks`` of a located chunk (it decodes raw blocks a few at a time, so a chunk
    never holds all its raw blocks in memory)."""
    from pipeline.sync import fetch_blocks

    return fetch_blocks(client, located.heights, network, cancelled=cancelled,
                        located=(located.hashes, located.median_times))


def _fetch_node_chunk(lo: int, hi: int) -> list[DecodedBlock]:
    assert _client is not None and _network is not None, "worker not initialised"
    return fetch_decoded(_client, locate_chunk(_client, lo, hi, with_previous=False), _network)


def _decode_chunk(heights: list[int], hashes: list[str], median_times: list[int | None],
                  locations: list[BlockLocation]) -> list[DecodedBlock]:
    assert _reader is not None and _network is not None, "worker not initialised"
    return decode_located(_reader, heights, hashes, median_times, locations, _network)


def batch_context(plan: BatchPlan, lo: int, previous_hash: str | None,
                  previous_median_time: int | None = None) -> dict[str, Any]:
    """What validating chunk [lo, ..] needs from outside it: the node's block at lo - 1, the registry."""
    context: dict[str, Any] = {"chain": plan.chain}
    if previous_hash is not None:
        context["previous_height"] = lo - 1
        context["previous_hash"] = previous_hash
        if previous_median_time is not None:
            context["previous_median_time"] = previous_median_time
    if plan.registry is not None:
        from pipeline.attribution import attribution_version

        context["registry_version"] = attribution_version(plan.registry.version, plan.allow_cross_network)
        context["pool_ids"] = sorted({p.id for p in plan.registry.pools})
    return context


def build_prepared(blocks: list[DecodedBlock], lo: int, hi: int, previous_hash: str | None,
                   plan: BatchPlan) -> PreparedBatch:
    """A chunk's tables and link check, not yet validated (``report`` None)."""
    from pipeline.sync import build_batch, first_broken_link

    tables = build_batch(blocks, plan.registry, plan.chain, plan.allow_cross_network)
    return PreparedBatch(lo=lo, hi=hi, tables=tables, report=None, blocks=len(blocks),
                         previous_hash=previous_hash, last_hash=blocks[-1].hash if blocks else "",
                         broken_link=first_broken_link(blocks, previous_hash))


def prepare_batch(blocks: list[DecodedBlock], lo: int, hi: int, previous_hash: str | None,
                  plan: BatchPlan, previous_median_time: int | None = None) -> PreparedBatch:
    """Tables and validation report of one chunk; the link to ``previous_hash`` is validated here."""
    batch = build_prepared(blocks, lo, hi, previous_hash, plan)
    if plan.validate:
        from pipeline.validation import validate_batch

        batch.report = validate_batch(batch.tables, batch_context(plan, lo, previous_hash, previous_median_time),
                                      passing_detail=PASSING_DETAIL)
    return batch


def _prepare_node_chunk(lo: int, hi: int) -> PreparedBatch:
    assert _client is not None and _network is not None and _plan is not None, "worker not initialised"
    located = locate_chunk(_client, lo, hi, with_previous=True)
    blocks = fetch_decoded(_client, located, _network)
    return prepare_batch(blocks, lo, hi, located.previous[0], _plan, located.previous[1])


def _prepare_located_chunk(located: Located, locations: list[BlockLocation]) -> PreparedBatch:
    assert _plan is not None, "worker not initialised"
    blocks = _decode_chunk(located.heights, located.hashes, located.median_times, locations)
    return prepare_batch(blocks, located.heights[0], located.heights[-1], located.previous[0], _plan,
                         located.previous[1])


class ChunkFetcher:
    """Decoded blocks for a sequence of inclusive height chunks, yielded in the chunks' order.

    ``workers=1``: a fetching thread plus, when validating several chunks, one validating process
    (``_pipelined``). With more workers at most ``workers + prefetch`` chunks are in flight. Either
    way memory is bounded to a few chunks of decoded blocks whatever the range. Use as a context
    manager (stops the thread and the processes).
    """

    def __init__(self, client: NodeClient, network: Network, *, workers: int = 1, source: str = "node",
                 datadir: Path | str | None = None, blocks_dir: Path | str | None = None,
                 prefetch: int | None = None, plan: BatchPlan | None = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown block source {source!r}; expected one of {', '.join(SOURCES)}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if source == "blkfiles" and datadir is None and blocks_dir is None:
            raise ValueError("the blkfiles source needs the node's data directory (--datadir)")
        self.client = client
        self.network = network
        self.workers = workers
        self.source = source
        self.prefetch = workers if prefetch is None else max(0, prefetch)
        self.plan = plan
        self.files: BlockFileSource | None = None
        if source == "blkfiles":
            self.files = BlockFileSource(datadir or "", network, blocks_dir=blocks_dir)
        self._pool: HelperPool | None = None
        self._validator: HelperPool | None = None

    def __enter__(self) -> ChunkFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for pool in (self._pool, self._validator):
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        self._pool = self._validator = None
        if self.files is not None:
            self.files.close()

    def _validator_pool(self) -> HelperPool:
        """The one-process pipeline's validating process (see iter_prepared), started now."""
        if self._validator is None:
            pool = HelperPool(1, initializer=_init_validator, name="poolwatch-validator")
            pool.start()  # HelperStartError here, where the caller can fall back
            self._validator = pool
        return self._validator

    def _validator_or_none(self) -> HelperPool | None:
        """The validating process, or None (logged) when it cannot start: this process validates then."""
        try:
            return self._validator_pool()
        except HelperStartError as exc:
            log.warning("cannot start a validating process (%s); validating in this process instead "
                        "(slower, same result)", exc)
            return None

    def _pool_for(self) -> HelperPool:
        if self._pool is None:
            spec = _WorkerSpec(
                network=self.network.name,
                node=self.client.config if self.source == "node" else None,
                blocks_dir=str(self.files.reader.blocks_dir) if self.files is not None else None,
                magic=self.network.magic, plan=self.plan)
            # Fresh interpreters (pipeline.processes), never fork (the parent holds threads and
            # sockets) nor multiprocessing's spawn (it re-imports the parent's main module, which
            # inside an Airflow task is the airflow script, and dies there).
            self._pool = HelperPool(self.workers, initializer=_init_worker, initargs=(spec,),
                                    name="poolwatch-worker")
        return self._pool

    def start(self) -> float:
        """Start the worker processes now (imports included) instead of on the first chunk; seconds taken.
        Optional: lets a caller show a "starting workers" step or time steady-state throughput."""
        started = time.perf_counter()
        if self.workers > 1:
            self._pool_for().start()
        elif self.plan is not None and self.plan.validate:
            from pipeline.validation import warm_up

            warm_up()  # this process validates too: a fallback, and its share of a range's last batch
            self._validator_or_none()
        return time.perf_counter() - started

    def fetch_chunk(self, lo: int, hi: int) -> list[DecodedBlock]:
        """One chunk in this process."""
        return self._read(self.client, locate_chunk(self.client, lo, hi, with_previous=False))

    def _read(self, client: NodeClient, located: Located,
              cancelled: Callable[[], bool] | None = None) -> list[DecodedBlock]:
        """Decoded blocks of a located chunk, from the block files or the node."""
        if self.files is not None:
            return decode_located(self.files.reader, located.heights, located.hashes, located.median_times,
                                  self.files.locate(located.hashes), self.network)
        return fetch_decoded(client, located, self.network, cancelled)

    def _prefetched(self, chunks: Sequence[tuple[int, int]], with_previous: bool
                    ) -> Iterator[tuple[list[DecodedBlock], tuple[str | None, int | None]]]:
        """(decoded blocks, the node's (hash, median time) at lo - 1 when asked) per chunk, in order,
        made by one background thread at most ``max(1, prefetch)`` chunks ahead of the consumer.

        The one-process pipeline: while the caller attributes, validates and commits chunk k, the
        thread fetches and decodes chunk k + 1. That overlaps because the thread mostly waits on
        the node's socket and in the C transaction walk, both outside the GIL. The thread has its
        own NodeClient (python-bitcoinrpc is not thread-safe) and is the only user of the block
        files while it runs. A second helper thread, with a NodeClient of its own, locates the next
        chunk (its hashes and median times: two batched RPCs, ~0.1 s per 1000 blocks) while this
        one is read, so the block reads never wait for them. Exceptions are re-raised here; when
        the consumer stops early the threads are told to stop and give up within a few blocks.
        """
        results: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            # Own connections when the client can make them (a NodeClient); a node-shaped stand-in
            # is used as it is, by this thread alone (the caller does not touch it while this runs).
            clone = getattr(self.client, "clone", None)
            client = clone() if clone is not None else self.client
            locator_client = clone() if clone is not None else None
            locator = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolwatch-locate")
                       if locator_client is not None else None)

            def locate(chunk: tuple[int, int]) -> Future:
                if locator is None:  # no second connection: locate in this thread, in turn
                    future: Future = Future()
                    future.set_result(locate_chunk(client, *chunk, with_previous))
                    return future
                return locator.submit(locate_chunk, locator_client, *chunk, with_previous)

            try:
                upcoming = locate(chunks[0]) if chunks else None
                for i in range(len(chunks)):
                    if stop.is_set():
                        return
                    assert upcoming is not None
                    located = upcoming.result()
                    upcoming = locate(chunks[i + 1]) if i + 1 < len(chunks) else None
                    put(("chunk", (self._read(client, located, cancelled=stop.is_set), located.previous)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                put(("error", exc))
            finally:
                if locator is not None:
                    locator.shutdown(wait=True, cancel_futures=True)
                for own in (client, locator_client):
                    if own is not None and own is not self.client:
                        own.close()
                put(("done", None))

        thread = threading.Thread(target=produce, name="poolwatch-prefetch", daemon=True)
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

    def _submit(self, lo: int, hi: int) -> Future:
        pool = self._pool_for()
        if self.files is None:
            return pool.submit(_fetch_node_chunk, lo, hi)
        located = locate_chunk(self.client, lo, hi, with_previous=False)
        return pool.submit(_decode_chunk, located.heights, located.hashes, located.median_times,
                           self.files.locate(located.hashes))

    def _submit_prepare(self, lo: int, hi: int) -> Future:
        pool = self._pool_for()
        if self.files is None:
            return pool.submit(_prepare_node_chunk, lo, hi)
        located = locate_chunk(self.client, lo, hi, with_previous=True)
        return pool.submit(_prepare_located_chunk, located, self.files.locate(located.hashes))

    def prepare_chunk(self, lo: int, hi: int) -> PreparedBatch:
        """One chunk built and validated in this process."""
        if self.plan is None:
            raise ValueError("prepare_chunk needs a BatchPlan (ChunkFetcher(plan=...))")
        located = locate_chunk(self.client, lo, hi, with_previous=True)
        blocks = self._read(self.client, located)
        return prepare_batch(blocks, lo, hi, located.previous[0], self.plan, located.previous[1])

    def _in_order(self, chunks: Sequence[tuple[int, int]], submit: Callable[[int, int], Future]) -> Iterator[Any]:
        """Results of ``submit`` per chunk in order, at most workers + prefetch in flight."""
        pending: deque[Future] = deque()
        todo = iter(chunks)
        try:
            for lo, hi in todo:
                pending.append(submit(lo, hi))
                if len(pending) >= self.workers + self.prefetch:
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

    def iter_chunks(self, chunks: Sequence[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], list[DecodedBlock]]]:
        """((lo, hi), blocks) per chunk, in the given order; a worker's exception is re-raised here."""
        if len(chunks) <= 1:
            for lo, hi in chunks:
                yield (lo, hi), self.fetch_chunk(lo, hi)
            return
        if self.workers == 1:
            with closing(self._prefetched(chunks, with_previous=False)) as fetched:
                for chunk, (blocks, _) in zip(chunks, fetched):
                    yield chunk, blocks
            return
        yield from zip(chunks, self._in_order(chunks, self._submit))

    def _pipelined(self, chunks: Sequence[tuple[int, int]]) -> Iterator[PreparedBatch]:
        """The one-process pipeline of a multi-batch range, three stages at once.

        A thread fetches and decodes chunk k + 1 (``_prefetched``) while this thread builds chunk
        k's tables, has one helper process validate them (Great Expectations is CPU-bound Python:
        in this process it held the GIL the fetching thread needed, and the fetch slowed by a
        third) and, through the caller, commits it. Each batch is committed as soon as it is
        validated, not when the next chunk has arrived, so the end of a range waits only for the
        last batch's validation (shared between the two processes: ``_validate_in``) and commit.
        Batches come out in order.
        """
        assert self.plan is not None
        plan = self.plan
        with closing(self._prefetched(chunks, with_previous=True)) as fetched:
            if not plan.validate:
                for (lo, hi), (blocks, previous) in zip(chunks, fetched):
                    yield build_prepared(blocks, lo, hi, previous[0], plan)
                return
            from pipeline.validation import validate_batch

            validator = self._validator_or_none()
            for i, ((lo, hi), (blocks, previous)) in enumerate(zip(chunks, fetched)):
                batch = build_prepared(blocks, lo, hi, previous[0], plan)
                context = batch_context(plan, lo, previous[0], previous[1])
                if validator is not None:
                    try:
                        # The last batch: nothing left to fetch, so this process can take a share.
                        batch.report = _validate_in(validator, batch.tables, context, share=i == len(chunks) - 1)
                    except HelperDiedError as exc:
                        log.warning("the validating process died (%s); validating in this process from heights "
                                    "%d..%d on (slower, same result)", exc, lo, hi)
                        validator = None
                if validator is None:
                    batch.report = validate_batch(batch.tables, context, passing_detail=PASSING_DETAIL)
                yield batch

    def iter_prepared(self, chunks: Sequence[tuple[int, int]]) -> Iterator[PreparedBatch]:
        """Built and validated batches per chunk, in order (workers decode, attribute and validate)."""
        if self.plan is None:
            raise ValueError("iter_prepared needs a BatchPlan (ChunkFetcher(plan=...))")
        if len(chunks) <= 1:
            for lo, hi in chunks:
                yield self.prepare_chunk(lo, hi)
            return
        if self.workers == 1:
            yield from self._pipelined(chunks)
            return
        yield from self._in_order(chunks, self._submit_prepare)


class ChainChangedError(RuntimeError):
    """The node's active chain changed under a running backfill (a reorg). ``height``: the first
    height that no longer links; ``resume_from``: the first height not stored (the refused batch's
    start). Repair (``sync.check_and_repair_reorg``) and resume from min(fork, resume_from)."""

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


def load_chunks(warehouse: Warehouse, fetcher: ChunkFetcher, chunks: Sequence[tuple[int, int]], *,
                progress: Callable[[int], None] | None = None, stages: dict[str, float] | None = None,
                lock_wait: float = 120.0) -> int:
    """The batch loop of ``sync_range`` with decoding, attribution and validation in the workers.

    The parent receives batches in height order and, for each, under the warehouse's writer lock
    (taken per commit, re-entrant if the caller holds it): checks the batch links (within itself and
    to the block stored at lo - 1, or committed just before), quarantines a rejected batch and raises
    ``BatchRejected`` exactly as ``load_batch`` does, else commits. A batch that does not link means
    the node's chain changed during the run: ``ChainChangedError`` names the height, nothing of that
    batch is stored, and the caller repairs (``check_and_repair_reorg``) and resumes from the fork.
    Returns blocks loaded. ``stages`` (optional) accumulates seconds: ``wait`` (for the workers:
    what is not hidden behind the parent's commits) and ``commit``.
    """
    from pipeline.validation import BatchRejected, quarantine, save_report

    timings = stages if stages is not None else {}
    loaded = 0
    last_hash: str | None = None
    last_height: int | None = None
    clock = time.perf_counter
    mark = clock()
    # closing(): an error below must stop the fetching thread/workers now, not when the traceback dies.
    expected_registry = None
    if fetcher.plan is not None and fetcher.plan.registry is not None:
        from pipeline.attribution import attribution_version

        expected_registry = attribution_version(fetcher.plan.registry.version, fetcher.plan.allow_cross_network)
    with closing(fetcher.iter_prepared(chunks)) as batches:
        for batch in batches:
            got = clock()
            with warehouse.writer(wait=lock_wait):
                current_registry = warehouse.attribution_version if expected_registry else None
                if current_registry != expected_registry:
                    raise RegistryChangedError(
                        f"the warehouse's registry changed to version {current_registry} (another run "
                        f"re-attributed) while heights {batch.lo}..{batch.hi} were attributed with {expected_registry}",
                        resume_from=batch.lo, current_version=current_registry)
                if batch.broken_link is not None:
                    raise ChainChangedError(f"the node's chain changed while batch {batch.lo}..{batch.hi} was fetched "
                                            f"(block {batch.broken_link} does not link); run sync again: it repairs reorgs",
                                            height=batch.broken_link, resume_from=batch.lo)
                if batch.previous_hash is not None:
                    if last_height == batch.lo - 1:
                        stored_prev = last_hash
                    else:
                        stored_prev = warehouse.stored_hashes(batch.lo - 1, batch.lo - 1).get(batch.lo - 1)
                    if stored_prev is not None and stored_prev != batch.previous_hash:
                        raise ChainChangedError(
                            f"the node's block at height {batch.lo - 1} is now {batch.previous_hash}, not the stored "
                            f"{stored_prev}: its chain changed during the backfill. Run sync again: it repairs reorgs",
                            height=batch.lo - 1, resume_from=batch.lo)
                if batch.report is not None and not batch.report.ok:
                    where = quarantine(warehouse.root, batch.tables, batch.report)
                    raise BatchRejected(batch.report.summary(), where)
                warehouse.commit(batch.tables)
                if batch.report is not None:
                    save_report(warehouse.root, batch.report)  # a summary per committed batch, for Data Docs
            done = clock()
            timings["wait"] = timings.get("wait", 0.0) + got - mark
            timings["commit"] = timings.get("commit", 0.0) + done - got
            mark = done
            last_hash, last_height = batch.last_hash, batch.hi
            loaded += batch.blocks
            if progress:
                progress(batch.blocks)
    return loaded


__all__ = ["BatchPlan", "ChainChangedError", "RegistryChangedError", "ChunkFetcher", "Located", "MAX_DEFAULT_WORKERS", "PreparedBatch",
           "SOURCES", "batch_context", "build_prepared", "default_workers", "load_chunks", "locate_chunk",
           "prepare_batch"]
