"""Real mainnet coinbases from ../shared/fixtures attribute to the right pool with the shipped registry.

Ground truth is independent of our registry where possible: the Canhui explorer labels (2016-2018),
mempool.space's own labels on its block objects, and the pool each stratum job was received from.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.attribution.engine import attribute_tables
from pipeline.chain.decode import decode_block, parse_coinbase
from pipeline.load.tables import blocks_to_tables
from pipeline.chain.networks import MAIN
from pipeline.attribution.registry import load_registry
from pipeline.chain.scripts import address_to_script, classify


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def _pool_id_for_name(registry, name: str) -> str:
    """Map another labeller's pool name to our id by name or former name (case/punctuation-free)."""
    from pipeline.attribution.importers import normalize_name

    wanted = normalize_name(name)
    for pool in registry.pools:
        if wanted in {normalize_name(n) for n in (pool.name, *pool.former_names)}:
            return pool.id
    raise AssertionError(f"no pool named {name!r} in the registry")


def _rows(coinbases: list[tuple[int, str, bytes, list[tuple[int, bytes]]]]) -> tuple[pa.Table, pa.Table]:
    """(height, hash, scriptSig, [(value, script)]) -> the stored blocks/coinbase_outputs columns
    attribution reads."""
    blocks = {"height": [], "hash": [], "coinbase_script_sig_hex": []}
    outputs = {"height": [], "block_hash": [], "output_index": [], "value_sat": [], "script_hex": []}
    for height, block_hash, sig, outs in coinbases:
        blocks["height"].append(height)
        blocks["hash"].append(block_hash)
        blocks["coinbase_script_sig_hex"].append(sig.hex())
        for i, (value, script) in enumerate(outs):
            outputs["height"].append(height)
            outputs["block_hash"].append(block_hash)
            outputs["output_index"].append(i)
            outputs["value_sat"].append(value)
            outputs["script_hex"].append(script.hex())
    return pa.table(blocks), pa.table(outputs)


def _read_block(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".txt":
        return bytes.fromhex(data.decode().strip())
    if path.suffix == ".zst":
        zstandard = pytest.importorskip("zstandard")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=10**8)
    return data


def test_full_blocks_match_independent_explorer_labels(fixtures_dir, registry):
    manifest = list(csv.DictReader((fixtures_dir / "MANIFEST.tsv").open(), delimiter="\t"))
    labels = {}
    with (fixtures_dir / "Canhui+Bitcoin_Mining_Pools" / "miningpool.csv").open() as f:
        for row in csv.DictReader(f):
            labels[int(row["blockid"])] = row["miningpool"]
    decoded = [decode_block(_read_block(fixtures_dir / row["file"]), MAIN, height=int(row["bip34_height"]))
               for row in manifest if row["bip34_height"] and int(row["bip34_height"]) in labels]
    assert len(decoded) >= 8
    tables = blocks_to_tables(decoded)
    result = attribute_tables(tables["blocks"], tables["coinbase_outputs"], registry, "main")["attributions"]
    got = dict(zip(result["height"].to_pylist(), result["pool_id"].to_pylist()))
    for block in decoded:
        assert got[block.height] == _pool_id_for_name(registry, labels[block.height]), block.height


def test_full_blocks_outside_the_label_range(fixtures_dir, registry):
    """Blocks the explorer labels don't cover, checked on the evidence itself: tag and payout agree."""
    expected = {300025: ("f2pool", "both"), 367891: ("f2pool", "both"), 370661: ("braiins-pool", "both"),
                702861: ("binance-pool", "both"), 866342: ("mara-pool", "both"), 739990: ("binance-pool", "both"),
                227836: ("braiins-pool", "tag"), 363703: ("antpool", "tag")}
    manifest = {int(r["bip34_height"]): r["file"] for r in csv.DictReader((fixtures_dir / "MANIFEST.tsv").open(),
                                                                            delimiter="\t") if r["bip34_height"]}
    decoded = [decode_block(_read_block(fixtures_dir / manifest[h]), MAIN, height=h) for h in sorted(expected)]
    tables = blocks_to_tables(decoded)
    rows = attribute_tables(tables["blocks"], tables["coinbase_outputs"], registry, "main")["attributions"].to_pylist()
    for row in rows:
        assert (row["pool_id"], row["method"]) == expected[row["height"]], row
        assert not row["conflict"]


def test_utf8_tag_matches_raw_bytes(fixtures_dir, registry):
    """F2Pool's 七彩神仙鱼 is UTF-8 in the scriptSig: mempool's Latin-1 matcher can never see it."""
    manifest = {int(r["bip34_height"]): r["file"] for r in csv.DictReader((fixtures_dir / "MANIFEST.tsv").open(),
                                                                            delimiter="\t") if r["bip34_height"]}
    block = decode_block(_read_block(fixtures_dir / manifest[300025]), MAIN, height=300025)
    tables = blocks_to_tables([block])
    out = attribute_tables(tables["blocks"], tables["coinbase_outputs"], registry, "main")
    rules = out["attribution_candidates"]["rule"].to_pylist()
    assert "tag:七彩神仙鱼" in rules
    assert out["attributions"]["pool_id"][0].as_py() == "f2pool"


