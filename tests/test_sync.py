"""Unit tests of the sync job's pure parts: chunk planning and fork finding."""

from __future__ import annotations

import pytest

from pipeline.load.jobs import find_fork_height
from pipeline.load.loop import MIN_PIPELINED_BATCH, PIPELINED_BATCHES, loop_chunks, plan_chunks


def test_plan_chunks_covers_range_exactly():
    assert plan_chunks(0, 9, 4) == [(0, 3), (4, 7), (8, 9)]
    assert plan_chunks(5, 5, 100) == [(5, 5)]
    assert plan_chunks(10, 9, 3) == []
    chunks = plan_chunks(17, 1234, 100)
    covered = [h for lo, hi in chunks for h in range(lo, hi + 1)]
    assert covered == list(range(17, 1235))
    with pytest.raises(ValueError, match="chunk size"):
        plan_chunks(0, 10, 0)


def test_loop_chunks_split_a_range_that_fits_one_batch_so_reading_overlaps_validation():
    # A one-batch range overlaps nothing: read everything, then validate, then commit.
    assert loop_chunks(0, 999, 1000) == [(0, 333), (334, 667), (668, 999)]
    assert len(loop_chunks(0, 1999, 1000)) == PIPELINED_BATCHES
    # Long ranges keep the asked batch size; short ones stay one batch (an incremental load).
    assert loop_chunks(0, 9999, 1000) == plan_chunks(0, 9999, 1000)
    assert loop_chunks(7, 7, 1000) == [(7, 7)]
    assert loop_chunks(0, MIN_PIPELINED_BATCH - 1, 1000) == [(0, MIN_PIPELINED_BATCH - 1)]
    # Never above the asked size, never below the floor (unless the asked size is below it).
    for total in (1, 50, 101, 250, 299, 301, 1000, 3001):
        for size in (5, 40, 100, 500, 1000):
            chunks = loop_chunks(10, 10 + total - 1, size)
            assert [h for lo, hi in chunks for h in range(lo, hi + 1)] == list(range(10, 10 + total))
            sizes = [hi - lo + 1 for lo, hi in chunks]
            assert max(sizes) <= size
            assert min(sizes[:-1] or [MIN_PIPELINED_BATCH]) >= min(size, MIN_PIPELINED_BATCH)
    assert loop_chunks(10, 9, 1000) == []
    with pytest.raises(ValueError, match="batch size"):
        loop_chunks(0, 10, 0)


class FakeWarehouse:
    def __init__(self, hashes: dict[int, str]):
        self.hashes = hashes

    def stored_range(self):
        return (min(self.hashes), max(self.hashes)) if self.hashes else None

    def stored_hashes(self, lo, hi):
        return {h: v for h, v in self.hashes.items() if lo <= h <= hi}


class FakeClient:
    def __init__(self, chain: list[str]):
        self.chain = chain
        self.calls = 0

    def tip_height(self):
        return len(self.chain) - 1

    def block_hashes(self, heights, require_blocks=True):
        self.calls += 1
        return [self.chain[h] for h in heights]


def _chain(n: int, branch: str = "a", fork: int | None = None) -> list[str]:
    return [f"{'b' if fork is not None and h >= fork else 'a'}{h}" for h in range(n)]


def test_no_fork_when_chains_agree():
    stored = {h: f"a{h}" for h in range(100)}
    assert find_fork_height(FakeClient(_chain(120)), FakeWarehouse(stored)) is None


@pytest.mark.parametrize("depth", [1, 5, 12, 13, 50, 100])
def test_fork_found_at_any_depth(depth):
    stored = {h: f"a{h}" for h in range(200)}
    node = FakeClient(_chain(205, fork=200 - depth))
    assert find_fork_height(node, FakeWarehouse(stored)) == 200 - depth
    assert node.calls <= 6  # widening by doubling, not height by height


def test_fork_when_node_chain_is_shorter():
    stored = {h: f"a{h}" for h in range(50)}
    assert find_fork_height(FakeClient(_chain(45)), FakeWarehouse(stored)) == 45
    # shorter and diverged below its tip
    assert find_fork_height(FakeClient(_chain(45, fork=40)), FakeWarehouse(stored)) == 40


def test_fork_below_everything_stored():
    stored = {h: f"a{h}" for h in range(10, 20)}
    assert find_fork_height(FakeClient(_chain(30, fork=3)), FakeWarehouse(stored)) == 10
    assert find_fork_height(FakeClient(_chain(5)), FakeWarehouse(stored)) == 10


def test_empty_warehouse_has_no_fork():
    assert find_fork_height(FakeClient(_chain(10)), FakeWarehouse({})) is None


# ------------------------------------------------------------------ registry changes during a load


