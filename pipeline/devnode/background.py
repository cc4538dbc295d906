"""A regtest node that keeps running in the background (``poolwatch devnode start|env|stop``).

``poolwatch demo`` starts a node, loads a chain and stops it; the Airflow quickstart needs a node
that stays up while the scheduler runs. This starts one on 127.0.0.1 (no P2P, cookie auth), builds
a demo chain on it, and records how to reach it in ``<dir>/devnode.json``, so later commands (and
the environment ``env`` prints) can find it. Stopping asks the node to shut down over RPC.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_DIR = Path(".devnode")
STATE_FILE = "devnode.json"


class DevnodeError(RuntimeError):
    """The background node cannot be started, found or stopped; the message says why."""


@dataclass(frozen=True)
class DevnodeState:
    pid: int
    port: int
    cookie_file: str
    datadir: str
    flavor: str
    binary: str
    blocks: int

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection_json(self) -> str:
        """The node as an Airflow connection (AIRFLOW_CONN_BITCOIN_DEFAULT's JSON form)."""
        return json.dumps({"conn_type": "generic", "host": "127.0.0.1", "port": self.port,
                           "extra": {"cookie_file": self.cookie_file}})


def default_dir() -> Path:
    return Path(os.environ.get("POOLWATCH_DEVNODE_DIR") or DEFAULT_DIR)


def read_state(directory: Path) -> DevnodeState | None:
    path = directory / STATE_FILE
    if not path.exists():
        return None
    try:
        return DevnodeState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise DevnodeError(f"{path} is not a devnode state file ({exc}); delete it and start again") from None


def is_running(state: DevnodeState) -> bool:
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished process its parent has not reaped yet is not a running node
        return Path(f"/proc/{state.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def start(directory: Path, blocks: int = 3000, seed: int = 7) -> DevnodeState:
    """Start a regtest node under ``directory`` (reusing its chain if one is there) and mine up to
    ``blocks`` demo blocks; the node keeps running after this returns."""
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.devnode.node import find_bitcoind, RegtestNode

    state = read_state(directory)
    if state is not None and is_running(state):
        raise DevnodeError(f"a devnode is already running (pid {state.pid}, {state.rpc_url}); "
                           f"`poolwatch devnode stop` first")
    directory.mkdir(parents=True, exist_ok=True)
    node = RegtestNode(binary=find_bitcoind(), datadir=directory / "node")
    node.start()
    try:
        have = node.tip().height
        if blocks > have:
            specs = demo_specs(load_registry(), blocks - have, seed=seed + have, allow_p2sh=node.flavor == "core")
            mine_chain(node, specs)
        height = node.tip().height
        state = DevnodeState(pid=node.pid or 0, port=node.port, cookie_file=str(node.cookie_file.resolve()),
                             datadir=str(node.datadir.resolve()), flavor=node.flavor, binary=str(node.binary),
                             blocks=height)
        (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")
        node.detach()
        return state
    except BaseException:
        node.stop()
        raise


def stop(directory: Path, timeout: float = 30.0) -> DevnodeState | None:
    """Stop the background node (RPC stop, then SIGTERM); None when none was recorded."""
    from pipeline.source.client import NodeClient
    from pipeline.source.config import NodeConfig
    from pipeline.source.errors import NodeError

    state = read_state(directory)
    if state is None:
        return None
    if is_running(state):
        try:
            NodeClient(NodeConfig(url=state.rpc_url, cookie_file=Path(state.cookie_file), retries=0,
                                  timeout=10)).call("stop")
        except NodeError:
            os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_running(state) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_running(state):
            os.kill(state.pid, signal.SIGKILL)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return state


def env_lines(state: DevnodeState) -> list[str]:
    """Shell ``export`` lines that point poolwatch and Airflow at the node."""
    def quote(value: str) -> str:
        return "'" + value.replace("'", "'\\''") + "'"

    return [f"export BITCOIN_RPC_URL={quote(state.rpc_url)}",
            f"export BITCOIN_RPC_COOKIE={quote(state.cookie_file)}",
            f"export AIRFLOW_CONN_BITCOIN_DEFAULT={quote(state.connection_json())}",
            # the demo chain's coinbases pay mainnet pools' scripts: let the registry match them here
            "export POOLWATCH_CROSS_NETWORK_REGISTRY=true"]
