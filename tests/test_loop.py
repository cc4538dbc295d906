"""The one loop (pipeline.load.loop): the same tables and commits whichever way its stages are
placed (one process with a reading thread and a validating process, or N worker processes), batches
in height order, refusals of batches that no longer link, and in-process work when a helper cannot
start."""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pytest

from fake_node import FakeNode, decoded, fake_source
from helper_processes import counted_starts, live_children
from pipeline.chain.networks import MAIN, REGTEST
from pipeline.load.loop import BatchPlan, default_workers, load, loop_chunks, plan_chunks, prepared_batches
from pipeline.load.tables import blocks_to_tables
from pipeline.source.blockfiles import BlockFileError, BlockFileSource

NO_REGISTRY = BatchPlan(registry=None, chain="main", validate=False)


@pytest.fixture(scope="module")
def mainnet_blocks_dir(fixtures_dir: Path, tmp_path_factory) -> tuple[Path, dict[int, bytes]]:
    """bitcoinj's heights 0..438 stream written as three blk files (the second reversed)."""
    stream = (fixtures_dir / "bitcoinj+bitcoinj" / "first-100k-blocks.dat").read_bytes()
    chain, pos = {}, 0
    while pos + 8 <= len(stream):
        (length,) = struct.unpack_from("<I", stream, pos + 4)
        chain[len(chain)] = stream[pos + 8:pos + 8 + length]
        pos += 8 + length
    blocks_dir = tmp_path_factory.mktemp("parallel") / "blocks"
    blocks_dir.mkdir()
    raws = list(chain.values())
    for number, part in enumerate((raws[:150], raws[150:300][::-1], raws[300:])):
        data = b"".join(MAIN.magic + struct.pack("<I", len(r)) + r for r in part)
        (blocks_dir / f"blk{number:05d}.dat").write_bytes(data + bytes(512))
    return blocks_dir, chain


def _source(blocks_dir: Path, chain: dict[int, bytes]) -> BlockFileSource:
    return BlockFileSource(FakeNode(chain, median_times=False), MAIN, blocks_dir=blocks_dir)


def test_workers_give_the_tables_of_one_process_in_order(mainnet_blocks_dir) -> None:
    blocks_dir, chain = mainnet_blocks_dir
    chunks = plan_chunks(0, max(chain), 40)
    expected = blocks_to_tables(decoded(fake_source(chain, MAIN, median_times=False), sorted(chain)))
    for workers in (1, 2):
        with _source(blocks_dir, chain) as source:
            got = list(prepared_batches(source, chunks, NO_REGISTRY, workers=workers))
        assert [(b.lo, b.hi) for b in got] == chunks
        for batch in got:
            assert batch.tables["blocks"].column("height").to_pylist() == list(range(batch.lo, batch.hi + 1))
        for name in expected:
            assert pa.concat_tables([b.tables[name] for b in got]).equals(expected[name]), (workers, name)


def test_worker_error_reaches_the_caller(mainnet_blocks_dir, tmp_path: Path) -> None:
    blocks_dir, chain = mainnet_blocks_dir
    copy = tmp_path / "blocks"
    copy.mkdir()
    for path in blocks_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    with _source(copy, chain) as source:
        (copy / "blk00002.dat").unlink()  # a file goes away: each worker's reader finds out, the caller hears
        with pytest.raises(BlockFileError, match="not found in the block files"):
            list(prepared_batches(source, plan_chunks(0, max(chain), 100), NO_REGISTRY, workers=2))


def test_arguments_are_checked(mainnet_blocks_dir) -> None:
    from pipeline.source.choice import open_block_source

    node = FakeNode({})
    with pytest.raises(ValueError, match="unknown block source"):
        open_block_source(node, MAIN, "carrier-pigeon")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        list(prepared_batches(fake_source({}, MAIN), [(0, 1)], NO_REGISTRY, workers=0))
    with pytest.raises(ValueError, match="--datadir"):
        BlockFileSource(node, MAIN)


def test_default_workers_bounded() -> None:
    assert default_workers(1) == 1
    assert default_workers(2) == 2
    assert default_workers(64) == 4


@pytest.mark.node
def test_node_sources_in_workers_give_the_tables_of_one_process(regtest_node) -> None:
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.source.client import NodeClient
    from pipeline.source.rest import RestSource
    from pipeline.source.rpc import RpcSource

    mine_chain(regtest_node, demo_specs(load_registry(), 90, allow_p2sh=regtest_node.flavor == "core"),
               start_time=1_700_000_000)
    client = NodeClient(regtest_node.client_config())
    chunks = plan_chunks(0, client.tip_height(), 25)
    plan = BatchPlan(registry=None, chain="regtest", validate=False)
    results = {}
    for kind, cls in (("rest", RestSource), ("rpc", RpcSource)):
        for workers in (1, 2):
            with cls(client.clone(), REGTEST) as source:
                results[kind, workers] = [b.tables["blocks"] for b in prepared_batches(source, chunks, plan, workers)]
    reference = pa.concat_tables(results["rest", 1])
    assert reference.num_rows == 91
    for key, tables in results.items():
        assert pa.concat_tables(tables).equals(reference), key


