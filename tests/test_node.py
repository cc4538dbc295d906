"""Node access (pipeline.source: transport, client, REST/RPC block sources) against a fake Bitcoin
Core 28 HTTP server replaying tests/data/core28/ exchanges."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.chain.networks import MAIN
from pipeline.source.base import Located
from pipeline.source.choice import node_source
from pipeline.source.client import NodeClient
from pipeline.source.config import NodeConfig
from pipeline.source.errors import (HeightAboveTipError, NodeAuthError, NodeError, NodeInInitialDownloadError,
                                    NodePrunedError, NodeRPCError, NodeUnreachableError, NodeWarmingUpError)
from pipeline.source.rest import RestSource
from pipeline.source.rpc import RpcSource

CORE28 = Path(__file__).resolve().parent / "data" / "core28"
H739990 = "000000000000000000056aa302bd92a1da4d6c996eee77ee790490c2d50c626e"
GENESIS = MAIN.genesis_hash
PREV_739990 = "00000000000000000003473d0de4a1d4daacd56196e72c6526ab8c04095bf9b6"
USER, PASSWORD = "poolwatch", "pw-S3cret!@/%x"


def load_exchange(name: str) -> dict:
    return json.loads((CORE28 / name).read_text(encoding="utf-8"))


def to_legacy(body: str) -> str:
    """Core's reply to a request without "jsonrpc":"2.0": result, error (null on success), id."""
    inner = body.strip()
    assert inner.startswith('{"jsonrpc":"2.0",')
    inner = inner[len('{"jsonrpc":"2.0",'):]
    head, _, id_part = inner.rpartition(',"id":')
    if head.startswith('"result":'):
        return "{" + head + ',"error":null,"id":' + id_part + "\n"
    return '{"result":null,' + head + ',"id":' + id_part + "\n"


def with_id(body: str, new_id: Any) -> str:
    return re.sub(r'"id":[^,}]*}\s*$', '"id":' + json.dumps(new_id) + "}\n", body)


