"""Which ``BlockSource`` to read from: by name (a job's ``--source``), by what the node serves
(REST or JSON-RPC), or from a worker's ``SourceRecipe``. The one place that knows every
implementation, so ``base`` knows none of them (no import circle)."""

from __future__ import annotations

from pathlib import Path

from pipeline.chain.networks import Network, network_for_chain
from pipeline.source.base import KINDS, BlockSource, SourceRecipe
from pipeline.source.blockfiles import BlockFileSource
from pipeline.source.client import NodeClient
from pipeline.source.rest import RestSource, rest_available
from pipeline.source.rpc import RpcSource


def node_source(client: NodeClient, network: Network | None = None) -> BlockSource:
    """REST when the node serves it (the connection's ``use_rest``, else probed once: ~10x faster
    than ``getblock``), JSON-RPC otherwise."""
    network = network or client.network()
    use_rest = client.config.use_rest
    if use_rest is None:
        use_rest = rest_available(client)
    return RestSource(client, network) if use_rest else RpcSource(client, network)


def open_block_source(client: NodeClient, network: Network, source: str = "node",
                      datadir: Path | None = None) -> BlockSource:
    """The ``BlockSource`` a job reads from: ``node`` (REST when the node serves it, else JSON-RPC),
    or ``rest``, ``rpc``, ``blkfiles`` (the node's block files under ``datadir``)."""
    if source == "node":
        return node_source(client, network)
    if source == "blkfiles":
        return BlockFileSource(client, network, datadir=datadir)
    if source == "rest":
        return RestSource(client, network)
    if source == "rpc":
        return RpcSource(client, network)
    raise ValueError(f"unknown block source {source!r}; expected node or one of {', '.join(KINDS)}")


def open_source(recipe: SourceRecipe) -> BlockSource:
    """A source from its recipe (in a worker process, or a clone for a thread)."""
    client = NodeClient(recipe.node) if recipe.node is not None else None
    network = network_for_chain(recipe.network)
    if recipe.kind == "rest":
        return RestSource(client, network)
    if recipe.kind == "rpc":
        return RpcSource(client, network)
    if recipe.kind == "blkfiles":
        return BlockFileSource(client, network, blocks_dir=Path(recipe.blocks_dir or ""))
    raise ValueError(f"unknown block source {recipe.kind!r}; expected one of {', '.join(KINDS)}")


__all__ = ["node_source", "open_block_source", "open_source"]