def _smaller_registry():
    from pipeline.attribution.registry import load_registry, parse_registry

    shipped = load_registry()
    document = dict(shipped.document)
    document["pools"] = [p for p in shipped.document["pools"] if p["id"] != "foundry-usa"]
    return shipped, parse_registry(document)


@pytest.mark.node
def test_a_load_follows_a_reattribution_made_while_it_runs(regtest_node, tmp_path):
    """Another run re-attributes the warehouse with registry B while a load that follows the
    warehouse is half done (it started with A): the load must not undo B. Its next commit notices
    the change and the rest is attributed with B; every stored block then has a B attribution."""
    from pipeline.attribution.engine import attribution_version
    from pipeline.source.client import NodeClient
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.load.jobs import reattribute, sync_range
    from pipeline.store.warehouse import Warehouse

    registry_a, registry_b = _smaller_registry()
    mine_chain(regtest_node, demo_specs(registry_a, 90, allow_p2sh=regtest_node.flavor == "core"))
    root = tmp_path / "wh"
    switched = []

    def after_batch(n: int) -> None:
        if not switched:  # between two commits of the load, as another process would
            other = Warehouse(root)
            with other.writer(wait=30):
                reattribute(other, registry_b, allow_cross_network=True)
            switched.append(True)

    result = sync_range(NodeClient(regtest_node.client_config()), Warehouse(root), 0, 90, registry=None,
                        default_registry=lambda: registry_a, allow_cross_network=True, batch_size=30,
                        progress=after_batch)
    warehouse = Warehouse(root)
    # the attribution version: registry, engine rules, setting
    version_b = attribution_version(registry_b.version, True)
    assert version_b == registry_b.version + "+rules-2+cross-network"
    assert result.blocks_loaded == 91 and result.registry_version == version_b
    assert warehouse.meta["registry_version"] == registry_b.version and warehouse.attribution_version == version_b
    current = warehouse.read("attributions", where=f"registry_version = '{version_b}'")
    assert current["height"].to_pylist() == list(range(0, 91))


@pytest.mark.node
def test_an_explicit_registry_is_not_silently_replaced(regtest_node, tmp_path):
    from pipeline.source.client import NodeClient
    from pipeline.load.loop import RegistryChangedError
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.load.jobs import reattribute, sync_range
    from pipeline.store.warehouse import Warehouse

    registry_a, registry_b = _smaller_registry()
    mine_chain(regtest_node, demo_specs(registry_a, 60, allow_p2sh=regtest_node.flavor == "core"))
    root = tmp_path / "wh"

    def after_batch(n: int) -> None:
        other = Warehouse(root)
        with other.writer(wait=30):
            if other.meta.get("registry_version") != registry_b.version:
                reattribute(other, registry_b, allow_cross_network=True)

    with pytest.raises(RegistryChangedError, match=f"changed to version {registry_b.version}"):  # (+cross-network)
        sync_range(NodeClient(regtest_node.client_config()), Warehouse(root), 0, 60, registry=registry_a,
                   allow_cross_network=True, batch_size=30, progress=after_batch)
    assert Warehouse(root).meta["registry_version"] == registry_b.version


@pytest.mark.node
def test_a_range_given_in_full_starts_its_validator_before_the_set_up(regtest_node, tmp_path, monkeypatch):
    """``sync_range`` with both heights starts the validating process before it takes the writer lock
    (so Great Expectations' import overlaps the set-up), the load uses that one and no other, and a
    set-up that fails (the lock is held by another writer) leaves no helper running."""
    import time

    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from helper_processes import counted_starts, live_children
    from pipeline.load.jobs import sync_range
    from pipeline.source.client import NodeClient
    from pipeline.store.warehouse import Warehouse, WarehouseBusyError

    registry = load_registry()
    mine_chain(regtest_node, demo_specs(registry, 60, allow_p2sh=regtest_node.flavor == "core"))
    starts = counted_starts(monkeypatch)
    client = NodeClient(regtest_node.client_config())
    root = tmp_path / "wh"
    planned: list[tuple[int, int]] = []
    result = sync_range(client, Warehouse(root), 0, 60, registry=registry, allow_cross_network=True, batch_size=20,
                        on_plan=lambda lo, hi: planned.append((lo, hi)))
    assert result.blocks_loaded == 61 and result.batches == 4
    assert planned == [(0, 60)]  # the CLI's progress bar gets its total from this
    assert starts == ["poolwatch-validator", "up"]

    starts.clear()
    busy = Warehouse(root)
    with busy.writer():
        with pytest.raises(WarehouseBusyError):
            sync_range(client, Warehouse(root), 0, 60, registry=registry, allow_cross_network=True, batch_size=20)
    assert starts[:1] == ["poolwatch-validator"]
    deadline = time.monotonic() + 60
    while (len(starts) < 2 or live_children(b"pipeline.load.processes")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert starts == ["poolwatch-validator", "up"] and live_children(b"pipeline.load.processes") == set()

