"""Common custody from the chain (docs/custody.md): the decoder's walk finds the inputs that spend a
stored coinbase (C walk and Python reference, same answers), the loop records them for every read
path and says which blocks it could not check, and custody_links pairs the pools whose coinbases a
transaction spends together, on a real Bitcoin Core regtest chain built for it."""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pytest

from fake_node import FakeNode
from pipeline import native
from pipeline.chain.coinbases import CoinbaseIndex, txid_bytes
from pipeline.chain.decode import decode_block, transaction_ids
from pipeline.chain.networks import MAIN
from pipeline.load.custody import custody_links, links_after
from pipeline.store.schemas import table_spec

# Block 170's transaction: Satoshi pays Hal Finney 10 BTC from block 9's coinbase, the first
# coinbase spend on the chain.
FIRST_SPEND_TXID = "f4184fc596403b9d638783cf57adfe4c75c605f6356fbc91338530e9831e9e16"
BLOCK_9_COINBASE = "0437cd7f8525ceed2324359c2d0ba26006d92d856a9c20fa0241106ee5a597c9"


# --------------------------------------------------------------------------- the walk, C and Python


@pytest.fixture(scope="module")
def early_chain(fixtures_dir: Path) -> dict[int, bytes]:
    """Mainnet heights 0..438 (bitcoinj's stream of the first blocks)."""
    stream = (fixtures_dir / "bitcoinj+bitcoinj" / "first-100k-blocks.dat").read_bytes()
    chain, pos = {}, 0
    while pos + 8 <= len(stream):
        (length,) = struct.unpack_from("<I", stream, pos + 4)
        chain[len(chain)] = stream[pos + 8:pos + 8 + length]
        pos += 8 + length
    return chain


def _walk_chain(chain: dict[int, bytes], *, use_c: bool, monkeypatch: pytest.MonkeyPatch) -> list:
    """Every block decoded in height order against an index of the coinbases below it."""
    with monkeypatch.context() as m:
        if not use_c:
            m.setattr(native, "_scan", None)  # the Python reference walk, as without the library
        index = CoinbaseIndex(use_c=use_c)
        out = []
        for height in sorted(chain):
            block = decode_block(chain[height], MAIN, height=height, coinbases=index)
            out.append(block)
            index.add_display([(height, block.coinbase_txid)])
        return out


def test_the_walk_finds_the_first_coinbase_spend(early_chain, monkeypatch) -> None:
    blocks = _walk_chain(early_chain, use_c=native.AVAILABLE, monkeypatch=monkeypatch)
    spends = [(b.height, s) for b in blocks for s in b.spends]
    assert spends, "heights 0..438 hold coinbase spends (block 170 is the first)"
    height, first = spends[0]
    assert (height, first.txid, first.tx_index, first.input_index) == (170, FIRST_SPEND_TXID, 1, 0)
    assert (first.coinbase_txid, first.coinbase_vout, first.coinbase_height) == (BLOCK_9_COINBASE, 0, 9)
    for height, spend in spends:
        assert spend.coinbase_height <= height - 100  # coinbase maturity: the lookup found real spends
        assert spend.coinbase_txid == blocks[spend.coinbase_height].coinbase_txid
    # The inputs counted are every input of the non-coinbase transactions.
    assert blocks[170].inputs == 1 and all(b.inputs == 0 for b in blocks if b.tx_count == 1)


@pytest.mark.skipif(not native.AVAILABLE, reason="the C walk is not built (no compiler at install time)")
def test_c_and_python_walks_give_the_same_spends(early_chain, monkeypatch) -> None:
    with_c = _walk_chain(early_chain, use_c=True, monkeypatch=monkeypatch)
    with_python = _walk_chain(early_chain, use_c=False, monkeypatch=monkeypatch)
    assert with_c == with_python
    # And the C index with the Python walk (the walk falls back on malformed data).
    monkeypatch.setattr(native, "_scan", None)
    index = CoinbaseIndex(use_c=True)
    for height in sorted(early_chain):
        block = decode_block(early_chain[height], MAIN, height=height, coinbases=index)
        assert block == with_c[height]
        index.add_display([(height, block.coinbase_txid)])