def _load(warehouse_root: Path, source, chunk: int, hi: int, workers: int) -> pa.Table:
    from pipeline.store.warehouse import Warehouse

    warehouse = Warehouse(warehouse_root)
    with warehouse.writer():
        result = load(source, warehouse, 0, hi, NO_REGISTRY, batch_size=chunk, workers=workers)
    assert result.blocks == hi + 1 and result.batches == len(loop_chunks(0, hi, chunk))
    return warehouse.read("blocks").sort_by("height")


def test_load_in_workers_equals_one_process(mainnet_blocks_dir, tmp_path: Path) -> None:
    blocks_dir, chain = mainnet_blocks_dir
    with _source(blocks_dir, chain) as source:
        sequential = _load(tmp_path / "one", source, 60, max(chain), workers=1)
        parallel = _load(tmp_path / "two", source, 60, max(chain), workers=2)
    expected = blocks_to_tables(decoded(fake_source(chain, MAIN, median_times=False), sorted(chain)))["blocks"]
    assert sequential.num_rows == parallel.num_rows == len(chain)
    assert parallel.column("hash").equals(expected.column("hash"))
    assert parallel.equals(sequential)


def test_load_refuses_a_batch_that_does_not_link(mainnet_blocks_dir, tmp_path: Path) -> None:
    """What is stored at lo - 1 is not the node's block there any more (a reorg mid-run)."""
    from pipeline.load.loop import ChainChangedError
    from pipeline.store.warehouse import Warehouse

    blocks_dir, chain = mainnet_blocks_dir
    stale = dict(chain)
    raw = chain[49]
    stale[49] = raw[:76] + struct.pack("<I", (struct.unpack_from("<I", raw, 76)[0] + 1) & 0xFFFFFFFF) + raw[80:]
    warehouse = Warehouse(tmp_path / "wh")
    with warehouse.writer():
        from pipeline.chain.decode import decode_block

        warehouse.commit(blocks_to_tables([decode_block(stale[h], MAIN, height=h) for h in range(50)]))
        with _source(blocks_dir, chain) as source, pytest.raises(ChainChangedError, match="height 49"):
            load(source, warehouse, 50, 149, NO_REGISTRY, batch_size=50, workers=2)
        assert warehouse.stored_range() == (0, 49)  # nothing of the refused batches was stored


@pytest.mark.node
def test_parallel_backfill_equals_sync_range(regtest_node, tmp_path: Path) -> None:
    """Workers that decode, attribute and validate give the warehouse `poolwatch sync` gives."""
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.load.jobs import reattribute, sync_range
    from pipeline.source.client import NodeClient
    from pipeline.store.warehouse import Warehouse

    registry = load_registry()
    mine_chain(regtest_node, demo_specs(registry, 80, allow_p2sh=regtest_node.flavor == "core"),
               start_time=1_700_000_000)
    client = NodeClient(regtest_node.client_config())
    reference = Warehouse(tmp_path / "reference")
    sync_range(client, reference, 0, 80, registry=registry, batch_size=30)

    warehouse = Warehouse(tmp_path / "parallel")
    with warehouse.writer():
        warehouse.bind_chain("regtest", client.block_hashes([0])[0])
        reattribute(warehouse, registry)  # the registry becomes the warehouse's before batches use it
        plan = BatchPlan(registry=registry, chain="regtest")
        with BlockFileSource(client, REGTEST, datadir=regtest_node.datadir) as source:
            assert load(source, warehouse, 0, 80, plan, batch_size=30, workers=2).blocks == 81
    for table in ("blocks", "coinbase_outputs", "attributions"):
        got = warehouse.read(table).sort_by([("height", "ascending")])
        want = reference.read(table).sort_by([("height", "ascending")])
        assert got.num_rows == want.num_rows > 0
        assert got.select(want.column_names).equals(want), table
    client.close()