class FakeCore:
    """A tiny HTTP server answering like bitcoind 28: Basic auth, JSON-RPC 2.0 and legacy replies,
    batches, REST /rest/block/<hash>.bin. Knobs simulate faults."""

    def __init__(self, files: list[str], *, user: str = USER, password: str = PASSWORD,
                 style: str = "v28", blocks: dict[str, bytes] | None = None, rest: bool = True) -> None:
        self.replies: dict[tuple[str, str], str] = {}
        for name in files:
            self.add(name)
        self.user, self.password = user, password
        self.style = style  # "v28" honours "jsonrpc":"2.0"; "legacy" always answers the pre-28 way
        self.blocks = blocks or {}
        self.pruned_rest: set[str] = set()
        self.rest = rest
        self.fail_503 = 0
        self.warmup_replies = 0
        self.delay = 0.0
        self.drop_after_reply = False
        self.reverse_batches = False
        self.verbatim: dict | None = None  # a recorded batch exchange to answer byte for byte
        self.requests: list[tuple[str, Any]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def add(self, name: str, body: str | None = None) -> None:
        ex = load_exchange(name)
        req = ex["request"]
        self.replies[(req["method"], json.dumps(req["params"]))] = body or ex["reply"]

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, **kw: Any) -> NodeConfig:
        base = dict(url=self.url, user=self.user, password=self.password, cookie_file=None, timeout=2.0,
                    retries=3, backoff_base=0.01, backoff_max=0.05)
        base.update(kw)
        return NodeConfig(**base)

    def __enter__(self) -> FakeCore:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, item: dict) -> tuple[str, bool]:
        """(reply body, is_error) for one request object."""
        if self.warmup_replies > 0:
            self.warmup_replies -= 1
            body = load_exchange("warmup.json")["reply"]
        else:
            body = self.replies.get((item.get("method"), json.dumps(item.get("params", []))))
            if body is None:
                body = '{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":1}\n'
        body = with_id(body, item.get("id"))
        is_error = '"error":{' in body
        if self.style == "legacy" or item.get("jsonrpc") != "2.0":
            body = to_legacy(body)
        return body, is_error

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like bitcoind

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json",
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    self.close_connection = True
                    return
                if fake.drop_after_reply:  # like Core's idle timeout: close without telling the client
                    self.close_connection = True

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path))
                m = re.fullmatch(r"/rest/block/([0-9a-f]{64})\.bin", self.path)
                if fake.rest and self.path == "/rest/chaininfo.json":
                    self._send(200, b'{"chain":"main","blocks":739990}\n')
                elif not fake.rest or not m:
                    self._send(404, b"", "text/html; charset=ISO-8859-1")
                elif m.group(1) in fake.blocks:
                    self._send(200, fake.blocks[m.group(1)], "application/octet-stream")
                elif m.group(1) in fake.pruned_rest:
                    self._send(404, f"{m.group(1)} not available (pruned data)\r\n".encode(), "text/plain")
                else:
                    self._send(404, f"{m.group(1)} not found\r\n".encode(), "text/plain")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                expected = "Basic " + base64.b64encode(f"{fake.user}:{fake.password}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    fake.requests.append(("POST-401", None))
                    self._send(401, b"", "text/html; charset=ISO-8859-1",
                               {"WWW-Authenticate": 'Basic realm="jsonrpc"'})
                    return
                request = json.loads(raw)
                fake.requests.append(("POST", request))
                if fake.delay:
                    time.sleep(fake.delay)
                if fake.fail_503 > 0:
                    fake.fail_503 -= 1
                    self._send(503, b"Work queue depth exceeded", "text/html; charset=ISO-8859-1")
                    return
                if isinstance(request, list):
                    if fake.verbatim is not None:
                        rec = fake.verbatim["request"]
                        got = [(r["method"], r["params"], r["id"]) for r in request]
                        assert got == [(r["method"], r["params"], r["id"]) for r in rec], got
                        self._send(200, fake.verbatim["reply"].encode())
                        return
                    parts = [fake.answer(item)[0].strip() for item in request]
                    if fake.reverse_batches:
                        parts.reverse()
                    self._send(200, ("[" + ",".join(parts) + "]\n").encode())
                    return
                body, is_error = fake.answer(request)
                legacy = fake.style == "legacy" or request.get("jsonrpc") != "2.0"
                status = 500 if (is_error and legacy) else 200
                if legacy and '"code":-32601' in body:
                    status = 404
                self._send(status, body.encode())

        return Handler


@pytest.fixture()
def core():
    files = ["getblockchaininfo.json", "getblockcount.json", "getblockhash_0.json", "getblockhash_739990.json",
             "getblockhash_out_of_range.json", "getblockheader_genesis.json", "getblockheader_739990.json",
             "getblock_pruned.json", "getblock_not_found.json"]
    with FakeCore(files) as fake:
        yield fake


@pytest.fixture(scope="module")
def block_739990(fixtures_dir: Path) -> bytes:
    path = fixtures_dir / "0xB10C+mainnet-observer" / "739990.bin"
    if not path.is_file():
        pytest.skip(f"fixture block missing: {path}")
    return path.read_bytes()


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------

def test_resolve_url_splits_credentials() -> None:
    cfg = NodeConfig.resolve(url="http://alice:p%40ss%2Fw@node.example:18443", env={})
    assert cfg.url == "http://node.example:18443"
    assert (cfg.user, cfg.password, cfg.cookie_file) == ("alice", "p@ss/w", None)
    assert (cfg.host, cfg.port) == ("node.example", 18443)
    assert "p@ss/w" not in repr(cfg) and "p@ss/w" not in cfg.redacted()
    assert "alice" in cfg.redacted() and "node.example:18443" in cfg.redacted()


def test_resolve_parts_and_default_port() -> None:
    cfg = NodeConfig.resolve(host="10.0.0.5", user="u", password="p", env={})
    assert (cfg.url, cfg.user, cfg.password) == ("http://10.0.0.5:8332", "u", "p")
    cfg = NodeConfig.resolve(url="http://127.0.0.1", port=18443, cookie_file="/tmp/x/.cookie", env={})
    assert cfg.url == "http://127.0.0.1:18443" and cfg.cookie_file == Path("/tmp/x/.cookie") and cfg.user is None


def test_resolve_defaults_to_local_cookie() -> None:
    cfg = NodeConfig.resolve(env={})
    assert cfg.url == "http://127.0.0.1:8332"
    assert cfg.cookie_file == Path("~/.bitcoin/.cookie").expanduser()
    assert cfg.user is None and cfg.password is None and cfg.use_rest is None


def test_resolve_environment_and_precedence(tmp_path: Path) -> None:
    env = {"BITCOIN_RPC_URL": "http://envuser:envpass@192.0.2.1:8332", "BITCOIN_RPC_COOKIE": str(tmp_path / "c")}
    cfg = NodeConfig.resolve(env=env)
    # env cookie beats credentials embedded in the env URL
    assert cfg.url == "http://192.0.2.1:8332" and cfg.cookie_file == tmp_path / "c" and cfg.user is None
    env2 = dict(env, BITCOIN_RPC_USER="eu", BITCOIN_RPC_PASSWORD="ep")
    assert NodeConfig.resolve(env=env2).user == "eu"
    # explicit arguments beat everything in the environment
    cfg = NodeConfig.resolve(url="http://a:b@127.0.0.1:1234", env=env2)
    assert (cfg.url, cfg.user, cfg.password) == ("http://127.0.0.1:1234", "a", "b")
    cfg = NodeConfig.resolve(cookie_file=tmp_path / "explicit", env=env2)
    assert cfg.cookie_file == tmp_path / "explicit" and cfg.url == "http://192.0.2.1:8332"
    cfg = NodeConfig.resolve(port=9999, env=env2)
    assert cfg.url == "http://192.0.2.1:9999"
    assert NodeConfig.resolve(env={"BITCOIN_RPC_URL": "http://u:p@h:1"}).user == "u"


@pytest.mark.parametrize("kwargs, env, needle", [
    ({"user": "only"}, {}, "both user and password"),
    ({}, {"BITCOIN_RPC_USER": "x"}, "BITCOIN_RPC_PASSWORD"),
    ({"url": "ftp://host:1"}, {}, "http://"),
    ({"url": "http://user@host:1"}, {}, "no password"),
])
def test_resolve_rejects_incomplete_settings(kwargs: dict, env: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        NodeConfig.resolve(env=env, **kwargs)


def test_cookie_is_read_at_connect_time(core: FakeCore, tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:" + "ab" * 32)
    core.user, core.password = "__cookie__", "ab" * 32
    client = NodeClient(core.config(user=None, password=None, cookie_file=cookie))
    assert client.tip_height() == 739990
    # bitcoind restarted: new cookie. A new connection (after the old one dropped) must use it.
    cookie.write_text("__cookie__:" + "cd" * 32)
    core.password = "cd" * 32
    client.close()
    assert client.tip_height() == 739990
    assert client.block_hashes([0]) == [GENESIS]  # batches read it too


def test_missing_cookie_says_what_to_check(core: FakeCore, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / ".cookie"
    client = NodeClient(core.config(user=None, password=None, cookie_file=missing))
    with pytest.raises(NodeAuthError, match="is bitcoind running") as err:  # something listens: wrong path
        client.tip_height()
    assert str(missing) in str(err.value)
    core.__exit__()
    client = NodeClient(core.config(user=None, password=None, cookie_file=missing, retries=1))
    with pytest.raises(NodeUnreachableError, match="cookie file") as err:  # nothing listens: node stopped
        client.tip_height()
    assert f"127.0.0.1:{core.port}" in str(err.value)


def test_airflow_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BITCOIN_DEFAULT", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": 18443, "login": "af", "password": "af-secret"}))
    monkeypatch.setenv("AIRFLOW_CONN_BITCOIN_COOKIE", json.dumps(
        {"conn_type": "http", "host": "10.1.1.1", "extra": {"cookie_file": "/data/.cookie", "use_rest": True,
                                                             "timeout": 5}}))
    from pipeline.source.errors import NodeConfigError
    from pipeline.orchestration import node_config

    cfg = node_config()
    assert (cfg.url, cfg.user, cfg.password) == ("http://127.0.0.1:18443", "af", "af-secret")
    assert "af-secret" not in repr(cfg)
    cfg = node_config("bitcoin_cookie")
    assert (cfg.url, cfg.cookie_file, cfg.use_rest, cfg.timeout) == ("http://10.1.1.1:8332", Path("/data/.cookie"),
                                                                    True, 5.0)
    with pytest.raises(NodeConfigError, match=r"bitcoin_missing.*--conn-type generic"):
        node_config("bitcoin_missing")


# --------------------------------------------------------------------------------------------------
# calls and batches against Core 28 replies
# --------------------------------------------------------------------------------------------------

def test_single_calls_parse_core28_replies(core: FakeCore) -> None:
    client = NodeClient(core.config())
    info = client.check_ready()
    assert info["chain"] == "main" and info["warnings"] == []
    assert info["difficulty"] == Decimal("30283293547736.68")  # exact, not a float
    assert client.network() is MAIN
    assert client.tip_height() == 739990
    # single calls are JSON-RPC 2.0 request objects (Core 28 answers with no "error" on success)
    singles = [req for kind, req in core.requests if kind == "POST"]
    assert singles and all(isinstance(req, dict) and req["jsonrpc"] == "2.0" for req in singles)


@pytest.mark.parametrize("style", ["v28", "legacy"])
def test_single_calls_parse_both_reply_styles_and_errors(core: FakeCore, style: str) -> None:
    core.style = style  # legacy: "error": null on success, HTTP 500 with the error object on failure
    client = NodeClient(core.config())
    assert client.tip_height() == 739990
    with pytest.raises(HeightAboveTipError):
        client.call("getblockhash", 900000)


@pytest.mark.parametrize("style", ["v28", "legacy"])
def test_batch_both_reply_styles_in_call_order(core: FakeCore, style: str) -> None:
    core.style = style
    core.reverse_batches = True  # JSON-RPC allows any order; results must follow the calls
    client = NodeClient(core.config())
    assert client.batch([("getblockhash", [739990]), ("getblockhash", [0])]) == [H739990, GENESIS]
    batch_requests = [req for kind, req in core.requests if kind == "POST" and isinstance(req, list)]
    assert batch_requests and all(item["jsonrpc"] == "2.0" for item in batch_requests[0])


def test_recorded_core28_batch_verbatim(core: FakeCore) -> None:
    core.verbatim = load_exchange("batch_getblockhash.json")
    client = NodeClient(core.config())
    client.transport._id = 6  # line our ids up with the recording (7, 8, 9)
    with pytest.raises(HeightAboveTipError) as err:
        client.batch([("getblockhash", [0]), ("getblockhash", [739990]), ("getblockhash", [900000])])
    assert (err.value.height, err.value.tip) == (900000, 739990)
    assert "900000" in str(err.value) and "739990" in str(err.value)
    client.transport._id = 6
    core.verbatim = {"request": core.verbatim["request"][:2],
                     "reply": '[{"jsonrpc":"2.0","result":"%s","id":7},{"jsonrpc":"2.0","result":"%s","id":8}]\n'
                              % (GENESIS, H739990)}
    assert client.batch([("getblockhash", [0]), ("getblockhash", [739990])]) == [GENESIS, H739990]


def test_recorded_legacy_batch_verbatim(core: FakeCore) -> None:
    core.verbatim = load_exchange("batch_getblockhash_legacy.json")
    client = NodeClient(core.config())
    client.transport._id = 6
    assert client.batch([("getblockhash", [0]), ("getblockhash", [739990])]) == [GENESIS, H739990]


def test_big_batches_are_chunked(core: FakeCore) -> None:
    client = NodeClient(core.config(batch_size=3))
    calls = [("getblockhash", [0 if i % 2 else 739990]) for i in range(8)]
    assert client.batch(calls) == [GENESIS if i % 2 else H739990 for i in range(8)]
    sizes = [len(req) for kind, req in core.requests if kind == "POST" and isinstance(req, list)]
    assert sizes == [3, 3, 2]


def test_block_hashes_and_median_times(core: FakeCore) -> None:
    client = NodeClient(core.config())
    assert client.block_hashes([0, 739990]) == [GENESIS, H739990]
    assert client.median_times([GENESIS, H739990]) == [1231006505, 1654742083]
    assert client.block_hashes([]) == []


# --------------------------------------------------------------------------------------------------
# raw blocks: REST and RPC fallback
# --------------------------------------------------------------------------------------------------

def _serve_block(core: FakeCore, raw: bytes) -> None:
    ex = load_exchange("getblock_739990_verbosity0.json")
    core.add("getblock_739990_verbosity0.json", ex["reply"].replace("@BLOCK_HEX@", raw.hex()))
    core.blocks[H739990] = raw


def raw_blocks(source, hashes: list[str]) -> list[bytes]:
    """A block source's bytes for ``hashes`` (heights do not matter to the read)."""
    located = Located([0] * len(hashes), list(hashes), [None] * len(hashes), (None, None))
    return [raw.data for raw in source.read(located)]


def test_raw_blocks_via_rest(core: FakeCore, block_739990: bytes) -> None:
    _serve_block(core, block_739990)
    source = node_source(NodeClient(core.config()), MAIN)
    assert isinstance(source, RestSource)
    assert raw_blocks(source, [H739990]) == [block_739990]
    assert [k for k, _ in core.requests] == ["GET", "GET"]  # the REST probe, then the block
    assert core.requests[0][1] == "/rest/chaininfo.json"


def test_raw_blocks_rpc_fallback_probes_rest_once(core: FakeCore, block_739990: bytes) -> None:
    _serve_block(core, block_739990)
    core.rest = False
    source = node_source(NodeClient(core.config()), MAIN)
    assert isinstance(source, RpcSource)
    assert raw_blocks(source, [H739990]) == [block_739990]
    assert raw_blocks(source, [H739990]) == [block_739990]
    kinds = [k for k, _ in core.requests]
    assert kinds.count("GET") == 1 and kinds.count("POST") == 2
    getblocks = [req for k, req in core.requests if k == "POST"]
    assert all(item["method"] == "getblock" and item["params"] == [H739990, 0] for req in getblocks for item in req)


def test_raw_blocks_use_rest_false_never_probes(core: FakeCore, block_739990: bytes) -> None:
    _serve_block(core, block_739990)
    source = node_source(NodeClient(core.config(use_rest=False)), MAIN)
    assert raw_blocks(source, [H739990]) == [block_739990]
    assert "GET" not in [k for k, _ in core.requests]


def test_raw_blocks_rejects_wrong_block(core: FakeCore, block_739990: bytes) -> None:
    core.blocks[H739990] = block_739990[:80].replace(block_739990[4:8], b"\0\0\0\0") + block_739990[80:]
    with pytest.raises(NodeError, match="not the asked"):
        raw_blocks(RestSource(NodeClient(core.config()), MAIN), [H739990])


# --------------------------------------------------------------------------------------------------
# typed errors
# --------------------------------------------------------------------------------------------------

def test_wrong_password_is_auth_error(core: FakeCore) -> None:
    client = NodeClient(core.config(password="wrong-password"))
    for action in (client.tip_height, lambda: client.batch([("getblockcount", [])])):
        with pytest.raises(NodeAuthError, match="rpcuser/rpcpassword") as err:
            action()
        assert "wrong-password" not in str(err.value)


def test_unreachable_node_names_address() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = NodeClient(NodeConfig(url=f"http://127.0.0.1:{port}", user="u", password="p", retries=2,
                                   backoff_base=0.01, backoff_max=0.02))
    for action in (client.tip_height, lambda: client.batch([("getblockcount", [])])):
        with pytest.raises(NodeUnreachableError) as err:
            action()
        msg = str(err.value)
        assert f"127.0.0.1:{port}" in msg and "bitcoind running" in msg and "-rpcallowip" in msg
        assert "3 attempt" in msg


def test_initial_block_download(core: FakeCore) -> None:
    core.add("getblockchaininfo_ibd.json")
    with pytest.raises(NodeInInitialDownloadError) as err:
        NodeClient(core.config()).check_ready()
    assert err.value.progress == pytest.approx(0.1262, abs=1e-4)
    assert "12.62%" in str(err.value) and "421337" in str(err.value)


def test_regtest_is_exempt_from_ibd(core: FakeCore) -> None:
    body = load_exchange("getblockchaininfo_ibd.json")["reply"].replace('"chain":"main"', '"chain":"regtest"')
    core.add("getblockchaininfo_ibd.json", body)
    assert NodeClient(core.config()).check_ready()["chain"] == "regtest"


def test_pruned_node(core: FakeCore) -> None:
    core.add("getblockchaininfo_pruned.json")
    client = NodeClient(core.config(use_rest=False))
    with pytest.raises(NodePrunedError, match="739000") as err:
        client.block_hashes([0, 739990])
    assert err.value.prune_height == 739000
    assert client.block_hashes([0], require_blocks=False) == [GENESIS]
    with pytest.raises(NodePrunedError) as err:  # getblock's -1 "Block not available (pruned data)"
        raw_blocks(RpcSource(client, MAIN), [PREV_739990])
    assert err.value.prune_height == 739000


def test_pruned_block_via_rest(core: FakeCore) -> None:
    core.add("getblockchaininfo_pruned.json")
    core.pruned_rest.add(PREV_739990)
    with pytest.raises(NodePrunedError, match="pruned") as err:
        raw_blocks(RestSource(NodeClient(core.config()), MAIN), [PREV_739990])
    assert err.value.prune_height == 739000


def test_height_above_tip(core: FakeCore) -> None:
    client = NodeClient(core.config())
    with pytest.raises(HeightAboveTipError) as err:  # checked before the batch
        client.block_hashes([739990, 739991])
    assert (err.value.height, err.value.tip) == (739991, 739990)
    with pytest.raises(HeightAboveTipError) as err:  # Core's -8 on a single call
        client.call("getblockhash", 900000)
    assert (err.value.height, err.value.tip) == (900000, 739990)


def test_block_not_found_and_other_rpc_errors(core: FakeCore) -> None:
    client = NodeClient(core.config(use_rest=False))
    with pytest.raises(NodeRPCError) as err:
        raw_blocks(RpcSource(client, MAIN), ["00" * 32])
    assert (err.value.code, err.value.rpc_message) == (-5, "Block not found")
    with pytest.raises(NodeRPCError) as err:
        client.call("nosuchmethod")
    assert err.value.code == -32601


def test_warming_up(core: FakeCore) -> None:
    core.warmup_replies = 1
    with pytest.raises(NodeWarmingUpError, match="starting up"):
        NodeClient(core.config()).check_ready()
    core.warmup_replies = 2
    assert NodeClient(core.config(wait_for_warmup=True)).tip_height() == 739990
    core.warmup_replies = 2
    client = NodeClient(core.config(wait_for_warmup=True))
    assert client.batch([("getblockhash", [0])]) == [GENESIS]
    core.warmup_replies = 100
    with pytest.raises(NodeWarmingUpError):
        NodeClient(core.config(wait_for_warmup=True, retries=2)).tip_height()


def test_client_repr_and_config_hide_password(core: FakeCore) -> None:
    client = NodeClient(core.config())
    client.tip_height()
    for text in (repr(client), repr(client.config), client.config.redacted(), repr(client.transport)):
        assert PASSWORD not in text
    assert dataclasses.fields(NodeConfig)[2].repr is False


def test_block_hash_check_helper_matches_core(block_739990: bytes) -> None:
    # the integrity check raw_blocks relies on: header double-SHA256, byte-reversed, is the block hash
    assert hashlib.sha256(hashlib.sha256(block_739990[:80]).digest()).digest()[::-1].hex() == H739990


def test_resolve_reads_process_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BITCOIN_RPC_URL", "http://127.0.0.1:18443")
    monkeypatch.setenv("BITCOIN_RPC_COOKIE", str(tmp_path / ".cookie"))
    monkeypatch.delenv("BITCOIN_RPC_USER", raising=False)
    monkeypatch.delenv("BITCOIN_RPC_PASSWORD", raising=False)
    cfg = NodeConfig.resolve()
    assert (cfg.url, cfg.cookie_file) == ("http://127.0.0.1:18443", tmp_path / ".cookie")


def test_config_refuses_credentials_in_url_field() -> None:
    with pytest.raises(ValueError, match="must not hold credentials") as err:
        NodeConfig(url="http://u:hunter22@127.0.0.1:8332")
    assert "hunter22" not in str(err.value)


def test_batches_split_by_request_bytes(core: FakeCore) -> None:
    from pipeline.source.transport import chunk_calls as _chunks

    calls = [("getblock", ["ab" * 40_000, 0])] * 10  # ~80 KB of params each
    sizes = [len(c) for c in _chunks(calls, 100, 256 * 1024)]
    assert sum(sizes) == 10 and max(sizes) == 3
