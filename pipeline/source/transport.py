"""HTTP to one node: JSON-RPC calls and batches (POST) and raw REST GETs, with retries.

One transport for everything poolwatch asks a node. Each request goes on a fresh connection (a
kept-alive one stalls ~40 ms per large reply: the node's Nagle meets our delayed ACK; a fresh
loopback connection costs ~0.1 ms, and a node closes idle ones after 30 s anyway). Credentials are
read when a connection is made (bitcoind rewrites its cookie on every restart).

python-bitcoinrpc, which the design named, is not used at runtime: its ``batch_`` raises
``KeyError: 'error'`` on Core 28+ (JSON-RPC 2.0 replies omit ``error`` on success), its proxy
builds the Authorization header from an unquoted URL (a password with ``@``, ``/`` or ``%``
breaks), it keeps one connection and has no retry, and it formats every reply with ``json.dumps``
for its debug log whether or not debug logging is on (measured: see docs/node.md). A single call here
is the same request as one element of a batch.

Failures worth waiting for (connection refused or lost, timeouts, HTTP 503, warm-up when asked to
wait, a DNS server that did not answer) are retried with jittered exponential backoff; everything
else raises the typed error of ``pipeline.source.errors`` at once. No message carries a secret:
foreign text goes through ``scrub`` and errors are raised outside the ``except`` blocks that caught
library exceptions, so no ``__context__`` holds them.

Not thread-safe (one transport per thread or process; ``clone`` gives another).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.source.config import NodeConfig, bracket, strip_userinfo
from pipeline.source.errors import (RPC_CLIENT_IN_INITIAL_DOWNLOAD, RPC_IN_WARMUP, RPC_INVALID_PARAMETER,
                                    HeightAboveTipError, NodeAuthError, NodeError, NodeHostNotFoundError,
                                    NodeInInitialDownloadError, NodePrunedError, NodeRPCError, NodeUnreachableError,
                                    NodeWarmingUpError)

log = logging.getLogger("pipeline.source.transport")

BATCH_MAX_BYTES = 256 * 1024  # request body budget per HTTP batch
MAX_REPLY_BYTES = 1 << 31  # refuse absurd replies instead of exhausting memory

# Connection states after which a connection is unusable: reconnect at once, once.
_DEAD_CONNECTION = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady,
                    http.client.RemoteDisconnected, http.client.BadStatusLine,
                    http.client.IncompleteRead)

# getaddrinfo answers that mean "this name does not exist" (as opposed to EAI_AGAIN: no DNS server
# answered, which may pass).
_NO_SUCH_NAME = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY", "EAI_FAIL")
                 if hasattr(socket, name)}


class _Transient(Exception):
    """Internal: a failure worth retrying. .unreachable marks network-level failures."""

    def __init__(self, reason: str, unreachable: bool, immediate: bool = False, dns: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable
        self.immediate = immediate  # first reconnect after an idle close needs no backoff
        self.dns = dns  # the host name could not be resolved (temporarily)


def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 GET on a new connection, closed after the reply.

    For REST blocks instead of http.client: the body (a megabyte or more) is received straight into
    one buffer of its announced length, not read through http.client's buffered reads and joined.
    The socket has a timeout, so Python keeps it non-blocking and ``MSG_WAITALL`` does not wait for
    the whole body: each ``recv_into`` returns what has arrived (20-44 calls per 1.5 MB block on
    localhost, measured). A blocking socket with a kernel timeout took one call, but fetched no faster
    beside a busy thread, so the portable timeout stays.
    Errors are http.client's and OSError's, as from http.client.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise http.client.RemoteDisconnected("the node closed the connection before its reply headers")
            head += chunk
            if len(head) > 1 << 20 and b"\r\n\r\n" not in head:
                raise http.client.HTTPException("reply headers longer than 1 MB")
        header_blob, _, body = head.partition(b"\r\n\r\n")
        lines = header_blob.decode("iso-8859-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise http.client.BadStatusLine(lines[0][:100])
        status = int(parts[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" not in headers:
            # Not what Core sends for a block; read to the close and let http.client's rules apply.
            rest = [body]
            while chunk := sock.recv(1 << 20):
                rest.append(chunk)
                if sum(map(len, rest)) > MAX_REPLY_BYTES:
                    raise http.client.HTTPException("reply larger than 2 GB")
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise http.client.HTTPException("chunked REST reply: not supported for blocks")
            return status, b"".join(rest)
        length = int(headers["content-length"])
        if not 0 <= length <= MAX_REPLY_BYTES:
            raise http.client.HTTPException(f"reply of {length} bytes refused")
        if len(body) >= length:
            return status, body[:length]
        buf = bytearray(length)
        buf[:len(body)] = body
        view = memoryview(buf)[len(body):]
        while view:
            got = sock.recv_into(view, len(view), socket.MSG_WAITALL)
            if got == 0:
                raise http.client.IncompleteRead(b"", len(view))
            view = view[got:]
        return status, bytes(buf)


def encode_decimal(o: object) -> object:
    if isinstance(o, Decimal):
        return float(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def chunk_calls(calls: Sequence[tuple[str, Sequence]], max_calls: int, max_bytes: int) -> list[list]:
    """Split calls into chunks of at most max_calls and ~max_bytes of request body."""
    chunks: list[list] = []
    current: list = []
    size = 0
    for call in calls:
        method, params = call
        est = len(method) + len(json.dumps(list(params), default=encode_decimal)) + 50
        if current and (len(current) >= max_calls or size + est > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append((method, params))
        size += est
    if current:
        chunks.append(current)
    return chunks


class Transport:
    """JSON-RPC and REST to one node (``NodeConfig``); see the module docstring."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._secrets: tuple[str, ...] = ()
        self._id = 0

    def __repr__(self) -> str:
        return f"Transport({self.config.redacted()})"

    @property
    def where(self) -> str:
        return f"{bracket(self.config.host)}:{self.config.port}"

    # -- credentials and messages -------------------------------------------------------------------
    def auth_header(self) -> str:
        cfg = self.config
        if cfg.user is None and cfg.cookie_file is not None and not Path(cfg.cookie_file).exists():
            # bitcoind deletes its cookie on shutdown: a stopped node is "unreachable" (retry), not an
            # auth problem. Only when something listens is the cookie path really wrong.
            if not self._port_open():
                raise _Transient(f"connection refused and cookie file {cfg.cookie_file} missing", unreachable=True)
        user, password = cfg.credentials()
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        # remember every form the secret may take, to scrub foreign messages
        self._secrets = tuple(s for s in {password, quote(password, safe=""), token} if s and len(s) >= 3)
        return "Basic " + token

    def scrub(self, text: str) -> str:
        text = strip_userinfo(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _port_open(self) -> bool:
        """Whether something listens on the node's port. A host name that does not resolve raises
        socket.gaierror (the callers name it), instead of passing for a stopped node."""
        try:
            with socket.create_connection((self.config.host, self.config.port), timeout=min(self.config.timeout, 5)):
                return True
        except socket.gaierror:
            raise
        except OSError:
            return False

    def _new_connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.config.url.startswith("https") else http.client.HTTPConnection
        return cls(self.config.host, self.config.port, timeout=self.config.timeout)

    def _name_failure(self, exc: socket.gaierror) -> NodeHostNotFoundError | _Transient:
        """A failed host-name lookup: a name that does not exist fails at once (no retry fixes a
        typo); a lookup that failed for now (EAI_AGAIN: no DNS answer) is retried."""
        host = self.config.host
        detail = self.scrub(str(exc.strerror or exc))
        if exc.errno in _NO_SUCH_NAME:
            return NodeHostNotFoundError(
                f"the node's host name {host!r} does not resolve (DNS: {detail}): check the host in the node "
                f"URL (--rpc-url, BITCOIN_RPC_URL or the Airflow connection); not retried, since a name that "
                f"does not exist will not appear (config: {self.config.redacted()})")
        return _Transient(f"could not resolve the host name {host!r}: {detail}", unreachable=True, dns=True)

    def _network_failure(self, exc: BaseException) -> NodeHostNotFoundError | _Transient:
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return _Transient(f"no answer within {self.config.timeout:g} s (timeout)", unreachable=True)
        if isinstance(exc, socket.gaierror):
            return self._name_failure(exc)
        if isinstance(exc, _DEAD_CONNECTION):
            return _Transient(f"connection lost: {type(exc).__name__}", unreachable=True, immediate=True)
        return _Transient(self.scrub(f"{type(exc).__name__}: {exc}"), unreachable=True)

    def _unreachable_message(self, reason: str, attempts: int) -> str:
        return (f"cannot reach the Bitcoin node at {self.where} after {attempts} attempt(s) ({reason}). "
                "Is bitcoind running? Does -rpcbind/-rpcport match this address, and does -rpcallowip "
                f"allow this machine? (config: {self.config.redacted()})")

    def auth_message(self) -> str:
        cfg = self.config
        if cfg.user is not None:
            hint = f"check rpcuser/rpcpassword (user {cfg.user!r}) against the node's bitcoin.conf / -rpcauth"
        else:
            hint = (f"check the cookie path {cfg.cookie_file} is the running node's (datadir and network "
                    "subfolder), or set rpcuser/rpcpassword")
        return f"the node at {self.where} rejected our RPC credentials (HTTP 401): {hint}"

    def _forbidden(self) -> NodeAuthError:
        return NodeAuthError(f"the node at {self.where} refused this client (HTTP 403): add this machine's "
                             "address to -rpcallowip, or check -rpcwhitelist")

    # -- retries ------------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        cfg = self.config
        delay = min(cfg.backoff_max, cfg.backoff_base * (2 ** attempt))
        return delay * random.uniform(0.5, 1.0)  # jitter: parallel workers don't retry in lockstep

    def with_retries(self, what: str, attempt_fn: Callable[[], Any]) -> Any:
        """Run attempt_fn, retrying _Transient failures with jittered exponential backoff."""
        attempts = self.config.retries + 1
        last: _Transient | None = None
        waited_immediate = False
        for attempt in range(attempts):
            try:
                return attempt_fn()
            except _Transient as exc:
                last = exc
            if attempt == attempts - 1:
                break
            if last.immediate and not waited_immediate:
                waited_immediate = True
                log.info("node connection to %s was closed (%s); reconnecting", self.where, last.reason)
                continue
            delay = self._backoff(attempt)
            log.warning("%s at %s failed (%s); retry %d/%d in %.2f s", what, self.where, last.reason,
                        attempt + 1, attempts - 1, delay)
            time.sleep(delay)
        assert last is not None
        if last.dns:
            raise NodeUnreachableError(
                f"cannot reach the Bitcoin node at {self.where} after {attempts} attempt(s): {last.reason}. "
                "No DNS server answered: check this machine's DNS settings (/etc/resolv.conf) and network, "
                f"or put the node's IP address in the URL (config: {self.config.redacted()})")
        if last.unreachable:
            raise NodeUnreachableError(self._unreachable_message(last.reason, attempts))
        if "warming up" in last.reason:
            raise NodeWarmingUpError(f"the node at {self.where} is still starting up after {attempts} "
                                     f"attempt(s) ({last.reason}); wait until it has loaded and retry")
        raise NodeError(f"{what} at {self.where} kept failing after {attempts} attempt(s): {last.reason}. "
                        "The node is overloaded: raise -rpcworkqueue / -rpcthreads or lower parallelism.")

    # -- RPC errors ---------------------------------------------------------------------------------
    def rpc_error(self, method: str, params: Sequence[Any], code: int | None, message: str) -> NodeError:
        message = self.scrub(str(message))
        if code == RPC_IN_WARMUP:
            return NodeWarmingUpError(f"the node at {self.where} is still starting up ({message}); wait and "
                                      "retry, or set wait_for_warmup=True")
        if code == RPC_CLIENT_IN_INITIAL_DOWNLOAD:
            return NodeInInitialDownloadError(f"the node at {self.where} is in initial block download "
                                              f"({message}); wait until it has synced")
        if method == "getblockhash" and code == RPC_INVALID_PARAMETER and "out of range" in message.lower():
            height = int(params[0]) if params else -1
            tip = self._tip_or_none()
            return HeightAboveTipError(f"height {height} is above the node's tip ({tip}); ask for heights "
                                       f"<= {tip} or wait for the node to sync", height=height, tip=tip)
        if "pruned data" in message.lower():
            prune_height = self.prune_height_or_none()
            return NodePrunedError(f"the node at {self.where} has pruned the block asked by {method} "
                                   f"({message}); it keeps blocks from height {prune_height}. Use a "
                                   "non-pruned node (prune=0) or a start height >= the prune height",
                                   prune_height=prune_height)
        return NodeRPCError(f"{method} failed on the node at {self.where}: RPC error {code}: {message}",
                            code=code, rpc_message=message)

    def _tip_or_none(self) -> int | None:
        try:
            return int(self.call("getblockcount"))
        except NodeError:
            return None

    def prune_height_or_none(self) -> int | None:
        try:
            info = self.call("getblockchaininfo")
        except NodeError:
            return None
        return int(info["pruneheight"]) if info.get("pruned") and "pruneheight" in info else None

    # -- JSON-RPC -----------------------------------------------------------------------------------
    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call, with retries."""
        return self.with_retries(f"RPC {method}", lambda: self._rpc_once([(method, params)], single=True)[0])

    def batch(self, calls: Sequence[tuple[str, Sequence]], max_calls: int | None = None) -> list:
        """Many calls in JSON-RPC batches (one new HTTP connection per chunk); results in call order.
        Handles JSON-RPC 2.0 replies (Core 28+: no "error" key on success) and 1.0 ("error": null)."""
        results: list = []
        for chunk in chunk_calls(calls, max_calls or self.config.batch_size, BATCH_MAX_BYTES):
            results.extend(self.with_retries(f"RPC batch of {len(chunk)}", lambda c=chunk: self._rpc_once(c)))
        return results

    def _rpc_once(self, chunk: Sequence[tuple[str, Sequence]], single: bool = False) -> list:
        first = self._id + 1
        requests = [{"jsonrpc": "2.0", "method": method, "params": list(params), "id": first + offset}
                    for offset, (method, params) in enumerate(chunk)]
        self._id += len(chunk)
        body = json.dumps(requests[0] if single else requests, default=encode_decimal).encode("utf-8")
        if log.isEnabledFor(logging.DEBUG):  # `poolwatch -v`: which calls went where (no credentials)
            methods = sorted({method for method, _ in chunk})
            log.debug("JSON-RPC %s to %s: %d call(s) of %s", "call" if single else "batch", self.where, len(chunk),
                      ", ".join(methods))

        failure: Exception | None = None
        status, reply = 0, b""
        try:
            status, reply = self._post(body)
        except (OSError, http.client.HTTPException) as exc:
            failure = self._network_failure(exc)
        if failure is not None:
            raise failure

        if status == 401:
            raise NodeAuthError(self.auth_message())
        if status == 403:
            raise self._forbidden()
        if status == 503:
            raise _Transient("HTTP 503 Work queue depth exceeded", unreachable=False)
        try:
            decoded = json.loads(reply, parse_float=Decimal)
        except ValueError:
            decoded = None
        what = chunk[0][0] if single else "RPC batch"
        if decoded is None:
            raise NodeError(f"{what}: the node at {self.where} answered HTTP {status} with a body that is not JSON "
                            f"({self.scrub(reply[:200].decode('utf-8', 'replace'))!r}); is this address really "
                            "bitcoind's RPC port?")
        if isinstance(decoded, dict) and not single:  # the whole batch was rejected (parse error, warm-up, ...)
            err = decoded.get("error") or {}
            self._raise_rpc_error("batch", (), err.get("code"), err.get("message", ""))
        replies = [decoded] if single else decoded
        if not isinstance(replies, list):
            raise NodeError(f"{what}: unexpected reply from the node at {self.where}: {type(replies).__name__}")
        by_id: dict[Any, dict] = {item.get("id"): item for item in replies if isinstance(item, dict)}
        out = []
        for offset, (method, params) in enumerate(chunk):
            item = by_id.get(first + offset)
            if item is None:
                raise NodeError(f"{what}: the node at {self.where} sent no reply for {method} "
                                f"(id {first + offset}); {len(replies)} replies for {len(chunk)} calls")
            err = item.get("error")
            if err is not None:
                code = err.get("code") if isinstance(err, dict) else None
                message = err.get("message", "") if isinstance(err, dict) else str(err)
                self._raise_rpc_error(method, params, code, message)
            if "result" not in item:
                raise NodeError(f"{what}: reply for {method} (id {first + offset}) has neither result nor error")
            out.append(item["result"])
        return out

    def _raise_rpc_error(self, method: str, params: Sequence[Any], code: int | None, message: str) -> None:
        if code == RPC_IN_WARMUP and self.config.wait_for_warmup:
            raise _Transient(f"node warming up: {message}", unreachable=False)
        raise self.rpc_error(method, params, code, message)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        conn = self._new_connection()
        try:
            conn.request("POST", self.config.path, body, {
                "Host": self.config.host, "Authorization": self.auth_header(),
                "Content-Type": "application/json", "User-Agent": "poolwatch", "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, resp.read(MAX_REPLY_BYTES)
        finally:
            conn.close()

    # -- REST ---------------------------------------------------------------------------------------
    def get(self, path: str, what: str = "REST") -> tuple[int, bytes]:
        """(status, body) of a GET of ``path`` (REST needs no credentials), retried like calls."""
        def attempt() -> tuple[int, bytes]:
            failure: _Transient | NodeHostNotFoundError | None = None
            log.debug("GET %s from %s", path, self.where)
            try:
                if not self.config.url.startswith("https"):
                    return http_get(self.config.host, self.config.port, path, self.config.timeout)
                conn = self._new_connection()
                try:
                    conn.request("GET", path, headers={"Host": self.config.host, "Connection": "close"})
                    resp = conn.getresponse()
                    return resp.status, resp.read(MAX_REPLY_BYTES)
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                failure = self._network_failure(exc)
            raise failure

        return self.with_retries(what, attempt)


__all__ = ["BATCH_MAX_BYTES", "MAX_REPLY_BYTES", "Transport", "chunk_calls", "encode_decimal", "http_get"]