def _spending_tx(outpoints: list[tuple[bytes, int]], witness: bool) -> bytes:
    """A transaction spending ``outpoints`` (txid in internal order, vout) to one P2WSH(OP_TRUE)
    output, with the witness [OP_TRUE] per input when ``witness``."""
    from pipeline.devnode.blocks import compact_size

    body = compact_size(len(outpoints))
    for txid, vout in outpoints:
        body += txid + struct.pack("<I", vout) + b"\x00" + b"\xff\xff\xff\xff"
    body += compact_size(1) + struct.pack("<q", 1000) + compact_size(34) + OP_TRUE_P2WSH
    wit = b"".join(b"\x01\x01\x51" for _ in outpoints) if witness else b""
    return struct.pack("<i", 2) + (b"\x00\x01" if witness else b"") + body + wit + b"\x00\x00\x00\x00"


OP_TRUE_P2WSH = bytes.fromhex("00204ae81572f06e1b88fd5ced7a1a000945432e83e1551e6f721ee9c00b8cc33260")


@pytest.mark.parametrize("use_c", [pytest.param(True, marks=pytest.mark.skipif(not native.AVAILABLE,
                                                                                 reason="C walk not built")), False])
def test_spends_in_witness_transactions_and_more_than_the_first_room(use_c: bool, monkeypatch) -> None:
    """Segwit and legacy transactions, a transaction of 300 coinbase inputs (beyond the C walk's
    first 256 records), inputs that spend no indexed coinbase: txids and positions exact."""
    from pipeline.devnode.blocks import CoinbaseSpec, build_block

    if not use_c:
        monkeypatch.setattr(native, "_scan", None)
    coinbases = [bytes([i % 256, i // 256]) + bytes(30) for i in range(400)]
    index = CoinbaseIndex(use_c=use_c)
    index.add_many(b"".join(coinbases), range(400))
    other = b"\xee" * 32
    txs = [_spending_tx([(coinbases[0], 0), (other, 1), (coinbases[5], 2)], witness=True),
           _spending_tx([(other, 0)], witness=False),
           _spending_tx([(c, 0) for c in coinbases[100:400]], witness=True),
           _spending_tx([(coinbases[7], 3)], witness=False)]
    spec = CoinbaseSpec(tag=b"/t/", payouts=[(OP_TRUE_P2WSH, 1)], witness_commitment=True)
    raw = build_block("00" * 32, 500, 1_700_000_000, spec, txs=txs, segwit=True)
    block = decode_block(raw, MAIN, height=500, coinbases=index)
    txids = [transaction_ids(tx)[0][::-1].hex() for tx in txs]
    got = [(s.tx_index, s.input_index, s.txid, s.coinbase_vout, s.coinbase_height) for s in block.spends]
    expected = [(1, 0, txids[0], 0, 0), (1, 2, txids[0], 2, 5)]
    expected += [(3, i, txids[2], 0, 100 + i) for i in range(300)]
    expected += [(4, 0, txids[3], 3, 7)]
    assert got == expected
    assert block.inputs == 3 + 1 + 300 + 1
    assert all(s.coinbase_txid == coinbases[s.coinbase_height][::-1].hex() for s in block.spends)
    # Without an index the block decodes as before: nothing checked.
    plain = decode_block(raw, MAIN, height=500)
    assert plain.spends is None and plain.inputs is None and plain.hash == block.hash


def test_index_keeps_the_later_of_two_coinbases_with_one_txid() -> None:
    """BIP30: mainnet's duplicate coinbase txids; a spend refers to the later block."""
    for use_c in ([True, False] if native.AVAILABLE else [False]):
        index = CoinbaseIndex(capacity=2, use_c=use_c)
        dup = txid_bytes("e3bf3d07d4b0375638d5f1db5255fe07ba2c4cb067cd81b84ee974b6585fb468")
        index.add(dup, 91722)
        index.add_many(b"".join(bytes([i]) * 32 for i in range(1, 40)), range(1, 40))  # grows the C table
        index.add(dup, 91880)
        assert index.height_of(dup) == 91880 and index.height_of(b"\x05" * 32) == 5
        assert index.height_of(b"\x77" * 32) is None and len(index) == 40
        assert index.complete_below == 0  # height 0 was never added


# --------------------------------------------------------------------------- custody links


def _spends(rows: list[tuple[int, str, int]]) -> pa.Table:
    return pa.table({"height": pa.array([r[0] for r in rows], pa.int32()),
                     "spending_txid": [r[1] for r in rows],
                     "coinbase_height": pa.array([r[2] for r in rows], pa.int32())})


def _pools(by_height: dict[int, str]) -> pa.Table:
    return pa.table({"height": pa.array(list(by_height), pa.int32()), "pool_id": list(by_height.values())})


def test_links_pair_pools_spent_together_and_nothing_else() -> None:
    pools = _pools({1: "alpha", 2: "alpha", 3: "beta", 4: "gamma", 5: "unknown", 6: "beta"})
    spends = _spends([
        (200, "t1", 1), (200, "t1", 3),              # alpha + beta
        (210, "t2", 1), (210, "t2", 2),              # alpha alone: no link
        (220, "t3", 5), (220, "t3", 2),              # alpha + unknown: no link
        (230, "t4", 2), (230, "t4", 6), (230, "t4", 4), (230, "t4", 3),  # alpha, beta, gamma: three pairs
        (240, "t5", 7), (240, "t5", 4),              # a coinbase without an attribution counts for nobody
    ])
    links = custody_links(spends, pools, "v1")
    assert links.schema == table_spec("custody_links").arrow_schema
    assert links.to_pylist() == [
        {"pool_a": "alpha", "pool_b": "beta", "co_spend_txs": 2, "first_height": 200, "last_height": 230,
         "attribution_version": "v1"},
        {"pool_a": "alpha", "pool_b": "gamma", "co_spend_txs": 1, "first_height": 230, "last_height": 230,
         "attribution_version": "v1"},
        {"pool_a": "beta", "pool_b": "gamma", "co_spend_txs": 1, "first_height": 230, "last_height": 230,
         "attribution_version": "v1"},
    ]
    assert custody_links(_spends([]), pools, "v1").num_rows == 0


def custody_batch(tables: dict[str, pa.Table], pool_ids: list[str]) -> dict[str, pa.Table]:
    """spend_scans, coinbase_spends and custody_links rows that fit a batch of blocks (for the
    invariant cases of tests/test_checks.py): every block scanned, one spend at the 16th block of
    the coinbase of the 4th, one link between two registry pools."""
    blocks = tables["blocks"]
    heights, hashes = blocks["height"].to_pylist(), blocks["hash"].to_pylist()
    spender = 15
    scans = table_spec("spend_scans").conform(pa.table({
        "height": pa.array(heights, pa.int32()), "block_hash": hashes,
        "inputs": pa.array([t - 1 + (1 if i == spender else 0) for i, t in enumerate(blocks["tx_count"].to_pylist())],
                           pa.int32()),
        "spends": pa.array([1 if i == spender else 0 for i in range(len(heights))], pa.int32())}))
    spends = table_spec("coinbase_spends").conform(pa.table({
        "height": pa.array([heights[spender]], pa.int32()), "block_hash": [hashes[spender]],
        "tx_index": pa.array([1], pa.int32()), "spending_txid": ["ab" * 32],
        "input_index": pa.array([0], pa.int32()), "coinbase_txid": [blocks["coinbase_txid"][3].as_py()],
        "coinbase_vout": pa.array([0], pa.int32()), "coinbase_height": pa.array([heights[3]], pa.int32())}))
    a, b = sorted(pool_ids)[:2]
    links = table_spec("custody_links").conform(pa.table({
        "pool_a": [a], "pool_b": [b], "co_spend_txs": pa.array([1], pa.int32()),
        "first_height": pa.array([150], pa.int32()), "last_height": pa.array([150], pa.int32()),
        "attribution_version": ["v"]}))
    return {"spend_scans": scans, "coinbase_spends": spends, "custody_links": links}


# --------------------------------------------------------------------------- the loop


def _blk_dir(chain: dict[int, bytes], folder: Path) -> Path:
    folder.mkdir()
    data = b"".join(MAIN.magic + struct.pack("<I", len(r)) + r for _, r in sorted(chain.items()))
    (folder / "blk00000.dat").write_bytes(data + bytes(512))
    return folder


def test_block_files_are_read_whole_to_record_spends_and_heads_only_without(early_chain, tmp_path,
                                                                             monkeypatch) -> None:
    """Block files with a head read shorter than the blocks holding transactions: recording spends
    reads those blocks whole and checks every block; with recording off the heads are enough and
    the load says that no block was checked."""
    from pipeline.load.loop import BatchPlan, load
    from pipeline.load.spends import SKIP_OFF
    from pipeline.source import blockfiles
    from pipeline.source.blockfiles import BlockFileSource
    from pipeline.store.warehouse import Warehouse

    blocks_dir = _blk_dir(early_chain, tmp_path / "blocks")
    top = max(early_chain)
    big = [h for h, raw in early_chain.items() if len(raw) > 300]
    assert big, "some early blocks hold transactions"
    monkeypatch.setattr(blockfiles, "HEAD_READ", 300)
    whole_reads: list[int] = []
    read_whole = BlockFileSource.read_whole

    def counting(self, raw):  # noqa: ANN001, ANN202
        whole_reads.append(raw.height)
        return read_whole(self, raw)

    monkeypatch.setattr(BlockFileSource, "read_whole", counting)
    for record in (True, False):
        whole_reads.clear()
        plan = BatchPlan(registry=None, chain="main", validate=True, record_spends=record)
        warehouse = Warehouse(tmp_path / f"w{record}")
        with BlockFileSource(FakeNode(early_chain, median_times=False), MAIN, blocks_dir=blocks_dir) as source:
            result = load(source, warehouse, 0, top, plan, batch_size=100)
        if record:
            assert sorted(whole_reads) == big
            assert result.spends_checked == top + 1 and result.spends_skipped == []
            scans = warehouse.read("spend_scans")
            assert scans["height"].to_pylist() == list(range(top + 1))
            spends = warehouse.read("coinbase_spends")
            assert spends.slice(0, 1).select(["height", "spending_txid", "coinbase_height"]).to_pylist() == [
                {"height": 170, "spending_txid": FIRST_SPEND_TXID, "coinbase_height": 9}]
            assert sum(scans["spends"].to_pylist()) == spends.num_rows
        else:
            assert whole_reads == []  # every early block is exact from its head
            assert result.spends_checked == 0
            assert result.spends_skipped == [f"coinbase spends not recorded for {top + 1} block(s) ({SKIP_OFF}): "
                                             f"heights 0..{top}"]
            assert warehouse.read("spend_scans").num_rows == 0


def test_loop_checks_nothing_above_a_gap_until_it_is_filled(early_chain, tmp_path) -> None:
    """A run whose lower heights are not stored cannot know every coinbase below its blocks: it
    decodes them unchecked and says so; loaded again after the gap is filled, they are checked."""
    from fake_node import fake_source
    from pipeline.load.loop import BatchPlan, load
    from pipeline.load.spends import SKIP_MISSING
    from pipeline.store.warehouse import Warehouse

    plan = BatchPlan(registry=None, chain="main", validate=False)
    warehouse = Warehouse(tmp_path / "w")
    source = fake_source(early_chain, MAIN, median_times=False)
    first = load(source, warehouse, 200, 260, plan, batch_size=30)
    assert first.spends_checked == 0 and SKIP_MISSING in first.spends_skipped[0] and "200..260" in first.spends_skipped[0]
    assert warehouse.read("spend_scans").num_rows == 0
    load(source, warehouse, 0, 199, plan, batch_size=100)
    again = load(source, warehouse, 200, 260, plan, batch_size=30)
    assert again.spends_checked == 61 and again.spends_skipped == []
    assert warehouse.read("spend_scans")["height"].to_pylist() == list(range(0, 261))


def test_missing_ranges_lists_the_heights_without_a_scan() -> None:
    from pipeline.load.spends import missing_ranges

    assert missing_ranges(9, range(10)) == []
    assert missing_ranges(9, []) == [(0, 9)]
    assert missing_ranges(9, [0, 1, 4, 5, 9]) == [(2, 3), (6, 8)]
    assert missing_ranges(9, [3, 4, 12, 13]) == [(0, 2), (5, 9)]  # scans above the end are not looked at
    assert missing_ranges(-1, [0]) == []                              # nothing stored from 0: nothing checkable


def test_unchecked_spends_finds_the_checkable_ranges_and_what_waits(early_chain, tmp_path) -> None:
    """Chunks loaded out of order and with recording off: the finder returns the stored heights
    without a spend_scans row whose lower heights are all stored, as ranges, and counts the ones
    above a missing height (which no load can check yet)."""
    from fake_node import fake_source
    from pipeline.load.loop import BatchPlan, load
    from pipeline.load.spends import unchecked_spends
    from pipeline.store.warehouse import Warehouse

    plan = BatchPlan(registry=None, chain="main", validate=False)
    warehouse = Warehouse(tmp_path / "w")
    assert unchecked_spends(warehouse).ranges == [] and unchecked_spends(warehouse).waiting == 0  # empty
    source = fake_source(early_chain, MAIN, median_times=False)
    load(source, warehouse, 300, 340, plan, batch_size=30)   # the highest chunk first: unchecked
    load(source, warehouse, 200, 260, plan, batch_size=30)   # unchecked (0..199 missing)
    found = unchecked_spends(warehouse)
    assert (found.ranges, found.waiting, found.first_missing) == ([], 41 + 61, 0)
    assert "102 stored block(s) above height 0" in found.describe()[0]
    load(source, warehouse, 0, 99, plan, batch_size=50)      # checked: everything below it is stored
    found = unchecked_spends(warehouse)
    assert (found.ranges, found.waiting, found.first_missing) == ([], 102, 100)
    load(source, warehouse, 100, 199, plan, batch_size=50)   # checked; 200..260 can be checked now
    load(source, warehouse, 261, 280, BatchPlan(registry=None, chain="main", validate=False, record_spends=False))
    found = unchecked_spends(warehouse)
    assert (found.ranges, found.waiting, found.first_missing) == ([(200, 280)], 41, 281)
    assert found.blocks == 81
    load(source, warehouse, 281, 299, plan)                  # fills the gap: 281..299 checked, 300..340 not
    found = unchecked_spends(warehouse)
    assert (found.ranges, found.waiting, found.first_missing) == ([(200, 280), (300, 340)], 0, None)
    for lo, hi in found.ranges:  # what the catch-up does, on the same loop
        assert load(source, warehouse, lo, hi, plan, batch_size=40).spends_checked == hi - lo + 1
    assert unchecked_spends(warehouse).ranges == [] and unchecked_spends(warehouse).describe() == []
    assert warehouse.read("spend_scans")["height"].to_pylist() == list(range(341))


# --------------------------------------------------------------------------- a real Core chain


def _registry(*extra: dict):
    from pipeline.attribution.registry import parse_registry

    return parse_registry({"format": "poolwatch-registry", "format_version": 1, "families": [], "pools": [
        {"id": "alpha", "name": "Alpha", "tags": [{"tag": "/alpha/"}], "addresses": []},
        {"id": "beta", "name": "Beta", "tags": [{"tag": "/beta/"}], "addresses": []},
        *extra,
    ]})


def _custody_chain(regtest_node) -> tuple[int, int, dict[str, bytes], dict[int, bytes]]:
    """Mine the custody chain on a fresh Core regtest node: 8 tagged blocks whose coinbases pay
    P2WSH(OP_TRUE), 100 fillers, then block 109 (``first``) spending alpha's and beta's coinbases
    together, alpha's alone and beta's with an unknown block's, and block 110 (``second``) with a
    second alpha/beta co-spend. Returns (first, second, the spending transactions by name, the
    coinbase txids of heights 1..8 in internal byte order)."""
    from pipeline.devnode.blocks import CoinbaseSpec, build_block
    from pipeline.devnode.chains import mine_chain

    if regtest_node.flavor != "core":
        pytest.skip("needs Bitcoin Core (SegWit spends of P2WSH coinbases); set POOLWATCH_BITCOIND")

    def spec(tag: bytes) -> CoinbaseSpec:
        return CoinbaseSpec(tag=tag, payouts=[(OP_TRUE_P2WSH, 1)], witness_commitment=True)

    #            1         2         3         4        5        6           7         8
    tags = [b"/alpha/", b"/alpha/", b"/alpha/", b"/beta/", b"/beta/", b"/nobody/", b"/alpha/", b"/beta/"]
    mine_chain(regtest_node, [spec(t) for t in tags] + [spec(b"/filler/")] * 100)
    coinbase = {h: bytes.fromhex(regtest_node.rpc("getblock", regtest_node.rpc("getblockhash", h), 1)["tx"][0])[::-1]
                for h in range(1, 9)}

    def submit(txs: list[bytes]) -> int:
        tip = regtest_node.tip()
        time = int(regtest_node.rpc("getblockheader", tip.hash)["time"]) + 1
        regtest_node.submit(build_block(tip.hash, tip.height + 1, time, spec(b"/filler/"), txs=txs, segwit=True))
        return tip.height + 1

    co_first = _spending_tx([(coinbase[1], 0), (coinbase[4], 0)], witness=True)    # alpha + beta
    alone = _spending_tx([(coinbase[2], 0), (coinbase[3], 0)], witness=True)       # alpha alone
    with_unknown = _spending_tx([(coinbase[5], 0), (coinbase[6], 0)], witness=True)  # beta + nobody
    first = submit([co_first, alone, with_unknown])
    co_second = _spending_tx([(coinbase[8], 0), (coinbase[7], 0)], witness=True)   # beta + alpha
    second = submit([co_second])
    assert regtest_node.tip().height == second == first + 1 == 110

    return first, second, {"co_first": co_first, "alone": alone, "with_unknown": with_unknown,
                           "co_second": co_second}, coinbase


@pytest.mark.node
@pytest.mark.parametrize("source", ["rest", "rpc", "blkfiles"])
def test_custody_links_on_a_real_core_chain(regtest_node, tmp_path, source: str) -> None:
    """Coinbases paid to P2WSH(OP_TRUE) (spendable by anyone with the witness [OP_TRUE]); after
    100 blocks of maturity, transactions spend alpha's and beta's coinbases together (twice, at two
    heights), alpha's alone, beta's with an unknown pool's: one link, alpha/beta, 2 transactions."""
    from pipeline.load.jobs import sync_range
    from pipeline.source.client import NodeClient
    from pipeline.store.warehouse import Warehouse

    first, second, txs, coinbase = _custody_chain(regtest_node)
    co_first, alone, with_unknown, co_second = (txs[k] for k in ("co_first", "alone", "with_unknown", "co_second"))
    client = NodeClient(regtest_node.client_config())
    warehouse = Warehouse(tmp_path / "w")
    # Batches 0..54, 55..109, 110: the second co-spend's batch adds to the links the first one stored.
    result = sync_range(client, warehouse, registry=_registry(), source=source, datadir=regtest_node.datadir,
                        batch_size=55)
    assert result.spends_checked == second + 1 and result.notes == []

    spends = warehouse.read("coinbase_spends")
    txid = {tx: transaction_ids(tx)[0][::-1].hex() for tx in (co_first, alone, with_unknown, co_second)}
    assert [(r["height"], r["tx_index"], r["input_index"], r["spending_txid"], r["coinbase_height"], r["coinbase_vout"])
            for r in spends.to_pylist()] == [
        (first, 1, 0, txid[co_first], 1, 0), (first, 1, 1, txid[co_first], 4, 0),
        (first, 2, 0, txid[alone], 2, 0), (first, 2, 1, txid[alone], 3, 0),
        (first, 3, 0, txid[with_unknown], 5, 0), (first, 3, 1, txid[with_unknown], 6, 0),
        (second, 1, 0, txid[co_second], 8, 0), (second, 1, 1, txid[co_second], 7, 0)]
    assert spends["coinbase_txid"].to_pylist()[0] == coinbase[1][::-1].hex()
    scans = warehouse.read("spend_scans")
    assert scans.num_rows == second + 1 and scans["spends"].to_pylist()[first:] == [6, 2]

    links = warehouse.read("custody_links").to_pylist()
    assert links == [{"pool_a": "alpha", "pool_b": "beta", "co_spend_txs": 2, "first_height": first,
                      "last_height": second, "attribution_version": warehouse.attribution_version}]
    assert links_after(warehouse, {}, warehouse.attribution_version, force=True).to_pylist() == links  # = from scratch
    # The catalog's view reads the same rows.
    import duckdb

    con = duckdb.connect(str(warehouse.root / "poolwatch.duckdb"), read_only=True)
    assert con.sql("SELECT pool_a, pool_b, co_spend_txs FROM custody_links").fetchall() == [("alpha", "beta", 2)]
    con.close()

    # Loading stored heights again replaces their spends: the links are recomputed, not added twice.
    sync_range(client, warehouse, 100, second, registry=_registry(), source=source, datadir=regtest_node.datadir)
    assert warehouse.read("custody_links").to_pylist() == links

    # A reorg that removes the second co-spend takes its link evidence with it, in the same commit.
    regtest_node.invalidate(regtest_node.rpc("getblockhash", second))
    sync_range(client, warehouse, registry=_registry(), source=source, datadir=regtest_node.datadir)
    assert warehouse.read("custody_links").select(["co_spend_txs", "last_height"]).to_pylist() == [
        {"co_spend_txs": 1, "last_height": first}]

    # A registry that knows the "/nobody/" block's pool: re-attribution links it to beta, same commit.
    from pipeline.load.jobs import reattribute

    with warehouse.writer():
        reattribute(warehouse, _registry({"id": "gamma", "name": "Gamma", "tags": [{"tag": "/nobody/"}],
                                          "addresses": []}))
    assert [(r["pool_a"], r["pool_b"], r["co_spend_txs"], r["attribution_version"])
            for r in warehouse.read("custody_links").to_pylist()] == [
        ("alpha", "beta", 1, warehouse.attribution_version), ("beta", "gamma", 1, warehouse.attribution_version)]


def test_c_index_answers_as_the_dict_on_hits_and_misses() -> None:
    """The C table's filter and probing against the dict backend: every key found with its height,
    nothing else found (the filter's false positives fall through to the table)."""
    import random

    if not native.AVAILABLE:
        pytest.skip("the C index is not built")
    rng = random.Random(7)
    keys = [rng.randbytes(32) for _ in range(5000)]
    c_index, py_index = CoinbaseIndex(capacity=16, use_c=True), CoinbaseIndex(use_c=False)
    for index in (c_index, py_index):
        for start in range(0, 5000, 700):  # several adds: the C table grows and rebuilds its filter
            index.add_many(b"".join(keys[start:start + 700]), range(start, min(start + 700, 5000)))
    assert len(c_index) == len(py_index) == 5000 and c_index.complete_below == 5000
    assert all(c_index.height_of(k) == py_index.height_of(k) == h for h, k in enumerate(keys))
    misses = [rng.randbytes(32) for _ in range(20000)]
    assert all(c_index.height_of(k) is None and py_index.height_of(k) is None for k in misses)


@pytest.mark.node
def test_sync_no_spends_says_what_it_did_not_record(regtest_node, tmp_path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.devnode.blocks import CoinbaseSpec
    from pipeline.devnode.chains import mine_chain

    mine_chain(regtest_node, [CoinbaseSpec(tag=b"/alpha/", payouts=[(OP_TRUE_P2WSH, 1)])] * 3)
    args = ["--warehouse", str(tmp_path / "w"), "sync", "--no-metrics", "--rpc-url", regtest_node.rpc_url,
            "--rpc-cookie", str(regtest_node.cookie_file)]
    result = CliRunner().invoke(main, [*args, "--no-spends"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "coinbase spends not recorded for 4 block(s) (recording switched off (--no-spends)): heights 0..3" \
        in " ".join(result.output.split())
    mine_chain(regtest_node, [CoinbaseSpec(tag=b"/alpha/", payouts=[(OP_TRUE_P2WSH, 1)])])
    result = CliRunner().invoke(main, args, catch_exceptions=False)  # recording on again: checked from height 0
    assert result.exit_code == 0 and "not recorded" not in result.output, result.output


_COMPARED = ["blocks", "coinbase_outputs", "attributions", "spend_scans", "coinbase_spends", "custody_links"]


@pytest.mark.node
def test_out_of_order_chunks_then_the_catch_up_equal_a_sequential_load(regtest_node, tmp_path) -> None:
    """A mapped backfill's shape: the higher chunk loads first (its blocks cannot be checked: the
    lower heights are missing), then the lower chunk. The catch-up (the job behind `poolwatch sync`
    and the backfill DAG's check_spends task) loads the unchecked range again and every table,
    custody_links and coinbase_spends included, equals a sequential load's exactly; through the
    CLI the catch-up runs by itself after the load that made the range checkable."""
    import json

    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.load.jobs import check_spends, sync_range
    from pipeline.load.spends import unchecked_spends
    from pipeline.source.client import NodeClient
    from pipeline.store.warehouse import Warehouse

    first, second, _, _ = _custody_chain(regtest_node)
    client = NodeClient(regtest_node.client_config())
    sequential = Warehouse(tmp_path / "sequential")
    sync_range(client, sequential, registry=_registry(), batch_size=55)
    expected = {t: sequential.read(t) for t in _COMPARED}
    assert expected["custody_links"].select(["pool_a", "pool_b", "co_spend_txs"]).to_pylist() == [
        {"pool_a": "alpha", "pool_b": "beta", "co_spend_txs": 2}]

    chunks = Warehouse(tmp_path / "chunks")
    high = sync_range(client, chunks, 55, second, registry=_registry(), batch_size=55)
    assert high.spends_checked == 0 and "lower heights missing" in high.notes[0]
    low = sync_range(client, chunks, 0, 54, registry=_registry(), batch_size=55)
    assert low.spends_checked == 55 and low.notes == []
    assert chunks.read("custody_links").num_rows == 0  # the co-spends are in the unchecked chunk
    assert unchecked_spends(chunks).ranges == [(55, second)]
    done = check_spends(client, chunks, batch_size=30)
    assert (done.ranges, done.spends_checked, done.blocks_loaded) == ([(55, second)], second - 54, second - 54)
    assert done.left.ranges == [] and done.left.waiting == 0 and done.notes == []
    assert "checked coinbase spends of 56 stored block(s)" in done.describe()[0]
    for table in _COMPARED:
        assert chunks.read(table).equals(expected[table]), table
    # Nothing left: a second catch-up loads nothing.
    again = check_spends(client, chunks)
    assert again.ranges == [] and again.blocks_loaded == 0 and again.describe() == []

    # The CLI: the catch-up follows the load that left blocks (or found a higher chunk waiting).
    registry_file = tmp_path / "registry.json"
    registry_file.write_text(json.dumps({"format": "poolwatch-registry", "format_version": 1, "families": [],
                                         "pools": [{"id": p, "name": p.title(), "tags": [{"tag": f"/{p}/"}],
                                                    "addresses": []} for p in ("alpha", "beta")]}))
    args = ["--warehouse", str(tmp_path / "cli"), "sync", "--no-metrics", "--registry", str(registry_file),
            "--batch-size", "55", "--rpc-url", regtest_node.rpc_url, "--rpc-cookie", str(regtest_node.cookie_file)]
    out = CliRunner().invoke(main, [*args, "--from", "55", "--to", str(second)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "56 stored block(s) above height 0 stay unchecked for coinbase spends until height 0 is stored" in text
    assert "not recorded" not in text  # the catch-up's account replaces the load's
    out = CliRunner().invoke(main, [*args, "--from", "0", "--to", "54"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "checked coinbase spends of 56 stored block(s) left unchecked by earlier loads (heights 55..110)" \
        in " ".join(out.output.split())
    cli = Warehouse(tmp_path / "cli")
    assert unchecked_spends(cli).ranges == []
    for table in ("spend_scans", "coinbase_spends", "custody_links"):
        assert cli.read(table).equals(expected[table]), table
    # Loaded with --no-spends: no catch-up follows; --no-check-spends leaves them; --check-spends looks
    # over every stored block (here with nothing new to load) and checks them all.
    args[1] = str(tmp_path / "cli-no-spends")
    out = CliRunner().invoke(main, [*args, "--no-spends"], catch_exceptions=False)
    assert out.exit_code == 0 and "checked coinbase spends" not in out.output, out.output
    off = Warehouse(tmp_path / "cli-no-spends")
    assert unchecked_spends(off).ranges == [(0, second)]
    out = CliRunner().invoke(main, [*args, "--no-check-spends"], catch_exceptions=False)
    assert out.exit_code == 0 and "up to date" in out.output, out.output
    assert unchecked_spends(off).ranges == [(0, second)]
    out = CliRunner().invoke(main, [*args, "--check-spends"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"checked coinbase spends of {second + 1} stored block(s)" in " ".join(out.output.split())
    for table in _COMPARED:
        assert off.read(table).equals(expected[table]), table
    out = CliRunner().invoke(main, [*args, "--check-spends", "--no-spends"])
    assert out.exit_code != 0 and "give one of them" in out.output
