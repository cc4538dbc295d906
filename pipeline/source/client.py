"""``NodeClient``: what poolwatch asks a node over JSON-RPC, besides the blocks themselves.

Chain state (``chain_info``, ``check_ready``, ``tip_height``) and locating blocks: the active
chain's hashes and median times at given heights (``block_hashes``, ``median_times``, ``locate``).
The block bytes come from a ``BlockSource`` (``pipeline.source.rest``, ``rpc``, ``blockfiles``).

Not thread-safe: use one client per thread or process (``clone``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.chain.networks import Network, network_for_chain
from pipeline.source.config import NodeConfig
from pipeline.source.errors import HeightAboveTipError, NodeInInitialDownloadError, NodePrunedError
from pipeline.source.transport import Transport

log = logging.getLogger("pipeline.source.client")


@dataclass(frozen=True)
class Located:
    """A height range's place on the node's active chain."""

    heights: list[int]
    hashes: list[str]
    median_times: list[int | None]
    previous: tuple[str | None, int | None]  # the node's (hash, median time) at heights[0] - 1, if asked


class NodeClient:
    """One node, over one ``Transport``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.transport = Transport(config)

    def __repr__(self) -> str:
        return f"NodeClient({self.config.redacted()})"

    @property
    def where(self) -> str:
        return self.transport.where

    def clone(self) -> NodeClient:
        """A new client for the same node, with its own connections (for another thread or process)."""
        return NodeClient(self.config)

    def close(self) -> None:
        """Nothing stays open between requests (one connection per request); kept for symmetry."""

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------------------
    def call(self, method: str, *params: Any) -> Any:
        return self.transport.call(method, *params)

    def batch(self, calls: Sequence[tuple[str, Sequence]], max_calls: int | None = None) -> list:
        return self.transport.batch(calls, max_calls)

    # -- chain state --------------------------------------------------------------------------------
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
                f"the node at {self.where} is in initial block download: {blocks} of {headers} headers' "
                f"blocks, {progress:.2%} verified; wait until it has synced (getblockchaininfo "
                "initialblockdownload false)", progress=progress, blocks=blocks, headers=headers)
        log.debug("node %s ready: chain %s, %s blocks", self.config.redacted(), info.get("chain"),
                  info.get("blocks"))
        return info

    def tip_height(self) -> int:
        return int(self.call("getblockcount"))

    # -- locating blocks ----------------------------------------------------------------------------
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
                    f"the node at {self.where} is pruned and keeps blocks from height {prune_height} only, "
                    f"but height {min(heights)} was asked; start at >= {prune_height} or use a non-pruned "
                    "node (prune=0)", prune_height=prune_height)
        return [str(h) for h in self.batch([("getblockhash", [h]) for h in heights])]

    def median_times(self, hashes: Sequence[str]) -> list[int | None]:
        headers = self.batch([("getblockheader", [h, True]) for h in hashes])
        return [int(hd["mediantime"]) if hd.get("mediantime") is not None else None for hd in headers]

    def locate(self, lo: int, hi: int, with_previous: bool = False) -> Located:
        """The active chain's hashes and median times at heights lo..hi and, when asked, at lo - 1
        (the block a batch must link to): two batched calls, whatever the range."""
        heights = list(range(lo, hi + 1))
        skip = 1 if with_previous and lo > 0 else 0
        asked = [lo - 1, *heights] if skip else heights
        hashes = self.block_hashes(asked)
        median_times = self.median_times(hashes)
        previous = (hashes[0], median_times[0]) if skip else (None, None)
        return Located(heights, hashes[skip:], median_times[skip:], previous)


__all__ = ["NodeClient"]
