"""The coinbase txids the decoder's walk looks every input up in (``CoinbaseIndex``).

Recording where coinbase outputs are spent (``coinbase_spends``, docs/custody.md) needs, while a
block at height h is walked, the txid of every coinbase below h: an input whose previous txid is
one of them spends that coinbase. The index holds them in internal byte order (as outpoints do)
with their heights, and knows which heights it holds, so the loop can tell whether it is complete
below a block (``complete_below``) before trusting a walk with it.

Two backends with the same answers: an open-addressing table in C (``pipeline/native/txscan.c``:
about 50 bytes per coinbase, ~47 MB for mainnet's ~925,000, behind a 2 MB filter that answers most
misses from cache; looked up inside the C walk without the GIL), and a dict when the C library is not built (the Python walk uses ``in``).

BIP30: two pairs of mainnet coinbases share a txid (heights 91,812/91,842 and 91,722/91,880); the
later one overwrote the earlier's outputs in the UTXO set, so a spend refers to the later block.
The index keeps the larger height for a txid seen twice, and only ever holds heights below the
block being walked, so that is the block the spend refers to.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline import native

TXID_SIZE = 32
_INITIAL_CAPACITY = 1024


def txid_bytes(display_hex: str) -> bytes:
    """Internal byte order (as outpoints hold it) of a txid shown in display order."""
    raw = bytes.fromhex(display_hex)
    if len(raw) != TXID_SIZE:
        raise ValueError(f"a txid is 32 bytes (64 hex digits), got {display_hex!r}")
    return raw[::-1]


def _slot_count(capacity: int) -> int:
    """A power of two at least twice ``capacity``: probes stay short at load factor <= 1/2."""
    size = 1
    while size < 2 * capacity:
        size <<= 1
    return size


class CoinbaseIndex:
    """Coinbase txid -> height of the block it is the coinbase of, for the heights added so far."""

    def __init__(self, capacity: int = _INITIAL_CAPACITY, *, use_c: bool | None = None) -> None:
        self._c = native._lib is not None if use_c is None else use_c
        if self._c and native._lib is None:
            raise RuntimeError("the C index was asked for but the C library is not loaded")
        self._present = bytearray()   # 1 at each height whose coinbase was added
        self._complete_below = 0      # every height below this one is present
        self._n = 0
        if self._c:
            self._allocate(max(capacity, 16))
        else:
            self._heights_of: dict[bytes, int] = {}

    # -- storage (C backend)
    def _allocate(self, capacity: int) -> None:
        keys = np.zeros((capacity, TXID_SIZE), dtype=np.uint8)
        heights = np.zeros(capacity, dtype=np.int32)
        if self._n:
            keys[:self._n] = self._keys[:self._n]
            heights[:self._n] = self._heights[:self._n]
        n_slots = _slot_count(capacity)
        # The slots, then the C side's filter of 8 bits per slot (txscan.c: pw_index_find).
        slots = np.full(n_slots + n_slots // 4, -1, dtype=np.int32)
        slots[n_slots:] = 0
        self._keys, self._heights, self._slots = keys, heights, slots
        self._mask = n_slots - 1
        native.index_rebuild(keys.ctypes.data, self._n, slots.ctypes.data, self._mask)

    def native_table(self) -> tuple[int, int, int] | None:
        """(keys pointer, slots pointer, mask) for the C walk, or None with the dict backend. The
        pointers are valid until the next ``add`` (which may reallocate)."""
        if not self._c:
            return None
        return self._keys.ctypes.data, self._slots.ctypes.data, self._mask

    # -- adding
    def add(self, txid: bytes, height: int) -> None:
        """One coinbase (txid in internal byte order)."""
        self.add_many(txid, [height])

    def add_many(self, txids: bytes, heights: Iterable[int]) -> None:
        """Coinbases given as concatenated 32-byte txids (internal byte order) and their heights."""
        heights = np.ascontiguousarray(np.fromiter(heights, dtype=np.int32))
        m = len(heights)
        if len(txids) != m * TXID_SIZE:
            raise ValueError(f"{len(txids)} bytes of txids for {m} heights (32 bytes each expected)")
        if m and int(heights.min()) < 0:
            raise ValueError(f"negative height {int(heights.min())} for a coinbase")
        if self._c:
            if self._n + m > len(self._heights):
                self._allocate(max(2 * len(self._heights), self._n + m))
            self._n = native.index_add(self._keys.ctypes.data, self._heights.ctypes.data, self._n,
                                       self._slots.ctypes.data, self._mask, bytes(txids), heights.ctypes.data, m)
        else:
            table = self._heights_of
            for i, height in enumerate(heights.tolist()):
                key = bytes(txids[i * TXID_SIZE:(i + 1) * TXID_SIZE])
                if table.get(key, -1) < height:
                    table[key] = height
            self._n = len(table)
        self._mark(heights.tolist())

    def add_display(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Coinbases as (height, txid in display hex), e.g. rows of the stored ``blocks`` table."""
        rows = list(pairs)
        hexes = "".join(txid for _, txid in rows)
        if len(hexes) != 2 * TXID_SIZE * len(rows):
            bad = next(txid for _, txid in rows if len(txid) != 2 * TXID_SIZE)
            raise ValueError(f"a txid is 32 bytes (64 hex digits), got {bad!r}")
        # All at once (a run starts from every stored coinbase: ~925,000 on mainnet): display order
        # is the byte reverse of each 32-byte txid.
        display = np.frombuffer(bytes.fromhex(hexes), dtype=np.uint8).reshape(-1, TXID_SIZE)
        self.add_many(np.ascontiguousarray(display[:, ::-1]).tobytes(), (h for h, _ in rows))

    def _mark(self, heights: list[int]) -> None:
        if not heights:
            return
        top = max(heights)
        if top >= len(self._present):
            self._present.extend(bytes(top + 1 - len(self._present) + 1024))
        present = np.frombuffer(self._present, dtype=np.uint8)
        present[np.asarray(heights, dtype=np.int64)] = 1
        gaps = np.flatnonzero(present[self._complete_below:] == 0)
        self._complete_below += int(gaps[0]) if len(gaps) else len(present) - self._complete_below

    # -- asking
    @property
    def complete_below(self) -> int:
        """Every height below this one has its coinbase in the index (0: not even genesis)."""
        return self._complete_below

    def has_height(self, height: int) -> bool:
        return 0 <= height < len(self._present) and bool(self._present[height])

    def __len__(self) -> int:
        return self._n

    def __contains__(self, txid: object) -> bool:
        return self.height_of(txid) is not None  # type: ignore[arg-type]

    def height_of(self, txid: bytes) -> int | None:
        """Height of the coinbase with this txid (internal byte order), or None."""
        if len(txid) != TXID_SIZE:
            return None
        if not self._c:
            return self._heights_of.get(bytes(txid))
        k = native.index_find(self.native_table(), bytes(txid))  # type: ignore[arg-type]
        return None if k < 0 else int(self._heights[k])


__all__ = ["CoinbaseIndex", "TXID_SIZE", "txid_bytes"]
