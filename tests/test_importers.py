"""Importers for mempool v2, v1 and bitcoin-data lists, the merge and its disagreement report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.attribution.importers import (SourceListError, build_default, load_rules, merge_sources, read_bitcoin_data,
                                read_mempool_v2, read_v1, write_registry)
from pipeline.chain.networks import MAIN, TEST
from pipeline.attribution.registry import load_registry, parse_registry
from pipeline.chain.scripts import script_to_address


def addr(n: int, network=MAIN) -> str:
    return script_to_address(bytes.fromhex("76a914") + bytes([n]) * 20 + bytes.fromhex("88ac"), network)


@pytest.fixture()
def lists(tmp_path: Path) -> dict[str, Path]:
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps([
        {"id": 1, "name": "Alpha", "addresses": [addr(1), addr(9, TEST)], "tags": ["/alpha/"], "link": "https://a"},
        {"id": 2, "name": "Beta", "addresses": [addr(2)], "tags": ["Beta Pool", "🐟x"], "link": "https://b"},
        {"id": 3, "name": "Gamma", "addresses": [addr(3)], "tags": [], "link": "https://g"},
    ]))
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({
        "coinbase_tags": {"/ALPHA/": {"name": "Alpha", "link": "https://a"},
                          "Beta Pool": {"name": "Delta", "link": "https://d"}},
        "payout_addresses": {addr(3): {"name": "Gamma Renamed", "link": "https://g2"},
                             addr(4): {"name": "Delta", "link": "https://d"},
                             "1NotAnAddress": {"name": "Delta", "link": "https://d"}},
        "slugs": {"Delta": "delta"},
    }))
    bd = tmp_path / "bitcoin-data"
    (bd / "pools").mkdir(parents=True)
    (bd / "signet-pools").mkdir()
    (bd / "pools" / "alpha.json").write_text(json.dumps(
        {"id": 7, "name": "alpha", "addresses": [addr(1)], "tags": ["/alpha/", "xy"], "link": "https://a"}))
    (bd / "pools" / "epsilon.json").write_text(json.dumps(
        {"id": 8, "name": "Epsilon", "addresses": [addr(2)], "tags": [], "link": "https://e"}))
    (bd / "signet-pools" / "s1.json").write_text(json.dumps(
        {"id": 1, "name": "signet-1", "addresses": [addr(5, TEST)], "tags": ["/signet:1/"], "link": "https://s"}))
    return {"v2": v2, "v1": v1, "bd": bd}


def test_readers(lists):
    v2 = read_mempool_v2(lists["v2"])
    assert [p.name for p in v2.pools] == ["Alpha", "Beta", "Gamma"] and v2.kind == "mempool-v2"
    v1 = read_v1(lists["v1"])
    delta = [p for p in v1.pools if p.name == "Delta"][0]
    assert delta.tags == ["Beta Pool"] and addr(4) in delta.addresses and delta.slug == "delta"
    bd = read_bitcoin_data(lists["bd"])
    signet = [p for p in bd.pools if p.name == "signet-1"][0]
    assert signet.network == "signet" and signet.slug == "s1"


def test_reader_errors_name_the_file_and_entry(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": 1, "name": "X", "addresses": "1abc", "tags": []}]))
    with pytest.raises(SourceListError, match=r"bad.json\[0\] \('X'\).addresses: expected a list"):
        read_mempool_v2(bad)
    bad.write_text(json.dumps({"coinbase_tags": {}}))
    with pytest.raises(SourceListError, match="not a v1 list"):
        read_v1(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceListError, match="no pool files"):
        read_bitcoin_data(tmp_path / "empty")


def test_merge_reports_every_disagreement(lists):
    sources = [read_mempool_v2(lists["v2"], "m"), read_v1(lists["v1"], "old"), read_bitcoin_data(lists["bd"], "bd")]
    doc, disagreements = merge_sources(sources, {"source_priority": ["m", "bd", "old"]})
    reg = parse_registry(doc)
    by_kind: dict[str, list] = {}
    for d in disagreements:
        by_kind.setdefault(d.kind, []).append(d)
    # Same tag, different pool: Beta (m) vs Delta (old) -> priority m.
    beta_tag = [d for d in by_kind["owner-conflict"] if d.subject == "tag 'Beta Pool'"][0]
    assert beta_tag.claims == {"beta": ["m"], "delta": ["old"]} and beta_tag.decision == "assigned to beta"
    assert beta_tag.rule == "source-priority"
    # Same address, different pool: Beta (m) vs Epsilon (bd).
    assert any(d.subject == f"address {addr(2)!r}" and d.decision == "assigned to beta" for d in by_kind["owner-conflict"])
    # Gamma vs "Gamma Renamed": share an address and never appear in one list -> a rename report.
    assert any(d.kind == "rename" and "Gamma Renamed" in d.subject for d in disagreements)
    assert any(d.kind == "invalid-address" and "1NotAnAddress" in d.subject for d in disagreements)
    assert any(d.kind == "short-tag" and "'xy'" in d.subject for d in disagreements)
    # Resolutions are stored in the registry itself.
    assert len(doc["resolutions"]) == len(disagreements)
    # Case-folded duplicates are one rule; provenance lists every list that attests it.
    alpha = reg.by_id["alpha"]
    assert [(t.text, t.sources) for t in alpha.tags] == [("/alpha/", ("m", "bd", "old"))]
    assert {a.network for a in alpha.addresses} == {"main", "test"}
    assert reg.by_id["signet-1"].addresses[0].network == "signet"


def test_merge_is_independent_of_list_order_given_priorities(lists):
    a = [read_mempool_v2(lists["v2"], "m"), read_v1(lists["v1"], "old"), read_bitcoin_data(lists["bd"], "bd")]
    rules = {"source_priority": ["m", "bd", "old"]}
    doc1, _ = merge_sources(a, rules)
    doc2, _ = merge_sources(list(reversed(a)), rules)
    doc1.pop("sources"), doc2.pop("sources")
    assert doc1["pools"] == doc2["pools"]


def test_rules_alias_owner_window_drop(lists):
    sources = [read_mempool_v2(lists["v2"], "m"), read_v1(lists["v1"], "old"), read_bitcoin_data(lists["bd"], "bd")]
    rules = {"source_priority": ["m", "bd", "old"],
             "pools": [{"id": "gamma", "name": "Gamma", "aliases": ["Gamma Renamed"], "reason": "rebrand"}],
             "owners": [{"kind": "tag", "value": "beta pool", "pool": "delta", "reason": "Delta's PR"}],
             "windows": [{"kind": "address", "value": addr(1), "to_height": 500, "reason": "sold"}],
             "drop": [{"kind": "address", "value": addr(2), "reason": "shared custodian"}],
             "families": [{"id": "fam", "name": "Fam"}],
             "memberships": [{"pool": "alpha", "family": "fam", "from_height": 10}]}
    doc, disagreements = merge_sources(sources, rules)
    reg = parse_registry(doc)
    assert reg.by_id["gamma"].former_names == ("Gamma Renamed",)
    assert [t.text for t in reg.by_id["delta"].tags] == ["Beta Pool"]
    assert reg.by_id["alpha"].addresses[0].heights.to_height == 500
    assert all(a.address != addr(2) for p in reg.pools for a in p.addresses)
    assert reg.by_id["alpha"].family_at(10) == "fam"
    rules_used = {d.rule for d in disagreements}
    assert {"pool:gamma", "owner:Beta Pool", f"window:{addr(1)}", f"drop:{addr(2)}"} <= rules_used


def test_tag_rules_and_short_tags(tmp_path):
    """Short tags need a window or a position from the rules, else they are dropped and reported;
    tag_rules add position / software / user text, each reported with its reason."""
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps([
        {"id": 1, "name": "Kano", "addresses": [], "tags": ["Kano", "ckpool"], "link": None},
        {"id": 2, "name": "Host", "addresses": [addr(1)], "tags": ["/host/", "HHTT", "EMC:"], "link": None}]))
    rules = {"source_priority": ["m"],
             "windows": [{"kind": "tag", "value": "HHTT", "from_height": 400000, "to_height": 450000, "reason": "r0"}],
             "tag_rules": [{"value": "kano", "position": {"after": "ckpool", "gap": [1, 2]}, "reason": "r1"},
                           {"value": "ckpool", "software": True, "reason": "r2"},
                           {"value": "/host/", "user_text_after": True, "reason": "r3"}]}
    doc, disagreements = merge_sources([read_mempool_v2(v2, "m")], rules)
    reg = parse_registry(doc)
    tags = {t.text: t for p in reg.pools for t in p.tags}
    kano = tags["Kano"].position
    assert (kano.anchor, kano.min_gap, kano.max_gap) == (b"ckpool", 1, 2)
    assert tags["ckpool"].software and tags["/host/"].user_text_after
    assert (tags["HHTT"].heights.from_height, tags["HHTT"].heights.to_height) == (400000, 450000)
    assert "EMC:" not in tags
    short = [d for d in disagreements if d.kind == "short-tag"]
    assert [(d.subject, d.decision) for d in short] == [("tag 'EMC:'", "dropped")]
    assert {(d.rule, d.reason) for d in disagreements if d.kind == "tag-rule"} == {
        ("tag-rule:kano", "r1"), ("tag-rule:ckpool", "r2"), ("tag-rule:/host/", "r3")}
    with pytest.raises(SourceListError, match=r"tag_rules\['/host/'\] sets none of"):
        merge_sources([read_mempool_v2(v2, "m")], {**rules, "tag_rules": [{"value": "/host/", "reason": "?"}]})


def test_default_registry_is_reproducible_from_the_shared_lists(pool_lists_dir, tmp_path):
    """The shipped file is exactly what the documented generator produces."""
    doc, disagreements = build_default(pool_lists_dir)
    out = tmp_path / "registry.json"
    write_registry(doc, out)
    shipped = Path(__file__).resolve().parent.parent / "pipeline" / "data" / "registry.json"
    assert load_registry(out).version == load_registry(shipped).version
    subjects = {d.subject: d for d in disagreements}
    # The README's known disagreements are all reported, each with a rule.
    assert subjects["address '1KGbsDDAgJN2HDNBjmMHp9828qATo5B9c9'"].claims.keys() == {"ckpool", "miningkings"}
    assert "address 'bc1qwlrsvgtn99rqp3fgaxq6f6jkgms80rnej0a8tc'" in subjects
    assert "tag 'Validated with Clean Energy'" in subjects
    assert any(d.kind == "rename" and "CloverPool" in d.subject and d.rule == "pool:btc-com" for d in disagreements)
    reg = load_registry(out)
    cn = {a.address: a.heights for a in reg.by_id["carbon-negative"].addresses}
    assert cn["33SAB6pzbhEGPbfY6NVgRDV7jVfspZ3A3Z"].to_height == 742802
    assert cn["3KZDwmJHB6QJ13QPXHaW7SS3yTESFPZoxb"].from_height == 743037
    # mempool's testnet addresses are kept as test-network rules.
    assert [a.network for a in reg.by_id["mononaut"].addresses] == ["test"]
    assert {t.text for t in reg.by_id["7pool"].tags} == {"/$Mined by 7pool.com/"}


def test_every_rule_in_the_rules_file_is_used(pool_lists_dir):
    rules = load_rules()
    _, disagreements = build_default(pool_lists_dir)
    used = {d.rule for d in disagreements}
    for entry in rules["pools"]:
        assert f"pool:{entry['id']}" in used
    for entry in rules["windows"]:
        assert f"window:{entry['value']}" in used
    for entry in rules["drop"]:
        assert f"drop:{entry['value']}" in used
    for entry in rules["tag_rules"]:
        assert f"tag-rule:{entry['value']}" in used


def test_cli_import_reports_disagreements(lists, tmp_path):
    from pipeline.cli import main

    out = tmp_path / "merged.json"
    result = CliRunner().invoke(main, ["pools", "import", "--from", "mempool-v2", str(lists["v2"]),
                                       "--from", "v1", str(lists["v1"]), "--from", "bitcoin-data", str(lists["bd"]),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "owner-conflict" in result.output and "Beta Pool" in result.output
    reg = load_registry(out)
    assert reg.version in result.output
    assert reg.by_id["beta"].addresses[0].address == addr(2)  # first list wins without rules


def test_cli_import_refuses_a_broken_list(tmp_path):
    from pipeline.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text("[{\"name\": \"\"}]")
    result = CliRunner().invoke(main, ["pools", "import", "--from", "mempool-v2", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "needs a non-empty 'name'" in result.output


def test_docs_list_every_resolution_of_the_shipped_registry():
    from pipeline.attribution.importers import DOCS_END, DOCS_START, render_resolutions_markdown

    repo = Path(__file__).resolve().parent.parent
    shipped = json.loads((repo / "pipeline" / "data" / "registry.json").read_text(encoding="utf-8"))
    docs = (repo / "docs" / "registry.md").read_text(encoding="utf-8")
    section = docs.split(DOCS_START, 1)[1].split(DOCS_END, 1)[0].strip()
    assert section == render_resolutions_markdown(shipped), \
        "docs/registry.md is out of date: python -m pipeline.attribution.importers --default --docs docs/registry.md"
    assert len(shipped["resolutions"]) == section.count("\n") - 1


def test_a_list_slug_the_registry_cannot_hold_gives_way_and_is_reported(lists, tmp_path):
    """mempool's v1 pools.json has the slug 'exx&bw': the merge used to write it and then refuse its
    own output ('invalid registry ... slug'), so the README's import example failed."""
    v1 = json.loads(lists["v1"].read_text())
    v1["slugs"] = {"Delta": "d&lta", "Alpha": "Alpha!"}
    lists["v1"].write_text(json.dumps(v1))
    bd_delta = lists["bd"] / "pools" / "delta.json"
    bd_delta.write_text(json.dumps({"id": 9, "name": "Delta", "addresses": [addr(4)], "tags": [], "link": None}))
    doc, disagreements = merge_sources([read_v1(lists["v1"], "old"), read_bitcoin_data(lists["bd"], "bd")],
                                       {"source_priority": ["old", "bd"]})
    reg = parse_registry(doc)  # loads: every slug is valid
    assert reg.by_id["delta"].slug == "delta"  # bitcoin-data's valid slug (its file name)
    assert reg.by_id["alpha"].slug == "alpha"  # bitcoin-data's alpha.json
    slugs = {d.subject: d for d in disagreements if d.kind == "invalid-slug"}
    assert set(slugs) == {"slug 'd&lta'", "slug 'Alpha!'"}
    assert slugs["slug 'd&lta'"].claims == {"delta": ["old"]} and slugs["slug 'd&lta'"].decision == "slug 'delta' from bd"
    # no valid slug anywhere: the pool id, said so
    doc, disagreements = merge_sources([read_v1(lists["v1"], "old")])
    assert parse_registry(doc).by_id["delta"].slug == "delta"
    assert any(d.kind == "invalid-slug" and d.decision == "slug 'delta' (the pool id)" for d in disagreements)