def test_load_refuses_a_batch_broken_inside(mainnet_blocks_dir, tmp_path: Path) -> None:
    """The node answered with blocks of two chains in one batch (it reorganized between requests)."""
    from pipeline.load.loop import ChainChangedError
    from pipeline.store.warehouse import Warehouse

    blocks_dir, chain = mainnet_blocks_dir
    mixed = {h: chain[h] for h in range(0, 100)}
    raw = chain[59]
    mixed[59] = raw[:76] + struct.pack("<I", (struct.unpack_from("<I", raw, 76)[0] + 1) & 0xFFFFFFFF) + raw[80:]
    extra = blocks_dir.parent / "mixed"
    extra.mkdir(exist_ok=True)
    (extra / "blk00000.dat").write_bytes(b"".join(MAIN.magic + struct.pack("<I", len(r)) + r for r in mixed.values()))
    warehouse = Warehouse(tmp_path / "wh")
    with _source(extra, mixed) as source, \
            pytest.raises(ChainChangedError, match="block 60 does not link") as caught:
        load(source, warehouse, 0, 99, NO_REGISTRY, batch_size=50)
    assert caught.value.height == 60 and caught.value.resume_from == 50
    assert warehouse.stored_range() == (0, 49)


def _load_with_a_future_last_block(chain: dict[int, bytes], count: int, chunk: int, tmp_path: Path,
                                   validator=None):
    """Blocks 0..count-1 in one blk file, the last dated 2096 (past the 2-hour future bound), loaded
    in chunks of ``chunk`` with validation by the one-process pipeline: (warehouse, BatchRejected)."""
    from pipeline.store.validation import BatchRejected
    from pipeline.store.warehouse import Warehouse

    blocks = {h: chain[h] for h in range(0, count)}
    last = blocks[count - 1]
    blocks[count - 1] = last[:68] + struct.pack("<I", 4_000_000_000) + last[72:]
    folder = tmp_path / "future" / "blocks"
    folder.mkdir(parents=True)
    (folder / "blk00000.dat").write_bytes(b"".join(MAIN.magic + struct.pack("<I", len(r)) + r for r in blocks.values()))
    warehouse = Warehouse(tmp_path / "wh")
    plan = BatchPlan(registry=None, chain="main", validate=True)
    with warehouse.writer():
        warehouse.bind_chain("main", MAIN.genesis_hash)
        with _source(folder, blocks) as source, pytest.raises(BatchRejected) as caught:
            load(source, warehouse, 0, count - 1, plan, batch_size=chunk, validator=validator)
    return warehouse, caught.value


def test_one_process_pipeline_quarantines_a_bad_batch_and_keeps_the_earlier_ones(mainnet_blocks_dir,
                                                                               tmp_path: Path) -> None:
    """Three batches, one worker: fetching thread, validating process, commits here. The last block
    is dated 2096 (after the 2-hour future bound): its batch is quarantined, the two before it stay."""
    warehouse, rejected = _load_with_a_future_last_block(mainnet_blocks_dir[1], 100, 40, tmp_path)
    assert "time" in str(rejected)
    assert warehouse.stored_range() == (0, 79)
    assert list((warehouse.root / "quarantine").iterdir())


def test_one_process_pipeline_validates_in_process_when_it_cannot_start_a_process(
        mainnet_blocks_dir, tmp_path: Path, monkeypatch, caplog) -> None:
    """The helper process cannot start (here: no interpreter at sys.executable): the batches are
    validated in this process instead, and the log says so."""
    import logging

    from pipeline.load import processes

    monkeypatch.setattr(processes.sys, "executable", str(tmp_path / "no-such-python"))
    with caplog.at_level(logging.WARNING, logger="pipeline.load.loop"):
        warehouse, _ = _load_with_a_future_last_block(mainnet_blocks_dir[1], 150, 50, tmp_path)
    assert warehouse.stored_range() == (0, 99)  # validated here: the bad batch was still refused
    assert any("cannot start poolwatch-validator" in r.getMessage() and "in this process instead"
               in r.getMessage() for r in caplog.records)


def test_one_process_pipeline_leaves_great_expectations_to_the_validating_process(
        mainnet_blocks_dir, tmp_path: Path, monkeypatch) -> None:
    """The validating process starts in the background while the first batch is read, and this
    process never imports Great Expectations for it (seconds of start-up before the first block
    otherwise): every batch is still validated (the bad last one is refused)."""
    from pipeline.store import validation

    monkeypatch.setattr(validation, "_gx", validation.lru_cache(maxsize=1)(validation._GX))
    assert not validation.is_warm()
    warehouse, rejected = _load_with_a_future_last_block(mainnet_blocks_dir[1], 120, 40, tmp_path)
    assert "time" in str(rejected)
    assert warehouse.stored_range() == (0, 79)
    assert not validation.is_warm()


