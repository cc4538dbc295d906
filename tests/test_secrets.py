"""No RPC password and no cookie content ever leaves the process: not in logs, CLI output,
exception text, any file of the warehouse, nor Airflow's XCom table and task logs.

A real regtest node accepts both a user/password (``-rpcauth``, which keeps the cookie too) and its
cookie file. Every run uses distinctive secrets and then scans everything it produced for them in
the forms they could leak in: plain, URL-quoted, and as the base64 of an HTTP Basic header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sqlite3
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.source.errors import NodeAuthError, NodeError
from pipeline.source.client import NodeClient
from pipeline.source.config import NodeConfig
from pipeline.attribution.registry import load_registry
from pipeline.devnode.chains import mine_chain
from pipeline.devnode.demo import demo_specs
from pipeline.devnode.node import RegtestNode
from pipeline.load.jobs import sync_range
from pipeline.store.warehouse import Warehouse

pytestmark = pytest.mark.node

RPC_USER = "poolwatch-secrets"
PASSWORD = "Zq7-PwdSentinel-4f1c9e2ab8"  # distinctive: any occurrence is a leak, not a coincidence
WRONG_PASSWORD = "Xk3-WrongSentinel-77d0aa51e3"
CHAIN_BLOCKS = 15


def _rpcauth(user: str, password: str) -> str:
    """The -rpcauth value share/rpcauth/rpcauth.py makes: salted HMAC-SHA256, never the password."""
    salt = hashlib.sha256(b"poolwatch test salt").hexdigest()[:32]
    digest = hmac.new(salt.encode(), password.encode(), hashlib.sha256).hexdigest()
    return f"{user}:{salt}${digest}"


@pytest.fixture(scope="module")
def node(regtest_binary, tmp_path_factory) -> Iterator[RegtestNode]:
    """One node for the module, with a short chain; both password and cookie auth work on it."""
    with RegtestNode(binary=regtest_binary, datadir=tmp_path_factory.mktemp("regtest-secrets"),
                     extra_args=[f"-rpcauth={_rpcauth(RPC_USER, PASSWORD)}"]) as n:
        mine_chain(n, demo_specs(load_registry(), CHAIN_BLOCKS, seed=11, allow_p2sh=n.flavor == "core"))
        yield n


# Loggers that see credentials or requests: ours, python-bitcoinrpc's (it logs every call at DEBUG),
# and the HTTP stack below it.
WATCHED_LOGGERS = ("pipeline", "BitcoinRPC", "urllib3", "airflow")


@pytest.fixture()
def all_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog at DEBUG on the root and directly on the watched loggers, re-enabled: an earlier
    test's logging set-up (Airflow, Great Expectations, the CLI) must not hide a leak from the scan."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(logging.root.manager, "disable", logging.NOTSET)  # undo any logging.disable()
    for name in WATCHED_LOGGERS:
        logger = logging.getLogger(name)
        caplog.set_level(logging.DEBUG, logger=name)
        monkeypatch.setattr(logger, "disabled", False)
        if not logger.propagate:
            monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    # dictConfig(disable_existing_loggers=True) (Airflow's logging set-up) disables child loggers such
    # as pipeline.source one by one: re-enable every existing logger under the watched names too.
    for name, child in list(logging.root.manager.loggerDict.items()):
        if isinstance(child, logging.Logger) and name.startswith(tuple(f"{w}." for w in WATCHED_LOGGERS)):
            monkeypatch.setattr(child, "disabled", False)
            if not child.propagate:
                monkeypatch.setattr(child, "propagate", True)
    return caplog


def _cookie_secret(node: RegtestNode) -> str:
    return node.cookie_file.read_text().strip().partition(":")[2]


def _forms(user: str, secret: str) -> list[bytes]:
    """Every shape a secret takes on its way to the node: as is, URL-quoted, inside a Basic header."""
    basic = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return sorted({secret.encode(), quote(secret, safe="").encode(), basic.encode()})


def _password_forms() -> list[bytes]:
    return _forms(RPC_USER, PASSWORD) + _forms(RPC_USER, WRONG_PASSWORD)


def _cookie_forms(node: RegtestNode) -> list[bytes]:
    return _forms("__cookie__", _cookie_secret(node))


def _url(node: RegtestNode, password: str) -> str:
    return node.rpc_url.replace("http://", f"http://{RPC_USER}:{quote(password, safe='')}@")


def _files(root: Path) -> Iterable[Path]:
    return (p for p in sorted(root.rglob("*")) if p.is_file())


def _assert_absent(what: str, data: bytes | str, forms: list[bytes]) -> None:
    blob = data.encode("utf-8", "replace") if isinstance(data, str) else data
    for form in forms:
        assert form not in blob, f"a secret ({form[:4]!r}...) leaked into {what}"


def _decoded_text(path: Path) -> str:
    """What a compressed or binary file holds, decoded: a compressed page could hide a secret from
    the byte scan, so Parquet rows and the catalog's view definitions are scanned as text too."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return repr(pq.read_table(path).to_pylist()) + repr(pq.read_metadata(path).metadata)
    if path.name == "poolwatch.duckdb":
        import duckdb

        con = duckdb.connect(str(path), read_only=True)
        try:
            return repr(con.execute("SELECT view_name, sql FROM duckdb_views()").fetchall())
        finally:
            con.close()
    return ""