def test_registry_errors_show_the_pattern_they_quote(tmp_path):
    """The error quoted the schema pattern '^[a-z0-9][a-z0-9._-]*$' through rich markup, which ate
    the bracketed parts and printed '^*$'."""
    from pipeline.cli import main

    shipped = json.loads((Path(__file__).resolve().parent.parent / "pipeline" / "data" / "registry.json").read_text())
    shipped["pools"][0]["slug"] = "exx&bw"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(shipped))
    result = CliRunner().invoke(main, ["pools", "validate", str(bad)])
    assert result.exit_code == 1
    assert "'exx&bw' does not match '^[a-z0-9][a-z0-9._-]*$'" in result.output


DOCUMENTED_IMPORT = "poolwatch pools import --from mempool-v2 pools-v2.json --from v1 pools.json -o merged.json"


def test_documented_import_command_on_the_real_lists(pool_lists_dir, tmp_path):
    """The documented command line, run as a newcomer would: in a folder holding mempool's two files
    (symlinks to ../shared, read in place), with the installed `poolwatch` program."""
    import shlex
    import subprocess
    import sys

    docs = (Path(__file__).resolve().parent.parent / "docs" / "registry.md").read_text(encoding="utf-8")
    assert DOCUMENTED_IMPORT in docs.split("<!-- pools-import:example -->", 1)[1].split("```", 2)[1]
    mempool = pool_lists_dir / "mining-pools-mempool"
    for name in ("pools-v2.json", "pools.json"):
        (tmp_path / name).symlink_to(mempool / name)
    argv = shlex.split(DOCUMENTED_IMPORT)
    argv[0] = str(Path(sys.executable).parent / "poolwatch")
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    registry = load_registry(tmp_path / "merged.json")
    assert f"wrote merged.json: {len(registry.pools)} pools" in run.stdout
    v2 = json.loads((mempool / "pools-v2.json").read_text(encoding="utf-8"))
    # every mempool pool is in (two spellings of one name fold into one pool), with both lists as provenance
    assert len(v2) - 2 <= len(registry.pools) <= len(v2)
    assert "invalid-slug: slug 'exx&bw'" in run.stdout
    assert registry.by_id["exx-bw"].slug == "exx-bw"
    foundry = registry.by_id["foundry-usa"]
    assert {s for t in foundry.tags for s in t.sources} >= {"mempool-v2"}
    assert {s for a in foundry.addresses for s in a.sources} == {"mempool-v2", "v1"}
