"""Access to a Bitcoin node: configuration, JSON-RPC (single and batch), REST, typed errors.

Single calls go through python-bitcoinrpc's ``AuthServiceProxy``; batches use our own JSON-RPC over
``http.client`` because ``batch_`` breaks on Bitcoin Core 28+ (JSON-RPC 2.0 replies omit ``"error"``)
and kept-alive batch connections stall. Raw blocks come from REST (``/rest/block/<hash>.bin``) when the
node serves it, else from ``getblock <hash> 0``.

A ``NodeClient`` is NOT thread-safe (neither is python-bitcoinrpc): use one client per thread or process.

No exception or log line produced here ever contains the RPC password or the cookie content: errors are
raised outside the ``except`` blocks that caught library exceptions (so no ``__context__`` chain carries
them) and every foreign message is passed through ``NodeClient._scrub``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import random
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote, urlsplit

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException

from pipeline.networks import Network, network_for_chain

log = logging.getLogger("pipeline.node")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8332
DEFAULT_COOKIE = Path("~/.bitcoin/.cookie")

# Core's RPC error codes we react to (src/rpc/protocol.h).
RPC_MISC_ERROR = -1
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_CLIENT_IN_INITIAL_DOWNLOAD = -10
RPC_IN_WARMUP = -28
RPC_INTERNAL_ERROR = -32603

_BATCH_MAX_CALLS = 100
_BATCH_MAX_BYTES = 256 * 1024  # request body budget per HTTP batch
_MAX_REPLY_BYTES = 1 << 31  # refuse absurd replies instead of exhausting memory


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class NodeError(RuntimeError):
    """Base of every node error; the message says what to do and never holds a secret."""


class NodeConfigError(NodeError):
    """The node connection is not configured (e.g. a missing Airflow connection): no retry helps."""


class NodeAuthError(NodeError):
    """HTTP 401, or the cookie file cannot be read."""


class NodeUnreachableError(NodeError):
    """Connection refused / DNS failure / timeout, after the configured retries."""


class NodeHostNotFoundError(NodeConfigError, NodeUnreachableError):
    """The node's host name does not resolve (no such name): raised at once, since no retry can fix
    a typo. Still a NodeUnreachableError for callers that catch that; a NodeConfigError because the
    configuration is what has to change."""


class NodeWarmingUpError(NodeError):
    """RPC -28: the node is loading (block index, wallet, ...)."""


class NodeInInitialDownloadError(NodeError):
    """getblockchaininfo says initialblockdownload: the node's chain is not yet trustworthy."""

    def __init__(self, message: str, progress: float | None = None, blocks: int | None = None,
                 headers: int | None = None) -> None:
        super().__init__(message)
        self.progress = progress
        self.blocks = blocks
        self.headers = headers


class NodePrunedError(NodeError):
    """The node has pruned the asked blocks; .prune_height is the lowest height it still stores."""

    def __init__(self, message: str, prune_height: int | None = None) -> None:
        super().__init__(message)
        self.prune_height = prune_height


class HeightAboveTipError(NodeError):
    """A height above the node's tip was asked for."""

    def __init__(self, message: str, height: int, tip: int | None = None) -> None:
        super().__init__(message)
        self.height = height
        self.tip = tip