def _assert_tree_clean(root: Path, forms: list[bytes], *, min_files: int = 1) -> list[Path]:
    files = list(_files(root))
    assert len(files) >= min_files, f"expected the run to write files under {root}, found {len(files)}"
    for path in files:
        _assert_absent(str(path), path.read_bytes(), forms)
        _assert_absent(f"decoded {path}", _decoded_text(path), forms)
    return files


def _assert_logs_clean(caplog: pytest.LogCaptureFixture, forms: list[bytes]) -> None:
    assert caplog.records, "the run logged nothing: the log check would prove nothing"
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        _assert_absent(f"log record {record.name}:{record.lineno}", text, forms)


def _assert_exception_clean(exc: BaseException, forms: list[bytes]) -> None:
    # The whole chain (causes and contexts), as a traceback prints it, plus the exceptions' args.
    text = "".join(traceback.format_exception(exc)) + repr(exc.args)
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        text += repr(cause) + repr(getattr(cause, "args", ()))
        cause = cause.__cause__ or cause.__context__
    _assert_absent(f"exception {type(exc).__name__}", text, forms)


def _warehouse_has_everything(root: Path) -> None:
    """The scanned tree is a real, complete warehouse (else scanning it proves little)."""
    assert (root / "meta.json").is_file()
    assert (root / "poolwatch.duckdb").is_file()
    assert (root / "data_docs").is_dir() and any((root / "data_docs").rglob("*.html"))
    assert any((root / "data" / "blocks").rglob("*.parquet"))
    assert Warehouse(root).stored_range() == (0, CHAIN_BLOCKS)


# ------------------------------------------------------------------------------------ library path


def test_password_sync_leaks_nowhere(node: RegtestNode, tmp_path: Path, all_logs):
    forms = _password_forms()
    root = tmp_path / "wh"
    config = NodeConfig.resolve(url=_url(node, PASSWORD), env={})
    assert (config.user, config.password) == (RPC_USER, PASSWORD)
    _assert_absent("NodeConfig repr", repr(config) + config.redacted() + config.url, forms)

    result = sync_range(NodeClient(config), Warehouse(root), registry=load_registry(), allow_cross_network=True)
    assert result.blocks_loaded == CHAIN_BLOCKS + 1
    _warehouse_has_everything(root)

    # A wrong password: a clear auth error that does not echo what was tried.
    bad = NodeConfig.resolve(url=_url(node, WRONG_PASSWORD), env={}, retries=0)
    with pytest.raises(NodeAuthError) as info:
        sync_range(NodeClient(bad), Warehouse(root))
    assert "401" in str(info.value) or "auth" in str(info.value).lower()
    _assert_exception_clean(info.value, forms)

    _assert_logs_clean(all_logs, forms)
    _assert_tree_clean(root, forms)


