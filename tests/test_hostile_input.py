"""Hostile input: malformed registries, regex-looking tags, odd coinbases, garbage block bytes.

Each bad input is refused with a message that names what is wrong (the registry entry and field,
the block hash and height), and nothing already stored changes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.attribution.engine import attribute_tables, compiled_matcher
from pipeline.cli import main
from pipeline.chain.decode import DecodeError, decode_block
from pipeline.load.tables import blocks_to_tables
from pipeline.chain.networks import MAIN, REGTEST
from pipeline.attribution.registry import RegistryError, load_registry, parse_registry
from pipeline.devnode.blocks import build_block, CoinbaseSpec, compact_size
from pipeline.load.jobs import reattribute
from pipeline.load.loop import read_decoded
from pipeline.source.base import BlockSource, Located, RawBlock
from pipeline.store.warehouse import Warehouse
from tests.synthetic import block_hash, synthetic_tables

P2PKH = bytes.fromhex("76a914") + hashlib.new("ripemd160", b"hostile").digest() + bytes.fromhex("88ac")
GENESIS_PREV = "00" * 32


def _doc() -> dict:
    """A small valid registry: two pools, one with a tag and an address."""
    return {
        "format": "poolwatch-registry", "format_version": 1,
        "pools": [
            {"id": "alpha", "name": "Alpha Pool", "tags": [{"tag": "/alpha/"}],
             "addresses": [{"address": "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "network": "main"}]},
            {"id": "beta", "name": "Beta Pool", "tags": [{"tag": "beta-mined"}]},
        ],
    }


@pytest.fixture(autouse=True)
def _alarm() -> Iterator[None]:
    """A generous per-test ceiling (no timed assertion): a pathological case fails instead of hanging."""
    def expired(signum, frame):
        raise TimeoutError("test exceeded 10 s: pathological input handling (e.g. regex backtracking)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_base_document_is_valid():
    registry = parse_registry(_doc())
    assert [p.id for p in registry.pools] == ["alpha", "beta"]


# ------------------------------------------------------------------------------ malformed registries


def _set(path: list, value):
    def mutate(doc: dict) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def _duplicate_id(doc: dict) -> None:
    doc["pools"][1]["id"] = "alpha"


BAD_DOCUMENTS = {
    # name: (mutation, fragments the message must contain: the entry and the field)
    "name wrong type": (_set(["pools", 0, "name"], 5), ["pools[0] (id 'alpha').name", "not of type"]),
    "tags not a list": (_set(["pools", 1, "tags"], "beta-mined"), ["pools[1] (id 'beta').tags"]),
    "height wrong type": (_set(["pools", 0, "tags", 0, "from_height"], "soon"),
                          ["pools[0] (id 'alpha').tags[0]", "from_height"]),
    "negative height": (_set(["pools", 0, "tags", 0, "to_height"], -1), ["tags[0]", "to_height"]),
    "unknown pool field": (_set(["pools", 0, "colour"], "red"), ["pools[0] (id 'alpha')", "colour"]),
    "unknown top-level field": (_set(["pool"], []), ["pool"]),
    "duplicate id": (_duplicate_id, ["pools[1] (id 'alpha').id", "duplicate of pools[0]"]),
    "bad id": (_set(["pools", 0, "id"], "Alpha Pool!"), ["pools[0]", ".id"]),
    "bad address checksum": (_set(["pools", 0, "addresses", 0, "address"], "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"),
                             ["pools[0] (id 'alpha').addresses[0]", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "address"]),
    "address for another network": (_set(["pools", 0, "addresses", 0, "network"], "test"),
                                    ["pools[0] (id 'alpha').addresses[0]", "network"]),
    "unknown network": (_set(["pools", 0, "addresses", 0, "network"], "moon"),
                        ["pools[0] (id 'alpha').addresses[0]", "network"]),
    "empty tag": (_set(["pools", 0, "tags", 0, "tag"], ""), ["pools[0] (id 'alpha').tags[0]", "tag"]),
    "two-byte tag": (_set(["pools", 0, "tags", 0, "tag"], "ab"), ["pools[0] (id 'alpha').tags[0].tag", "shorter"]),
    "tag_hex not hex": (_set(["pools", 0, "tags", 0], {"tag_hex": "zz"}), ["pools[0] (id 'alpha').tags[0]", "tag_hex"]),
    "tag and tag_hex": (_set(["pools", 0, "tags", 0, "tag_hex"], "616263"),
                        ["pools[0] (id 'alpha').tags[0]", "exactly one of 'tag' and 'tag_hex'"]),
    "same tag in two pools": (_set(["pools", 1, "tags", 0, "tag"], "/ALPHA/"), ["/alpha/", "'alpha'", "'beta'"]),
    "pools missing": (lambda d: d.pop("pools"), ["pools", "required"]),
    "wrong format": (_set(["format"], "mempool"), ["format"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_malformed_registry_is_refused_naming_entry_and_field(case: str, tmp_path: Path):
    mutate, fragments = BAD_DOCUMENTS[case]
    doc = copy.deepcopy(_doc())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{case}: {fragment!r} missing from: {message}"


@pytest.mark.parametrize("text, fragment", [
    ('{"format": "poolwatch-registry", "pools": [', "not valid JSON"),
    ("", "not valid JSON"),
    ('{"pools": [{"id": "a",}]}', "line 1"),
    ("[1, 2, 3]", "not of type 'object'"),
])
def test_registry_that_is_not_a_json_object_is_refused(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError, match="bad.json") as info:
        load_registry(path)
    assert fragment in str(info.value)


def test_registry_not_utf8_is_refused(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"format": "poolwatch-registry", "format_version": 1, "pools": [{"id": "a", "name": "\xff"}]}')
    with pytest.raises((RegistryError, UnicodeDecodeError)) as info:
        load_registry(path)
    assert isinstance(info.value, RegistryError), (
        f"a non-UTF-8 registry escapes as {type(info.value).__name__}, not RegistryError naming the file")


def test_tag_longer_than_any_scriptsig_is_refused():
    """A coinbase scriptSig is at most 100 bytes (consensus), so a longer tag can never match:
    almost certainly a mistake (a pasted description), and it should be refused by name."""
    doc = _doc()
    doc["pools"][1]["tags"][0]["tag"] = "x" * 101
    with pytest.raises(RegistryError, match=r"pools\[1\] \(id 'beta'\)\.tags\[0\]"):
        parse_registry(doc)


def test_enormous_registry_file_is_refused_by_size(tmp_path: Path):
    """A 50 MB file (a wrong path, a dump) should be refused by its size before it is parsed."""
    doc = _doc()
    doc["description"] = "x" * (50 * 1024 * 1024)
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(RegistryError, match="huge.json") as info:
        load_registry(path)
    assert "MB" in str(info.value) or "bytes" in str(info.value)


# --------------------------------------------------------------- bad registry vs. a stored warehouse


def _snapshot(root: Path) -> dict[str, object]:
    """Every file's content hash. Two exceptions: the writer lock file is process bookkeeping, and
    the catalog is rebuilt (same views, new bytes) whenever a writer starts, so it is compared by
    its view definitions."""
    import duckdb

    snap: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == ".writer.lock":
            continue
        if p.name == "poolwatch.duckdb":
            con = duckdb.connect(str(p), read_only=True)
            try:
                snap[p.name] = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal "
                                           "ORDER BY view_name").fetchall()
            finally:
                con.close()
        else:
            snap[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).digest()
    return snap


@pytest.fixture()
def stored_warehouse(tmp_path: Path) -> Path:
    root = tmp_path / "wh"
    warehouse = Warehouse(root)
    with warehouse.writer():
        warehouse.bind_chain("main", block_hash(0))
        warehouse.commit(synthetic_tables(range(0, 40)))
        reattribute(warehouse, parse_registry(_doc()), validate=False)
        warehouse.refresh_catalog()
    return root


@pytest.mark.parametrize("case", ["duplicate id", "bad address checksum", "unknown pool field", "empty tag"])
def test_attribute_with_bad_registry_changes_nothing(stored_warehouse: Path, tmp_path: Path, case: str):
    before = _snapshot(stored_warehouse)
    assert any(k.startswith("data/attributions/") for k in before)
    mutate, fragments = BAD_DOCUMENTS[case]
    doc = _doc()
    mutate(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")

    result = CliRunner().invoke(main, ["--warehouse", str(stored_warehouse), "attribute", "--registry", str(bad)])
    assert result.exit_code != 0, result.output
    flat = " ".join(result.output.split())  # rich wraps long lines
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} missing from: {result.output}"
    assert _snapshot(stored_warehouse) == before


def test_attribute_with_invalid_json_changes_nothing(stored_warehouse: Path, tmp_path: Path):
    before = _snapshot(stored_warehouse)
    bad = tmp_path / "bad.json"
    bad.write_text('{"pools": [', encoding="utf-8")
    result = CliRunner().invoke(main, ["--warehouse", str(stored_warehouse), "attribute", "--registry", str(bad)])
    assert result.exit_code != 0
    assert "not valid JSON" in " ".join(result.output.split())
    assert _snapshot(stored_warehouse) == before


# ------------------------------------------------------------------------------------ literal tags


def _registry_with_tags(*tags: str):
    # A closed window: tags under 5 bytes ("a|b") must state one (docs/registry.md); it does not
    # change what the tag search finds.
    return parse_registry({"format": "poolwatch-registry", "format_version": 1,
                           "pools": [{"id": f"p{i}", "name": f"Pool {i}",
                                      "tags": [{"tag": t, "from_height": 0, "to_height": 1_000_000}]}
                                     for i, t in enumerate(tags)]})


def test_regex_looking_tags_are_literal():
    # "(a+)+$" is the classic catastrophic-backtracking pattern; as a regex it would also "match"
    # any string of a's. As a literal it matches only its own six characters.
    registry = _registry_with_tags("(a+)+$", "(.*)", "[^x]+", "a|b")
    matcher = compiled_matcher(registry, "main")
    hostile = b"\x03\x01\x02\x03" + b"a" * 100 + b"!"
    assert matcher.tag_hits(hostile) == {}  # completes (under the 10 s alarm) and matches nothing
    assert matcher.tag_hits(b"anything at all | b") == {}
    assert matcher.tag_hits(b"\x03\x01\x02\x03/(A+)+$/") == {b"(a+)+$": 5}  # ASCII case folded, literal
    assert matcher.tag_hits(b"xx(.*)yy a|b") == {b"(.*)": 2, b"a|b": 9}


# ----------------------------------------------------------------------------- odd coinbases


def _coinbase_tx(script_sig: bytes, value: int) -> bytes:
    return (struct.pack("<i", 1) + compact_size(1) + bytes(32) + b"\xff\xff\xff\xff"
            + compact_size(len(script_sig)) + script_sig + b"\xff\xff\xff\xff"
            + compact_size(1) + value.to_bytes(8, "little") + compact_size(len(P2PKH)) + P2PKH
            + b"\x00\x00\x00\x00")


def _block_with_script_sig(script_sig: bytes, height: int = 1) -> bytes:
    """A block whose coinbase has any scriptSig, longer than consensus allows included. The decoder
    checks structure, not consensus: it must store what a node serves, whatever that holds."""
    tx = _coinbase_tx(script_sig, 50 * 100_000_000)
    txid = hashlib.sha256(hashlib.sha256(tx).digest()).digest()
    header = struct.pack("<i", 0x20000000) + bytes(32) + txid + struct.pack("<III", 1_700_000_000, 0x207FFFFF, 0)
    return header + compact_size(1) + tx


@pytest.mark.parametrize("length", [101, 10_000, 1_000_000])
def test_very_long_scriptsig_decodes_and_attributes(length: int):
    tag = b"/alpha/"
    script_sig = b"\x01\x01" + b"\xfe" * (length - 2 - len(tag)) + tag  # the tag at the very end
    decoded = decode_block(_block_with_script_sig(script_sig), MAIN, height=1)
    assert decoded.coinbase_script_sig_hex == script_sig.hex()
    assert decoded.coinbase_tag.endswith("/alpha/")
    tables = blocks_to_tables([decoded])
    out = attribute_tables(tables["blocks"], tables["coinbase_outputs"], parse_registry(_doc()), "main")
    assert out["attributions"].column("pool_id").to_pylist() == ["alpha"]


def test_non_utf8_scriptsig_decodes_and_attributes_by_tag_hex():
    tag = b"\xff\xfe/\xe6\xb1\xa0\x80pool\xc3(/"  # invalid UTF-8 around a valid multi-byte character
    raw = build_block(GENESIS_PREV, 1, 1_700_000_000, CoinbaseSpec(tag=tag, payouts=[(P2PKH, 1)]))
    decoded = decode_block(raw, REGTEST)
    assert decoded.coinbase_bip34_height == 1
    assert tag.hex() in decoded.coinbase_script_sig_hex  # stored bytes are exact
    assert "池" in decoded.coinbase_tag and "pool" in decoded.coinbase_tag
    decoded.coinbase_tag.encode("utf-8")  # the display text is valid UTF-8

    doc = _doc()
    doc["pools"][1]["tags"] = [{"tag_hex": tag.hex()}]
    tables = blocks_to_tables([decoded])
    out = attribute_tables(tables["blocks"], tables["coinbase_outputs"], parse_registry(doc), "regtest")
    assert out["attributions"].column("pool_id").to_pylist() == ["beta"]


def test_scriptsig_of_only_garbage_bytes_is_unknown_not_an_error():
    raw = build_block(GENESIS_PREV, 1, 1_700_000_000,
                      CoinbaseSpec(tag=bytes(range(128, 256))[:90], payouts=[(P2PKH, 1)], extranonce=b""))
    decoded = decode_block(raw, REGTEST)
    tables = blocks_to_tables([decoded])
    out = attribute_tables(tables["blocks"], tables["coinbase_outputs"], parse_registry(_doc()), "regtest")
    assert out["attributions"].column("pool_id").to_pylist() == ["unknown"]


# ------------------------------------------------------------------------- garbage from the node


class _LyingSource(BlockSource):
    """Locates like a node but serves the given bytes as the block at each height."""

    kind = "rest"

    def __init__(self, raws: dict[int, bytes], hashes: dict[int, str]):
        super().__init__(None, REGTEST)
        self.raws, self.hashes = raws, hashes

    def locate(self, lo: int, hi: int, with_previous: bool = False) -> Located:
        heights = list(range(lo, hi + 1))
        return Located(heights, [self.hashes[h] for h in heights], [None] * len(heights), (None, None))

    def read(self, located: Located, start: int = 0, stop: int | None = None) -> list[RawBlock]:
        return [RawBlock(h, x, None, self.raws[h], len(self.raws[h]))
                for h, x in zip(located.heights[start:stop], located.hashes[start:stop], strict=True)]


def _read(source: BlockSource, lo: int, hi: int):
    return read_decoded(source, source.locate(lo, hi))


def _good_blocks(n: int) -> tuple[dict[int, bytes], dict[int, str]]:
    raws, hashes, prev = {}, {}, GENESIS_PREV
    for h in range(1, n + 1):
        raw = build_block(prev, h, 1_700_000_000 + 600 * h, CoinbaseSpec(tag=b"/ok/", payouts=[(P2PKH, 1)]))
        raws[h] = raw
        prev = hashes[h] = decode_block(raw, REGTEST).hash
    return raws, hashes


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "trailing"])
def test_bad_block_bytes_raise_decode_error_naming_the_block(damage: str):
    raws, hashes = _good_blocks(3)
    good = raws[2]
    raws[2] = {"truncated": good[:-7], "garbage": hashlib.sha256(b"x").digest() * 20, "empty": b"",
               "trailing": good + b"\x00"}[damage]
    with pytest.raises(DecodeError) as info:
        _read(_LyingSource(raws, hashes), 1, 3)
    assert hashes[2] in str(info.value) and "height 2" in str(info.value)


def test_block_bytes_for_another_hash_are_refused():
    raws, hashes = _good_blocks(3)
    raws[2] = raws[3]  # valid bytes, but not the block the node named
    with pytest.raises(DecodeError, match=f"expected {hashes[2]}"):
        _read(_LyingSource(raws, hashes), 1, 3)


@pytest.mark.node
def test_sync_with_garbage_block_stores_nothing(regtest_node, tmp_path: Path, monkeypatch):
    """Through sync_range against a real node: a batch with one undecodable block is not committed."""
    from pipeline.source.client import NodeClient
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.load.jobs import sync_range

    signal.alarm(120)  # a node test: starting the node and two syncs take longer than the default
    registry = load_registry()
    hashes = mine_chain(regtest_node, demo_specs(registry, 12, seed=3, allow_p2sh=False))
    root = tmp_path / "wh"
    sync_range(NodeClient(regtest_node.client_config()), Warehouse(root), end=6, registry=registry,
               allow_cross_network=True)
    before = _snapshot(root)

    from pipeline.source.rest import RestSource

    real_fetch = RestSource.fetch

    def corrupt(self, block_hash):  # the node's bytes for block 9 cut in half (its header still hashes right)
        raw = real_fetch(self, block_hash)
        return raw[: len(raw) // 2] if block_hash == hashes[8] else raw

    monkeypatch.setattr(RestSource, "fetch", corrupt)
    with pytest.raises(DecodeError) as info:
        sync_range(NodeClient(regtest_node.client_config()), Warehouse(root), registry=registry,
                   allow_cross_network=True)
    assert hashes[8] in str(info.value) and "height 9" in str(info.value)
    assert _snapshot(root) == before
    assert Warehouse(root).stored_range() == (0, 6)
