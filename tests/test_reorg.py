"""Reorg repair against a real regtest node: after any reorg, an incremental sync leaves the
warehouse exactly as a fresh load of the node's new active chain would.

The reorg is made the way it happens on a real network, from the pipeline's point of view: blocks
it already stored stop being on the node's active chain. ``invalidateblock`` drops the top ``depth``
blocks and a competing branch with other coinbases (other pools' tags and payouts) is mined on the
fork point.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.source.client import NodeClient
from pipeline.attribution.registry import Registry, load_registry
from pipeline.devnode.blocks import CoinbaseSpec
from pipeline.devnode.chains import mine_chain
from pipeline.devnode.demo import demo_specs
from pipeline.devnode.node import RegtestNode
from pipeline.load.jobs import check_and_repair_reorg, find_fork_height, sync_range
from pipeline.store.warehouse import Warehouse

pytestmark = [pytest.mark.node, pytest.mark.slow]

CHAIN_LENGTH = 120
# Every table keyed by height: all of them must follow the node's chain after a repair.
HEIGHT_TABLES = ("blocks", "coinbase_outputs", "attributions", "attribution_candidates")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def _specs(registry: Registry, n: int, seed: int) -> list[CoinbaseSpec]:
    # The SV node rejects P2SH outputs; demo_specs then pays those pools to non-P2SH scripts.
    return demo_specs(registry, n, seed=seed, allow_p2sh=False)


def _sync(node: RegtestNode, root: Path, registry: Registry, **kwargs):
    return sync_range(NodeClient(node.client_config()), Warehouse(root), registry=registry,
                      allow_cross_network=True, **kwargs)


def _rows(root: Path, table: str) -> list[dict]:
    # Warehouse.read sorts by the table's declared sort keys, so equal contents compare equal.
    return Warehouse(root).read(table).to_pylist()


def _assert_same_as_fresh_load(node: RegtestNode, root: Path, fresh_root: Path, registry: Registry) -> None:
    """The repaired warehouse == a fresh load of the node's active chain into an empty warehouse."""
    _sync(node, fresh_root, registry)
    tip = node.tip()
    repaired = Warehouse(root)
    assert repaired.stored_range() == (0, tip.height)
    assert repaired.gaps() == []
    assert repaired.stored_hashes(tip.height, tip.height) == {tip.height: tip.hash}
    for table in HEIGHT_TABLES:
        got, want = _rows(root, table), _rows(fresh_root, table)
        assert len(got) == len(want), f"{table}: {len(got)} rows after repair, {len(want)} in a fresh load"
        assert got == want, f"{table} differs from a fresh load of the new chain"


def _node_hash(node: RegtestNode, height: int) -> str:
    return str(node.rpc("getblockhash", height))


@pytest.mark.parametrize("depth", [1, 6, 100])
def test_reorg_to_longer_chain_is_repaired(regtest_node: RegtestNode, tmp_path: Path, registry: Registry,
                                          depth: int):
    old_hashes = mine_chain(regtest_node, _specs(registry, CHAIN_LENGTH, seed=1))
    root = tmp_path / "wh"
    first = _sync(regtest_node, root, registry)
    assert first.blocks_loaded == CHAIN_LENGTH + 1  # genesis too
    old_blocks = _rows(root, "blocks")

    fork_height = CHAIN_LENGTH - depth + 1
    regtest_node.invalidate(old_hashes[fork_height - 1])  # old_hashes[0] is height 1
    assert regtest_node.tip().height == fork_height - 1
    # Longer than the branch it replaces (the node would not switch otherwise), other coinbases.
    new_hashes = mine_chain(regtest_node, _specs(registry, depth + 2, seed=1000 + depth))
    assert regtest_node.tip() == (CHAIN_LENGTH + 2, new_hashes[-1])
    assert set(new_hashes).isdisjoint(old_hashes)

    result = _sync(regtest_node, root, registry)  # incremental: start=None
    assert result.reorg_fork_height == fork_height
    # Everything from the fork up was reloaded, nothing below it.
    assert result.start == fork_height and result.end == CHAIN_LENGTH + 2
    assert result.blocks_loaded == depth + 2

    repaired = _rows(root, "blocks")
    assert repaired[:fork_height] == old_blocks[:fork_height]
    assert [b["hash"] for b in repaired[fork_height:]] == new_hashes
    assert not {b["hash"] for b in repaired} & set(old_hashes[fork_height - 1:])
    assert {r["block_hash"] for r in _rows(root, "coinbase_outputs")} == {b["hash"] for b in repaired}
    assert {r["block_hash"] for r in _rows(root, "attributions")} == {b["hash"] for b in repaired}
    _assert_same_as_fresh_load(regtest_node, root, tmp_path / "fresh", registry)


