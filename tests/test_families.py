"""`poolwatch pools families` (every family and link with its evidence) and `--suggest` (registry
rules proposed from the inferred links), on the shipped registry and a warehouse holding a
template capture imported the way `poolwatch templates import` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import run
from test_templates import PREV_A, PREV_B, TEMPLATE_1, TEMPLATE_3, job, write

from pipeline.attribution.importers import build_default, load_rules
from pipeline.attribution.registry import load_registry, parse_registry, parse_time
from pipeline.attribution.templates import read_capture
from pipeline.load.templates import import_templates
from pipeline.store.warehouse import Warehouse

# antpool and binance-pool share a template at two heights (a link that counts at the default
# threshold of 2); luxor and secpool at one height only (below it).
JOBS = [
    job("antpool", 900000, PREV_A, TEMPLATE_1, 1750000000),
    job("binance-pool", 900000, PREV_A, TEMPLATE_1, 1750000001),
    job("luxor", 900000, PREV_A, ["0a" * 32], 1750000002),
    job("secpool", 900000, PREV_A, ["0a" * 32], 1750000003),
    job("antpool", 900001, PREV_B, TEMPLATE_3, 1750000600),
    job("binance-pool", 900001, PREV_B, TEMPLATE_3, 1750000601),
]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    root = tmp_path_factory.mktemp("families")
    wh = Warehouse(root / "wh")
    import_templates(wh, read_capture(write(root, "capture.jsonl", JOBS)), load_registry())
    return wh


def test_families_without_a_warehouse_lists_the_legal_links_with_their_sources(tmp_path: Path):
    res = run(["--warehouse", tmp_path / "none", "pools", "families", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["tables"] == {"template_links": "absent", "custody_links": "absent"}
    families = {f["entity"]: f["pools"] for f in data["families"]}
    assert families["family:bitmain"] == ["antpool", "bitdeer", "btc-com"]
    assert families["family:poolin"] == ["novablock", "poolin"]
    btc = [r for r in data["links"] if r["pool_a"] == "btc-com"]
    assert [(r["entity"], r["when"]) for r in btc] == [
        ("family:bitmain", "..2020-11-30T23:59:59Z"),
        ("family:bitdeer", "2020-12-01T00:00:00Z..2021-03-31T23:59:59Z"),
        ("family:bit-mining", "2021-04-01T00:00:00Z..")]
    assert "https://ir.btcm.group/news/pressDetail/316" in btc[2]["evidence"]
    assert all(r["sources"] == ["legal-links"] for r in btc)
    assert not [r for r in data["links"] if r["level"] == "inferred"]


def test_families_shows_inferred_links_with_their_counts_and_threshold(warehouse):
    base = ["--warehouse", warehouse.root, "pools", "families"]
    data = json.loads(run([*base, "--json"]).stdout)
    inferred = {(r["pool_a"], r["pool_b"]): r for r in data["links"] if r["level"] == "inferred"}
    assert set(inferred) == {("antpool", "binance-pool"), ("luxor", "secpool")}
    assert inferred[("antpool", "binance-pool")]["evidence"] == "shared_groups 2, heights_seen 2"
    assert inferred[("antpool", "binance-pool")]["counted"] is True
    assert inferred[("luxor", "secpool")]["counted"] is False
    assert data["inference"] == {"min_template_heights": 2, "min_co_spend_txs": 2}
    # a lower threshold counts the single shared template too
    low = json.loads(run([*base, "--json", "--min-template-heights", "1"]).stdout)
    assert all(r["counted"] for r in low["links"] if r["level"] == "inferred")
    table = run(base, columns=200)
    assert table.exit_code == 0, table.output
    assert "no (below threshold)" in table.output and "family:bitmain" in table.output


def test_suggest_proposes_rules_a_person_can_accept(warehouse, pool_lists_dir, tmp_path: Path):
    res = run(["--warehouse", warehouse.root, "pools", "families", "--suggest", "--json"])
    assert res.exit_code == 0, res.output
    proposal = json.loads(res.stdout)
    # antpool is in Bitmain with no end date: binance-pool is proposed for that family; nothing
    # for luxor/secpool (below the threshold) and no new family
    assert proposal["families"] == []
    assert [(m["pool"], m["family"], m["from_height"]) for m in proposal["memberships"]] == [
        ("binance-pool", "bitmain", 900000)]
    assert "heights_seen 2" in proposal["memberships"][0]["note"]
    # accepted into a rules file, the import gives a registry where binance-pool is in the family
    rules = load_rules()
    rules["memberships"] = rules["memberships"] + proposal["memberships"]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    document, _ = build_default(pool_lists_dir, path)
    accepted = parse_registry(document)
    assert accepted.by_id["binance-pool"].family_at(900000, parse_time("2025-06-15T00:00:00Z")) == "bitmain"
    assert accepted.by_id["binance-pool"].family_at(899999, parse_time("2025-06-15T00:00:00Z")) is None


def test_a_capture_below_the_threshold_leaves_the_metric_tables_as_they_are(tmp_path: Path):
    """An import of template links changes the data revision (the stored metric tables read as
    stale); a refresh then finds that the links the metrics count did not change and records it
    without recomputing. Links that reach the threshold change the inputs: everything is recomputed."""
    from test_metrics import build_warehouse, demo_pools

    from pipeline.metrics import compute as m

    wh = build_warehouse(tmp_path / "wh", demo_pools(300))
    m.refresh_metrics(wh, draws=50)
    before = wh.meta["metrics_inputs"]
    import_templates(wh, read_capture(write(tmp_path, "one.jsonl", JOBS[:2])), load_registry())
    assert wh.freshness()["stale"] and "data revision" in wh.freshness()["reason"]
    again = m.refresh_metrics(wh, draws=50)
    assert again.mode == "up to date (inputs unchanged)" and not wh.freshness()["stale"]
    assert wh.meta["metrics_inputs"] == before
    # the same link at a second height reaches the default threshold of 2: the inputs change
    import_templates(wh, read_capture(write(tmp_path, "two.jsonl", JOBS[4:])), load_registry())
    with pytest.raises(m.MetricsError, match="not stored in pool_definitions"):
        m.refresh_metrics(wh, draws=50)  # this warehouse's attributions name no stored registry
