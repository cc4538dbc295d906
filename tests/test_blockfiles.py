"""Block-file reader: same tables as the RPC path, on real mainnet blk streams and a regtest node's files.

The mainnet streams in ../shared/fixtures are re-laid out in a temporary blocks directory the way a
node leaves them (several files, out-of-order blocks, stale blocks, zero padding, a half-written
newest record, optionally XORed with an xor.dat key); the expected tables come from the loop's read
and decode stages over the same blocks served whole by a node-shaped object (``tests/fake_node.py``).
"""

from __future__ import annotations

import bz2
import os
import random
import shutil
import struct
from pathlib import Path

import pytest

from fake_node import FakeNode, decoded, fake_source
from pipeline.chain.decode import sha256d
from pipeline.chain.networks import MAIN, REGTEST
from pipeline.load.tables import blocks_to_tables
from pipeline.source.blockfiles import (BlockFileError, BlockFileReader, BlockFileSource, find_blocks_dir,
                                        read_xor_key, scan_file, xor_at)


def _hash(raw: bytes) -> str:
    return sha256d(raw[:80])[::-1].hex()


def _records(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 8 <= len(stream):
        (length,) = struct.unpack_from("<I", stream, pos + 4)
        out.append(stream[pos + 8:pos + 8 + length])
        pos += 8 + length
    return out


def _stale_copy(raw: bytes) -> bytes:
    """A competing block: same content, another nonce, so another hash (stale: never on the chain)."""
    nonce = (struct.unpack_from("<I", raw, 76)[0] + 1) & 0xFFFFFFFF
    return raw[:76] + struct.pack("<I", nonce) + raw[80:]


def _write_blocks_dir(blocks_dir: Path, blocks: list[bytes], magic: bytes, *, key: bytes | None = None,
                      per_file: int = 100, seed: int = 1, torn_tail: bytes | None = None) -> None:
    """Lay ``blocks`` out like a node: files of ``per_file`` records, shuffled within a window of 16,
    zero padding after each file, ``torn_tail`` appended half-written to the newest file."""
    rng = random.Random(seed)
    order = list(blocks)
    for lo in range(0, len(order), 16):  # blocks arrive out of order within a download window
        window = order[lo:lo + 16]
        rng.shuffle(window)
        order[lo:lo + 16] = window
    blocks_dir.mkdir(parents=True, exist_ok=True)
    files = [order[i:i + per_file] for i in range(0, len(order), per_file)]
    for number, chunk in enumerate(files):
        data = b"".join(magic + struct.pack("<I", len(b)) + b for b in chunk)
        padding = b""
        if number == len(files) - 1 and torn_tail is not None:
            data += magic + struct.pack("<I", len(torn_tail)) + torn_tail[:len(torn_tail) // 2]
        else:
            padding = bytes(4096)  # pre-allocated zeros
        if key is not None:
            data = xor_at(data, key, 0)
        # Core pre-allocates files with plain zeros that never pass through its XOR stream.
        data += padding
        (blocks_dir / f"blk{number:05d}.dat").write_bytes(data)
    if key is not None:
        (blocks_dir / "xor.dat").write_bytes(key)


def _tables_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].num_rows > 0
        assert a[name].equals(b[name]), f"table {name} differs"


# ---------------------------------------------------------------------------------------------
# mainnet fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mainnet_chain(fixtures_dir: Path) -> dict[int, bytes]:
    """Heights 0..438 from bitcoinj's stream, cross-checked with btcd's 1..255 stream."""
    bitcoinj = _records((fixtures_dir / "bitcoinj+bitcoinj" / "first-100k-blocks.dat").read_bytes())
    btcd = _records(bz2.decompress((fixtures_dir / "btcsuite+btcd" / "blocks1-256.bz2").read_bytes()))
    assert _hash(bitcoinj[0]) == MAIN.genesis_hash
    assert bitcoinj[1:256] == btcd  # the two independent sources agree byte for byte
    return dict(enumerate(bitcoinj))


@pytest.mark.parametrize("key", [None, bytes.fromhex("a1b2c3d4e5f60718")], ids=["plain", "xor"])
def test_mainnet_blk_files_give_the_rpc_tables(mainnet_chain, tmp_path: Path, key) -> None:
    chain = mainnet_chain
    stale = [_stale_copy(chain[h]) for h in (5, 77, 300)]
    _write_blocks_dir(tmp_path / "blocks", list(chain.values()) + stale, MAIN.magic, key=key,
                      torn_tail=stale[0])
    heights = sorted(chain)
    expected = blocks_to_tables(decoded(fake_source(chain, MAIN), heights))
    with BlockFileSource(FakeNode(chain), MAIN, datadir=tmp_path) as source:
        got = blocks_to_tables(decoded(source, heights))
        assert len(source.reader) == len(chain) + len(stale)  # stale blocks indexed, never returned
    _tables_equal(expected, got)
    assert got["blocks"].column("height").to_pylist() == heights


def test_block_277647_stream_and_padding(fixtures_dir: Path, tmp_path: Path) -> None:
    raw = _records(bz2.decompress((fixtures_dir / "btcsuite+btcd" / "277647.dat.bz2").read_bytes()))[0]
    _write_blocks_dir(tmp_path / "blocks", [raw], MAIN.magic)
    chain = {277647: raw}
    with BlockFileSource(FakeNode(chain), MAIN, blocks_dir=tmp_path / "blocks") as source:
        got = decoded(source, [277647])
    assert got == decoded(fake_source(chain, MAIN), [277647])
    assert got[0].size == len(raw) and got[0].tx_count > 1


def test_incremental_scan_picks_up_a_record_finished_later(mainnet_chain, tmp_path: Path) -> None:
    """The newest file ends in a half-written record; once the node finishes it, it is found."""
    blocks = [mainnet_chain[h] for h in range(0, 30)]
    newest = mainnet_chain[30]
    blocks_dir = tmp_path / "blocks"
    _write_blocks_dir(blocks_dir, blocks, MAIN.magic, per_file=10, torn_tail=newest)
    reader = BlockFileReader(blocks_dir, MAIN.magic)
    assert len(reader.locate([_hash(b) for b in blocks])) == 30
    with pytest.raises(BlockFileError, match="not found in the block files"):
        reader.locate([_hash(newest)])
    last = blocks_dir / "blk00002.dat"
    data = last.read_bytes()
    cut = data.rfind(MAIN.magic)
    last.write_bytes(data[:cut] + MAIN.magic + struct.pack("<I", len(newest)) + newest + bytes(100))
    (loc,) = reader.locate([_hash(newest)])
    assert reader.read_raw(loc, _hash(newest)) == newest
    reader.close()


def test_header_not_written_yet_is_not_skipped(mainnet_chain, tmp_path: Path) -> None:
    """Magic and length are there but the bytes are still zeros: scanning must stop, not skip it."""
    raw = mainnet_chain[3]
    path = tmp_path / "blk00000.dat"
    record = MAIN.magic + struct.pack("<I", len(raw))
    path.write_bytes(record + bytes(len(raw)) + bytes(64))
    reader = BlockFileReader(tmp_path, MAIN.magic)
    assert reader.scan() == 0
    path.write_bytes(record + raw + bytes(64))
    assert reader.locate([_hash(raw)])[0].offset == 8
    reader.close()


def test_garbage_between_records_is_skipped(mainnet_chain, tmp_path: Path) -> None:
    a, b = mainnet_chain[10], mainnet_chain[11]
    rec = lambda raw: MAIN.magic + struct.pack("<I", len(raw)) + raw  # noqa: E731
    (tmp_path / "blk00000.dat").write_bytes(rec(a) + b"\x13torn record\x77" + rec(b))
    with BlockFileReader(tmp_path, MAIN.magic) as reader:
        assert reader.raw_blocks([_hash(b), _hash(a)]) == [b, a]


def test_wrong_node_or_pruned_names_the_problem(mainnet_chain, tmp_path: Path) -> None:
    _write_blocks_dir(tmp_path / "blocks", [mainnet_chain[h] for h in range(5)], MAIN.magic)
    node = FakeNode({h: mainnet_chain[h] for h in range(10)})
    with BlockFileSource(node, MAIN, datadir=tmp_path) as source, pytest.raises(BlockFileError, match="same node"):
        decoded(source, list(range(10)))


def test_changed_file_is_detected(mainnet_chain, tmp_path: Path) -> None:
    blocks = [mainnet_chain[h] for h in range(5)]
    _write_blocks_dir(tmp_path / "blocks", blocks, MAIN.magic, seed=0)
    reader = BlockFileReader(tmp_path / "blocks", MAIN.magic)
    loc = reader.locate([_hash(blocks[2])])[0]
    path = tmp_path / "blocks" / "blk00000.dat"
    data = bytearray(path.read_bytes())
    data[loc.offset + 4] ^= 0xFF  # another block's bytes now sit there
    path.write_bytes(bytes(data))
    with pytest.raises(BlockFileError, match="no longer holds"):
        reader.read_raw(loc, _hash(blocks[2]))
    reader.close()


# ---------------------------------------------------------------------------------------------
# small pieces
# ---------------------------------------------------------------------------------------------


def test_xor_matches_core_rule() -> None:
    rng = random.Random(3)
    key = bytes(rng.randrange(256) for _ in range(8))
    data = bytes(rng.randrange(256) for _ in range(1000))
    for offset in (0, 1, 7, 8, 13, 123456789):
        naive = bytes(b ^ key[(offset + i) % 8] for i, b in enumerate(data))
        assert xor_at(data, key, offset) == naive
        assert xor_at(naive, key, offset) == data
    assert xor_at(data, bytes(8), 5) == data


def test_xor_key_file(tmp_path: Path) -> None:
    assert read_xor_key(tmp_path) == bytes(8)  # absent (Core < 28, Bitcoin SV): no obfuscation
    (tmp_path / "xor.dat").write_bytes(b"\x01\x02\x03")
    with pytest.raises(BlockFileError, match="exactly 8"):
        read_xor_key(tmp_path)


def test_find_blocks_dir_layouts(tmp_path: Path) -> None:
    (tmp_path / "regtest" / "blocks").mkdir(parents=True)
    (tmp_path / "regtest" / "blocks" / "blk00000.dat").write_bytes(b"")
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "blk00000.dat").write_bytes(b"")
    assert find_blocks_dir(tmp_path, REGTEST) == tmp_path / "regtest" / "blocks"
    assert find_blocks_dir(tmp_path / "regtest", REGTEST) == tmp_path / "regtest" / "blocks"
    assert find_blocks_dir(tmp_path / "regtest" / "blocks", REGTEST) == tmp_path / "regtest" / "blocks"
    assert find_blocks_dir(tmp_path, MAIN) == tmp_path / "blocks"
    with pytest.raises(BlockFileError, match="no blk\\*.dat files for the main chain"):
        find_blocks_dir(_empty(tmp_path), MAIN)
    with pytest.raises(BlockFileError, match="not a directory"):
        find_blocks_dir(tmp_path / "nope", MAIN)


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty"
    path.mkdir()
    return path