def test_reorg_to_shorter_chain_removes_stale_heights(regtest_node: RegtestNode, tmp_path: Path,
                                                      registry: Registry):
    """A competing branch with fewer blocks (e.g. more work per block, or invalidateblock by an
    operator): stored heights above the new tip must go, and those from the fork get replaced."""
    old_hashes = mine_chain(regtest_node, _specs(registry, 40, seed=2))
    root = tmp_path / "wh"
    _sync(regtest_node, root, registry)

    fork_height = 31
    regtest_node.invalidate(old_hashes[fork_height - 1])
    new_hashes = mine_chain(regtest_node, _specs(registry, 3, seed=3))  # tip 33 < stored 40
    assert regtest_node.tip() == (33, new_hashes[-1])

    result = _sync(regtest_node, root, registry)
    assert result.reorg_fork_height == fork_height
    _assert_same_as_fresh_load(regtest_node, root, tmp_path / "fresh", registry)


def test_pure_rollback_without_new_blocks(regtest_node: RegtestNode, tmp_path: Path, registry: Registry):
    """The node's chain only got shorter: the blocks above its tip are removed, nothing is loaded."""
    old_hashes = mine_chain(regtest_node, _specs(registry, 30, seed=4))
    root = tmp_path / "wh"
    _sync(regtest_node, root, registry)

    regtest_node.invalidate(old_hashes[24])  # height 25: the node's tip becomes 24
    result = _sync(regtest_node, root, registry)
    assert result.reorg_fork_height == 25
    assert result.blocks_loaded == 0
    assert Warehouse(root).stored_range() == (0, 24)
    _assert_same_as_fresh_load(regtest_node, root, tmp_path / "fresh", registry)

    # reconsiderblock brings the old branch back: the next sync reloads it, no fork to repair.
    regtest_node.reconsider(old_hashes[24])
    result = _sync(regtest_node, root, registry)
    assert result.reorg_fork_height is None
    assert result.blocks_loaded == 6
    assert Warehouse(root).stored_hashes(25, 30) == dict(zip(range(25, 31), old_hashes[24:], strict=True))


def test_full_check_finds_a_fork_at_any_height(regtest_node: RegtestNode, tmp_path: Path, registry: Registry):
    old_hashes = mine_chain(regtest_node, _specs(registry, 60, seed=5))
    root = tmp_path / "wh"
    _sync(regtest_node, root, registry)
    client = NodeClient(regtest_node.client_config())
    warehouse = Warehouse(root)

    # No reorg: a full check finds nothing and touches nothing.
    before = {t: _rows(root, t) for t in HEIGHT_TABLES}
    with warehouse.writer():
        assert check_and_repair_reorg(client, warehouse, full=True) is None
    assert {t: _rows(root, t) for t in HEIGHT_TABLES} == before

    # A fork 58 blocks deep, replaced by a branch of the same length (same tip height).
    regtest_node.invalidate(old_hashes[2])  # height 3
    mine_chain(regtest_node, _specs(registry, 58, seed=6))
    assert regtest_node.tip().height == 60
    # A shallow look that only checks the top is still widened down to the fork...
    assert find_fork_height(client, warehouse, depth=1) == 3
    # ...and the full check on request finds and repairs it.
    with warehouse.writer():
        assert check_and_repair_reorg(client, warehouse, full=True) == 3
    assert warehouse.stored_range() == (0, 2)
    assert warehouse.stored_hashes(0, 2) == {h: _node_hash(regtest_node, h) for h in range(3)}
    assert {r["height"] for r in _rows(root, "attributions")} == {0, 1, 2}

    _sync(regtest_node, root, registry)
    _assert_same_as_fresh_load(regtest_node, root, tmp_path / "fresh", registry)


