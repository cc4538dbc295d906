"""Recording coinbase spends while blocks load (docs/custody.md): which blocks can be checked, and
the coinbase index they are checked against.

A block at height h is checked (its inputs looked up by the decoder's walk, ``spend_scans`` row,
its ``coinbase_spends`` rows) only when the index holds the coinbase of every height below h, so a
recorded block's spends are all of them whatever order blocks were loaded in. The index starts
with the stored coinbases below the run (``blocks.coinbase_txid``) and grows by each block the run
decodes, in height order: a coinbase matures after 100 blocks, so a batch of 1,000 spends coinbases
of its own earlier blocks and of the blocks just before it, which may not be committed yet (the
reading thread runs a batch ahead of the commits).

When heights below the run are missing (a warehouse that starts above 0, a gap, or parallel
backfill chunks of which a lower one is still loading), the run's blocks are decoded as before
(the block files' header-and-coinbase read included) and not checked; before each batch the index
looks again whether the missing heights have been stored meanwhile, and checks the rest of the run
once they are. A block the recorder can check is read whole, also from block files (whose reader
otherwise reads only the header and coinbase of a block without a witness commitment); with
spends switched off (``poolwatch sync --no-spends``) that head-only read stays, and nothing is
checked. The loop reports the heights left unchecked and why (``SpendRecorder.skipped``).

Nothing in a run goes back to the heights it left unchecked; the catch-up does
(``pipeline.load.jobs.check_spends``, run by ``poolwatch sync`` and the backfill DAG):
``unchecked_spends`` finds the stored heights without a ``spend_scans`` row whose lower heights are
all stored, and the job loads them again through the same loop, which now checks them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipeline.chain.coinbases import CoinbaseIndex
from pipeline.chain.decode import DecodedBlock

log = logging.getLogger("pipeline.load.spends")

# Why a decoded block was not checked (keys of ``SpendRecorder.skipped``).
SKIP_MISSING = "lower heights missing"
SKIP_WORKERS = "decoded in parallel worker processes"
SKIP_OFF = "recording switched off (--no-spends)"
# How every note about blocks left unchecked begins (the CLI replaces them by the catch-up's account).
NOT_RECORDED = "coinbase spends not recorded"

# (height, coinbase txid in display hex) of the stored blocks with lo <= height <= hi.
StoredCoinbases = Callable[[int, int], list[tuple[int, str]]]


class SpendRecorder:
    """The coinbase index of one load run and when to trust it. Used by the one thread that
    decodes the run's blocks, in height order."""

    def __init__(self, stored: StoredCoinbases, index: CoinbaseIndex | None = None) -> None:
        self.index = index if index is not None else CoinbaseIndex()
        self._stored = stored
        self._known_missing: int | None = None  # a height found not stored at the last look
        self._lock = threading.Lock()
        self.checked = 0
        self.skipped: dict[str, list[tuple[int, int]]] = {}  # reason -> height ranges not checked

    @classmethod
    def for_warehouse(cls, warehouse) -> SpendRecorder:  # noqa: ANN001 - pipeline.store.warehouse.Warehouse
        def stored(lo: int, hi: int) -> list[tuple[int, str]]:
            table = warehouse.read("blocks", where=f"height BETWEEN {int(lo)} AND {int(hi)}",
                                   columns=["height", "coinbase_txid"])
            return list(zip(table.column("height").to_pylist(), table.column("coinbase_txid").to_pylist(),
                            strict=True))

        return cls(stored)

    def prepare(self, below: int) -> bool:
        """Make the index complete below ``below`` from the stored coinbases if it can; True when it
        is. Cheap when nothing changed: a height known missing is looked up alone first."""
        with self._lock:
            index = self.index
            if index.complete_below >= below:
                return True
            lo = index.complete_below
            if self._known_missing == lo and not self._stored(lo, lo):
                return False
            rows = [(h, txid) for h, txid in self._stored(lo, below - 1) if not index.has_height(h)]
            index.add_display(rows)
            self._known_missing = index.complete_below if index.complete_below < below else None
            return index.complete_below >= below

    def ready(self, height: int) -> bool:
        """The index holds the coinbase of every height below ``height`` (and none above it: the
        run adds blocks in height order), so the block at ``height`` can be checked."""
        return self.index.complete_below == height

    def decoded(self, block: DecodedBlock) -> None:
        """Count the block as checked or skipped (and why), then add its coinbase for the blocks above it."""
        with self._lock:
            if block.spends is not None:
                self.checked += 1
            else:
                # decode_raw walks every block the index is ready for: an unchecked one was not ready.
                self._skip(SKIP_MISSING, block.height, block.height)
            self.index.add_display([(block.height, block.coinbase_txid)])

    def skip(self, reason: str, lo: int, hi: int) -> None:
        """Heights lo..hi were decoded without the recorder (``reason``)."""
        with self._lock:
            self._skip(reason, lo, hi)

    def _skip(self, reason: str, lo: int, hi: int) -> None:
        ranges = self.skipped.setdefault(reason, [])
        if ranges and ranges[-1][1] == lo - 1:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))

    def summary(self) -> list[str]:
        """One line per reason heights were left unchecked, for logs and the sync result."""
        lines = []
        for reason, ranges in self.skipped.items():
            count = sum(hi - lo + 1 for lo, hi in ranges)
            shown = ", ".join(f"{lo}..{hi}" if lo != hi else str(lo) for lo, hi in ranges[:5])
            more = f" and {len(ranges) - 5} more range(s)" if len(ranges) > 5 else ""
            lines.append(f"{NOT_RECORDED} for {count} block(s) ({reason}): heights {shown}{more}")
        return lines


