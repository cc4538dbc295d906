"""Optional C speed-up of the decoder's transaction walk, loaded with ctypes.

``pipeline/native/txscan.c`` is compiled when the package is installed (``hatch_build.py``; any C
compiler, no Python headers) into ``_txscan.so`` next to this file. Walking every transaction of a
full block is the cost of decoding it: about 3-11 ms in Python, under 0.1 ms in C. Without the
library (no compiler at install time, or ``POOLWATCH_PURE_PYTHON=1``) the decoder uses the Python
reference walk and gives identical results, only slower; ``poolwatch status`` says which one runs.

ctypes releases the GIL for the duration of the call, so a fetching thread keeps receiving the
next block while this one is walked.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger("pipeline.native")

LIBRARY = Path(__file__).with_name("_txscan.so")
DISABLE_ENV = "POOLWATCH_PURE_PYTHON"


def _load() -> ctypes._NamedFuncPointer | None:  # type: ignore[name-defined]
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
    func = lib.pw_scan_transactions
    u64 = ctypes.c_uint64
    func.argtypes = [ctypes.c_char_p, u64, u64, u64, ctypes.POINTER(u64), ctypes.POINTER(u64)]
    func.restype = ctypes.c_int
    return func


_scan = _load()
AVAILABLE = _scan is not None


def scan_transactions(raw: bytes, pos: int, count: int) -> tuple[int, int] | None:
    """(end position, witness bytes) of ``count`` transactions from ``pos``; None if the data is
    malformed (the caller re-walks in Python for the error message) or the library is absent."""
    if _scan is None:
        return None
    end = ctypes.c_uint64()
    witness = ctypes.c_uint64()
    if _scan(raw, len(raw), pos, count, ctypes.byref(end), ctypes.byref(witness)) != 0:
        return None
    return end.value, witness.value


def implementation() -> str:
    """"C" or "Python": which transaction walk the decoder uses in this process."""
    return "C" if AVAILABLE else "Python"