def test_one_process_pipeline_stopped_early_stops_its_validator(mainnet_blocks_dir) -> None:
    """A consumer that stops after the first batch: the background start of the validating process
    is waited for and the process is stopped (no helper left running)."""
    blocks_dir, chain = mainnet_blocks_dir
    plan = BatchPlan(registry=None, chain="main", validate=True)
    before = live_children()
    with _source(blocks_dir, chain) as source:
        batches = prepared_batches(source, plan_chunks(0, 199, 50), plan)
        first = next(batches)
        assert first.report is not None and first.report.ok
        batches.close()
    assert live_children() - before == set()


def _wait_for_no_children(before: set[int], seconds: float = 60.0) -> set[int]:
    import time

    deadline = time.monotonic() + seconds
    while live_children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    return live_children() - before


def test_a_validator_started_before_the_load_is_the_one_it_uses(mainnet_blocks_dir, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """``ValidatorStart`` begins the validating process before ``load`` is called (``sync_range``
    does so while it opens the warehouse): the pipelined load validates with it, starts no second
    one, still refuses the bad last batch, and stops it at the end."""
    from pipeline.load.loop import ValidatorStart

    started = counted_starts(monkeypatch)
    before = live_children()
    early = ValidatorStart.for_range(0, 119, 40, validate=True, workers=1)
    assert early is not None and started[:1] == ["poolwatch-validator"]
    warehouse, rejected = _load_with_a_future_last_block(mainnet_blocks_dir[1], 120, 40, tmp_path, validator=early)
    assert early.take() is None  # the load took it over
    early.close()  # nothing left to stop: the load owned it
    assert "time" in str(rejected) and warehouse.stored_range() == (0, 79)
    assert started == ["poolwatch-validator", "up"]
    assert _wait_for_no_children(before) == set()


def test_a_validator_start_no_load_takes_is_stopped(mainnet_blocks_dir, monkeypatch) -> None:
    """A start nobody takes (the set-up failed, or the load had one batch and validated in its own
    process) is stopped once it is up, without the caller waiting for it."""
    import time

    from pipeline.load.loop import ValidatorStart

    started = counted_starts(monkeypatch)
    before = live_children()
    early = ValidatorStart()
    mark = time.perf_counter()
    early.close()
    assert time.perf_counter() - mark < 1.0
    deadline = time.monotonic() + 60
    while "up" not in started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started == ["poolwatch-validator", "up"]
    assert _wait_for_no_children(before) == set()

    blocks_dir, chain = mainnet_blocks_dir
    started.clear()
    early = ValidatorStart()
    with _source(blocks_dir, chain) as source:
        batches = list(prepared_batches(source, plan_chunks(0, 49, 50), BatchPlan(None, "main", validate=True),
                                        validator=early))
    early.close()  # one batch: validated here, the early start was not taken
    assert len(batches) == 1 and batches[0].report is not None and batches[0].report.ok
    assert started[:1] == ["poolwatch-validator"] and len(started) <= 2  # the early one only: validated here
    deadline = time.monotonic() + 60
    while "up" not in started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _wait_for_no_children(before) == set()


def test_a_validator_is_started_early_only_for_a_pipelined_validated_load(monkeypatch) -> None:
    from pipeline.load.loop import ValidatorStart

    started = counted_starts(monkeypatch)
    assert ValidatorStart.for_range(0, 99, 1000, validate=True, workers=1) is None    # one batch: validated here
    assert ValidatorStart.for_range(0, 2999, 1000, validate=False, workers=1) is None  # nothing to validate
    assert ValidatorStart.for_range(0, 2999, 1000, validate=True, workers=4) is None   # workers validate
    assert started == []


_FAULTS_PROBE = """
import os, resource, sys
from pipeline.source.blockfiles import xor_at
if sys.argv[1] == "tuned":
    from pipeline.load.loop import keep_block_buffers_on_the_heap
    assert keep_block_buffers_on_the_heap() and keep_block_buffers_on_the_heap()  # once, then a no-op
data, key = os.urandom(1_500_003), os.urandom(8)
xor_at(data, key, 5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    xor_at(data, key, 5)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator tuning only")
def test_block_buffers_stay_on_the_heap(tmp_path: Path) -> None:
    """Un-XORing a 1.5 MB block 50 times: with glibc's defaults every buffer is fresh mmap()ed
    memory (tens of thousands of page faults); after ``keep_block_buffers_on_the_heap`` (called
    by ``load``) the freed buffers are reused (next to none). Counted, not timed."""
    import subprocess
    import sys

    script = tmp_path / "faults.py"
    script.write_text(_FAULTS_PROBE)
    repo = Path(__file__).resolve().parent.parent

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, str(script), mode], cwd=repo, capture_output=True, text=True,
                             check=True, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
        return int(out.stdout.strip())

    plain, tuned = faults("plain"), faults("tuned")
    assert plain > 50 * 300  # ~366 pages per 1.5 MB buffer, at least one buffer per call
    assert tuned < plain / 20
