"""Optional C speed-up of the decoder's transaction walk, loaded with ctypes.

``pipeline/native/txscan.c`` is compiled when the package is installed (``hatch_build.py``; any C
compiler, no Python headers) into ``_txscan.so`` next to this file. Walking every transaction of a
full block is the cost of decoding it: about 3-11 ms in Python, under 0.1 ms in C. Without the
library (no compiler at install time, or ``POOLWATCH_PURE_PYTHON=1``) the decoder uses the Python
reference walk and gives identical results, only slower; ``poolwatch status`` says which one runs.

The same library holds the coinbase txid index the walk looks inputs up in (open addressing over
32-byte txids, ``pipeline.chain.coinbases.CoinbaseIndex`` owns its arrays) and the walk with that
lookup (``scan_spends``).

ctypes releases the GIL for the duration of the call, so a fetching thread keeps receiving the
next block while this one is walked.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("pipeline.native")

LIBRARY = Path(__file__).with_name("_txscan.so")
DISABLE_ENV = "POOLWATCH_PURE_PYTHON"
# uint64 fields per reported coinbase spend (txscan.c MATCH_FIELDS): transaction index, input
# index, vout, outpoint offset, transaction start, body start, body end, transaction end.
MATCH_FIELDS = 8
# Room for this many spends per call before a second call with room for all (a block with more
# coinbase spends than this is rare: consolidations of a pool's rewards).
_FIRST_MATCHES = 256

_u64 = ctypes.c_uint64
_u64p = ctypes.POINTER(_u64)
_ptr = ctypes.c_void_p


def _load() -> ctypes.CDLL | None:
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return None
    if not LIBRARY.exists():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as exc:
        log.warning("could not load the decoder's C walk %s (%s); using the Python walk, which is slower. "
                    "Reinstall the package with a C compiler present to rebuild it", LIBRARY, exc)
        return None
    try:
        lib.pw_scan_transactions.argtypes = [ctypes.c_char_p, _u64, _u64, _u64, _u64p, _u64p]
        lib.pw_scan_transactions.restype = ctypes.c_int
        lib.pw_scan_spends.argtypes = [ctypes.c_char_p, _u64, _u64, _u64, _ptr, _ptr, _u64, _ptr, _u64, _u64p,
                                       _u64p, _u64p, _u64p]
        lib.pw_scan_spends.restype = ctypes.c_int
        lib.pw_index_find.argtypes = [_ptr, _ptr, _u64, ctypes.c_char_p]
        lib.pw_index_find.restype = ctypes.c_int64
        lib.pw_index_rebuild.argtypes = [_ptr, _u64, _ptr, _u64]
        lib.pw_index_rebuild.restype = None
        lib.pw_index_add.argtypes = [_ptr, _ptr, _u64, _ptr, _u64, ctypes.c_char_p, _ptr, _u64]
        lib.pw_index_add.restype = _u64
    except AttributeError as exc:  # a library built from an older txscan.c
        log.warning("the decoder's C walk %s is out of date (%s); using the Python walk. Reinstall the package "
                    "(`make install`) to rebuild it", LIBRARY, exc)
        return None
    return lib


_lib = _load()
_scan = _lib.pw_scan_transactions if _lib is not None else None
AVAILABLE = _scan is not None


def scan_transactions(raw: bytes, pos: int, count: int) -> tuple[int, int] | None:
    """(end position, witness bytes) of ``count`` transactions from ``pos``; None if the data is
    malformed (the caller re-walks in Python for the error message) or the library is absent."""
    if _scan is None:
        return None
    end = _u64()
    witness = _u64()
    if _scan(raw, len(raw), pos, count, ctypes.byref(end), ctypes.byref(witness)) != 0:
        return None
    return end.value, witness.value


def scan_spends(raw: bytes, pos: int, count: int, table: tuple[int, int, int]
                ) -> tuple[int, int, int, list[tuple[int, ...]]] | None:
    """The walk plus the coinbase lookup in ``table`` (keys pointer, slots pointer, mask: see
    ``CoinbaseIndex.native_table``): (end, witness bytes, inputs walked, one tuple of MATCH_FIELDS
    ints per input that spends an indexed coinbase, in block order). None when the data is
    malformed or the library is absent (also when ``_scan`` was switched off, as tests and the
    decode benchmark do to time the Python walk)."""
    if _scan is None or _lib is None:
        return None
    keys, slots, mask = table
    end, witness, inputs, found = _u64(), _u64(), _u64(), _u64()
    room = _FIRST_MATCHES
    while True:
        matches = (_u64 * (room * MATCH_FIELDS))()
        if _lib.pw_scan_spends(raw, len(raw), pos, count, keys, slots, mask, matches, room, ctypes.byref(found),
                               ctypes.byref(end), ctypes.byref(witness), ctypes.byref(inputs)) != 0:
            return None
        if found.value <= room:
            break
        room = found.value  # more spends than room: walk again with room for every one
    flat = matches[:found.value * MATCH_FIELDS]
    rows = [tuple(flat[i:i + MATCH_FIELDS]) for i in range(0, len(flat), MATCH_FIELDS)]
    return end.value, witness.value, inputs.value, rows


def index_find(table: tuple[int, int, int], txid: bytes) -> int:
    """Position of ``txid`` (32 bytes) among the index's keys, or -1."""
    assert _lib is not None, "the C library is not loaded"
    keys, slots, mask = table
    return int(_lib.pw_index_find(keys, slots, mask, txid))


def index_rebuild(keys: int, n: int, slots: int, mask: int) -> None:
    """Fill ``slots`` (all -1) for the first ``n`` keys."""
    assert _lib is not None, "the C library is not loaded"
    _lib.pw_index_rebuild(keys, n, slots, mask)


def index_add(keys: int, heights: int, n: int, slots: int, mask: int, txids: bytes, new_heights: Any, m: int) -> int:
    """Add ``m`` txids (``txids``: m x 32 bytes) with their heights (pointer to m int32); returns
    the new number of keys (a txid already present keeps the larger height)."""
    assert _lib is not None, "the C library is not loaded"
    return int(_lib.pw_index_add(keys, heights, n, slots, mask, txids, new_heights, m))


def implementation() -> str:
    """"C" or "Python": which transaction walk the decoder uses in this process."""
    return "C" if AVAILABLE else "Python"