class NodeRPCError(NodeError):
    """Any other JSON-RPC error the node returned."""

    def __init__(self, message: str, code: int | None = None, rpc_message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.rpc_message = rpc_message


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    url: str  # http://host:port, no credentials
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cookie_file: Path | None = None
    timeout: float = 60
    retries: int = 5
    use_rest: bool | None = None  # None: probe once per client
    backoff_base: float = 0.5  # first retry waits ~this many seconds, doubling up to backoff_max
    backoff_max: float = 10.0
    wait_for_warmup: bool = False  # retry on RPC -28 instead of raising NodeWarmingUpError
    batch_size: int = _BATCH_MAX_CALLS
    block_batch_size: int = 8  # getblock <hash> 0 replies are big (hex of up to 4 MB blocks)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"node URL {self.redacted_url()!r} must look like http://host:port")
        if parts.username or parts.password:
            raise ValueError("NodeConfig.url must not hold credentials; use NodeConfig.resolve(url=...)")
        if (self.user is None) != (self.password is None):
            raise ValueError("give both an RPC user and an RPC password, or neither (to use the cookie file)")
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError(f"retries must be >= 0 and timeout > 0 (got {self.retries}, {self.timeout})")

    # -- derived ------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or DEFAULT_HOST

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or DEFAULT_PORT

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"

    def redacted_url(self) -> str:
        return _strip_userinfo(self.url)

    def redacted(self) -> str:
        """A description safe for logs: endpoint and where credentials come from, never the secret."""
        if self.user is not None:
            auth = f"user {self.user!r}, password hidden"
        elif self.cookie_file is not None:
            auth = f"cookie file {self.cookie_file}"
        else:
            auth = "no credentials"
        return f"{self.redacted_url()} ({auth})"

    def credentials(self) -> tuple[str, str]:
        """(user, password) for HTTP basic auth. The cookie is read now because bitcoind rewrites it
        on every restart."""
        if self.user is not None and self.password is not None:
            return self.user, self.password
        if self.cookie_file is None:
            raise NodeAuthError(f"no RPC credentials for {self.redacted_url()}: set rpcuser/rpcpassword "
                                "(BITCOIN_RPC_USER/BITCOIN_RPC_PASSWORD) or a cookie file (BITCOIN_RPC_COOKIE)")
        return read_cookie(self.cookie_file)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, url: str | None = None, cookie_file: str | Path | None = None, user: str | None = None,
                password: str | None = None, host: str | None = None, port: int | None = None,
                env: Mapping[str, str] = os.environ, *, timeout: float | None = None,
                retries: int | None = None, use_rest: bool | None = None) -> NodeConfig:
        """Explicit arguments > environment (BITCOIN_RPC_URL, BITCOIN_RPC_USER/BITCOIN_RPC_PASSWORD,
        BITCOIN_RPC_COOKIE) > default (127.0.0.1:8332, cookie ~/.bitcoin/.cookie).

        Credentials, first match wins: explicit user/password, explicit cookie_file, credentials in an
        explicit URL, env user/password, env cookie, credentials in the env URL, the default cookie."""
        env_url = env.get("BITCOIN_RPC_URL") or None
        base, url_creds = _split_url(url) if url else (None, None)
        env_base, env_url_creds = _split_url(env_url) if env_url else (None, None)
        endpoint = base or env_base or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
        if host is not None or port is not None:
            endpoint = _with_host_port(endpoint, host, port)

        env_user, env_password = env.get("BITCOIN_RPC_USER") or None, env.get("BITCOIN_RPC_PASSWORD") or None
        env_cookie = env.get("BITCOIN_RPC_COOKIE") or None
        if (user is None) != (password is None):
            raise ValueError("pass both user and password (or neither, to use a cookie file)")
        if (env_user is None) != (env_password is None):
            raise ValueError("set both BITCOIN_RPC_USER and BITCOIN_RPC_PASSWORD, or neither")

        creds: tuple[str, str] | None
        cookie: Path | None = None
        if user is not None and password is not None:
            creds = (user, password)
        elif cookie_file is not None:
            creds, cookie = None, Path(cookie_file).expanduser()
        elif url_creds is not None:
            creds = url_creds
        elif env_user is not None and env_password is not None:
            creds = (env_user, env_password)
        elif env_cookie is not None:
            creds, cookie = None, Path(env_cookie).expanduser()
        elif env_url_creds is not None:
            creds = env_url_creds
        else:
            creds, cookie = None, DEFAULT_COOKIE.expanduser()

        options: dict[str, Any] = {}
        if timeout is not None:
            options["timeout"] = float(timeout)
        if retries is not None:
            options["retries"] = int(retries)
        return cls(url=endpoint, user=creds[0] if creds else None, password=creds[1] if creds else None,
                   cookie_file=cookie, use_rest=use_rest, **options)

    @classmethod
    def from_connection_fields(cls, host: str | None, port: int | None, login: str | None,
                               password: str | None, extra: Mapping[str, Any],
                               schema: str | None = None) -> NodeConfig:
        """From the fields of a connection record (Airflow's: host, port, login, password, extra
        {"cookie_file", "use_rest", "timeout", "retries", "scheme"}); no login means cookie auth."""
        host = host or DEFAULT_HOST
        scheme = "https" if (extra.get("scheme") == "https" or schema == "https") else "http"
        if "://" in host:  # some people paste a whole URL into the host field
            parts = urlsplit(host)
            scheme, host = parts.scheme or scheme, parts.hostname or DEFAULT_HOST
            port = port or parts.port
        endpoint = f"{scheme}://{_bracket(host)}:{int(port or DEFAULT_PORT)}"
        cookie = extra.get("cookie_file")
        options: dict[str, Any] = {}
        for key, conv in (("timeout", float), ("retries", int)):
            if extra.get(key) is not None:
                options[key] = conv(extra[key])
        use_rest = extra.get("use_rest")
        if isinstance(use_rest, str):
            use_rest = use_rest.strip().lower() in ("1", "true", "yes", "on")
        if login:
            return cls(url=endpoint, user=login, password=password or "", cookie_file=None,
                       use_rest=use_rest, **options)
        cookie_path = Path(cookie).expanduser() if cookie else DEFAULT_COOKIE.expanduser()
        return cls(url=endpoint, user=None, password=None, cookie_file=cookie_path, use_rest=use_rest,
                   **options)


