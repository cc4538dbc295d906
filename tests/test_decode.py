"""Block decoder against real mainnet data (../shared/fixtures/mainnet) and Bitcoin Core's own replies."""

from __future__ import annotations

import bz2
import csv
import json
import struct
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.chain.decode import (
    DecodeError,
    DecodedBlock,
    bip34_height,
    coinbase_tag,
    decode_block,
    decode_header,
    difficulty_from_bits,
    parse_coinbase,
)
from pipeline.chain.networks import MAIN, REGTEST, block_subsidy
from pipeline.load.tables import blocks_to_tables
from pipeline.store.schemas import table_spec
from pipeline.chain.scripts import address_to_script, classify, script_to_address

# Bitcoin Core's scriptPubKey.type -> ours. Core's "nulldata" is op_return or witness_commitment.
CORE_TYPES = {
    "pubkey": {"p2pk"}, "pubkeyhash": {"p2pkh"}, "scripthash": {"p2sh"},
    "witness_v0_keyhash": {"p2wpkh"}, "witness_v0_scripthash": {"p2wsh"}, "witness_v1_taproot": {"p2tr"},
    "witness_unknown": {"witness_unknown"}, "anchor": {"witness_unknown"}, "multisig": {"multisig"},
    "nulldata": {"op_return", "witness_commitment"}, "nonstandard": {"nonstandard", "op_return"},
}


def load_block(path: Path) -> bytes:
    """One block from any single-block fixture format (see the fixtures README)."""
    data = path.read_bytes()
    if path.suffix == ".txt":
        return bytes.fromhex(data.decode("ascii").strip())
    if path.suffix == ".zst":
        zstandard = pytest.importorskip("zstandard")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=64 * 1024 * 1024)
    return data