@dataclass(frozen=True)
class UncheckedSpends:
    """Stored blocks without a ``spend_scans`` row. ``ranges``: those whose lower heights are all
    stored (checkable now), as inclusive height ranges in order; ``waiting``: how many stored blocks
    above ``first_missing`` (the lowest height not stored, None when heights 0..tip all are) lack a
    row; they cannot be checked until that height is stored."""

    ranges: list[tuple[int, int]]
    waiting: int = 0
    first_missing: int | None = None

    @property
    def blocks(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def describe(self) -> list[str]:
        """What is left, one line each, for logs and the CLI ([] when every stored block is checked)."""
        lines = []
        if self.ranges:
            lines.append(f"{self.blocks} stored block(s) can be checked for coinbase spends: heights "
                         f"{_ranges_text(self.ranges)}")
        if self.waiting:
            lines.append(f"{self.waiting} stored block(s) above height {self.first_missing} stay unchecked for "
                         f"coinbase spends until height {self.first_missing} is stored (load it, e.g. "
                         f"`poolwatch sync --from {self.first_missing}`, and they are checked)")
        return lines


def missing_ranges(end: int, scanned: Iterable[int]) -> list[tuple[int, int]]:
    """Heights 0..end that are not in ``scanned`` (ascending), as inclusive ranges."""
    ranges: list[tuple[int, int]] = []
    expected = 0
    for height in scanned:
        if height > end:
            break
        if height > expected:
            ranges.append((expected, height - 1))
        expected = max(expected, height + 1)
    if expected <= end:
        ranges.append((expected, end))
    return ranges


def unchecked_spends(warehouse) -> UncheckedSpends:  # noqa: ANN001 - pipeline.store.warehouse.Warehouse
    """The stored blocks whose coinbase spends were not recorded (see ``UncheckedSpends``). Reads
    two height columns; a block at h can be checked when heights 0..h-1 are stored (the coinbase
    index needs every one of them), i.e. within the stored heights' prefix from 0."""
    stored = warehouse.stored_range()
    if stored is None:
        return UncheckedSpends([])
    lo, hi = stored
    if lo > 0:
        prefix_end, first_missing = -1, 0
    else:
        gaps = warehouse.gaps()
        prefix_end = gaps[0][0] - 1 if gaps else hi
        first_missing = gaps[0][0] if gaps else None
    scanned = warehouse.read("spend_scans", columns=["height"])["height"].to_pylist()
    ranges = missing_ranges(prefix_end, scanned) if prefix_end >= 0 else []
    waiting = 0
    if first_missing is not None:
        above = warehouse.read("blocks", where=f"height > {int(first_missing)}", columns=["height"]).num_rows
        waiting = above - sum(1 for h in scanned if h > first_missing)
    return UncheckedSpends(ranges, waiting, first_missing)


def _ranges_text(ranges: list[tuple[int, int]], shown: int = 5) -> str:
    text = ", ".join(f"{lo}..{hi}" if lo != hi else str(lo) for lo, hi in ranges[:shown])
    return text + (f" and {len(ranges) - shown} more range(s)" if len(ranges) > shown else "")


__all__ = ["NOT_RECORDED", "SKIP_MISSING", "SKIP_OFF", "SKIP_WORKERS", "SpendRecorder", "StoredCoinbases",
           "UncheckedSpends", "missing_ranges", "unchecked_spends"]