def test_cookie_sync_leaks_nowhere(node: RegtestNode, tmp_path: Path, all_logs):
    forms = _cookie_forms(node)
    root = tmp_path / "wh"
    config = node.client_config()
    _assert_absent("NodeConfig repr", repr(config) + config.redacted(), forms)
    sync_range(NodeClient(config), Warehouse(root), registry=load_registry(), allow_cross_network=True)
    _warehouse_has_everything(root)

    # A cookie that no longer matches (node restarted elsewhere): the error names the file only.
    stale = tmp_path / "stale.cookie"
    stale.write_text("__cookie__:" + "ab" * 32)
    stale_forms = forms + _forms("__cookie__", "ab" * 32)
    with pytest.raises(NodeAuthError) as info:
        NodeClient(NodeConfig(url=node.rpc_url, cookie_file=stale, retries=0)).tip_height()
    _assert_exception_clean(info.value, stale_forms)

    _assert_logs_clean(all_logs, stale_forms)
    _assert_tree_clean(root, forms)


def test_node_errors_never_carry_credentials(node: RegtestNode, all_logs):
    """RPC errors from the node (bad method, bad params) and unreachable nodes, with a password set."""
    forms = _password_forms()
    client = NodeClient(NodeConfig.resolve(url=_url(node, PASSWORD), env={}, retries=0))
    with pytest.raises(NodeError) as rpc_error:
        client.call("getblockhash", 10_000_000)
    _assert_exception_clean(rpc_error.value, forms)
    with pytest.raises(NodeError) as unknown:
        client.call("no_such_method")
    _assert_exception_clean(unknown.value, forms)

    closed = NodeConfig.resolve(url=f"http://{RPC_USER}:{PASSWORD}@127.0.0.1:9/", env={}, retries=0, timeout=2)
    with pytest.raises(NodeError) as unreachable:
        NodeClient(closed).tip_height()
    _assert_exception_clean(unreachable.value, forms)
    _assert_logs_clean(all_logs, forms)


# ------------------------------------------------------------------------------------------- CLI


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def test_cli_with_credentials_in_url_and_options(node: RegtestNode, tmp_path: Path, all_logs):
    forms = _password_forms()
    root = tmp_path / "wh"
    outputs = []

    ok = _invoke(["--warehouse", str(root), "sync", "--rpc-url", _url(node, PASSWORD), "--cross-network-registry"])
    assert ok.exit_code == 0, ok.output
    outputs.append(ok)
    status = _invoke(["--warehouse", str(root), "status", "--rpc-url", _url(node, PASSWORD)])
    assert status.exit_code == 0, status.output
    assert str(CHAIN_BLOCKS) in status.output
    outputs.append(status)
    with_options = _invoke(["--warehouse", str(root), "status", "--rpc-url", node.rpc_url,
                            "--rpc-user", RPC_USER, "--rpc-password", PASSWORD])
    assert with_options.exit_code == 0, with_options.output
    outputs.append(with_options)

    wrong = _invoke(["--warehouse", str(root), "sync", "--rpc-url", _url(node, WRONG_PASSWORD)])
    assert wrong.exit_code != 0, f"sync with a wrong password succeeded: {wrong.output}"
    outputs.append(wrong)
    # status still shows the stored side and reports the node's refusal in its table.
    wrong_status = _invoke(["--warehouse", str(root), "status", "--rpc-url", _url(node, WRONG_PASSWORD)])
    assert "rejected" in wrong_status.output and "401" in wrong_status.output, wrong_status.output
    outputs.append(wrong_status)
    wrong_opts = _invoke(["--warehouse", str(root), "sync", "--rpc-url", node.rpc_url,
                          "--rpc-user", RPC_USER, "--rpc-password", WRONG_PASSWORD])
    assert wrong_opts.exit_code != 0
    outputs.append(wrong_opts)

    for result in outputs:
        _assert_absent("CLI output", result.output, forms)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            _assert_exception_clean(result.exception, forms)
    _assert_logs_clean(all_logs, forms)
    _warehouse_has_everything(root)
    _assert_tree_clean(root, forms)