def manifest(fixtures: Path) -> list[dict[str, str]]:
    with open(fixtures / "MANIFEST.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def sats(value) -> int:
    return int(Decimal(str(value)) * 100_000_000)


def read_json(path: Path):
    return json.loads(path.read_text(), parse_float=Decimal)


def header_bytes(version: int, prev: str, merkle: str, time: int, bits: str, nonce: int) -> bytes:
    return struct.pack("<i32s32sIII", version, bytes.fromhex(prev)[::-1], bytes.fromhex(merkle)[::-1],
                       time, int(bits, 16), nonce)


def core_real(value: float) -> float:
    """Core's JSON prints doubles with 16 significant digits (UniValue); compare at that precision."""
    return float(f"{value:.16g}")


def varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


# --- every single-block file of the MANIFEST -------------------------------------------------------

def _manifest_rows():
    from conftest import FIXTURES
    if not (FIXTURES / "MANIFEST.tsv").exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no fixtures at {FIXTURES}"))]
    return [pytest.param(row, id=row["file"].split("/")[-1][:40]) for row in manifest(FIXTURES)]


@pytest.mark.parametrize("row", _manifest_rows())
def test_manifest_block(fixtures_dir: Path, row: dict[str, str]) -> None:
    raw = load_block(fixtures_dir / row["file"])
    bip34 = int(row["bip34_height"]) if row["bip34_height"] else None
    block = decode_block(raw, MAIN, height=bip34 if bip34 is not None else 1)
    assert block.hash == row["hash"]
    assert block.tx_count == int(row["ntx"])
    assert block.size == int(row["size_bytes"]) == len(raw)
    assert block.coinbase_value_sat == int(row["coinbase_value_sat"])
    assert block.coinbase_bip34_height == bip34
    assert block.output_count == len(block.outputs)
    assert block.weight == 3 * block.stripped_size + block.size
    assert block.stripped_size <= block.size
    types = [o.script_type for o in block.outputs]
    listed, _, count = row["coinbase_output_types"].partition(" (")
    if count:  # "a,b,c (208 outputs)": the distinct types and the number of outputs
        assert sorted(set(types)) == sorted(listed.split(","))
        assert len(types) == int(count.split()[0])
    else:      # otherwise every output in order
        assert types == listed.split(",")
    expected = row["first_payout_addresses"].split()
    assert [o.address for o in block.outputs if o.address][:len(expected)] == expected
    # Without a height the decoder falls back to BIP34, and refuses blocks that have none.
    if bip34 is not None:
        assert decode_block(raw, MAIN).height == bip34
    else:
        with pytest.raises(DecodeError, match="no BIP34 height"):
            decode_block(raw, MAIN)


# --- Bitcoin Core getblock 3 -----------------------------------------------------------------------

@pytest.mark.parametrize("height", [361582, 739990])
def test_against_core_getblock_verbosity_3(fixtures_dir: Path, height: int) -> None:
    folder = fixtures_dir / "0xB10C+mainnet-observer"
    core = read_json(folder / f"{height}.json")
    block = decode_block((folder / f"{height}.bin").read_bytes(), MAIN, median_time=core["mediantime"])
    assert block.height == core["height"] == height
    assert block.hash == core["hash"]
    assert block.prev_hash == core["previousblockhash"]
    assert block.merkle_root == core["merkleroot"]
    assert block.version == core["version"]
    assert block.time == core["time"]
    assert block.median_time == core["mediantime"]
    assert block.bits == core["bits"]
    assert block.nonce == core["nonce"]
    assert core_real(block.difficulty) == float(core["difficulty"])
    assert (block.size, block.stripped_size, block.weight) == (core["size"], core["strippedsize"], core["weight"])
    assert block.tx_count == core["nTx"] == len(core["tx"])
    cb = core["tx"][0]
    assert block.coinbase_txid == cb["txid"]
    assert block.coinbase_wtxid == cb["hash"]
    assert block.coinbase_version == cb["version"]
    assert block.coinbase_locktime == cb["locktime"]
    vin = cb["vin"][0]
    assert block.coinbase_script_sig_hex == vin["coinbase"]
    assert block.coinbase_sequence == vin["sequence"]
    witness = vin.get("txinwitness")
    assert block.coinbase_witness_reserved_hex == (witness[0] if witness else None)
    assert block.output_count == len(cb["vout"])
    for ours, theirs in zip(block.outputs, cb["vout"], strict=True):
        assert ours.index == theirs["n"]
        assert ours.value_sat == sats(theirs["value"])
        assert ours.script_hex == theirs["scriptPubKey"]["hex"]
        assert ours.script_type in CORE_TYPES[theirs["scriptPubKey"]["type"]]
        assert ours.address == theirs["scriptPubKey"].get("address")
    assert block.coinbase_value_sat == sum(sats(v["value"]) for v in cb["vout"])
    assert block.subsidy_sat == block_subsidy(height, MAIN)
    assert block.fees_sat == block.coinbase_value_sat - block.subsidy_sat
    # Core's fee total (sum over non-coinbase txs) bounds what the miner could claim.
    assert 0 <= block.fees_sat <= sum(sats(t["fee"]) for t in core["tx"][1:])


def test_segwit_coinbase_with_witness_reserved_value(fixtures_dir: Path) -> None:
    block = decode_block((fixtures_dir / "0xB10C+mainnet-observer/739990.bin").read_bytes(), MAIN)
    assert block.coinbase_witness_reserved_hex == "00" * 32
    assert block.coinbase_wtxid != block.coinbase_txid
    assert [o.script_type for o in block.outputs][:2] == ["p2sh", "witness_commitment"]
    assert block.coinbase_tag.startswith("binance/")


# --- old Core getblock 2 (bitcoin-etl): rebuild each block from its JSON and decode it -------------

def _etl_files(fixtures: Path) -> list[Path]:
    return sorted((fixtures / "blockchain-etl+bitcoin-etl").glob("*/rpc_response_getblock_*_2.json"))


def test_old_core_getblock_2_replies(fixtures_dir: Path) -> None:
    files = _etl_files(fixtures_dir)
    heights = set()
    for path in files:
        core = read_json(path)
        header = header_bytes(core["version"], core.get("previousblockhash", "00" * 32), core["merkleroot"],
                              core["time"], core["bits"], core["nonce"])
        raw = header + varint(len(core["tx"])) + b"".join(bytes.fromhex(t["hex"]) for t in core["tx"])
        block = decode_block(raw, MAIN, height=core["height"])
        heights.add(block.height)
        assert block.hash == core["hash"]
        assert core_real(block.difficulty) == float(core["difficulty"])
        assert (block.size, block.stripped_size, block.weight) == (core["size"], core["strippedsize"], core["weight"])
        cb = core["tx"][0]
        assert block.coinbase_txid == cb["txid"] == block.coinbase_wtxid
        assert block.coinbase_script_sig_hex == cb["vin"][0]["coinbase"]
        assert block.coinbase_bip34_height is None  # all of these predate BIP34
        for ours, theirs in zip(block.outputs, cb["vout"], strict=True):
            spk = theirs["scriptPubKey"]
            assert ours.value_sat == sats(theirs["value"])
            assert ours.script_hex == spk["hex"]
            assert ours.script_type in CORE_TYPES[spk["type"]]
            if spk["type"] == "pubkey":
                # Old Core showed a P2PKH address for a bare key; it is not the script's address.
                assert ours.address is None and len(spk["addresses"]) == 1
            else:
                assert [ours.address] == spk["addresses"]
    assert heights == {0, 1, 50000, 50001, 50002}


def test_genesis_tag(fixtures_dir: Path) -> None:
    core = read_json(next(p for p in _etl_files(fixtures_dir) if "block_0" in str(p)))
    script_sig = bytes.fromhex(core["tx"][0]["vin"][0]["coinbase"])
    # The first push (04ffff001d) is nBits, not a height, so it is not skipped; the 0x45 length byte
    # of the next push is the printable 'E' and joins the headline (documented in docs/decoding.md).
    assert coinbase_tag(script_sig) == "EThe Times 03/Jan/2009 Chancellor on brink of second bailout for banks"
    assert bip34_height(script_sig) is None


# --- mempool.space block objects (2025): headers, scriptSigs, P2TR/P2WSH/P2SH payouts -------------

POOL_MARKERS = {"ViaBTC": "/ViaBTC/", "Foundry USA": "/Foundry USA Pool #dropgold/",
                "AntPool": "Mined by AntPool", "SECPOOL": "Mined by Secpool", "Braiins Pool": "/slush/"}


def _mempool_blocks(fixtures: Path) -> list[dict]:
    folder = fixtures / "mempool+mempool"
    return (json.loads((folder / "tx01_ws_blocks_01.json").read_text())["blocks"]
            + [json.loads((folder / "tx02_ws_block.json").read_text())["block"]])


def test_mempool_headers_and_tags(fixtures_dir: Path) -> None:
    blocks = _mempool_blocks(fixtures_dir)
    assert len(blocks) == 9
    for b in blocks:
        header = decode_header(bytes.fromhex(b["extras"]["header"]))
        assert header["hash"] == b["id"]
        assert header["prev_hash"] == b["previousblockhash"]
        assert header["merkle_root"] == b["merkle_root"]
        assert (header["version"], header["time"], header["nonce"]) == (b["version"], b["timestamp"], b["nonce"])
        assert header["bits"] == f"{b['bits']:08x}"
        assert header["difficulty"] == pytest.approx(b["difficulty"], rel=1e-12)
        script_sig = bytes.fromhex(b["extras"]["coinbaseRaw"])
        assert bip34_height(script_sig) == b["height"]
        assert POOL_MARKERS[b["extras"]["pool"]["name"]] in coinbase_tag(script_sig)


def test_mempool_payout_addresses_round_trip(fixtures_dir: Path) -> None:
    seen = set()
    for b in _mempool_blocks(fixtures_dir):
        for address in b["extras"]["coinbaseAddresses"]:
            script, network = address_to_script(address)
            assert network is MAIN
            kind = classify(script)
            seen.add(kind)
            assert script_to_address(script, MAIN) == address
    assert {"p2tr", "p2wsh", "p2sh", "p2pkh"} <= seen


def test_stratum_job_coinbases(fixtures_dir: Path) -> None:
    """coinbase1 + extranonce1 + extranonce2 + coinbase2 of 15 pools' jobs are parseable coinbases."""
    jobs = json.loads((fixtures_dir / "mempool+mempool/tx01_ws_stratum_jobs.json").read_text())["stratumJobs"]
    assert len(jobs) == 15
    for job in jobs.values():
        cb = parse_coinbase(bytes.fromhex(job["coinbase"]))
        assert cb.script_sig.hex() == job["scriptsig"]
        assert bip34_height(cb.script_sig) == job["height"]
        assert sum(v for v, _ in cb.outputs) == job["reward"]
        assert any(classify(s) == "witness_commitment" for _, s in cb.outputs)


# --- 2025 excerpts: header fields + coinbase transaction ------------------------------------------

@pytest.mark.parametrize("height", [913612, 920533, 925262])
def test_2025_excerpts(fixtures_dir: Path, height: int) -> None:
    ex = read_json(fixtures_dir / f"0xB10C+mainnet-observer/excerpts/{height}.excerpt.json")
    header = header_bytes(ex["version"], ex["previousblockhash"], ex["merkleroot"], ex["time"], ex["bits"],
                          ex["nonce"])
    # A one-transaction block around the real coinbase: same header hash, same coinbase fields.
    block = decode_block(header + b"\x01" + bytes.fromhex(ex["coinbase_hex"]), MAIN, median_time=ex["mediantime"])
    assert block.hash == ex["hash"]
    assert block.height == height  # from BIP34
    assert block.coinbase_txid == ex["coinbase_txid"]
    assert block.coinbase_wtxid == ex["coinbase_wtxid"]
    assert block.coinbase_script_sig_hex == ex["coinbase_vin_coinbase"]
    assert block.coinbase_sequence == ex["coinbase_vin_sequence"]
    assert block.coinbase_locktime == ex["coinbase_locktime"]
    cols = ex["coinbase_vout_core_columns"]
    assert cols == ["value", "n", "scriptPubKey.type", "scriptPubKey.address"]
    for ours, (value, n, core_type, address) in zip(block.outputs, ex["coinbase_vout_core"], strict=True):
        assert (ours.index, ours.value_sat, ours.address) == (n, sats(value), address)
        assert ours.script_type in CORE_TYPES[core_type]


def test_f2pool_fish_tag(fixtures_dir: Path) -> None:
    ex = read_json(fixtures_dir / "0xB10C+mainnet-observer/excerpts/913612.excerpt.json")
    tag = coinbase_tag(bytes.fromhex(ex["coinbase_vin_coinbase"]))
    assert "\U0001f41f /F2Pool/" in tag  # the 4-byte UTF-8 fish survives; the tab after it separates runs


# --- specific cases -------------------------------------------------------------------------------

def test_two_byte_script_sig_and_208_outputs(fixtures_dir: Path) -> None:
    block = decode_block((fixtures_dir / "bitcoinj+bitcoinj/block169482.dat").read_bytes(), MAIN, height=169482)
    assert block.coinbase_script_sig_hex == "0000"
    assert block.coinbase_tag == ""
    assert block.coinbase_bip34_height is None
    assert block.output_count == 208
    assert block.coinbase_value_sat == 5001750000
    assert block.fees_sat == 5001750000 - 50 * 100_000_000


def test_rskblock_output_without_op_return(fixtures_dir: Path) -> None:
    block = decode_block(load_block(fixtures_dir / "btcsuite+btcd/block-00000000000000000021868c2cefc52a480d173c849412fe81c4e5ab806f94ab.blk"), MAIN)
    last = block.outputs[-1]
    assert bytes.fromhex(last.script_hex).startswith(b"RSKBLOCK:")
    assert (last.script_type, last.address) == ("nonstandard", None)
    assert block.size == 2259447 and block.height == 540107


def test_arbitrary_coinbase_version_is_unsigned(fixtures_dir: Path) -> None:
    raw = bytearray((fixtures_dir / "bcoin-org+bcoin/block1.raw").read_bytes())
    raw[81:85] = b"\xff\xff\xff\xff"  # coinbase nVersion (after header and the 1-byte tx count)
    block = decode_block(bytes(raw), MAIN, height=1)
    assert block.coinbase_version == 0xFFFFFFFF
    assert block.coinbase_txid != "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098"


def test_difficulty_matches_core() -> None:
    assert difficulty_from_bits(0x1D00FFFF) == 1.0
    assert difficulty_from_bits(0x207FFFFF) == pytest.approx(4.656542373906925e-10)
    with pytest.raises(DecodeError, match="zero mantissa"):
        difficulty_from_bits(0x1D000000)


def test_bip34_height_encodings() -> None:
    assert bip34_height(b"\x51\x00") == 1          # OP_1 (regtest heights 1-16)
    assert bip34_height(b"\x60") == 16             # OP_16
    assert bip34_height(b"\x01\x11") == 17
    assert bip34_height(b"\x02\x80\x00") == 128    # 0x80 needs a sign byte
    assert bip34_height(b"\x03\x50\x96\x0d") == 890448
    assert bip34_height(b"\x02\x05\x00") is None   # not minimal
    assert bip34_height(b"\x01\x85") is None       # negative
    assert bip34_height(b"\x01\x05") is None       # Core writes 5 as OP_5
    assert bip34_height(b"\x04\xff\xff\x00\x1d") is None  # pre-BIP34 nBits push
    assert bip34_height(b"\x03\x01") is None       # truncated push
    assert bip34_height(b"") is None


def test_coinbase_tag_rules() -> None:
    # 八宝池's tag from the pool lists, after a BIP34 push and before a binary extranonce
    script_sig = b"\x03\x10\x6c\x06" + "/八宝池 8baochi.com/".encode() + bytes.fromhex("fabe6d6d00a1b2c3ff00")
    # fa be are invalid UTF-8 and dropped, so the "mm" of the merged-mining magic joins the run
    assert coinbase_tag(script_sig) == "/八宝池 8baochi.com/mm"
    assert coinbase_tag(b"\x03\x10\x6c\x06\x00a\x00bc\x01  de  fg \x02") == "bc de fg"
    assert coinbase_tag(b"\x03\x10\x6c\x06\xff\xfeab") == "ab"      # invalid UTF-8 dropped
    assert coinbase_tag(b"\x03\x10\x6c\x06\xe9\x01") == ""          # nothing printable left
    assert coinbase_tag(b"\x03\x10\x6c\x06\xf0\x9f\x90\x9f\x09/F2Pool/") == "\U0001f41f /F2Pool/"


# --- blk*.dat record streams ----------------------------------------------------------------------

def iter_blk_records(stream: bytes) -> list[bytes]:
    """Test-side reader of the fixtures' blk-format streams (magic + length + block, repeated); the
    pipeline's own reader of Core's block files is pipeline.source.blockfiles (tests/test_blockfiles.py)."""
    out, pos = [], 0
    while pos + 8 <= len(stream) and stream[pos:pos + 4] == MAIN.magic:
        (length,) = struct.unpack_from("<I", stream, pos + 4)
        out.append(stream[pos + 8:pos + 8 + length])
        pos += 8 + length
    return out


def _check_chain(raw_blocks: list[bytes], first_height: int) -> list[DecodedBlock]:
    decoded = [decode_block(raw, MAIN, height=first_height + i) for i, raw in enumerate(raw_blocks)]
    for prev, block in zip(decoded, decoded[1:]):
        assert block.prev_hash == prev.hash
    return decoded


def test_bitcoinj_first_blocks_stream(fixtures_dir: Path) -> None:
    records = list(iter_blk_records((fixtures_dir / "bitcoinj+bitcoinj/first-100k-blocks.dat").read_bytes()))
    blocks = _check_chain(records, 0)
    assert len(blocks) == 439
    assert blocks[0].hash == MAIN.genesis_hash
    assert blocks[1].hash == "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"


def test_btcd_streams(fixtures_dir: Path) -> None:
    records = list(iter_blk_records(bz2.decompress((fixtures_dir / "btcsuite+btcd/blocks1-256.bz2").read_bytes())))
    blocks = _check_chain(records, 1)
    assert blocks[0].prev_hash == MAIN.genesis_hash
    assert len(blocks) == 255
    (single,) = list(iter_blk_records(bz2.decompress((fixtures_dir / "btcsuite+btcd/277647.dat.bz2").read_bytes())))
    assert decode_block(single, MAIN).height == 277647


# --- malformed input ------------------------------------------------------------------------------

def test_bad_bytes_raise_decode_error(fixtures_dir: Path) -> None:
    raw = (fixtures_dir / "0xB10C+mainnet-observer/739990.bin").read_bytes()
    with pytest.raises(DecodeError, match="too short"):
        decode_block(raw[:100], MAIN)
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode_block(raw + b"\x00", MAIN)
    with pytest.raises(DecodeError):
        decode_block(raw[:-1], MAIN)
    not_coinbase = bytearray(raw)
    not_coinbase[80 + 3 + 4 + 2 + 1] ^= 1  # a byte of the coinbase's null prevout
    with pytest.raises(DecodeError, match="null outpoint"):
        decode_block(bytes(not_coinbase), MAIN)
    too_rich = bytearray((fixtures_dir / "bcoin-org+bcoin/block1.raw").read_bytes())
    assert struct.unpack_from("<q", too_rich, 135)[0] == 50 * 100_000_000  # block 1's only output value
    struct.pack_into("<q", too_rich, 135, 21_000_000 * 100_000_000 + 1)
    with pytest.raises(DecodeError, match="outside 0..MAX_MONEY"):
        decode_block(bytes(too_rich), MAIN, height=1)
    with pytest.raises(DecodeError, match="expected block bytes"):
        decode_block("00" * 200, MAIN)  # type: ignore[arg-type]
    assert issubclass(DecodeError, ValueError)


# --- Arrow tables -------------------------------------------------------------------------------

def test_blocks_to_tables(fixtures_dir: Path) -> None:
    folder = fixtures_dir / "0xB10C+mainnet-observer"
    blocks = [decode_block((folder / "361582.bin").read_bytes(), MAIN, median_time=1434701123),
              decode_block((folder / "739990.bin").read_bytes(), MAIN)]
    tables = blocks_to_tables(blocks)
    assert set(tables) == {"blocks", "coinbase_outputs"}
    assert tables["blocks"].schema == table_spec("blocks").arrow_schema
    assert tables["coinbase_outputs"].schema == table_spec("coinbase_outputs").arrow_schema
    rows = tables["blocks"].to_pylist()
    assert [r["height"] for r in rows] == [361582, 739990]
    assert rows[1]["time"].timestamp() == blocks[1].time
    assert rows[0]["median_time"].timestamp() == 1434701123 and rows[1]["median_time"] is None
    assert rows[1]["coinbase_witness_reserved_hex"] == "00" * 32
    assert tables["blocks"].schema.field("time").type == pa.timestamp("s", tz="UTC")
    outputs = tables["coinbase_outputs"].to_pylist()
    assert len(outputs) == 1 + 4
    assert outputs[1] == {"height": 739990, "block_hash": blocks[1].hash, "output_index": 0,
                          "value_sat": blocks[1].outputs[0].value_sat, "script_hex": blocks[1].outputs[0].script_hex,
                          "script_type": "p2sh", "address": "3L8Ck6bm3sve1vJGKo6Ht2k167YKSKi8TZ"}
    empty = blocks_to_tables([])
    assert empty["blocks"].num_rows == 0 and empty["coinbase_outputs"].num_rows == 0
    assert empty["blocks"].schema == table_spec("blocks").arrow_schema


def _coinbase_tx(script_sig: bytes, outputs: list[tuple[int, bytes]], witness: bytes | None = None) -> bytes:
    body = varint(1) + b"\x00" * 32 + b"\xff\xff\xff\xff" + varint(len(script_sig)) + script_sig + b"\xff\xff\xff\xff"
    body += varint(len(outputs)) + b"".join(struct.pack("<q", v) + varint(len(s)) + s for v, s in outputs)
    if witness is None:
        return struct.pack("<I", 2) + body + b"\x00\x00\x00\x00"
    return struct.pack("<I", 2) + b"\x00\x01" + body + b"\x01" + varint(len(witness)) + witness + b"\x00" * 4


def test_synthetic_regtest_block() -> None:
    """A regtest block as pipeline.devnode.blocks builds them: OP_n height, bcrt payout, 150-block halvings."""
    payout, network = address_to_script(script_to_address(b"\x00\x14" + bytes(20), REGTEST))
    assert network is REGTEST
    header = header_bytes(0x20000000, "11" * 32, "22" * 32, 1_700_000_000, "207fffff", 7)
    for script_sig, height, subsidy in [(b"\x55\x00", 5, 50 * 100_000_000),
                                        (b"\x02\x2c\x01/poolwatch/", 300, 1_250_000_000)]:
        tx = _coinbase_tx(script_sig, [(subsidy, payout)], witness=b"\x00" * 32)
        block = decode_block(header + b"\x01" + tx, REGTEST)
        assert block.height == block.coinbase_bip34_height == height
        assert block.subsidy_sat == subsidy and block.fees_sat == 0
        assert block.outputs[0].address.startswith("bcrt1q")
        assert block.coinbase_witness_reserved_hex == "00" * 32
        assert block.stripped_size == block.size - 2 - 1 - 1 - 32
        assert block.difficulty == pytest.approx(4.656542373906925e-10)
    assert coinbase_tag(b"\x02\x2c\x01/poolwatch/") == "/poolwatch/"


def test_decode_block_head_equals_whole_block_decode(fixtures_dir: Path) -> None:
    # The block-file reader's shortcut: from header + coinbase only, a block whose coinbase has no
    # witness commitment decodes to exactly what the whole block gives; a committing one gives None.
    from pipeline.chain.decode import commits_to_witness, decode_block_head, parse_coinbase

    shortcut = full_needed = 0
    for row in manifest(fixtures_dir):
        raw = load_block(fixtures_dir / row["file"])
        whole = decode_block(raw, MAIN, height=7, median_time=1)
        head = decode_block_head(raw[:8192], len(raw), MAIN, height=7, median_time=1)
        if head is None:
            full_needed += 1
            count, pos = _read_varint_for_test(raw)
            coinbase = parse_coinbase(raw, pos)
            # None only when needed: a witness commitment, or a coinbase longer than the head read
            assert commits_to_witness(coinbase) or pos + coinbase.size > 8192 or len(raw) <= 8192
        else:
            shortcut += 1
            assert head == whole
            assert head.weight == 4 * head.size
        if whole.stripped_size != whole.size:
            assert head is None  # a block with witness bytes never takes the shortcut
    assert shortcut >= 10 and full_needed >= 3


def _read_varint_for_test(raw: bytes) -> tuple[int, int]:
    from pipeline.chain.decode import _read_varint

    return _read_varint(raw, 80)


def test_decode_block_head_needs_the_whole_coinbase(fixtures_dir: Path) -> None:
    from pipeline.chain.decode import decode_block_head

    raw = load_block(fixtures_dir / "bcoin-org+bcoin/block1.raw")
    assert decode_block_head(raw[:150], len(raw) + 1000, MAIN, height=1) is None  # ends inside the coinbase
    assert decode_block_head(raw, len(raw), MAIN, height=1) == decode_block(raw, MAIN, height=1)