def read_cookie(path: Path) -> tuple[str, str]:
    """Core writes `<datadir>/[network/].cookie` as `__cookie__:<hex>` on start and deletes it on stop."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise NodeAuthError(
            f"RPC cookie file {path} does not exist: is bitcoind running, and is this its datadir and "
            "network (regtest/testnet write <datadir>/<network>/.cookie)? Or set rpcuser/rpcpassword "
            "(BITCOIN_RPC_USER/BITCOIN_RPC_PASSWORD).") from None
    except PermissionError:
        raise NodeAuthError(f"RPC cookie file {path} is not readable by this user: run as the node's "
                            "user, or set -rpccookieperms (Core 28+) / group permissions") from None
    user, sep, secret = text.partition(":")
    if not sep or not user or not secret:
        raise NodeAuthError(f"RPC cookie file {path} is malformed (expected 'user:password' on one line)")
    return user, secret


def _strip_userinfo(url: str) -> str:
    return re.sub(r"(//)[^/@]*@", r"\1", url)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _split_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """http://user:pass@host:port/path -> ("http://host:port/path", (user, pass)); port 8332 if absent."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"node URL {_strip_userinfo(url)!r} must look like http://[user:pass@]host[:port]")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"node URL {_strip_userinfo(url)!r} has an invalid port") from None
    path = parts.path if parts.path not in ("", "/") else ""
    endpoint = f"{parts.scheme}://{_bracket(parts.hostname)}:{port}{path}"
    creds = None
    if parts.username is not None or parts.password is not None:
        if not parts.username or parts.password is None:
            raise ValueError(f"node URL {_strip_userinfo(url)!r} has a user but no password (user:pass@host)")
        creds = (unquote(parts.username), unquote(parts.password))
    return endpoint, creds


def _with_host_port(endpoint: str, host: str | None, port: int | None) -> str:
    parts = urlsplit(endpoint)
    h = host or parts.hostname or DEFAULT_HOST
    p = int(port) if port is not None else (parts.port or DEFAULT_PORT)
    return f"{parts.scheme}://{_bracket(h)}:{p}{parts.path if parts.path not in ('', '/') else ''}"


# --------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------


class _Proxy(AuthServiceProxy):
    """AuthServiceProxy whose URL carries no secret: the real Authorization header is set directly.
    (The base class builds the header from the URL and its urlparse does not unquote, so passwords
    with '@', '/' or '%' would break; this also keeps the password out of the object entirely.)"""

    def __init__(self, service_url: str, auth_header: bytes, service_name: str | None = None,
                 timeout: float = 60, connection: http.client.HTTPConnection | None = None) -> None:
        super().__init__(service_url, service_name, timeout, connection)
        self._AuthServiceProxy__auth_header = auth_header
        self._poolwatch_timeout = timeout

    def __getattr__(self, name: str) -> "_Proxy":
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        base = self.__dict__.get("_AuthServiceProxy__service_name")
        full = f"{base}.{name}" if base else name
        return _Proxy(self.__dict__["_AuthServiceProxy__service_url"],
                      self.__dict__["_AuthServiceProxy__auth_header"], full,
                      self.__dict__["_poolwatch_timeout"], self.__dict__["_AuthServiceProxy__conn"])

    def __repr__(self) -> str:
        return f"<_Proxy {self.__dict__.get('_AuthServiceProxy__service_url', '?')}>"


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 GET on a new connection, closed after the reply.

    For REST blocks instead of http.client: the body (a megabyte or more) arrives with one
    ``recv_into(..., MSG_WAITALL)`` rather than dozens of buffered reads, and each of those took the
    GIL back: with a fetching thread beside validation, that hand-over cost more than the read.
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
                if sum(map(len, rest)) > _MAX_REPLY_BYTES:
                    raise http.client.HTTPException("reply larger than 2 GB")
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise http.client.HTTPException("chunked REST reply: not supported for blocks")
            return status, b"".join(rest)
        length = int(headers["content-length"])
        if not 0 <= length <= _MAX_REPLY_BYTES:
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