def test_scan_file_stops_at_padding_and_truncation(mainnet_chain, tmp_path: Path) -> None:
    import os

    a, b = mainnet_chain[1], mainnet_chain[2]
    data = MAIN.magic + struct.pack("<I", len(a)) + a + MAIN.magic + struct.pack("<I", len(b)) + b[:40]
    path = tmp_path / "blk00000.dat"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        result = scan_file(fd, 0, len(data), MAIN.magic, bytes(8))
    finally:
        os.close(fd)
    assert [h for h, _ in result.records] == [_hash(a)]
    assert result.resume_at == 8 + len(a) and not result.complete


# ---------------------------------------------------------------------------------------------
# a real node's data directory
# ---------------------------------------------------------------------------------------------


@pytest.mark.node
def test_regtest_node_blk_files_give_the_rpc_tables(regtest_node, tmp_path: Path) -> None:
    from pipeline.source.client import NodeClient
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.attribution.registry import load_registry

    specs = demo_specs(load_registry(), 120, allow_p2sh=regtest_node.flavor == "core")
    hashes = mine_chain(regtest_node, specs[:100], start_time=1_700_000_000)
    # A fork: the last 5 blocks are replaced by 20 others, leaving 5 stale blocks in the files.
    regtest_node.invalidate(hashes[95])
    mine_chain(regtest_node, specs[100:], start_time=1_700_000_000 + 95 * 600)
    client = NodeClient(regtest_node.client_config())
    tip = client.tip_height()
    assert tip == 115
    heights = list(range(0, tip + 1))
    from pipeline.source.rest import RestSource

    expected = blocks_to_tables(decoded(RestSource(client, REGTEST), heights))

    # Read while the node runs, from its own data directory.
    with BlockFileSource(client, REGTEST, datadir=regtest_node.datadir) as source:
        got = blocks_to_tables(decoded(source, heights))
        indexed = {h for h, _ in source.reader.iter_records()}
    _tables_equal(expected, got)
    assert set(hashes[95:]) <= indexed  # the stale blocks are in the files ...
    assert not set(hashes[95:]) & set(got["blocks"].column("hash").to_pylist())  # ... and never returned

    # The same files XORed as Core 28+ writes them, with the node's own key (Bitcoin Core 28+ has
    # one in blocks/xor.dat; Bitcoin SV and older Core have none, i.e. a zero key) and with a second
    # key: each copy is made from the plain bytes (the node's files with its own key undone).
    src = find_blocks_dir(regtest_node.datadir, REGTEST)
    own_key = read_xor_key(src)
    if regtest_node.flavor == "core":
        assert own_key != bytes(8), "Bitcoin Core 28+ obfuscates its block files"
    plain = {path.name: xor_at(path.read_bytes(), own_key, 0) for path in src.glob("blk*.dat")}
    assert any(data[:4] == REGTEST.magic for data in plain.values())
    for name, key in (("own-key", own_key), ("other-key", bytes.fromhex("0123456789abcdef"))):
        copy = tmp_path / name / "blocks"
        copy.mkdir(parents=True)
        for file_name, data in plain.items():
            (copy / file_name).write_bytes(xor_at(data, key, 0))
        (copy / "xor.dat").write_bytes(key)
        with BlockFileSource(client, REGTEST, datadir=tmp_path / name) as source:
            _tables_equal(expected, blocks_to_tables(decoded(source, heights)))
        shutil.rmtree(tmp_path / name)
    client.close()


