"""Raw blocks over Core's REST interface: ``GET /rest/block/<hash>.bin`` (the node runs ``-rest``).

About ten times faster than ``getblock <hash> 0`` (no hex, no JSON, no credentials), one request at
a time: two in flight measured no faster on 2 cores, where the node and this process already use
both (docs/performance.md).
"""

from __future__ import annotations

import logging
import re

from pipeline.chain.decode import header_hash
from pipeline.source.base import BlockSource, Located, RawBlock
from pipeline.source.client import NodeClient
from pipeline.source.errors import RPC_INVALID_ADDRESS_OR_KEY, NodeError, NodePrunedError, NodeRPCError

log = logging.getLogger("pipeline.source.rest")

_HASH = re.compile(r"[0-9a-fA-F]{64}")


def rest_available(client: NodeClient) -> bool:
    """Whether the node serves REST (``/rest/chaininfo.json`` answers 200); said in the log."""
    status, _ = client.transport.get("/rest/chaininfo.json", "REST probe")
    if status == 200:
        log.info("node %s serves REST; reading raw blocks via /rest/block", client.where)
        return True
    log.info("node %s has no REST interface (HTTP %d); reading blocks with getblock <hash> 0 over RPC. "
             "Start bitcoind with -rest for ~10x faster block reads", client.where, status)
    return False


def check_block_hash(expected: str, raw: bytes, where: str) -> None:
    """The node's bytes must hash to the block asked for: never store anything else."""
    if len(raw) < 80:
        raise NodeError(f"block {expected}: the node at {where} returned {len(raw)} bytes, less than a block header")
    got = header_hash(raw[:80])
    if got != expected.lower():
        raise NodeError(f"the node at {where} returned a block whose header hashes to {got}, not the asked {expected}")


class RestSource(BlockSource):
    kind = "rest"

    def read(self, located: Located, start: int = 0, stop: int | None = None) -> list[RawBlock]:
        out = []
        rows = zip(located.heights[start:stop], located.hashes[start:stop], located.median_times[start:stop],
                   strict=True)
        for height, block_hash, mtp in rows:
            data = self.fetch(block_hash)
            out.append(RawBlock(height, block_hash, mtp, data, len(data)))
        return out

    def fetch(self, block_hash: str) -> bytes:
        if not _HASH.fullmatch(block_hash):
            raise ValueError(f"block hash {block_hash!r} is not 64 hex digits")
        transport = self.client.transport
        status, data = transport.get(f"/rest/block/{block_hash}.bin", "REST block")
        if status == 200:
            check_block_hash(block_hash, data, transport.where)
            return data
        text = data[:300].decode("utf-8", "replace").strip()
        if status == 503:
            raise NodeError(f"REST block at {transport.where}: HTTP 503 ({text}); the node is overloaded")
        if status in (403, 404) and "pruned" in text.lower():
            prune_height = transport.prune_height_or_none()
            raise NodePrunedError(f"the node at {transport.where} has pruned block {block_hash} ({text}); it keeps "
                                  f"blocks from height {prune_height}", prune_height=prune_height)
        if status == 404 and text:  # REST is on but the block is unknown
            raise NodeRPCError(f"block {block_hash} not found on the node at {transport.where} ({text})",
                               code=RPC_INVALID_ADDRESS_OR_KEY, rpc_message="Block not found")
        if status in (403, 404):
            raise NodeError(f"the node at {transport.where} stopped serving REST (HTTP {status}); restart it "
                            "with -rest, or read over RPC (--no-rest)")
        raise NodeError(f"REST block {block_hash} at {transport.where}: unexpected HTTP {status} ({text})")


__all__ = ["RestSource", "check_block_hash", "rest_available"]
