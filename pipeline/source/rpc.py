"""Raw blocks over JSON-RPC: batched ``getblock <hash> 0`` (hex), for nodes without REST.

Verbosity 0 on purpose: verbosity 2 is ~10x slower on the node and we decode the bytes ourselves.
Replies are hex of up to 4 MB blocks, so a batch holds few calls (``NodeConfig.block_batch_size``).
"""

from __future__ import annotations

from pipeline.source.base import BlockSource, Located, RawBlock
from pipeline.source.rest import check_block_hash


class RpcSource(BlockSource):
    kind = "rpc"

    def read(self, located: Located, start: int = 0, stop: int | None = None) -> list[RawBlock]:
        hashes = located.hashes[start:stop]
        replies = self.client.batch([("getblock", [h, 0]) for h in hashes], self.client.config.block_batch_size)
        out = []
        for height, block_hash, mtp, hex_block in zip(located.heights[start:stop], hashes,
                                                      located.median_times[start:stop], replies, strict=True):
            data = bytes.fromhex(hex_block)
            check_block_hash(block_hash, data, self.client.where)
            out.append(RawBlock(height, block_hash, mtp, data, len(data)))
        return out


__all__ = ["RpcSource"]