def test_cli_with_cookie_leaks_nowhere(node: RegtestNode, tmp_path: Path, all_logs, monkeypatch):
    forms = _cookie_forms(node)
    root = tmp_path / "wh"
    monkeypatch.setenv("BITCOIN_RPC_COOKIE", str(node.cookie_file))  # the env route, too
    ok = _invoke(["--warehouse", str(root), "sync", "--rpc-url", node.rpc_url, "--cross-network-registry"])
    assert ok.exit_code == 0, ok.output
    status = _invoke(["--warehouse", str(root), "status", "--rpc-url", node.rpc_url,
                      "--rpc-cookie", str(node.cookie_file)])
    assert status.exit_code == 0, status.output
    for result in (ok, status):
        _assert_absent("CLI output", result.output, forms)
    _assert_logs_clean(all_logs, forms)
    _warehouse_has_everything(root)
    _assert_tree_clean(root, forms)


# ---------------------------------------------------------------------------------------- Airflow


@pytest.mark.airflow
@pytest.mark.slow
def test_airflow_xcom_and_task_logs_hold_no_password(node: RegtestNode, tmp_path: Path, monkeypatch, capfd):
    import os

    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import initdb

    initdb()
    forms = _password_forms()
    host, port = node.rpc_url.split("://", 1)[1].rsplit(":", 1)
    monkeypatch.setenv("AIRFLOW_CONN_BITCOIN_DEFAULT", json.dumps(
        {"conn_type": "generic", "host": host, "port": int(port), "login": RPC_USER, "password": PASSWORD}))
    root = tmp_path / "warehouse"
    monkeypatch.setenv("POOLWATCH_WAREHOUSE", str(root))
    monkeypatch.setenv("POOLWATCH_CROSS_NETWORK_REGISTRY", "true")
    monkeypatch.setenv("POOLWATCH_WRITER_WAIT", "120")

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags")).dags["poolwatch_incremental"]
    run = dag.test()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    _warehouse_has_everything(root)

    home = Path(os.environ["AIRFLOW_HOME"])
    db_path = home / "airflow.db"
    with sqlite3.connect(db_path) as con:
        rows = con.execute("SELECT dag_id, task_id, value FROM xcom WHERE run_id = ?", (run.run_id,)).fetchall()
    assert {r[1] for r in rows} >= {"check_node", "load_new_blocks"}, "the run wrote no XCom to scan"
    for dag_id, task_id, value in rows:
        _assert_absent(f"XCom of {dag_id}.{task_id}", value if isinstance(value, bytes) else str(value), forms)
    # The whole metadata DB (rendered fields, task instance notes, ...) too.
    for path in (db_path, Path(f"{db_path}-wal")):
        if path.exists():
            _assert_absent(str(path), path.read_bytes(), forms)
    # dag.test() runs tasks in-process and prints their logs (no files under logs/ then); a
    # scheduler run writes them under $AIRFLOW_HOME/logs: both are scanned.
    if (home / "logs").is_dir():
        _assert_tree_clean(home / "logs", forms, min_files=0)
    captured = capfd.readouterr()
    assert captured.out + captured.err, "dag.test() printed no task log to scan"
    _assert_absent("dag.test() output", captured.out + captured.err, forms)
    _assert_tree_clean(root, forms)


# ------------------------------------------------------------------------------ the scanner itself


@pytest.mark.parametrize("plant", ["parquet", "catalog", "basic-header-in-text", "url-quoted"])
def test_scanner_finds_a_planted_secret(tmp_path: Path, plant: str):
    """The checks above can fail: a secret planted in each kind of file is found."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    forms = _password_forms()
    root = tmp_path / "wh"
    root.mkdir()
    if plant == "parquet":
        pq.write_table(pa.table({"note": [f"connected with {PASSWORD}"] * 1000}), root / "part.parquet",
                       compression="zstd")
    elif plant == "catalog":
        con = duckdb.connect(str(root / "poolwatch.duckdb"))
        con.execute(f"CREATE VIEW v AS SELECT '{PASSWORD}' AS x")
        con.close()
    elif plant == "basic-header-in-text":
        basic = base64.b64encode(f"{RPC_USER}:{PASSWORD}".encode()).decode()
        (root / "validation.json").write_text(json.dumps({"header": f"Basic {basic}"}))
    else:
        special = "p@ss w/rd:Sentinel-91"  # its URL-quoted form does not contain the plain one
        forms = _forms(RPC_USER, special)
        (root / "index.html").write_text(f"<a href='http://u:{quote(special, safe='')}@h'>x</a>")
    with pytest.raises(AssertionError, match="leaked"):
        _assert_tree_clean(root, forms)