@pytest.mark.parametrize("key", [None, bytes.fromhex("a1b2c3d4e5f60718")], ids=["plain", "xor"])
def test_header_and_coinbase_reads_give_the_rpc_tables(fixtures_dir: Path, tmp_path: Path, monkeypatch, key) -> None:
    # Every single-block mainnet fixture (2009..2024, up to 2.26 MB, legacy and segwit) as a blocks
    # directory. Blocks without a witness commitment are read as header + coinbase only; the rest
    # whole. Either way the tables equal the RPC path's (which decodes every byte).
    import pipeline.source.blockfiles as blockfiles
    from test_decode import load_block, manifest

    raws = [load_block(fixtures_dir / row["file"]) for row in manifest(fixtures_dir)]
    chain = dict(enumerate(sorted({_hash(r): r for r in raws}.values(), key=lambda r: struct.unpack_from("<I", r, 68)[0])))
    _write_blocks_dir(tmp_path / "blocks", list(chain.values())[::-1], MAIN.magic, key=key)
    heights = sorted(chain)
    expected = blocks_to_tables(decoded(fake_source(chain, MAIN), heights))
    reads: list[int | None] = []
    real_read = blockfiles.BlockFileReader.read_raw

    def spy(self, location, expected_hash=None, limit=None):
        reads.append(limit)
        return real_read(self, location, expected_hash, limit)

    monkeypatch.setattr(blockfiles.BlockFileReader, "read_raw", spy)
    with BlockFileSource(FakeNode(chain), MAIN, datadir=tmp_path) as source:
        got = blocks_to_tables(decoded(source, heights))
    _tables_equal(expected, got)
    witness_blocks = sum(1 for s, st in zip(expected["blocks"].column("size").to_pylist(),
                                            expected["blocks"].column("stripped_size").to_pylist()) if s != st)
    head_only = sum(1 for limit in reads if limit is not None) - witness_blocks
    assert witness_blocks >= 3 and head_only >= 5  # both paths ran
    assert reads.count(None) >= witness_blocks  # every block with witness bytes was read whole


def test_xored_files_end_at_their_plain_zero_padding(fixtures_dir: Path, tmp_path: Path, caplog) -> None:
    # Core 28+ XORs what it writes but pre-allocates with plain zeros: the scan must see the end of
    # the data there, not a damaged record (after XOR the zeros would read as the key).
    from test_decode import load_block, manifest

    raws = [load_block(fixtures_dir / row["file"]) for row in manifest(fixtures_dir)][:5]
    key = bytes.fromhex("a1b2c3d4e5f60718")
    _write_blocks_dir(tmp_path / "blocks", raws, MAIN.magic, key=key)
    path = tmp_path / "blocks" / "blk00000.dat"
    fd = os.open(path, os.O_RDONLY)
    try:
        with caplog.at_level("WARNING", logger="pipeline.source.blockfiles"):
            result = scan_file(fd, 0, path.stat().st_size, MAIN.magic, key)
    finally:
        os.close(fd)
    assert len(result.records) == len(raws) and result.complete
    assert not [r for r in caplog.records if "no record magic" in r.getMessage()]
