"""Lineage: every stored attribution and metric row is a function of (stored blocks, registry version,
attribution settings). Same inputs give byte-identical tables whichever way they were produced:
`poolwatch sync` in one go or in parts, re-syncing a stored range, `poolwatch attribute`, or the
Airflow DAGs. A recorded setting is kept unless a command is told to change it, and says so."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.node

TABLES = ("blocks", "coinbase_outputs", "attributions", "attribution_candidates", "pool_definitions",
          "pool_share", "centralization")


def data_files(root: Path) -> dict[str, str]:
    """sha256 of every data file of every table, by path inside the warehouse."""
    out = {}
    for table in TABLES:
        for path in sorted((root / "data" / table).rglob("part.parquet")):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def attributed(root: Path) -> list[tuple]:
    from pipeline.store.warehouse import Warehouse

    con = Warehouse(root).connect()
    return con.execute("SELECT height, pool_id FROM attributions_current ORDER BY height").fetchall()


@pytest.fixture(scope="module")
def chain(regtest_binary, tmp_path_factory):
    """A 240-block regtest chain whose coinbases pay mainnet pools' scripts (so cross-network matching
    changes attributions) and the CLI arguments that reach it."""
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.devnode.node import RegtestNode

    with RegtestNode(binary=regtest_binary, datadir=tmp_path_factory.mktemp("lineage-node")) as node:
        mine_chain(node, demo_specs(load_registry(), 240, seed=11, allow_p2sh=node.flavor == "core"))
        yield node, ["--rpc-url", node.rpc_url, "--rpc-cookie", str(node.cookie_file)]


def cli(root: Path, *args: str) -> str:
    from pipeline.cli import main

    result = CliRunner().invoke(main, ["--warehouse", str(root), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_same_inputs_give_byte_identical_tables_by_every_path(chain, tmp_path):
    node, rpc = chain
    one = tmp_path / "one-go"
    cli(one, "sync", *rpc, "--cross-network-registry", "--batch-size", "100")
    reference = data_files(one)
    assert {p.split("/")[1] for p in reference} == set(TABLES)

    parts = tmp_path / "in-parts"
    cli(parts, "sync", *rpc, "--cross-network-registry", "--to", "120", "--batch-size", "50")
    cli(parts, "sync", *rpc, "--batch-size", "30")                        # the rest; setting kept
    cli(parts, "sync", *rpc, "--from", "10", "--to", "200")              # re-sync of a stored range
    cli(parts, "attribute", "--again")                                   # same registry and setting, redone
    assert data_files(parts) == reference


def test_dags_give_the_tables_of_the_cli(chain, tmp_path, monkeypatch):
    """The incremental DAG (in-process here; tests/test_airflow_*.py run it on real executors) then the
    metrics DAG: the same files as `poolwatch sync`."""
    from airflow.dag_processing.dagbag import DagBag

    node, rpc = chain
    cli_root = tmp_path / "cli"
    cli(cli_root, "sync", *rpc, "--cross-network-registry")
    dag_root = tmp_path / "dag"
    config = node.client_config()
    host, port = config.url.split("://", 1)[1].rsplit(":", 1)
    monkeypatch.setenv("AIRFLOW_CONN_BITCOIN_DEFAULT", json.dumps(
        {"conn_type": "generic", "host": host, "port": int(port), "extra": {"cookie_file": str(node.cookie_file)}}))
    monkeypatch.setenv("POOLWATCH_WAREHOUSE", str(dag_root))
    monkeypatch.setenv("POOLWATCH_CROSS_NETWORK_REGISTRY", "true")
    from airflow.utils.db import initdb

    initdb()
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags"))
    for dag_id in ("poolwatch_incremental", "poolwatch_metrics"):
        run = bag.dags[dag_id].test()
        assert str(run.state) == "success", dag_id
    assert data_files(dag_root) == data_files(cli_root)


def test_a_recorded_setting_is_kept_and_changed_only_on_request(chain, tmp_path):
    node, rpc = chain
    root = tmp_path / "wh"
    cli(root, "sync", *rpc, "--cross-network-registry", "--to", "150")
    before = attributed(root)
    unknown = sum(1 for _, pool in before if pool == "unknown")
    files = data_files(root)

    # No flag: the recorded setting holds (it used to be dropped: 160 of 3,001 blocks turned Unknown).
    out = cli(root, "attribute")
    assert "attributions are current" in out and attributed(root) == before and data_files(root) == files
    out = cli(root, "attribute", "--again")  # done again: the same rows, byte for byte
    assert "(unchanged)" in out and attributed(root) == before and data_files(root) == files
    out = cli(root, "sync", *rpc, "--from", "10", "--to", "150")
    assert attributed(root) == before and data_files(root) == files

    # Asking for the other setting is refused, with what it would change and how to confirm.
    from pipeline.cli import main

    refused = CliRunner().invoke(main, ["--warehouse", str(root), "attribute", "--no-cross-network-registry"])
    assert refused.exit_code == 1
    assert "cross-network matching on" in refused.output and "--change-settings" in refused.output
    refused = CliRunner().invoke(main, ["--warehouse", str(root), "sync", *rpc, "--no-cross-network-registry"])
    assert refused.exit_code == 1 and "--change-settings" in refused.output
    assert attributed(root) == before and data_files(root) == files  # nothing was touched

    out = cli(root, "attribute", "--no-cross-network-registry", "--change-settings")
    after = attributed(root)
    assert sum(1 for _, pool in after if pool == "unknown") > unknown
    from pipeline.store.warehouse import Warehouse

    wh = Warehouse(root)
    assert wh.meta["attribution_settings"] == {"cross_network": False}
    assert "+cross-network" not in wh.attribution_version and "was " in out
    # both versions' rows are kept side by side, each labelled with its settings
    labels = {r["registry_version"] for r in wh.read("attributions", columns=["registry_version"]).to_pylist()}
    assert labels == {wh.attribution_version, wh.attribution_version + "+cross-network"}


def test_stored_views_and_the_metrics_command_agree_after_every_change(chain, tmp_path):
    """After sync, re-attribution and a setting change, the stored views hold exactly what
    `poolwatch metrics` computes; between a change and a refresh they say they are stale."""
    from pipeline.metrics import compute as m
    from pipeline.store.warehouse import Warehouse

    node, rpc = chain
    root = tmp_path / "wh"

    def agree() -> None:
        wh = Warehouse(root)
        assert not wh.freshness()["stale"]
        con = wh.connect()
        stored = con.execute("SELECT window_id, unknown_treatment, hhi, nakamoto, top1_share_of_known "
                             "FROM centralization_week ORDER BY window_id, unknown_treatment").fetchall()
        computed = m.compute_metrics(con, "week", registry_version=wh.attribution_version).centralization
        computed = computed[computed.level == "pool"].sort_values(["window_id", "unknown_treatment"])
        assert stored == [tuple(r) for r in computed[["window_id", "unknown_treatment", "hhi", "nakamoto",
                                                      "top1_share_of_known"]].itertuples(index=False)]

    cli(root, "sync", *rpc, "--cross-network-registry", "--to", "200")
    agree()
    cli(root, "sync", *rpc, "--no-metrics")
    wh = Warehouse(root)
    assert wh.freshness()["stale"] and wh.connect().execute("SELECT bool_and(stale) FROM centralization_week").fetchone()[0]
    from pipeline.cli import main

    status = CliRunner().invoke(main, ["--warehouse", str(root), "status", "--offline"])
    assert "STALE" in status.output and "201..240" in status.output
    sql = CliRunner().invoke(main, ["--warehouse", str(root), "sql", "SELECT count(*) FROM centralization_day"])
    assert "stale" in sql.output
    # `attribute` with the current registry attributes nothing, and still refreshes stale metrics.
    assert "attributions are current" in cli(root, "attribute")
    assert not Warehouse(root).freshness()["stale"]
    agree()
    cli(root, "metrics", "--refresh")
    agree()
    cli(root, "attribute", "--no-cross-network-registry", "--change-settings")
    agree()
