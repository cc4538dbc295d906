"""Registry format: loading, validation messages, version hash, families, diff, stored round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.chain.networks import MAIN, TEST
from pipeline.attribution.registry import RegistryError, diff_registries, load_registry, parse_registry, registry_version
from pipeline.chain.scripts import script_to_address


def p2pkh(n: int, network=MAIN) -> str:
    return script_to_address(bytes.fromhex("76a914") + bytes([n]) * 20 + bytes.fromhex("88ac"), network)


def p2wpkh(n: int, network=MAIN) -> str:
    return script_to_address(b"\x00\x14" + bytes([n]) * 20, network)


def small_doc() -> dict:
    return {
        "format": "poolwatch-registry", "format_version": 1,
        "families": [{"id": "acme-group", "name": "Acme Group"}],
        "pools": [
            {"id": "alpha", "name": "Alpha", "link": "https://alpha.example",
             "tags": [{"tag": "/alpha/", "sources": ["test"]},
                      {"tag_hex": "ff00ff", "from_height": 100, "to_height": 200}],
             "addresses": [{"address": p2pkh(1), "network": "main", "to_height": 100}],
             "family": [{"family": "acme-group", "from_height": 50}]},
            {"id": "beta", "name": "Beta", "tags": [{"tag": "Beta Pool"}],
             "addresses": [{"address": p2wpkh(2), "network": "main"},
                           {"address": p2wpkh(2, TEST), "network": "test"}]},
        ],
    }


def test_parse_small_registry():
    reg = parse_registry(small_doc())
    alpha = reg.by_id["alpha"]
    assert alpha.tags[0].value == b"/alpha/" and alpha.tags[0].sources == ("test",)
    assert alpha.tags[1].value == b"\xff\x00\xff" and alpha.tags[1].text == "hex:ff00ff"
    assert alpha.addresses[0].script == bytes.fromhex("76a914" + "01" * 20 + "88ac")
    assert alpha.addresses[0].heights.contains(100) and not alpha.addresses[0].heights.contains(101)
    assert alpha.family_at(49) is None and alpha.family_at(50) == "acme-group"
    assert alpha.slug == "alpha"  # defaults to the id
    assert {a.network for a in reg.by_id["beta"].addresses} == {"main", "test"}


def test_version_is_a_content_hash_independent_of_key_order():
    doc = small_doc()
    reordered = json.loads(json.dumps(doc, sort_keys=True))
    reordered = {k: reordered[k] for k in reversed(list(reordered))}
    assert parse_registry(doc).version == parse_registry(reordered).version == registry_version(doc)
    changed = copy.deepcopy(doc)
    changed["pools"][0]["name"] = "Alpha Pool"
    assert parse_registry(changed).version != parse_registry(doc).version
    assert len(parse_registry(doc).version) == 16


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["pools"][0]["addresses"][0].update(address="1NotAValidAddressXXXXXXXXXXXXXXX"),
     "pools[0] (id 'alpha').addresses[0]"),
    (lambda d: d["pools"][1]["addresses"][1].update(network="main"), "is encoded for 'test', not 'main'"),
    (lambda d: d["pools"][0].update(colour="red"), "pools[0] (id 'alpha'): Additional properties"),
    (lambda d: d["pools"][1].update(id="alpha"), "pools[1] (id 'alpha').id: duplicate"),
    (lambda d: d["pools"][1].update(id="unknown"), "'unknown' is reserved"),
    (lambda d: d["pools"][0]["tags"][0].update(from_height=10, to_height=5), "tags[0].from_height: 10 is above"),
    (lambda d: d["pools"][1]["tags"].append({"tag": "/ALPHA/"}), "tag b'/alpha/' (case-insensitive) appears in pools"),
    (lambda d: d["pools"][0]["tags"].append({"tag": "ab"}), "shorter than 3 bytes"),
    (lambda d: d["pools"][0]["family"][0].update(family="nobody"), "family[0].family: 'nobody' is not declared"),
    (lambda d: d["pools"][0]["tags"].append({"tag": "x1", "tag_hex": "00aa11"}), "exactly one of 'tag' and 'tag_hex'"),
    (lambda d: d["pools"][0]["addresses"][0].update(network="moon"), "network"),
])
def test_errors_name_the_entry_and_field(mutate, expected):
    doc = small_doc()
    mutate(doc)
    with pytest.raises(RegistryError) as info:
        parse_registry(doc)
    assert expected in str(info.value)


def test_same_tag_in_two_pools_with_disjoint_windows_is_allowed():
    doc = small_doc()
    doc["pools"][0]["tags"][0]["to_height"] = 99
    doc["pools"][1]["tags"].append({"tag": "/alpha/", "from_height": 100})
    reg = parse_registry(doc)
    assert [t.heights.from_height for t in reg.by_id["beta"].tags if t.value == b"/alpha/"] == [100]


def test_load_registry_file_errors(tmp_path: Path):
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        load_registry(bad)


def test_shipped_default_registry_loads():
    reg = load_registry()
    assert len(reg.pools) > 150
    assert "unknown" not in reg.by_id
    assert {"foundry-usa", "antpool", "f2pool", "btc-com"} <= set(reg.by_id)
    # Testnet addresses keep their network; they can never be a mainnet rule.
    nets = {a.network for p in reg.pools for a in p.addresses}
    assert {"main", "test", "signet"} <= nets
    for pool in reg.pools:
        for addr in pool.addresses:
            assert addr.sources, (pool.id, addr.address)
        for tag in pool.tags:
            assert tag.sources, (pool.id, tag.text)


def test_diff_registries():
    old = parse_registry(small_doc())
    doc = small_doc()
    doc["pools"][0]["name"] = "Alpha Pool"
    moved = doc["pools"][1]["tags"].pop()
    doc["pools"][0]["tags"].append(moved)
    doc["pools"].append({"id": "gamma", "name": "Gamma"})
    changes = diff_registries(old, parse_registry(doc))
    assert "+ pool gamma (Gamma)" in changes["pools"]
    assert "~ pool alpha renamed 'Alpha' -> 'Alpha Pool'" in changes["pools"]
    assert "~ tag 'Beta Pool': beta -> alpha" in changes["rules"]


def test_pool_definitions_round_trip():
    from pipeline.attribution.engine import pool_definitions_table, registry_from_definitions

    reg = parse_registry(small_doc())
    table = pool_definitions_table(reg)
    kinds = table["kind"].to_pylist()
    assert kinds.count("document") == 1 and kinds.count("address") == 3 and kinds.count("family") == 1
    assert set(table["registry_version"].to_pylist()) == {reg.version}
    assert registry_from_definitions(table, reg.version).version == reg.version
    with pytest.raises(RegistryError, match="not stored"):
        registry_from_definitions(table, "0" * 16)


def test_cli_validate(tmp_path: Path):
    from pipeline.cli import main

    good = tmp_path / "good.json"
    good.write_text(json.dumps(small_doc()))
    runner = CliRunner()
    result = runner.invoke(main, ["pools", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert parse_registry(small_doc()).version in result.output
    doc = small_doc()
    doc["pools"][1]["addresses"][0]["address"] = "bc1qnotvalid"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = runner.invoke(main, ["pools", "validate", str(bad)])
    assert result.exit_code == 1
    assert "pools[1] (id 'beta').addresses[0]" in result.output


def test_cli_list(tmp_path: Path):
    from pipeline.cli import main

    path = tmp_path / "r.json"
    path.write_text(json.dumps(small_doc()))
    result = CliRunner().invoke(main, ["pools", "list", "--registry", str(path), "--search", "beta"])
    assert result.exit_code == 0, result.output
    assert "Beta" in result.output and "1 of 2 pools" in result.output
