"""Attribution on small registries of the test's own: matching, precedence, windows, conflicts,
networks, candidates, re-attribution through the warehouse and the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.attribution.engine import (Candidate, Matcher, attribute_tables, attribution_version, changed_blocks,
                                         decide, suggest_entries)
from pipeline.chain.networks import MAIN, TEST
from pipeline.attribution.registry import parse_registry
from pipeline.chain.scripts import script_to_address

P2TR = b"\x51\x20" + bytes(range(32))
P2WSH = b"\x00\x20" + bytes(range(32, 64))
P2PKH_A = bytes.fromhex("76a914") + b"\x0a" * 20 + bytes.fromhex("88ac")
P2PKH_B = bytes.fromhex("76a914") + b"\x0b" * 20 + bytes.fromhex("88ac")
P2SH_C = bytes.fromhex("a914") + b"\x0c" * 20 + b"\x87"


BETA_WINDOW = {"from_height": 0, "to_height": 1000}


def a(script: bytes, network=MAIN) -> str:
    return script_to_address(script, network)


def doc(pools: list[dict]) -> dict:
    return {"format": "poolwatch-registry", "format_version": 1,
            "families": [{"id": "holding", "name": "Holding Co"}], "pools": pools}


def registry(extra: list[dict] | None = None):
    return parse_registry(doc([
        {"id": "alpha", "name": "Alpha", "tags": [{"tag": "/alpha/"}],
         "addresses": [{"address": a(P2PKH_A), "network": "main"}, {"address": a(P2TR), "network": "main"}],
         "family": [{"family": "holding", "from_height": 100}]},
        # "Beta" is a short tag (4 bytes): it only counts inside a closed window (docs/registry.md).
        {"id": "beta", "name": "Beta", "tags": [{"tag": "Beta", **BETA_WINDOW}, {"tag": "八宝池"}],
         "addresses": [{"address": a(P2WSH), "network": "main"},
                       {"address": a(P2PKH_B, TEST), "network": "test"}]},
        {"id": "gamma", "name": "Gamma", "tags": [{"tag": "/alpha/gamma/"}, {"tag": "old-gamma", "to_height": 99}],
         "addresses": [{"address": a(P2SH_C), "network": "main", "from_height": 200}]},
    ] + (extra or [])))


def tables(blocks: list[tuple[int, bytes, list[tuple[int, bytes]]]]) -> tuple[pa.Table, pa.Table]:
    b = {"height": [], "hash": [], "coinbase_script_sig_hex": []}
    o = {"height": [], "block_hash": [], "output_index": [], "value_sat": [], "script_hex": []}
    for height, sig, outs in blocks:
        h = f"{height:064x}"
        b["height"].append(height), b["hash"].append(h), b["coinbase_script_sig_hex"].append(sig.hex())
        for i, (value, script) in enumerate(outs):
            o["height"].append(height), o["block_hash"].append(h), o["output_index"].append(i)
            o["value_sat"].append(value), o["script_hex"].append(script.hex())
    return pa.table(b), pa.table(o)


def attribute(blocks, reg=None, chain="main", **kw) -> list[dict]:
    tb, to = tables(blocks)
    return attribute_tables(tb, to, reg or registry(), chain, **kw)["attributions"].to_pylist()


def one(height, sig, outs=(), **kw) -> dict:
    return attribute([(height, sig, list(outs))], **kw)[0]


def test_address_beats_tag_and_flags_the_conflict():
    row = one(500, b"\x03abc/alpha/xyz", [(625_000_000, P2WSH)])
    assert (row["pool_id"], row["method"], row["conflict"]) == ("beta", "address", True)
    assert row["candidate_pool_ids"] == ["alpha", "beta"] and row["candidate_count"] == 2
    assert row["rule"] == "address:" + a(P2WSH)


def test_both_when_tag_and_address_agree():
    row = one(500, b"..Beta..", [(1000, P2WSH), (0, b"\x6a\x24" + b"\xaa" * 36)])
    assert (row["pool_id"], row["method"], row["conflict"]) == ("beta", "both", False)
    assert row["rule"] == f"address:{a(P2WSH)} + tag:Beta"


def test_every_script_type_matches_by_script():
    for script, pool in ((P2TR, "alpha"), (P2WSH, "beta"), (P2PKH_A, "alpha"), (P2SH_C, "gamma")):
        assert one(300, b"\x00\x01", [(5, script)])["pool_id"] == pool


def test_zero_value_outputs_do_not_count():
    row = one(300, b"nothing here", [(0, P2PKH_A), (100, b"\x51\x20" + b"\x99" * 32)])
    assert (row["pool_id"], row["method"], row["rule"]) == ("unknown", "none", None)
    assert row["pool_name"] == "Unknown" and row["candidate_count"] == 0 and not row["conflict"]


def test_multi_payout_precedence_exact():
    row = one(300, b"x", [(10, P2PKH_A), (30, P2WSH), (15, P2TR)])
    assert (row["pool_id"], row["conflict"]) == ("beta", True)   # 30 > 10 + 15
    assert one(300, b"x", [(10, P2PKH_A), (30, P2WSH), (25, P2TR)])["pool_id"] == "alpha"  # 35 > 30
    # Equal value: the pool a tag supports wins; without a tag, the smaller id.
    assert one(300, b"Beta", [(20, P2PKH_A), (20, P2WSH)])["pool_id"] == "beta"
    assert one(300, b"none", [(20, P2WSH), (20, P2PKH_A)])["pool_id"] == "alpha"


def test_longest_tag_wins_and_overlapping_tags_are_all_found():
    row = one(150, b"\x03xx/alpha/gamma/yy")
    assert (row["pool_id"], row["method"], row["rule"]) == ("gamma", "tag", "tag:/alpha/gamma/")
    # /alpha/ is inside the longer tag: a recorded candidate, not separate evidence.
    assert row["candidate_pool_ids"] == ["alpha", "gamma"] and not row["conflict"]
    # Partly overlapping tags of two pools ("/alpha/" and "Beta" sharing no bytes here) are both found.
    row = one(150, b"/alpha/Beta")
    assert row["candidate_pool_ids"] == ["alpha", "beta"] and row["conflict"]
    assert row["pool_id"] == "alpha"  # 7 bytes beat 4


def test_case_rule_ascii_folded_utf8_exact():
    assert one(150, b"..BETA..")["pool_id"] == "beta"
    assert one(150, b"..bEtA..")["pool_id"] == "beta"
    assert one(150, "xx八宝池yy".encode())["pool_id"] == "beta"
    # A different UTF-8 character must not match, nor the Latin-1 reading of the same text.
    assert one(150, "xx八宝汤yy".encode())["pool_id"] == "unknown"
    assert one(150, "xx八宝池yy".encode("utf-16-le"))["pool_id"] == "unknown"


def test_tags_are_literal_bytes_not_patterns():
    reg = registry([{"id": "dots", "name": "Dots", "tags": [{"tag": "$a.b$"}, {"tag_hex": "ff2e2aff", **BETA_WINDOW}]}])
    assert one(150, b"x$a.b$x", reg=reg)["pool_id"] == "dots"
    assert one(150, b"x$aXb$x", reg=reg)["pool_id"] == "unknown"  # '.' is not a wildcard
    assert one(150, b"\xff.*\xff", reg=reg)["pool_id"] == "dots"


def test_windows_for_tags_addresses_and_families():
    assert one(99, b"old-gamma")["pool_id"] == "gamma"
    assert one(100, b"old-gamma")["pool_id"] == "unknown"
    assert one(199, b"", [(5, P2SH_C)])["pool_id"] == "unknown"
    assert one(200, b"", [(5, P2SH_C)])["pool_id"] == "gamma"
    assert one(99, b"/alpha/")["family"] is None
    assert one(100, b"/alpha/")["family"] == "holding"


def test_networks_never_cross_except_regtest_when_asked():
    testnet_b = P2PKH_B
    assert one(5, b"", [(5, testnet_b)])["pool_id"] == "unknown"          # testnet rule on mainnet
    assert one(5, b"", [(5, testnet_b)], chain="test")["pool_id"] == "beta"
    assert one(5, b"", [(5, P2WSH)], chain="test")["pool_id"] == "unknown"  # mainnet rule on testnet
    assert one(5, b"", [(5, P2WSH)], chain="regtest")["pool_id"] == "unknown"
    assert one(5, b"", [(5, P2WSH)], chain="regtest", allow_cross_network=True)["pool_id"] == "beta"
    with pytest.raises(ValueError, match="only for regtest"):
        one(5, b"", [(5, P2WSH)], chain="test", allow_cross_network=True)
    # Tags are network-free.
    assert one(5, b"Beta", chain="signet")["pool_id"] == "beta"


def test_candidates_table_records_every_match():
    tb, to = tables([(500, b"/alpha/", [(7, P2WSH), (3, P2TR)])])
    out = attribute_tables(tb, to, registry(), "main")
    cands = out["attribution_candidates"].to_pylist()
    # alpha is paid and tagged, beta only paid (more): the agreeing evidence wins (docs/attribution.md).
    assert sorted((c["pool_id"], c["method"], c["output_index"], c["tag_offset"], c["chosen"]) for c in cands) == [
        ("alpha", "address", 1, None, True), ("alpha", "tag", None, 0, True), ("beta", "address", 0, None, False)]
    version = attribution_version(registry().version, False)
    assert version == registry().version + "+rules-2"
    assert set(out["attributions"]["registry_version"].to_pylist()) == {version}
    assert set(out["attribution_candidates"]["registry_version"].to_pylist()) == {version}


def test_output_tables_conform_to_the_declared_schemas():
    from pipeline.store.schemas import table_spec

    tb, to = tables([(1, b"x", [])])
    out = attribute_tables(tb, to, registry(), "main")
    for name, table in out.items():
        assert table.schema == table_spec(name).arrow_schema


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_result_does_not_depend_on_registry_order(rnd):
    base = json.loads(json.dumps(registry().document))
    shuffled = json.loads(json.dumps(base))
    rnd.shuffle(shuffled["pools"])
    for p in shuffled["pools"]:
        rnd.shuffle(p.get("tags", []))
        rnd.shuffle(p.get("addresses", []))
    blocks = [(150, b"/alpha/gamma/Beta", [(10, P2WSH), (10, P2PKH_A)]), (250, b"old-gamma/alpha/", [(1, P2SH_C)]),
              (90, "八宝池/alpha/".encode(), [])]
    keep = ("pool_id", "method", "rule", "candidate_pool_ids", "conflict")
    r1 = [{k: r[k] for k in keep} for r in attribute(blocks, reg=parse_registry(base))]
    r2 = [{k: r[k] for k in keep} for r in attribute(blocks, reg=parse_registry(shuffled))]
    assert r1 == r2


def test_decide_is_order_independent():
    cands = [Candidate("b", "tag", "tag:xyz", tag_offset=3, tag_length=3),
             Candidate("a", "tag", "tag:abc", tag_offset=1, tag_length=3),
             Candidate("c", "address", "address:1", output_index=2, value_sat=5),
             Candidate("d", "address", "address:2", output_index=1, value_sat=5)]
    results = {decide(random.Random(i).sample(cands, len(cands))).pool_id for i in range(20)}
    assert results == {"c"}
    assert decide(cands[:2]).pool_id == "a"  # same length: earliest offset


def test_tag_matching_is_linear_on_adversarial_input():
    """Thousands of near-miss repetitions: a literal alternation never backtracks exponentially."""
    reg = registry([{"id": "rep", "name": "Rep", "tags": [{"tag": "a" * 30 + "b"}, {"tag": "a" * 29 + "c"}]}])
    m = Matcher(reg, "main")
    assert m.tag_hits(b"a" * 5000) == {}
    assert b"a" * 30 + b"b" in m.tag_hits(b"a" * 5000 + b"b")


def test_changed_blocks_between_versions():
    old = registry()
    new_doc = json.loads(json.dumps(old.document))
    new_doc["pools"][1]["tags"] = [{"tag": "八宝池"}]          # beta loses "Beta"
    new_doc["pools"][2]["tags"].append({"tag": "Beta", **BETA_WINDOW})  # gamma gains it
    new = parse_registry(new_doc)
    tb, to = tables([(1, b"Beta", []), (2, b"/alpha/", []), (3, b"zz", [])])
    t_old = attribute_tables(tb, to, old, "main")["attributions"]
    t_new = attribute_tables(tb, to, new, "main")["attributions"]
    changed = changed_blocks(t_old, t_new).to_pylist()
    assert [(r["height"], r["old_pool_id"], r["new_pool_id"]) for r in changed] == [(1, "beta", "gamma")]


def test_suggest_groups_recurring_tags_and_addresses():
    blocks = [(h, f"\x03{h} /NewPool/ x{h}") for h in (10, 11, 15)] + [(20, "noise"), (21, "/Other/")]
    payouts = [(10, "1NewPoolAddr", "p2pkh"), (11, "1NewPoolAddr", "p2pkh"), (15, "1NewPoolAddr", "p2pkh"),
               (20, "1Single", "p2pkh")]
    proposals = suggest_entries(blocks, payouts, min_blocks=3)
    assert len(proposals) == 1
    p = proposals[0]
    assert [t["tag"] for t in p["tags"]] == ["/NewPool/"] and [x["address"] for x in p["addresses"]] == ["1NewPoolAddr"]
    assert p["evidence"]["blocks"] == 3 and (p["evidence"]["first_height"], p["evidence"]["last_height"]) == (10, 15)


# ------------------------------------------------------------------------- warehouse and CLI

def _regtest_warehouse(root: Path, specs) -> None:
    """Store real serialized blocks (built with chosen coinbases) the way sync would."""
    from pipeline.chain.decode import decode_block
    from pipeline.load.tables import blocks_to_tables
    from pipeline.chain.networks import REGTEST
    from pipeline.devnode.blocks import build_block
    from pipeline.store.warehouse import Warehouse

    prev, decoded = REGTEST.genesis_hash, []
    for i, spec in enumerate(specs, start=1):
        raw = build_block(prev, i, 1_700_000_000 + 600 * i, spec)
        block = decode_block(raw, REGTEST, height=i)
        decoded.append(block)
        prev = block.hash
    wh = Warehouse(root)
    with wh.writer():
        wh.bind_chain("regtest", REGTEST.genesis_hash)
        wh.commit(blocks_to_tables(decoded))


@pytest.fixture()
def regtest_wh(tmp_path: Path) -> tuple[Path, Path, Path]:
    from pipeline.devnode.blocks import CoinbaseSpec

    old = tmp_path / "old.json"
    old.write_text(json.dumps(registry().document))
    specs = [CoinbaseSpec(tag=b"/alpha/", payouts=[(P2PKH_A, 1)]),
             CoinbaseSpec(tag=b"Beta", payouts=[(P2WSH, 1)]),
             CoinbaseSpec(tag=b"/NewGuys/", payouts=[(P2PKH_B, 1)]),
             CoinbaseSpec(tag=b"/NewGuys/", payouts=[(P2PKH_B, 1)]),
             CoinbaseSpec(tag=b"/NewGuys/", payouts=[(P2PKH_B, 1)])]
    wh = tmp_path / "wh"
    _regtest_warehouse(wh, specs)
    new_doc = registry().document
    new_doc = json.loads(json.dumps(new_doc))
    new_doc["pools"].append({"id": "newguys", "name": "New Guys", "tags": [{"tag": "/NewGuys/"}]})
    new = tmp_path / "new.json"
    new.write_text(json.dumps(new_doc))
    return wh, old, new


def test_cli_attribute_keeps_each_version_and_diff_and_suggest(regtest_wh):
    from pipeline.cli import main
    from pipeline.store.warehouse import Warehouse

    wh, old, new = regtest_wh
    runner = CliRunner()
    base = ["--warehouse", str(wh)]
    r = runner.invoke(main, base + ["pools", "suggest", "--registry", str(old), "--json"])
    assert r.exit_code == 0, r.output
    proposals = json.loads(r.output)
    assert proposals[0]["tags"][0]["tag"] == "/NewGuys/" and proposals[0]["evidence"]["blocks"] == 3
    for path in (old, new):
        r = runner.invoke(main, base + ["attribute", "--registry", str(path), "--cross-network-registry", "--no-validate"])
        assert r.exit_code == 0, r.output
        assert "attributed 5 stored blocks" in r.output
    warehouse = Warehouse(wh)
    rows = warehouse.read("attributions").to_pylist()
    v_old, v_new = parse_registry(json.loads(old.read_text())).version, parse_registry(json.loads(new.read_text())).version
    # rows carry the attribution version: the registry's hash plus the non-default setting
    a_old, a_new = attribution_version(v_old, True), attribution_version(v_new, True)
    assert a_new == v_new + "+rules-2+cross-network"
    assert {r["registry_version"] for r in rows} == {a_old, a_new}
    by = {(r["registry_version"], r["height"]): r["pool_id"] for r in rows}
    assert [by[(a_old, h)] for h in range(1, 6)] == ["alpha", "beta", "unknown", "unknown", "unknown"]
    assert [by[(a_new, h)] for h in range(1, 6)] == ["alpha", "beta", "newguys", "newguys", "newguys"]
    assert warehouse.meta["registry_version"] == v_new and warehouse.attribution_version == a_new
    assert warehouse.meta["attribution_settings"] == {"cross_network": True}
    defs = warehouse.read("pool_definitions")
    assert set(defs["registry_version"].to_pylist()) == {v_old, v_new}
    # diff by stored version ids: registry changes and the blocks that move.
    r = runner.invoke(main, base + ["pools", "diff", v_old, v_new])
    assert r.exit_code == 0, r.output
    assert "+ pool newguys (New Guys)" in r.output and "3 stored blocks change pool" in r.output
    assert "3: unknown -> newguys" in r.output


def test_cli_attribute_refuses_bad_registry_and_empty_warehouse(tmp_path):
    from pipeline.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc([{"id": "x", "name": "X", "addresses": [{"address": "1zzz", "network": "main"}]}])))
    r = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "wh"), "attribute", "--registry", str(bad)])
    assert r.exit_code == 1 and "pools[0] (id 'x').addresses[0]" in r.output
    r = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "wh"), "attribute"])
    assert r.exit_code == 1 and "no stored blocks" in r.output


def test_cli_diff_of_two_files_without_a_warehouse(tmp_path):
    from pipeline.cli import main

    old = tmp_path / "old.json"
    old.write_text(json.dumps(registry().document))
    new_doc = json.loads(json.dumps(registry().document))
    new_doc["pools"][0]["tags"].append({"tag": "/alpha2/"})
    new = tmp_path / "new.json"
    new.write_text(json.dumps(new_doc))
    r = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "none"), "pools", "diff", str(old), str(new)])
    assert r.exit_code == 0, r.output
    assert "+ tag '/alpha2/' -> alpha" in r.output and "no stored blocks" in r.output
    r = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "none"), "pools", "diff", str(old), "deadbeefdeadbeef"])
    assert r.exit_code == 1 and "neither a registry file nor a version stored" in r.output