def _stratum_coinbases(fixtures_dir):
    doc = json.loads((fixtures_dir / "mempool+mempool" / "tx01_ws_stratum_jobs.json").read_text())
    out = []
    for key, job in sorted(doc["stratumJobs"].items(), key=lambda kv: int(kv[0])):
        raw = bytes.fromhex(job["coinbase1"] + job["extraNonce"] + "00" * job["extraNonce2Size"] + job["coinbase2"])
        cb = parse_coinbase(raw)
        out.append((job["pool"], cb))
    return out


def test_stratum_jobs_of_fifteen_pools(fixtures_dir, pool_lists_dir, registry):
    """The 15 jobs were received from known pools (mempool's pool ids, named in its pools-v2.json)."""
    names = {p["id"]: p["name"] for p in json.loads((pool_lists_dir / "mining-pools-mempool" / "pools-v2.json").read_text())}
    jobs = _stratum_coinbases(fixtures_dir)
    assert len(jobs) == 15
    blocks, outputs = _rows([(i, f"{i:064x}", cb.script_sig, list(cb.outputs)) for i, (_, cb) in enumerate(jobs)])
    rows = attribute_tables(blocks, outputs, registry, "main")["attributions"].to_pylist()
    for (pool_number, _), row in zip(jobs, rows):
        assert row["pool_id"] == _pool_id_for_name(registry, names[pool_number]), (names[pool_number], row)
        assert not row["conflict"], row


def test_multi_payout_coinbase(fixtures_dir, registry):
    """OCEAN pays its miners directly from the coinbase: many outputs, one of them OCEAN's."""
    jobs = _stratum_coinbases(fixtures_dir)
    ocean = [cb for _, cb in jobs if b"OCEAN.XYZ" in cb.script_sig]
    assert ocean and sum(1 for v, _ in ocean[0].outputs if v > 0) >= 10
    blocks, outputs = _rows([(890448, "ab" * 32, ocean[0].script_sig, list(ocean[0].outputs))])
    out = attribute_tables(blocks, outputs, registry, "main")
    row = out["attributions"].to_pylist()[0]
    assert (row["pool_id"], row["method"]) == ("ocean", "both")


def test_mempool_block_objects_with_p2tr_and_p2wsh_payouts(fixtures_dir, registry):
    """mempool.space block objects: raw scriptSig and payout addresses (P2TR, P2WSH, P2SH, P2PKH).
    Outputs are rebuilt from the addresses (scripts via address_to_script; values are not in the
    objects, so each payout gets 1 sat: only being value-bearing matters here)."""
    doc = json.loads((fixtures_dir / "mempool+mempool" / "tx01_ws_blocks_01.json").read_text())
    blocks = doc["blocks"] + [json.loads((fixtures_dir / "mempool+mempool" / "tx02_ws_block.json").read_text())["block"]]
    coinbases, labels, types = [], {}, set()
    for b in blocks:
        extras = b["extras"]
        scripts = [address_to_script(a)[0] for a in extras["coinbaseAddresses"]]
        types |= {classify(s) for s in scripts}
        coinbases.append((b["height"], b["id"], bytes.fromhex(extras["coinbaseRaw"]), [(1, s) for s in scripts]))
        labels[b["height"]] = extras["pool"]["name"]
    assert {"p2tr", "p2wsh"} <= types
    tb, to = _rows(coinbases)
    out = attribute_tables(tb, to, registry, "main")
    rows = out["attributions"].to_pylist()
    for row in rows:
        assert row["pool_id"] == _pool_id_for_name(registry, labels[row["height"]]), row
    foundry = [r for r in rows if r["height"] == 890441][0]
    assert foundry["method"] == "both"
    cands = out["attribution_candidates"].to_pylist()
    matched = {c["rule"] for c in cands if c["height"] == 890441 and c["method"] == "address"}
    assert any(r.startswith("address:bc1p") or r.startswith("address:bc1q") for r in matched)


def test_excerpt_coinbases_2025(fixtures_dir, registry):
    """Coinbase transactions of 913612 (F2Pool's 🐟 tag), 920533 (SpiderPool), 925262 (MARA)."""
    expected = {913612: "f2pool", 920533: "spiderpool", 925262: "mara-pool"}
    coinbases = []
    for height in expected:
        ex = json.loads((fixtures_dir / "0xB10C+mainnet-observer" / "excerpts" / f"{height}.excerpt.json").read_text())
        cb = parse_coinbase(bytes.fromhex(ex["coinbase_hex"]))
        coinbases.append((height, ex["hash"], cb.script_sig, list(cb.outputs)))
    tb, to = _rows(coinbases)
    rows = attribute_tables(tb, to, registry, "main")["attributions"].to_pylist()
    assert {r["height"]: r["pool_id"] for r in rows} == expected
