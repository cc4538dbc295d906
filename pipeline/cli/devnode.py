"""``poolwatch devnode``: a regtest node with a demo chain, kept running for trying the Airflow DAGs
(or the CLI) without a node of your own. Development and demo tooling only."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

out = Console()
err = Console(stderr=True)


def _dir_option(fn):
    return click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Where the node's data and state live (default: $POOLWATCH_DEVNODE_DIR or ./.devnode).")(fn)


def _resolve(directory: Path | None) -> Path:
    from pipeline.devnode.background import default_dir

    return directory or default_dir()


@click.group()
def devnode() -> None:
    """A local regtest node in the background (127.0.0.1 only), for demos and the Airflow quickstart."""


@devnode.command("start")
@click.option("--blocks", type=click.IntRange(1, 100_000), default=3000, show_default=True,
              help="Mine demo blocks until the chain has this many (a restarted node keeps its chain).")
@_dir_option
def start_cmd(blocks: int, directory: Path | None) -> None:
    """Start the node, build a demo chain, leave it running; `poolwatch devnode env` tells how to reach it."""
    from pipeline.devnode.background import DevnodeError, start

    try:
        with err.status(f"starting a regtest node and building {blocks:,} demo blocks ..."):
            state = start(_resolve(directory), blocks)
    except DevnodeError as exc:
        raise click.ClickException(str(exc)) from None
    err.print(Text(f"regtest node pid {state.pid} on {state.rpc_url} ({state.flavor}), {state.blocks + 1:,} blocks "
                   f"(heights 0..{state.blocks}). REGTEST chain built here, not mainnet."))
    err.print('Point poolwatch and Airflow at it with:  eval "$(poolwatch devnode env)"')


@devnode.command("env")
@_dir_option
def env_cmd(directory: Path | None) -> None:
    """Print `export` lines for the running node (BITCOIN_RPC_*, AIRFLOW_CONN_BITCOIN_DEFAULT)."""
    from pipeline.devnode.background import env_lines, is_running, read_state

    state = read_state(_resolve(directory))
    if state is None or not is_running(state):
        raise click.ClickException("no devnode is running: `poolwatch devnode start` first")
    click.echo("\n".join(env_lines(state)))


@devnode.command("stop")
@_dir_option
def stop_cmd(directory: Path | None) -> None:
    """Stop the node (its chain stays in the folder for the next start)."""
    from pipeline.devnode.background import stop

    state = stop(_resolve(directory))
    err.print("no devnode was recorded" if state is None else f"stopped regtest node pid {state.pid}")


def register(main: click.Group) -> None:
    main.add_command(devnode)
