"""Parallel backfill: worker processes give the same blocks, in height order, as the sequential path."""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa

import pytest

from pipeline.blockfiles import BlockFileError
from pipeline.decode import blocks_to_tables, sha256d
from pipeline.networks import MAIN, REGTEST
from pipeline.parallel import ChunkFetcher, default_workers
from pipeline.sync import fetch_blocks, plan_chunks


def _hash(raw: bytes) -> str:
    return sha256d(raw[:80])[::-1].hex()


class FakeNode:
    """block_hashes / median_times / raw_blocks over a height -> raw block map (median_time: None)."""

    def __init__(self, chain: dict[int, bytes]) -> None:
        self.by_height = chain
        self.by_hash = {_hash(raw): raw for raw in chain.values()}

    def block_hashes(self, heights):
        return [_hash(self.by_height[h]) for h in heights]

    def median_times(self, hashes):
        return [None for _ in hashes]

    def raw_blocks(self, hashes):
        return [self.by_hash[h] for h in hashes]


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


def test_parallel_blkfiles_equal_sequential_and_in_order(mainnet_blocks_dir) -> None:
    blocks_dir, chain = mainnet_blocks_dir
    node = FakeNode(chain)
    chunks = plan_chunks(0, max(chain), 40)
    expected = blocks_to_tables(fetch_blocks(node, sorted(chain), MAIN))
    with ChunkFetcher(node, MAIN, workers=2, source="blkfiles", blocks_dir=blocks_dir) as fetcher:
        got = list(fetcher.iter_chunks(chunks))
    assert [c for c, _ in got] == chunks
    for (lo, hi), blocks in got:
        assert [b.height for b in blocks] == list(range(lo, hi + 1))
    tables = blocks_to_tables([b for _, blocks in got for b in blocks])
    for name in expected:
        assert tables[name].equals(expected[name])


def test_worker_error_reaches_the_caller(mainnet_blocks_dir, tmp_path: Path) -> None:
    blocks_dir, chain = mainnet_blocks_dir
    copy = tmp_path / "blocks"
    copy.mkdir()
    for path in blocks_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    node = FakeNode(chain)
    with ChunkFetcher(node, MAIN, workers=2, source="blkfiles", blocks_dir=copy) as fetcher:
        fetcher.files.locate([_hash(raw) for raw in chain.values()])  # index built, then a file goes away
        (copy / "blk00002.dat").unlink()
        with pytest.raises(BlockFileError, match="blk00002.dat has disappeared"):
            list(fetcher.iter_chunks(plan_chunks(0, max(chain), 100)))


def test_arguments_are_checked(mainnet_blocks_dir) -> None:
    node = FakeNode({})
    with pytest.raises(ValueError, match="unknown block source"):
        ChunkFetcher(node, MAIN, source="carrier-pigeon")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ChunkFetcher(node, MAIN, workers=0)
    with pytest.raises(ValueError, match="--datadir"):
        ChunkFetcher(node, MAIN, source="blkfiles")


def test_default_workers_bounded() -> None:
    assert default_workers(1) == 1
    assert default_workers(2) == 2
    assert default_workers(64) == 4


@pytest.mark.node
def test_parallel_node_source_equals_sequential(regtest_node) -> None:
    from pipeline.node import NodeClient
    from pipeline.regtest import demo_specs, mine_chain
    from pipeline.registry import load_registry

    mine_chain(regtest_node, demo_specs(load_registry(), 90, allow_p2sh=regtest_node.flavor == "core"),
               start_time=1_700_000_000)
    client = NodeClient(regtest_node.client_config())
    chunks = plan_chunks(0, client.tip_height(), 25)
    with ChunkFetcher(client, REGTEST, workers=1) as sequential:
        expected = list(sequential.iter_chunks(chunks))
    with ChunkFetcher(client, REGTEST, workers=2) as parallel:
        got = list(parallel.iter_chunks(chunks))
    assert got == expected
    assert sum(len(b) for _, b in got) == 91
    client.close()


def _load(warehouse_root: Path, fetcher: ChunkFetcher, chunks) -> pa.Table:
    from pipeline.parallel import load_chunks
    from pipeline.warehouse import Warehouse

    warehouse = Warehouse(warehouse_root)
    with warehouse.writer():
        loaded = load_chunks(warehouse, fetcher, chunks)
    assert loaded == sum(hi - lo + 1 for lo, hi in chunks)
    return warehouse.read("blocks").sort_by("height")


def test_load_chunks_in_workers_equals_sequential(mainnet_blocks_dir, tmp_path: Path) -> None:
    from pipeline.parallel import BatchPlan

    blocks_dir, chain = mainnet_blocks_dir
    node = FakeNode(chain)
    chunks = plan_chunks(0, max(chain), 60)
    plan = BatchPlan(registry=None, chain="main", validate=False)
    with ChunkFetcher(node, MAIN, workers=1, source="blkfiles", blocks_dir=blocks_dir, plan=plan) as one:
        sequential = _load(tmp_path / "one", one, chunks)
    with ChunkFetcher(node, MAIN, workers=2, source="blkfiles", blocks_dir=blocks_dir, plan=plan) as two:
        parallel = _load(tmp_path / "two", two, chunks)
    expected = blocks_to_tables(fetch_blocks(node, sorted(chain), MAIN))["blocks"]
    assert sequential.num_rows == parallel.num_rows == len(chain)
    assert parallel.column("hash").equals(expected.column("hash"))
    assert parallel.equals(sequential)