def test_reorg_check_skipped_for_explicit_range_then_caught(regtest_node: RegtestNode, tmp_path: Path,
                                                            registry: Registry):
    """An explicit --from/--to reload does not look for forks elsewhere; the next incremental sync does."""
    old_hashes = mine_chain(regtest_node, _specs(registry, 20, seed=7))
    root = tmp_path / "wh"
    _sync(regtest_node, root, registry)
    regtest_node.invalidate(old_hashes[9])  # height 10
    mine_chain(regtest_node, _specs(registry, 12, seed=8))

    result = _sync(regtest_node, root, registry, start=0, end=5)
    assert result.reorg_fork_height is None  # heights 0..5 are unchanged and were reloaded in place
    assert Warehouse(root).stored_hashes(10, 10) == {10: old_hashes[9]}

    result = _sync(regtest_node, root, registry)
    assert result.reorg_fork_height == 10
    _assert_same_as_fresh_load(regtest_node, root, tmp_path / "fresh", registry)




@pytest.mark.parametrize("validate", [True, False])
def test_reorg_in_the_middle_of_a_sync(regtest_node: RegtestNode, tmp_path: Path, registry: Registry,
                                       validate: bool):
    """The node reorganizes between two batches of one run: the run notices that the next batch no
    longer links to what it stored, repairs from the fork and goes on; nothing unlinked is stored,
    with or without the validation gate."""
    old_hashes = mine_chain(regtest_node, _specs(registry, 30, seed=9))
    root = tmp_path / "wh"
    fired = []

    def reorg_after_first_batch(_n: int) -> None:
        if not fired:
            fired.append(True)
            regtest_node.invalidate(old_hashes[4])  # height 5, inside the batch just committed
            mine_chain(regtest_node, _specs(registry, 30, seed=10))

    result = _sync(regtest_node, root, registry, batch_size=10, progress=reorg_after_first_batch,
                   validate=validate)
    assert fired and result.reorg_fork_height == 5
    stored = Warehouse(root)
    assert stored.stored_range() == (0, 30)  # the run's planned end (the node's tip when it started)
    rows = stored.read("blocks", columns=["height", "hash", "prev_hash"]).to_pylist()
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:])), "stored chain does not link"
    assert stored.stored_hashes(0, 30) == {h: _node_hash(regtest_node, h) for h in range(31)}
    assert not (root / "quarantine").exists() or not any((root / "quarantine").iterdir())

    result = _sync(regtest_node, root, registry, validate=validate)
    assert result.reorg_fork_height is None and result.blocks_loaded == 4  # up to the new tip, 34
    _assert_same_as_fresh_load(regtest_node, root, tmp_path / "fresh", registry)


def test_first_broken_link_finds_where_a_batch_stops_linking():
    """The mid-run check on its own (no node needed): a batch from two branches, or one that does
    not continue the stored chain, is found at the first block that does not link."""
    from pipeline.chain.decode import decode_block
    from pipeline.chain.networks import REGTEST
    from pipeline.devnode.blocks import build_block
    from pipeline.load.loop import first_broken_link

    spec = CoinbaseSpec(tag=b"/link/", payouts=[(b"\x00\x14" + bytes(20), 1)])

    def branch(prev: str, first_height: int, n: int, extranonce: bytes) -> list:
        blocks = []
        for height in range(first_height, first_height + n):
            raw = build_block(prev, height, 1_700_000_000 + 600 * height,
                              CoinbaseSpec(tag=spec.tag, payouts=spec.payouts, extranonce=extranonce))
            blocks.append(decode_block(raw, REGTEST))
            prev = blocks[-1].hash
        return blocks

    base = "11" * 32
    old = branch(base, 1, 6, b"old!")
    new = branch(old[2].hash, 4, 3, b"new!")  # forks after height 3
    assert first_broken_link(old, base) is None
    assert first_broken_link(old, None) is None  # no stored predecessor: only links inside the batch
    assert first_broken_link(old, "22" * 32) == 1  # does not continue the stored chain
    assert first_broken_link(old[:4] + new[1:], base) == 5  # hashes fetched across a reorg
    assert first_broken_link(new, old[2].hash) is None
    assert first_broken_link(new, old[3].hash) == 4