# Connection states after which the persistent proxy connection is unusable: make a new proxy.
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


class NodeClient:
    """One node connection. Not thread-safe: use one NodeClient per thread or process."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._proxy: _Proxy | None = None
        self._rest: bool | None = config.use_rest
        self._secrets: tuple[str, ...] = ()
        self._id = 0

    def __repr__(self) -> str:
        return f"NodeClient({self.config.redacted()})"

    # -- plumbing -----------------------------------------------------------------------------------
    def _auth_header(self) -> str:
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

    def _scrub(self, text: str) -> str:
        text = _strip_userinfo(text)
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

    def _new_connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.config.url.startswith("https") else http.client.HTTPConnection
        return cls(self.config.host, self.config.port, timeout=timeout or self.config.timeout)

    def _get_proxy(self) -> _Proxy:
        if self._proxy is None:
            header = self._auth_header().encode("ascii")
            cfg = self.config
            # placeholder credentials satisfy the base constructor; _Proxy replaces the header
            url = f"{urlsplit(cfg.url).scheme}://x:x@{_bracket(cfg.host)}:{cfg.port}{urlsplit(cfg.url).path}"
            self._proxy = _Proxy(url, header, None, cfg.timeout, self._new_connection())
        return self._proxy

    def _drop_proxy(self) -> None:
        if self._proxy is not None:
            try:
                self._proxy.__dict__["_AuthServiceProxy__conn"].close()
            except Exception:  # closing a broken socket may fail; we discard it anyway
                pass
        self._proxy = None

    def close(self) -> None:
        self._drop_proxy()

    def clone(self) -> NodeClient:
        """A new client for the same node, with its own connection (for another thread or process)."""
        return NodeClient(self.config)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _where(self) -> str:
        return f"{_bracket(self.config.host)}:{self.config.port}"

    def _name_failure(self, exc: socket.gaierror) -> NodeHostNotFoundError | _Transient:
        """A failed host-name lookup: a name that does not exist fails at once (no retry fixes a
        typo); a lookup that failed for now (EAI_AGAIN: no DNS answer) is retried."""
        host = self.config.host
        detail = self._scrub(str(exc.strerror or exc))
        if exc.errno in _NO_SUCH_NAME:
            return NodeHostNotFoundError(
                f"the node's host name {host!r} does not resolve (DNS: {detail}): check the host in the node "
                f"URL (--rpc-url, BITCOIN_RPC_URL or the Airflow connection); not retried, since a name that "
                f"does not exist will not appear (config: {self.config.redacted()})")
        return _Transient(f"could not resolve the host name {host!r}: {detail}", unreachable=True, dns=True)

    def _unreachable_message(self, reason: str, attempts: int) -> str:
        return (f"cannot reach the Bitcoin node at {self._where} after {attempts} attempt(s) ({reason}). "
                "Is bitcoind running? Does -rpcbind/-rpcport match this address, and does -rpcallowip "
                f"allow this machine? (config: {self.config.redacted()})")

    def _auth_message(self) -> str:
        cfg = self.config
        if cfg.user is not None:
            hint = f"check rpcuser/rpcpassword (user {cfg.user!r}) against the node's bitcoin.conf / -rpcauth"
        else:
            hint = (f"check the cookie path {cfg.cookie_file} is the running node's (datadir and network "
                    "subfolder), or set rpcuser/rpcpassword")
        return f"the node at {self._where} rejected our RPC credentials (HTTP 401): {hint}"

    def _backoff(self, attempt: int) -> float:
        cfg = self.config
        delay = min(cfg.backoff_max, cfg.backoff_base * (2 ** attempt))
        return delay * random.uniform(0.5, 1.0)  # jitter: parallel workers don't retry in lockstep

    def _with_retries(self, what: str, attempt_fn: Callable[[], Any]) -> Any:
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
                log.info("node connection to %s was closed (%s); reconnecting", self._where, last.reason)
                continue
            delay = self._backoff(attempt)
            log.warning("%s at %s failed (%s); retry %d/%d in %.2f s", what, self._where, last.reason,
                        attempt + 1, attempts - 1, delay)
            time.sleep(delay)
        assert last is not None
        if last.dns:
            raise NodeUnreachableError(
                f"cannot reach the Bitcoin node at {self._where} after {attempts} attempt(s): {last.reason}. "
                "No DNS server answered: check this machine's DNS settings (/etc/resolv.conf) and network, "
                f"or put the node's IP address in the URL (config: {self.config.redacted()})")
        if last.unreachable:
            raise NodeUnreachableError(self._unreachable_message(last.reason, attempts))
        if "warming up" in last.reason:
            raise NodeWarmingUpError(f"the node at {self._where} is still starting up after {attempts} "
                                     f"attempt(s) ({last.reason}); wait until it has loaded and retry")
        raise NodeError(f"{what} at {self._where} kept failing after {attempts} attempt(s): {last.reason}. "
                        "The node is overloaded: raise -rpcworkqueue / -rpcthreads or lower parallelism.")

    # -- error mapping ------------------------------------------------------------------------------
    def _rpc_error(self, method: str, params: Sequence[Any], code: int | None, message: str) -> NodeError:
        message = self._scrub(str(message))
        if code == RPC_IN_WARMUP:
            return NodeWarmingUpError(f"the node at {self._where} is still starting up ({message}); wait and "
                                      "retry, or set wait_for_warmup=True")
        if code == RPC_CLIENT_IN_INITIAL_DOWNLOAD:
            return NodeInInitialDownloadError(f"the node at {self._where} is in initial block download "
                                              f"({message}); wait until it has synced")
        if method == "getblockhash" and code == RPC_INVALID_PARAMETER and "out of range" in message.lower():
            height = int(params[0]) if params else -1
            tip = self._tip_or_none()
            return HeightAboveTipError(f"height {height} is above the node's tip ({tip}); ask for heights "
                                       f"<= {tip} or wait for the node to sync", height=height, tip=tip)
        if "pruned data" in message.lower():
            prune_height = self._prune_height_or_none()
            return NodePrunedError(f"the node at {self._where} has pruned the block asked by {method} "
                                   f"({message}); it keeps blocks from height {prune_height}. Use a "
                                   "non-pruned node (prune=0) or a start height >= the prune height",
                                   prune_height=prune_height)
        return NodeRPCError(f"{method} failed on the node at {self._where}: RPC error {code}: {message}",
                            code=code, rpc_message=message)

    def _tip_or_none(self) -> int | None:
        try:
            return int(self.call("getblockcount"))
        except NodeError:
            return None

    def _prune_height_or_none(self) -> int | None:
        try:
            info = self.call("getblockchaininfo")
        except NodeError:
            return None
        return int(info["pruneheight"]) if info.get("pruned") and "pruneheight" in info else None

    # -- single calls -------------------------------------------------------------------------------
    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call through python-bitcoinrpc, with reconnect and retries."""

        def attempt() -> Any:
            failure: NodeError | _Transient | None = None
            try:
                proxy = self._get_proxy()
                return getattr(proxy, method)(*params)
            except JSONRPCException as exc:
                failure = self._classify_jsonrpc(method, params, exc)
            except _DEAD_CONNECTION as exc:
                self._drop_proxy()
                failure = _Transient(f"connection lost: {type(exc).__name__}", unreachable=True,
                                     immediate=True)
            except (TimeoutError, socket.timeout):
                self._drop_proxy()
                failure = _Transient(f"no answer within {self.config.timeout:g} s (timeout)", unreachable=True)
            except socket.gaierror as exc:
                self._drop_proxy()
                failure = self._name_failure(exc)
            except (ConnectionRefusedError, OSError) as exc:
                self._drop_proxy()
                failure = _Transient(self._scrub(f"{type(exc).__name__}: {exc}"), unreachable=True)
            except ValueError as exc:  # JSON decode of a garbled reply
                self._drop_proxy()
                failure = NodeError(f"{method}: the node at {self._where} sent a reply that is not JSON "
                                    f"({self._scrub(str(exc))[:200]}); is this address really bitcoind's RPC port?")
            # raised here, outside the except blocks, so no library exception (which might carry
            # connection details) rides along as __context__
            raise failure

        return self._with_retries(f"RPC {method}", attempt)

    def _classify_jsonrpc(self, method: str, params: Sequence[Any], exc: JSONRPCException) -> Exception:
        code = exc.code
        message = self._scrub(str(exc.message or ""))
        if code == -342:  # python-bitcoinrpc: non-JSON HTTP reply; the connection is now unusable
            self._drop_proxy()
            if "401" in message:
                return NodeAuthError(self._auth_message())
            if "503" in message:
                return _Transient("HTTP 503 Work queue depth exceeded", unreachable=False)
            if "403" in message:
                return NodeAuthError(f"the node at {self._where} refused this client (HTTP 403): add this "
                                     "machine's address to -rpcallowip, or check -rpcwhitelist")
            return NodeError(f"{method}: unexpected HTTP reply from {self._where}: {message}")
        if code == RPC_IN_WARMUP and self.config.wait_for_warmup:
            return _Transient(f"node warming up: {message}", unreachable=False)
        return self._rpc_error(method, params, code, message)

    # -- batches ------------------------------------------------------------------------------------
    def batch(self, calls: Sequence[tuple[str, Sequence]]) -> list:
        """Many calls in JSON-RPC batches (one new HTTP connection per chunk); results in call order.
        Handles JSON-RPC 2.0 replies (Core 28+: no "error" key on success) and 1.0 ("error": null)."""
        return self._batch(calls, self.config.batch_size)

    def _batch(self, calls: Sequence[tuple[str, Sequence]], max_calls: int) -> list:
        results: list = []
        for chunk in _chunks(calls, max_calls, _BATCH_MAX_BYTES):
            results.extend(self._with_retries(f"RPC batch of {len(chunk)}", lambda c=chunk: self._batch_once(c)))
        return results

    def _batch_once(self, chunk: Sequence[tuple[str, Sequence]]) -> list:
        first = self._id + 1
        payload = []
        for offset, (method, params) in enumerate(chunk):
            payload.append({"jsonrpc": "2.0", "method": method, "params": list(params), "id": first + offset})
        self._id += len(chunk)
        body = json.dumps(payload, default=_encode_decimal).encode("utf-8")

        failure: Exception | None = None
        status, reply = 0, b""
        try:
            status, reply = self._post(body)
        except (TimeoutError, socket.timeout):
            failure = _Transient(f"no answer within {self.config.timeout:g} s (timeout)", unreachable=True)
        except socket.gaierror as exc:
            failure = self._name_failure(exc)
        except (OSError, http.client.HTTPException) as exc:
            failure = _Transient(self._scrub(f"{type(exc).__name__}: {exc}"), unreachable=True)
        if failure is not None:
            raise failure

        if status == 401:
            raise NodeAuthError(self._auth_message())
        if status == 403:
            raise NodeAuthError(f"the node at {self._where} refused this client (HTTP 403): add this machine's "
                                "address to -rpcallowip, or check -rpcwhitelist")
        if status == 503:
            raise _Transient("HTTP 503 Work queue depth exceeded", unreachable=False)
        try:
            decoded = json.loads(reply, parse_float=Decimal)
        except ValueError:
            decoded = None
        if decoded is None:
            raise NodeError(f"RPC batch: the node at {self._where} answered HTTP {status} with a non-JSON body "
                            f"({self._scrub(reply[:200].decode('utf-8', 'replace'))!r})")
        if isinstance(decoded, dict):  # the whole batch was rejected (parse error, warm-up, ...)
            err = decoded.get("error") or {}
            code, message = err.get("code"), err.get("message", "")
            if code == RPC_IN_WARMUP and self.config.wait_for_warmup:
                raise _Transient(f"node warming up: {message}", unreachable=False)
            raise self._rpc_error("batch", (), code, message)

        by_id: dict[Any, dict] = {}
        for item in decoded:
            if isinstance(item, dict):
                by_id[item.get("id")] = item
        out = []
        for offset, (method, params) in enumerate(chunk):
            item = by_id.get(first + offset)
            if item is None:
                raise NodeError(f"RPC batch: the node at {self._where} sent no reply for {method} "
                                f"(id {first + offset}); {len(decoded)} replies for {len(chunk)} calls")
            err = item.get("error")
            if err is not None:
                code = err.get("code") if isinstance(err, dict) else None
                message = err.get("message", "") if isinstance(err, dict) else str(err)
                if code == RPC_IN_WARMUP and self.config.wait_for_warmup:
                    raise _Transient(f"node warming up: {message}", unreachable=False)
                raise self._rpc_error(method, params, code, message)
            if "result" not in item:
                raise NodeError(f"RPC batch: reply for {method} (id {first + offset}) has neither result "
                                "nor error")
            out.append(item["result"])
        return out

    def _post(self, body: bytes) -> tuple[int, bytes]:
        """POST on a fresh connection: kept-alive batch connections stall ~40 ms each (Nagle/delayed
        ACK) and a node closes idle ones after 30 s anyway."""
        conn = self._new_connection()
        try:
            conn.request("POST", self.config.path, body, {
                "Host": self.config.host, "Authorization": self._auth_header(),
                "Content-Type": "application/json", "User-Agent": "poolwatch", "Connection": "close"})
            resp = conn.getresponse()
            data = resp.read(_MAX_REPLY_BYTES)
            return resp.status, data
        finally:
            conn.close()

    # -- high-level reads ---------------------------------------------------------------------------
    def chain_info(self) -> dict:
        return self.call("getblockchaininfo")

    def network(self) -> Network:
        return network_for_chain(str(self.chain_info()["chain"]))

    def check_ready(self) -> dict:
        """getblockchaininfo, raising NodeWarmingUpError (-28) or NodeInInitialDownloadError.
        Regtest is exempt from the IBD check: a regtest tip with old timestamps keeps
        initialblockdownload true forever, and there are no peers to wait for."""
        info = self.chain_info()
        if info.get("initialblockdownload") and info.get("chain") != "regtest":
            progress = float(info.get("verificationprogress", 0))
            blocks, headers = info.get("blocks"), info.get("headers")
            raise NodeInInitialDownloadError(
                f"the node at {self._where} is in initial block download: {blocks} of {headers} headers' "
                f"blocks, {progress:.2%} verified; wait until it has synced (getblockchaininfo "
                "initialblockdownload false)", progress=progress, blocks=blocks, headers=headers)
        log.debug("node %s ready: chain %s, %s blocks", self.config.redacted(), info.get("chain"),
                  info.get("blocks"))
        return info

    def tip_height(self) -> int:
        return int(self.call("getblockcount"))

    def block_hashes(self, heights: Sequence[int], *, require_blocks: bool = True) -> list[str]:
        """Batched getblockhash. Checks first (one getblockchaininfo) that no height is above the tip
        and, when require_blocks, that a pruned node still stores the lowest height."""
        heights = [int(h) for h in heights]
        if not heights:
            return []
        if min(heights) < 0:
            raise ValueError(f"block heights must be >= 0 (got {min(heights)})")
        info = self.chain_info()
        tip = int(info["blocks"])
        if max(heights) > tip:
            high = max(heights)
            raise HeightAboveTipError(f"height {high} is above the node's tip {tip}; ask for heights <= {tip} "
                                      "or wait for the node to sync", height=high, tip=tip)
        if require_blocks and info.get("pruned"):
            prune_height = int(info.get("pruneheight", 0))
            if prune_height > min(heights):
                raise NodePrunedError(
                    f"the node at {self._where} is pruned and keeps blocks from height {prune_height} only, "
                    f"but height {min(heights)} was asked; start at >= {prune_height} or use a non-pruned "
                    "node (prune=0)", prune_height=prune_height)
        return [str(h) for h in self.batch([("getblockhash", [h]) for h in heights])]

    def median_times(self, hashes: Sequence[str]) -> list[int | None]:
        headers = self.batch([("getblockheader", [h, True]) for h in hashes])
        return [int(hd["mediantime"]) if hd.get("mediantime") is not None else None for hd in headers]

    def raw_blocks(self, hashes: Sequence[str]) -> list[bytes]:
        """Serialized blocks: REST /rest/block/<hash>.bin when available (probed once), else batched
        getblock <hash> 0. Each block's header is checked to hash to the asked hash."""
        hashes = [str(h) for h in hashes]
        if not hashes:
            return []
        blocks: list[bytes] | None = None
        if self._rest is not False:
            blocks = self._rest_blocks(hashes)
        if blocks is None:
            # verbosity 0 (hex): verbosity 2 is ~10x slower and we decode the bytes ourselves
            replies = self._batch([("getblock", [h, 0]) for h in hashes], self.config.block_batch_size)
            blocks = [bytes.fromhex(hex_block) for hex_block in replies]
        for h, raw in zip(hashes, blocks):
            _check_block_hash(h, raw)
        return blocks

    def _rest_blocks(self, hashes: list[str]) -> list[bytes] | None:
        """None when the node has no REST (probe result remembered).

        One request at a time: two in flight (each on its own connection) measured no faster on 2
        cores, where the node and this process already use both (benchmarks/results.md).
        """
        for h in hashes:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", h):
                raise ValueError(f"block hash {h!r} is not 64 hex digits")
        https = self.config.url.startswith("https")
        conn: http.client.HTTPConnection | None = None

        def attempt(h: str) -> tuple[int, bytes]:
            nonlocal conn
            failure: _Transient | NodeHostNotFoundError | None = None
            try:
                if not https:
                    return _http_get(self.config.host, self.config.port, f"/rest/block/{h}.bin", self.config.timeout)
                if conn is None:
                    conn = self._new_connection()
                conn.request("GET", f"/rest/block/{h}.bin", headers={"Host": self.config.host})
                resp = conn.getresponse()
                status_body = resp.status, resp.read(_MAX_REPLY_BYTES)
                # A kept-alive connection stalls ~40 ms per block (the node's Nagle meets our
                # delayed ACK); a fresh loopback connection per block costs ~0.1 ms.
                conn.close()
                conn = None
                return status_body
            except (TimeoutError, socket.timeout):
                failure = _Transient(f"no answer within {self.config.timeout:g} s (timeout)", True)
            except socket.gaierror as exc:
                failure = self._name_failure(exc)
            except _DEAD_CONNECTION as exc:
                failure = _Transient(f"connection lost: {type(exc).__name__}", True, immediate=True)
            except (OSError, http.client.HTTPException) as exc:
                failure = _Transient(self._scrub(f"{type(exc).__name__}: {exc}"), True)
            if conn is not None:
                conn.close()
                conn = None
            raise failure

        def fetch(h: str) -> tuple[int, bytes]:
            return self._with_retries("REST block", lambda: attempt(h))

        out: list[bytes] = []
        try:
            for h in hashes:
                status, data = fetch(h)
                if status == 200:
                    if self._rest is None:
                        log.info("node %s serves REST; fetching raw blocks via /rest/block", self._where)
                        self._rest = True
                    out.append(data)
                    continue
                text = data[:300].decode("utf-8", "replace").strip()
                if status == 503:
                    raise NodeError(f"REST block at {self._where}: HTTP 503 ({text}); the node is overloaded")
                if status in (403, 404) and "pruned" in text.lower():
                    prune_height = self._prune_height_or_none()
                    raise NodePrunedError(f"the node at {self._where} has pruned block {h} ({text}); it keeps "
                                          f"blocks from height {prune_height}", prune_height=prune_height)
                if status == 404 and text:  # REST is on but the block is unknown
                    raise NodeRPCError(f"block {h} not found on the node at {self._where} ({text})",
                                       code=RPC_INVALID_ADDRESS_OR_KEY, rpc_message="Block not found")
                if status in (403, 404) and not out:
                    # empty 404 (no handler) or 403: REST is off. Remember and fall back to RPC.
                    level = logging.WARNING if self._rest else logging.INFO
                    log.log(level, "node %s has no REST interface (HTTP %d); using getblock <hash> 0 over "
                            "RPC. Start bitcoind with -rest for ~10x faster block reads", self._where, status)
                    self._rest = False
                    return None
                raise NodeError(f"REST block {h} at {self._where}: unexpected HTTP {status} ({text})")
        finally:
            if conn is not None:
                conn.close()
        return out


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _encode_decimal(o: object) -> object:
    if isinstance(o, Decimal):
        return float(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _chunks(calls: Sequence[tuple[str, Sequence]], max_calls: int, max_bytes: int) -> list[list]:
    """Split calls into chunks of at most max_calls and ~max_bytes of request body."""
    chunks: list[list] = []
    current: list = []
    size = 0
    for call in calls:
        method, params = call
        est = len(method) + len(json.dumps(list(params), default=_encode_decimal)) + 50
        if current and (len(current) >= max_calls or size + est > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append((method, params))
        size += est
    if current:
        chunks.append(current)
    return chunks


def _check_block_hash(expected: str, raw: bytes) -> None:
    if len(raw) < 80:
        raise NodeError(f"block {expected}: the node returned {len(raw)} bytes, less than a block header")
    got = hashlib.sha256(hashlib.sha256(raw[:80]).digest()).digest()[::-1].hex()
    if got != expected.lower():
        raise NodeError(f"the node returned a block whose header hashes to {got}, not the asked {expected}")


__all__ = [
    "HeightAboveTipError", "NodeAuthError", "NodeClient", "NodeConfig", "NodeConfigError", "NodeError",
    "NodeHostNotFoundError", "NodeInInitialDownloadError", "NodePrunedError", "NodeRPCError", "NodeUnreachableError",
    "NodeWarmingUpError", "read_cookie",
]