def test_load_chunks_refuses_a_batch_that_does_not_link(mainnet_blocks_dir, tmp_path: Path) -> None:
    """What is stored at lo - 1 is not the node's block there any more (a reorg mid-run)."""
    from pipeline.parallel import BatchPlan, ChainChangedError, load_chunks
    from pipeline.warehouse import Warehouse

    blocks_dir, chain = mainnet_blocks_dir
    stale = dict(chain)
    raw = chain[49]
    stale[49] = raw[:76] + struct.pack("<I", (struct.unpack_from("<I", raw, 76)[0] + 1) & 0xFFFFFFFF) + raw[80:]
    warehouse = Warehouse(tmp_path / "wh")
    plan = BatchPlan(registry=None, chain="main", validate=False)
    with warehouse.writer():
        from pipeline.decode import decode_block

        warehouse.commit(blocks_to_tables([decode_block(stale[h], MAIN, height=h) for h in range(50)]))
        with ChunkFetcher(FakeNode(chain), MAIN, workers=2, source="blkfiles", blocks_dir=blocks_dir,
                          plan=plan) as fetcher, pytest.raises(ChainChangedError, match="height 49"):
            load_chunks(warehouse, fetcher, plan_chunks(50, 149, 50))
        assert warehouse.stored_range() == (0, 49)  # nothing of the refused batches was stored


@pytest.mark.node
def test_parallel_backfill_equals_sync_range(regtest_node, tmp_path: Path) -> None:
    """Workers that decode, attribute and validate give the warehouse `poolwatch sync` gives."""
    from pipeline.node import NodeClient
    from pipeline.parallel import BatchPlan, load_chunks
    from pipeline.regtest import demo_specs, mine_chain
    from pipeline.registry import load_registry
    from pipeline.sync import reattribute, sync_range
    from pipeline.warehouse import Warehouse

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
        with ChunkFetcher(client, REGTEST, workers=2, source="blkfiles", datadir=regtest_node.datadir,
                          plan=plan) as fetcher:
            assert load_chunks(warehouse, fetcher, plan_chunks(0, 80, 30)) == 81
    for table in ("blocks", "coinbase_outputs", "attributions"):
        got = warehouse.read(table).sort_by([("height", "ascending")])
        want = reference.read(table).sort_by([("height", "ascending")])
        assert got.num_rows == want.num_rows > 0
        assert got.select(want.column_names).equals(want), table
    client.close()


def test_load_chunks_refuses_a_batch_broken_inside(mainnet_blocks_dir, tmp_path: Path) -> None:
    """The node answered with blocks of two chains in one batch (it reorganized between requests)."""
    from pipeline.parallel import BatchPlan, ChainChangedError, load_chunks
    from pipeline.warehouse import Warehouse

    blocks_dir, chain = mainnet_blocks_dir
    mixed = {h: chain[h] for h in range(0, 100)}
    raw = chain[59]
    mixed[59] = raw[:76] + struct.pack("<I", (struct.unpack_from("<I", raw, 76)[0] + 1) & 0xFFFFFFFF) + raw[80:]
    extra = blocks_dir.parent / "mixed"
    extra.mkdir(exist_ok=True)
    (extra / "blk00000.dat").write_bytes(b"".join(MAIN.magic + struct.pack("<I", len(r)) + r for r in mixed.values()))
    warehouse = Warehouse(tmp_path / "wh")
    plan = BatchPlan(registry=None, chain="main", validate=False)
    with ChunkFetcher(FakeNode(mixed), MAIN, workers=1, source="blkfiles", blocks_dir=extra, plan=plan) as fetcher, \
            pytest.raises(ChainChangedError, match="block 60 does not link") as caught:
        load_chunks(warehouse, fetcher, plan_chunks(0, 99, 50))
    assert caught.value.height == 60 and caught.value.resume_from == 50
    assert warehouse.stored_range() == (0, 49)


def _load_with_a_future_last_block(chain: dict[int, bytes], count: int, chunk: int, tmp_path: Path):
    """Blocks 0..count-1 in one blk file, the last dated 2096 (past the 2-hour future bound), loaded
    in chunks of ``chunk`` with validation by the one-process pipeline: (warehouse, BatchRejected)."""
    from pipeline.parallel import BatchPlan, load_chunks
    from pipeline.validation import BatchRejected
    from pipeline.warehouse import Warehouse

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
        with ChunkFetcher(FakeNode(blocks), MAIN, workers=1, source="blkfiles", blocks_dir=folder,
                          plan=plan) as fetcher, pytest.raises(BatchRejected) as caught:
            load_chunks(warehouse, fetcher, plan_chunks(0, count - 1, chunk))
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

    from pipeline import processes

    monkeypatch.setattr(processes.sys, "executable", str(tmp_path / "no-such-python"))
    with caplog.at_level(logging.WARNING, logger="pipeline.parallel"):
        warehouse, _ = _load_with_a_future_last_block(mainnet_blocks_dir[1], 150, 50, tmp_path)
    assert warehouse.stored_range() == (0, 99)  # validated here: the bad batch was still refused
    assert any("cannot start a validating process" in r.getMessage() and "validating in this process"
               in r.getMessage() for r in caplog.records)
