"""``BlockSource``: where a batch's raw blocks come from.

A source locates heights on the node's active chain (hashes and median times, over JSON-RPC: the
node alone knows which blocks are active) and reads their bytes: over REST (``rest.py``), JSON-RPC
``getblock <hash> 0`` (``rpc.py``) or straight from the node's block files (``blockfiles.py``). It
returns bytes only; decoding is the loop's (``pipeline.load.loop``). A source may return just the
first bytes of a block (its header and coinbase) when that is all the decoder needs; the decoder
says when it needs the rest (``read_whole``).

Each source can be cloned (own connections and file handles, for another thread) and described by a
picklable ``SourceRecipe`` from which a worker process builds its own
(``pipeline.source.choice.open_source``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.chain.networks import Network
from pipeline.source.client import Located, NodeClient  # noqa: F401 (Located: part of this interface)

if TYPE_CHECKING:
    from pipeline.source.config import NodeConfig

KINDS = ("rest", "rpc", "blkfiles")


@dataclass(frozen=True)
class RawBlock:
    """A block's bytes as a source read them: the whole block, or its first bytes when ``size`` is
    larger (a block-file read of header and coinbase)."""

    height: int
    hash: str
    median_time: int | None
    data: bytes
    size: int
    where: str = ""  # for messages: which file and offset, when it came from one

    @property
    def whole(self) -> bool:
        return len(self.data) >= self.size


@dataclass(frozen=True)
class SourceRecipe:
    """How to build a source in another process (nothing open, nothing secret beyond NodeConfig's).
    ``node`` None: a source that only reads (block files), for workers given located batches."""

    kind: str
    node: NodeConfig | None
    network: str
    blocks_dir: str | None = None


class BlockSource(ABC):
    """Locate heights, read raw (or head) bytes. Not thread-safe: ``clone`` for another thread."""

    kind: str

    def __init__(self, client: NodeClient | None, network: Network) -> None:
        self.client = client
        self.network = network

    def locate(self, lo: int, hi: int, with_previous: bool = False) -> Located:
        if self.client is None:
            raise RuntimeError(f"this {self.kind} source was built to read located batches only")
        return self.client.locate(lo, hi, with_previous)

    @abstractmethod
    def read(self, located: Located, start: int = 0, stop: int | None = None) -> list[RawBlock]:
        """The blocks ``located.heights[start:stop]``, in order."""

    def read_whole(self, raw: RawBlock) -> RawBlock:
        """The whole block when ``raw`` holds only its first bytes."""
        return raw

    def recipe(self) -> SourceRecipe:
        return SourceRecipe(self.kind, getattr(self.client, "config", None), self.network.name)

    def _client_clone(self) -> NodeClient | None:
        """Own connections when the client can make them; a node-shaped stand-in (tests) is shared."""
        clone = getattr(self.client, "clone", None)
        return clone() if clone is not None else self.client

    def clone(self) -> BlockSource:
        """The same source with its own connections (and file handles), for another thread."""
        return type(self)(self._client_clone(), self.network)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BlockSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BlockSource", "KINDS", "Located", "RawBlock", "SourceRecipe"]
