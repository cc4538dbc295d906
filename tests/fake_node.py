"""A node-shaped stand-in over a dict height -> raw block, for tests of sources and the loop that
need no node process: the RPC side (``locate``, ``block_hashes``, ``median_times``) and a
``BlockSource`` that serves the raw bytes (``FakeSource``), plus ``decoded``: what the loop's read
and decode stages give for a list of heights (the reference the other sources must equal)."""

from __future__ import annotations

import struct

from pipeline.chain.decode import DecodedBlock, header_hash
from pipeline.chain.networks import Network
from pipeline.load.loop import read_decoded
from pipeline.source.base import BlockSource, Located, RawBlock


class FakeNode:
    """The RPC calls a source makes to locate blocks, served from ``chain``. ``median_times``: Core's
    median time past (median of the header times of the block and up to 10 before it), or None."""

    def __init__(self, chain: dict[int, bytes], median_times: bool = True) -> None:
        self.by_height = chain
        self.by_hash = {header_hash(raw): raw for raw in chain.values()}
        self.height_of = {header_hash(raw): h for h, raw in chain.items()}
        self.with_median_times = median_times

    def block_hashes(self, heights, require_blocks: bool = True):
        return [header_hash(self.by_height[h]) for h in heights]

    def median_times(self, hashes):
        if not self.with_median_times:
            return [None for _ in hashes]
        out = []
        for h in hashes:
            height = self.height_of[h]
            times = [struct.unpack_from("<I", self.by_height[x], 68)[0]
                     for x in range(max(min(self.by_height), height - 10), height + 1)]
            out.append(sorted(times)[len(times) // 2])
        return out

    def locate(self, lo: int, hi: int, with_previous: bool = False) -> Located:
        heights = list(range(lo, hi + 1))
        hashes = self.block_hashes(heights)
        previous: tuple[str | None, int | None] = (None, None)
        if with_previous and lo > 0 and lo - 1 in self.by_height:
            prev_hash = self.block_hashes([lo - 1])[0]
            previous = (prev_hash, self.median_times([prev_hash])[0])
        return Located(heights, hashes, self.median_times(hashes), previous)


class FakeSource(BlockSource):
    """Raw blocks straight from a FakeNode's dict (whole blocks, as REST or RPC give them)."""

    kind = "rest"

    def read(self, located: Located, start: int = 0, stop: int | None = None) -> list[RawBlock]:
        rows = zip(located.heights[start:stop], located.hashes[start:stop], located.median_times[start:stop],
                   strict=True)
        return [RawBlock(h, x, mtp, self.client.by_hash[x], len(self.client.by_hash[x])) for h, x, mtp in rows]


def decoded(source: BlockSource, heights: list[int]) -> list[DecodedBlock]:
    """The loop's read + decode stages over consecutive ``heights``."""
    return read_decoded(source, source.locate(heights[0], heights[-1]))


def fake_source(chain: dict[int, bytes], network: Network, median_times: bool = True) -> FakeSource:
    return FakeSource(FakeNode(chain, median_times), network)
