"""Shared block templates from stratum captures (`poolwatch templates import`, docs/templates.md).

The mempool fixture's groups are computed here by hand (parse the JSON, group jobs by identical
merkle branch lists for the same previous block) and compared with the stored tables exactly; the
JSON-lines format, idempotent re-import, byte-identical results in any import order, malformed
input (nothing stored changes) and the command line are tested on captures written here.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path

import pyarrow as pa
import pytest
from test_cli import assert_fits, run

from pipeline.attribution.registry import load_registry, parse_registry
from pipeline.attribution.templates import (EMPTY_BRANCH_HASH, CaptureError, MempoolPoolList, PoolResolver,
                                            observations_table, parse_capture, read_capture, read_mempool_pool_list,
                                            template_groups, template_links)
from pipeline.load.templates import import_templates
from pipeline.store.validation import BatchRejected
from pipeline.store.warehouse import Warehouse

TABLES = ("template_observations", "template_groups", "template_links")
CAPTURE = "mempool+mempool/tx01_ws_stratum_jobs.json"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


# ------------------------------------------------------------------------------------ capture helpers


def push_height(height: int) -> bytes:
    """Core's `CScript() << height`: OP_1..OP_16, else a push of the minimal CScriptNum."""
    if height <= 16:
        return bytes([0x50 + height])
    data = height.to_bytes((height.bit_length() + 8) // 8, "little")
    while len(data) > 1 and data[-1] == 0 and not data[-2] & 0x80:
        data = data[:-1]
    return bytes([len(data)]) + data


def coinbase1(height: int, tag: bytes = b"/test/") -> str:
    """A stratum coinbase1: version, the null input, scriptSig length, height push, tag (the
    extranonces and coinbase2 follow)."""
    script_start = push_height(height) + tag
    script_length = len(script_start) + 8  # + extranonce1 (4) + extranonce2 (4)
    return (b"\x01\x00\x00\x00" + b"\x01" + bytes(32) + b"\xff" * 4 + bytes([script_length]) + script_start).hex()


COINBASE2 = "ffffffff01" + (625_000_000).to_bytes(8, "little").hex() + "160014" + "11" * 20 + "00000000"
PREV_A = "00000000000000000000aaaa" + "a1" * 20
PREV_B = "00000000000000000000bbbb" + "b2" * 20
TEMPLATE_1 = ["01" * 32, "02" * 32, "03" * 32]
TEMPLATE_2 = ["01" * 32, "04" * 32, "03" * 32]  # same first transaction, another selection after it
TEMPLATE_3 = ["05" * 32]


def job(pool: str, height: int, prev: str, branches: list[str], time, **extra) -> dict:
    return {"pool": pool, "height": height, "prevhash": prev, "coinbase1": coinbase1(height),
            "coinbase2": COINBASE2, "merkle_branches": branches, "time": time, **extra}


def jsonl(jobs: list[dict]) -> bytes:
    return "".join(json.dumps(j) + "\n" for j in jobs).encode()


def write(tmp_path: Path, name: str, jobs: list[dict]) -> Path:
    path = tmp_path / name
    path.write_bytes(jsonl(jobs))
    return path


# Two heights: at 900000 antpool, foundry (by slug), braiins (by former name SlushPool) and an
# unknown pool share TEMPLATE_1, f2pool mines TEMPLATE_2 alone, two pools send empty-block jobs;
# at 900001 antpool and foundry share TEMPLATE_3 again.
JOBS = [
    job("antpool", 900000, PREV_A, TEMPLATE_1, 1750000000, source="listener-eu", job_id="a1"),
    job("foundry-usa", 900000, PREV_A, TEMPLATE_1, "2025-06-15T15:06:41Z"),
    job("SlushPool", 900000, PREV_A, TEMPLATE_1, 1750000005.9),
    job("Nobody Pool [draft]", 900000, PREV_A, TEMPLATE_1, 1750000003),
    job("f2pool", 900000, PREV_A, TEMPLATE_2, 1750000002),
    job("viabtc", 900000, PREV_A, [], 1750000001),
    job("antpool", 900000, PREV_A, [], 1750000004),
    job("antpool", 900001, PREV_B, TEMPLATE_3, 1750000600),
    job("Foundry USA", 900001, PREV_B, TEMPLATE_3, "2025-06-15T17:16:45+02:00"),
]


def stored(warehouse: Warehouse, table: str) -> list[dict]:
    return warehouse.read(table).to_pylist()


def data_files(root: Path) -> dict[str, bytes]:
    return {t: (root / "data" / t / "part.parquet").read_bytes() for t in TABLES}


# ------------------------------------------------------------------------ the mempool fixture, by hand


MEMPOOL_IDS = {  # mempool's pools-v2 ids (the jobs' "pool") -> registry ids; each agrees with the job's
    2: "ultimuspool", 4: "luxor", 36: "f2pool", 43: "braiins-pool", 44: "antpool", 49: "solo-ck",  # coinbase tag
    73: "viabtc", 94: "poolin", 102: "spiderpool", 105: "binance-pool", 111: "foundry-usa", 112: "sbi-crypto",
    141: "secpool", 142: "ocean", 161: "mining-squared"}


def hand_groups(doc: dict) -> tuple[list[dict], list[dict]]:
    """Groups and links of a mempool capture, computed from the JSON without the importer."""
    groups: dict[tuple[str, tuple[str, ...]], list[dict]] = {}
    for raw in doc["stratumJobs"].values():
        if raw["merkleBranches"]:  # empty-block jobs share no transaction selection
            groups.setdefault((raw["prevHash"], tuple(raw["merkleBranches"])), []).append(raw)
    rows = []
    for (prev, branches), jobs in groups.items():
        bhash = hashlib.sha256(bytes.fromhex("".join(branches))).hexdigest()
        seen = [datetime.fromtimestamp(j["received"] // 1000, UTC) for j in jobs]
        pools = sorted({MEMPOOL_IDS[j["pool"]] for j in jobs})
        rows.append({"group_id": hashlib.sha256((prev + bhash).encode()).hexdigest()[:16], "prev_hash": prev,
                     "branch_hash": bhash, "height": jobs[0]["height"], "branch_count": len(branches),
                     "pool_ids": pools, "pools": len(pools), "observations": len(jobs), "first_seen": min(seen),
                     "last_seen": max(seen)})
    rows.sort(key=lambda r: (r["height"], r["prev_hash"], r["branch_hash"]))
    pairs: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        for a, b in combinations(row["pool_ids"], 2):
            pairs.setdefault((a, b), []).append(row["height"])
    links = [{"pool_a": a, "pool_b": b, "shared_groups": len(hs), "heights_seen": len(set(hs)),
              "first_height": min(hs), "last_height": max(hs)} for (a, b), hs in sorted(pairs.items())]
    return rows, links


def test_mempool_capture_groups_match_a_hand_computation(fixtures_dir, pool_lists_dir, registry, tmp_path):
    path = fixtures_dir / CAPTURE
    doc = json.loads(path.read_text())
    expected_groups, expected_links = hand_groups(doc)
    pools_v2 = read_mempool_pool_list(pool_lists_dir / "mining-pools-mempool" / "pools-v2.json")
    warehouse = Warehouse(tmp_path / "wh")
    result = import_templates(warehouse, read_capture(path), registry, mempool_list=pools_v2)

    assert stored(warehouse, "template_groups") == expected_groups
    assert stored(warehouse, "template_links") == expected_links
    # What the hand computation finds in this capture: 15 pools, 9 templates, two of them shared.
    assert (result.jobs, result.groups, result.shared_groups, result.links) == (15, 9, 2, 16)
    assert sorted(g["pool_ids"] for g in expected_groups if g["pools"] > 1) == [
        ["antpool", "binance-pool", "braiins-pool", "mining-squared", "poolin", "ultimuspool"], ["luxor", "secpool"]]
    observations = stored(warehouse, "template_observations")
    assert len(observations) == 15 and {o["pool_match"] for o in observations} == {"mempool-id"}
    assert {o["pool_name_raw"]: o["pool_id"] for o in observations} == {f"mempool:{k}": v
                                                                        for k, v in MEMPOOL_IDS.items()}
    assert all(o["source_file"] == "tx01_ws_stratum_jobs.json" and o["source_sha256"] == hashlib.sha256(
        path.read_bytes()).hexdigest() and o["registry_version"] == registry.version for o in observations)
    assert all("pools-v2.json sha256 " + pools_v2.sha256 in o["pool_match_detail"] for o in observations)


def test_mempool_ids_resolve_to_the_pool_the_coinbase_names(fixtures_dir, pool_lists_dir, registry):
    """Independent evidence for the mapping: attributing each job's own coinbase (tag and payouts)
    with the registry gives the pool its mempool id resolved to."""
    from pipeline.attribution.engine import attribute_tables
    from pipeline.chain.decode import parse_coinbase

    doc = json.loads((fixtures_dir / CAPTURE).read_text())
    pools_v2 = read_mempool_pool_list(pool_lists_dir / "mining-pools-mempool" / "pools-v2.json")
    made = observations_table(read_capture(fixtures_dir / CAPTURE), PoolResolver(registry, pools_v2))
    resolved = {r["pool_name_raw"]: r["pool_id"] for r in made.table.to_pylist()}
    blocks = {"height": [], "hash": [], "coinbase_script_sig_hex": []}
    outputs = {"height": [], "block_hash": [], "output_index": [], "value_sat": [], "script_hex": []}
    refs = []
    for i, raw in enumerate(doc["stratumJobs"].values()):
        tx = bytes.fromhex(raw["coinbase1"] + raw["extraNonce"] + "00" * raw["extraNonce2Size"] + raw["coinbase2"])
        cb = parse_coinbase(tx)
        refs.append(f"mempool:{raw['pool']}")
        blocks["height"].append(raw["height"])
        blocks["hash"].append(f"{i:064x}")
        blocks["coinbase_script_sig_hex"].append(cb.script_sig.hex())
        for n, (value, script) in enumerate(cb.outputs):
            for column, v in zip(outputs, (raw["height"], f"{i:064x}", n, value, script.hex()), strict=True):
                outputs[column].append(v)
    attributed = attribute_tables(pa.table(blocks), pa.table(outputs), registry, "main")["attributions"]
    assert dict(zip(refs, attributed.column("pool_id").to_pylist(), strict=True)) == resolved


# ----------------------------------------------------------------------------------- JSON lines


def test_jsonl_capture_groups_links_and_pool_resolution(tmp_path, registry):
    pools_v2 = MempoolPoolList("pools-v2.json", "0" * 64, {44: "AntPool"})
    extra = [job("mempool:44", 900001, PREV_B, TEMPLATE_3, 1750000601)]  # the same pool as 'antpool'
    warehouse = Warehouse(tmp_path / "wh")
    result = import_templates(warehouse, read_capture(write(tmp_path, "jobs.jsonl", JOBS + extra)), registry,
                              mempool_list=pools_v2)
    obs = stored(warehouse, "template_observations")
    by_raw = {o["pool_name_raw"]: (o["pool_id"], o["pool_match"]) for o in obs}
    assert by_raw == {"antpool": ("antpool", "id"), "foundry-usa": ("foundry-usa", "id"),
                      "Foundry USA": ("foundry-usa", "name"), "SlushPool": ("braiins-pool", "name"),
                      "Nobody Pool [draft]": ("unmapped:Nobody Pool [draft]", "unmapped"),
                      "f2pool": ("f2pool", "id"), "viabtc": ("viabtc", "id"), "mempool:44": ("antpool", "mempool-id")}
    assert result.unmapped == {"Nobody Pool [draft]": "'Nobody Pool [draft]' matches no pool id, slug or name of "
                                                      f"registry {registry.version}"}
    # Empty-block jobs are kept as observations but form no group and no link.
    assert len(obs) == 10 and sum(1 for o in obs if not o["merkle_branches"]) == 2
    assert {o["branch_hash"] for o in obs if not o["merkle_branches"]} == {EMPTY_BRANCH_HASH}
    times = {(o["pool_name_raw"], o["height"]): o["observed_at"] for o in obs}
    assert times[("foundry-usa", 900000)] == datetime(2025, 6, 15, 15, 6, 41, tzinfo=UTC)
    assert times[("SlushPool", 900000)] == datetime.fromtimestamp(1750000005, UTC)  # floor to seconds
    assert times[("Foundry USA", 900001)] == datetime(2025, 6, 15, 15, 16, 45, tzinfo=UTC)
    assert {o["capture_source"] for o in obs} == {"listener-eu", None}

    def bh(branches: list[str]) -> str:
        return hashlib.sha256(bytes.fromhex("".join(branches))).hexdigest()

    def gid(prev: str, branches: list[str]) -> str:
        return hashlib.sha256((prev + bh(branches)).encode()).hexdigest()[:16]

    t = lambda s: datetime.fromtimestamp(s, UTC)  # noqa: E731
    shared_1 = ["antpool", "braiins-pool", "foundry-usa", "unmapped:Nobody Pool [draft]"]
    expected = sorted([
        {"group_id": gid(PREV_A, TEMPLATE_1), "prev_hash": PREV_A, "branch_hash": bh(TEMPLATE_1), "height": 900000,
         "branch_count": 3, "pool_ids": shared_1, "pools": 4, "observations": 4, "first_seen": t(1750000000),
         "last_seen": t(1750000005)},
        {"group_id": gid(PREV_A, TEMPLATE_2), "prev_hash": PREV_A, "branch_hash": bh(TEMPLATE_2), "height": 900000,
         "branch_count": 3, "pool_ids": ["f2pool"], "pools": 1, "observations": 1, "first_seen": t(1750000002),
         "last_seen": t(1750000002)},
        {"group_id": gid(PREV_B, TEMPLATE_3), "prev_hash": PREV_B, "branch_hash": bh(TEMPLATE_3), "height": 900001,
         "branch_count": 1, "pool_ids": ["antpool", "foundry-usa"], "pools": 2, "observations": 3,
         "first_seen": t(1750000600), "last_seen": t(1750000605)},
    ], key=lambda g: (g["height"], g["prev_hash"], g["branch_hash"]))
    assert stored(warehouse, "template_groups") == expected
    pairs = {pair: [900000] for pair in combinations(shared_1, 2)}
    pairs[("antpool", "foundry-usa")] = [900000, 900001]
    assert stored(warehouse, "template_links") == [
        {"pool_a": a, "pool_b": b, "shared_groups": len(hs), "heights_seen": len(hs), "first_height": min(hs),
         "last_height": max(hs)} for (a, b), hs in sorted(pairs.items())]


def test_reimport_adds_nothing_and_rewrites_nothing(tmp_path, registry):
    path = write(tmp_path, "jobs.jsonl", JOBS)
    warehouse = Warehouse(tmp_path / "wh")
    first = import_templates(warehouse, read_capture(path), registry)
    before = data_files(warehouse.root)
    again = import_templates(warehouse, read_capture(path), registry)
    assert (first.new, first.replaced, again.new, again.replaced) == (9, 0, 0, 9)
    assert data_files(warehouse.root) == before
    # Jobs are not chain data: their heights do not mark metric windows as changed.
    assert warehouse.meta.get("dirty") is None and warehouse.meta["data_revision"] == 2
    # A capture repeating a job (same line twice) stores it once; a second file holding a job
    # already stored replaces its row (provenance of the latest import) instead of adding one.
    twice = write(tmp_path, "twice.jsonl", [JOBS[0], JOBS[0], JOBS[4]])
    result = import_templates(warehouse, read_capture(twice), registry)
    assert (result.jobs, result.repeated, result.new, result.replaced, result.observations) == (3, 1, 0, 2, 9)
    rows = {o["pool_name_raw"] + o["prev_hash"] + str(o["merkle_branches"]): o["source_file"]
            for o in stored(warehouse, "template_observations")}
    assert sorted(rows.values()).count("twice.jsonl") == 2


def test_same_captures_in_any_order_give_the_same_bytes(tmp_path, registry):
    one, two = write(tmp_path, "one.jsonl", JOBS[:5]), write(tmp_path, "two.jsonl", JOBS[5:])
    forward, backward = Warehouse(tmp_path / "forward"), Warehouse(tmp_path / "backward")
    for path in (one, two):
        import_templates(forward, read_capture(path), registry)
    for path in (two, one):
        import_templates(backward, read_capture(path), registry)
    assert data_files(forward.root) == data_files(backward.root)


def test_a_pool_resolved_later_replaces_its_unmapped_links(tmp_path, registry):
    """Groups and links are whole tables: re-importing with a registry that knows the pool removes
    the links of its 'unmapped:' name instead of keeping them beside the new ones."""
    path = write(tmp_path, "jobs.jsonl", JOBS)
    warehouse = Warehouse(tmp_path / "wh")
    import_templates(warehouse, read_capture(path), registry)
    assert any(link["pool_b"] == "unmapped:Nobody Pool [draft]" for link in stored(warehouse, "template_links"))
    document = json.loads(registry.canonical_json())
    document["pools"].append({"id": "nobody-pool", "name": "Nobody Pool [draft]"})
    newer = parse_registry(document)
    result = import_templates(warehouse, read_capture(path), newer)
    assert result.unmapped == {}
    links = stored(warehouse, "template_links")
    assert not any(link["pool_b"].startswith("unmapped:") or link["pool_a"].startswith("unmapped:") for link in links)
    assert ("foundry-usa", "nobody-pool") in {(link["pool_a"], link["pool_b"]) for link in links}
    assert len(links) == 6
    # The registry that resolved the pools is kept, so each stored pool id can be traced to it.
    versions = set(warehouse.read("pool_definitions", where="kind = 'document'").column("registry_version").to_pylist())
    assert versions == {registry.version, newer.version}


# -------------------------------------------------------------------------------------- bad input


LINE = job("antpool", 900000, PREV_A, TEMPLATE_1, 1750000000)
MALFORMED = [
    ({"coinbase1": "zz" + coinbase1(900000)}, "line 2: field 'coinbase1': not hex: 'z' at position 0"),
    ({"coinbase2": COINBASE2 + "0"}, "line 2: field 'coinbase2': odd number of hex digits"),
    ({"prevhash": PREV_A[:-2]}, "line 2: field 'prevhash': expected a block hash (64 hex digits"),
    ({"merkle_branches": ["01" * 32, "xy" * 32]}, "line 2: field 'merkle_branches': item 1: expected 64 hex digits"),
    ({"merkle_branches": "01" * 32}, "line 2: field 'merkle_branches': expected a list"),
    ({"height": "900000"}, "line 2: field 'height': expected an integer, got a string"),
    ({"height": 900001}, "line 2: field 'coinbase1': commits to height 900000 (BIP34 push in its scriptSig), the "
                         "job says height 900001"),
    ({"coinbase1": coinbase1(900000)[:10] + "11" * 36 + coinbase1(900000)[82:]},
     "line 2: field 'coinbase1': the input does not spend the null prevout"),
    ({"coinbase1": coinbase1(900000)[:8] + "02" + coinbase1(900000)[10:]},
     "line 2: field 'coinbase1': byte 4 is 0x02, not an input count of 1"),
    ({"time": "2025-06-15T15:06:41"}, "line 2: field 'time': '2025-06-15T15:06:41' has no UTC offset"),
    ({"time": 1750000000000}, "line 2: field 'time': 1750000000000 seconds is after 2106 (milliseconds"),
    ({"time": True}, "line 2: field 'time': expected unix seconds or an ISO 8601 time, got a boolean"),
    ({"pool": ""}, "line 2: field 'pool': expected a pool id, slug or name"),
    ({"pool": "mempool:antpool"}, "line 2: field 'pool': 'mempool:antpool': 'mempool:' must be followed by"),
    ({"prev_hash": PREV_A}, "line 2: unknown field(s) 'prev_hash'"),
]


@pytest.mark.parametrize("change,message", MALFORMED, ids=[m[1].split(":")[1].strip() + str(i)
                                                            for i, m in enumerate(MALFORMED)])
def test_malformed_line_names_line_and_field_and_keeps_stored_rows(tmp_path, registry, change, message):
    warehouse = Warehouse(tmp_path / "wh")
    import_templates(warehouse, read_capture(write(tmp_path, "good.jsonl", JOBS)), registry)
    before = data_files(warehouse.root)
    path = write(tmp_path, "bad.jsonl", [LINE, {**LINE, **change}])
    with pytest.raises(CaptureError) as caught:
        import_templates(warehouse, read_capture(path), registry)
    assert f"bad.jsonl: {message}" in str(caught.value)
    assert data_files(warehouse.root) == before


def test_missing_field_and_broken_json_lines():
    missing = {k: v for k, v in LINE.items() if k not in ("coinbase2", "time")}
    with pytest.raises(CaptureError, match=r"c.jsonl: line 1: missing field\(s\) 'coinbase2', 'time'"):
        parse_capture(jsonl([missing]), "c.jsonl")
    with pytest.raises(CaptureError, match=r"c.jsonl: line 3: not valid JSON at column 2 \(Expecting property name"):
        parse_capture(jsonl([LINE]) + b"\n{oops\n", "c.jsonl")
    with pytest.raises(CaptureError, match=r"c.jsonl: line 1: expected a job object, got an array"):
        parse_capture(b"[1, 2]\n", "c.jsonl")
    with pytest.raises(CaptureError, match=r"c.jsonl: line 2: not UTF-8 text"):
        parse_capture(jsonl([LINE]) + b"\xff\n", "c.jsonl")
    with pytest.raises(CaptureError, match=r"c.jsonl: the file is empty"):
        parse_capture(b"\n\n", "c.jsonl")
    conflict = [LINE, {**job("f2pool", 900001, PREV_A, TEMPLATE_2, 1750000000)}]
    with pytest.raises(CaptureError, match=r"previous block 0+aaaa.* claim different heights: 900000 \(line 1\), "
                                           r"900001 \(line 2\)"):
        parse_capture(jsonl(conflict), "c.jsonl")


def test_malformed_mempool_job_names_the_job_and_field(fixtures_dir):
    doc = json.loads((fixtures_dir / CAPTURE).read_text())
    broken = json.loads(json.dumps(doc))
    del broken["stratumJobs"]["44"]["received"]
    with pytest.raises(CaptureError, match=r'x.json: stratumJobs\["44"\]: missing field\(s\) \'received\''):
        parse_capture(json.dumps(broken).encode(), "x.json")
    broken = json.loads(json.dumps(doc))
    broken["stratumJobs"]["142"]["merkleBranches"][3] = "00"
    with pytest.raises(CaptureError, match=r'stratumJobs\["142"\]: field \'merkleBranches\': item 3: expected 64'):
        parse_capture(json.dumps(broken).encode(), "x.json")
    with pytest.raises(CaptureError, match=r"x.json: not a mempool capture: expected a JSON object whose"):
        parse_capture(json.dumps({"stratumJobs": []}).encode(), "x.json", "mempool")


def test_unknown_pool_is_kept_marked_or_refused_when_strict(tmp_path, registry, fixtures_dir):
    path = write(tmp_path, "jobs.jsonl", [LINE, job("Nobody Pool", 900000, PREV_A, TEMPLATE_1, 1750000001)])
    warehouse = Warehouse(tmp_path / "wh")
    with pytest.raises(CaptureError, match=r"jobs.jsonl: pool\(s\) that resolve to no pool of registry "
                                           r"[0-9a-f]{16}: line 2: 'Nobody Pool': 'Nobody Pool' matches no pool"):
        import_templates(warehouse, read_capture(path), registry, strict_pools=True)
    assert not warehouse.root.exists() or stored(warehouse, "template_observations") == []
    import_templates(warehouse, read_capture(path), registry)
    row = next(o for o in stored(warehouse, "template_observations") if o["pool_name_raw"] == "Nobody Pool")
    assert (row["pool_id"], row["pool_match"]) == ("unmapped:Nobody Pool", "unmapped")
    assert stored(warehouse, "template_links") == [{"pool_a": "antpool", "pool_b": "unmapped:Nobody Pool",
                                                    "shared_groups": 1, "heights_seen": 1, "first_height": 900000,
                                                    "last_height": 900000}]
    # A mempool id missing from the list is kept the same way; ids need the list at all.
    capture = read_capture(fixtures_dir / CAPTURE)
    partial = MempoolPoolList("pools-v2.json", "ab" * 32, {44: "AntPool"})
    made = observations_table(capture, PoolResolver(registry, partial))
    assert made.matches["mempool:2"].pool_id == "unmapped:mempool:2"
    assert made.matches["mempool:2"].detail == f"mempool id 2 is not in pools-v2.json sha256 {'ab' * 32}"
    with pytest.raises(CaptureError, match="names pools by their id in mempool's pool list"):
        import_templates(warehouse, capture, registry)


def test_a_batch_the_gate_refuses_is_quarantined_and_nothing_changes(tmp_path, registry):
    """A job seen in the future passes the reader (a valid time) but not the validation gate."""
    warehouse = Warehouse(tmp_path / "wh")
    import_templates(warehouse, read_capture(write(tmp_path, "good.jsonl", JOBS)), registry)
    before = data_files(warehouse.root)
    future = write(tmp_path, "future.jsonl", [job("f2pool", 900002, PREV_B[::-1], TEMPLATE_1, 4_000_000_000)])
    with pytest.raises(BatchRejected) as caught:
        import_templates(warehouse, read_capture(future), registry)
    assert "invariant(template_observed_at_in_bounds)" in str(caught.value)
    assert "source_file=future.jsonl, source_record=line 1" in str(caught.value)
    assert caught.value.quarantine_path.is_dir()
    assert data_files(warehouse.root) == before


def test_a_previous_block_stored_at_another_height_is_refused(tmp_path, registry):
    warehouse = Warehouse(tmp_path / "wh")
    import_templates(warehouse, read_capture(write(tmp_path, "good.jsonl", JOBS)), registry)
    before = data_files(warehouse.root)
    other = write(tmp_path, "other.jsonl", [job("f2pool", 900005, PREV_A, TEMPLATE_3, 1750000000)])
    with pytest.raises(CaptureError, match=r"other.jsonl: previous block 0+aaaa\w+: stored jobs and this capture "
                                           r"give heights \[900000, 900005\] \(line 1 says 900005\)"):
        import_templates(warehouse, read_capture(other), registry)
    assert data_files(warehouse.root) == before


def test_pure_grouping_skips_empty_branches_and_keeps_single_pool_groups(registry):
    capture = parse_capture(jsonl(JOBS[4:7]), "c.jsonl")  # f2pool alone + two empty-block jobs
    made = observations_table(capture, PoolResolver(registry))
    groups = template_groups(made.table)
    assert groups.column("pool_ids").to_pylist() == [["f2pool"]]
    assert template_links(groups).num_rows == 0


# ---------------------------------------------------------------------------------------- command


def test_cli_import_end_to_end(fixtures_dir, pool_lists_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("POOLWATCH_SHARED", str(pool_lists_dir.parent))
    wh = tmp_path / "wh"
    result = run(["templates", "import", fixtures_dir / CAPTURE, "--warehouse", wh])
    assert result.exit_code == 0, result.output
    assert_fits(result)
    assert "read 15 jobs from tx01_ws_stratum_jobs.json (mempool format)" in result.output
    assert "pools: 15 by mempool-id" in result.output
    assert "stored 15 new observations (0 already stored); 15 in all" in result.output
    assert "template groups: 9 (2 shared by several pools); links: 16" in result.output
    again = run(["--warehouse", wh, "templates", "import", fixtures_dir / CAPTURE, "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.output)
    assert (report["new"], report["replaced"], report["links"]) == (0, 15, 16)
    assert sorted(len(g["pool_ids"]) for g in report["shared"]) == [2, 6]
    as_csv = run(["templates", "import", fixtures_dir / CAPTURE, "--warehouse", wh, "--csv"])
    assert as_csv.output.splitlines()[0] == "group_id,height,pools,pool_ids"
    assert len(as_csv.output.splitlines()) == 3
    sql = run(["--warehouse", wh, "sql", "SELECT count(*) AS n FROM template_links", "--csv"])
    assert sql.output.splitlines() == ["n", "16"]


def test_cli_errors_are_verbatim_and_checked_before_any_write(tmp_path, monkeypatch):
    wh = tmp_path / "wh"
    bad = write(tmp_path, "bad [draft].jsonl", [LINE, {**LINE, "prevhash": "[draft]"}])
    result = run(["templates", "import", bad, "--warehouse", wh])
    assert result.exit_code == 1
    assert "error: bad [draft].jsonl: line 2: field 'prevhash': expected a block hash (64 hex digits, display " \
           "order), got '[draft]'" in " ".join(result.output.split())
    assert not wh.exists()
    missing = run(["templates", "import", tmp_path / "nope.jsonl", "--warehouse", wh])
    assert missing.exit_code == 1 and "does not exist" in missing.output and not wh.exists()
    unknown = write(tmp_path, "u.jsonl", [job("Nobody [x]", 900000, PREV_A, TEMPLATE_1, 1750000000)])
    strict = run(["templates", "import", unknown, "--warehouse", wh, "--strict-pools"])
    assert strict.exit_code == 1 and "line 1: 'Nobody [x]'" in strict.output
    kept = run(["templates", "import", unknown, "--warehouse", wh])
    assert kept.exit_code == 0, kept.output
    assert "unmapped: 'Nobody [x]' kept as 'unmapped:Nobody [x]'" in " ".join(kept.output.split())
    monkeypatch.setenv("POOLWATCH_SHARED", str(tmp_path / "no-shared"))
    ids = write(tmp_path, "ids.jsonl", [job("mempool:44", 900000, PREV_A, TEMPLATE_1, 1750000000)])
    no_list = run(["templates", "import", ids, "--warehouse", wh])
    assert no_list.exit_code == 1 and "--mempool-list" in no_list.output
    pools_v2 = tmp_path / "pools-v2.json"
    pools_v2.write_text(json.dumps([{"id": 44, "name": "AntPool", "tags": [], "addresses": []}]))
    with_list = run(["templates", "import", ids, "--warehouse", wh, "--mempool-list", pools_v2])
    assert with_list.exit_code == 0, with_list.output
    assert "pools: 1 by mempool-id" in with_list.output


def template_batch(registry) -> dict[str, pa.Table]:
    """A small batch of the three template tables, rows in capture order (tests/test_checks.py):
    observations 0 antpool, 1 foundry-usa (one shared template at PREV_A), 2 viabtc (empty block at
    PREV_A), 3 f2pool (alone at PREV_B); groups 0 the shared one, 1 f2pool's; link 0 the pair."""
    jobs = [JOBS[0], JOBS[1], JOBS[5], job("f2pool", 900001, PREV_B, TEMPLATE_2, 1750000700)]
    made = observations_table(parse_capture(jsonl(jobs), "batch.jsonl"), PoolResolver(registry))
    groups = template_groups(made.table)
    return {"template_observations": made.table, "template_groups": groups, "template_links": template_links(groups)}


def test_the_documented_jsonl_example_is_a_valid_capture(registry):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "templates.md").read_text()
    example = doc.split("```jsonl\n", 1)[1].split("```", 1)[0]
    capture = parse_capture(example.encode(), "example.jsonl")
    assert capture.format == "jsonl" and len(capture.jobs) == 1
    row = observations_table(capture, PoolResolver(registry)).table.to_pylist()[0]
    assert (row["pool_id"], row["height"], row["capture_source"]) == ("foundry-usa", 900000, "my-listener")
