"""Where the node is and how to authenticate: ``NodeConfig`` (URL, credentials or cookie file,
timeouts, retries) and the cookie reader. Nothing here opens a connection."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.source.errors import NodeAuthError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8332
DEFAULT_COOKIE = Path("~/.bitcoin/.cookie")
BATCH_MAX_CALLS = 100


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
    batch_size: int = BATCH_MAX_CALLS
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
        return strip_userinfo(self.url)

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
        endpoint = f"{scheme}://{bracket(host)}:{int(port or DEFAULT_PORT)}"
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


def strip_userinfo(url: str) -> str:
    return re.sub(r"(//)[^/@]*@", r"\1", url)


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _split_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """http://user:pass@host:port/path -> ("http://host:port/path", (user, pass)); port 8332 if absent."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"node URL {strip_userinfo(url)!r} must look like http://[user:pass@]host[:port]")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"node URL {strip_userinfo(url)!r} has an invalid port") from None
    path = parts.path if parts.path not in ("", "/") else ""
    endpoint = f"{parts.scheme}://{bracket(parts.hostname)}:{port}{path}"
    creds = None
    if parts.username is not None or parts.password is not None:
        if not parts.username or parts.password is None:
            raise ValueError(f"node URL {strip_userinfo(url)!r} has a user but no password (user:pass@host)")
        creds = (unquote(parts.username), unquote(parts.password))
    return endpoint, creds


def _with_host_port(endpoint: str, host: str | None, port: int | None) -> str:
    parts = urlsplit(endpoint)
    h = host or parts.hostname or DEFAULT_HOST
    p = int(port) if port is not None else (parts.port or DEFAULT_PORT)
    return f"{parts.scheme}://{bracket(h)}:{p}{parts.path if parts.path not in ('', '/') else ''}"
