"""The C transaction walk (pipeline.native) against the Python reference walk it replaces.

Same (end, witness bytes) on every real block and on generated transactions; on malformed data it
refuses exactly when the Python walk raises, so the decoder's results never depend on which runs.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import native
from pipeline.chain.decode import HEADER_SIZE, DecodeError, _read_varint, _scan_transactions, decode_block, parse_coinbase
from pipeline.chain.networks import MAIN
from conftest import FIXTURES  # tests/ is on sys.path (pytest prepend import mode)
from test_decode import load_block, manifest, varint

needs_native = pytest.mark.skipif(not native.AVAILABLE, reason="the C walk is not built (no C compiler at install)")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_the_c_walk_is_built_where_a_compiler_exists() -> None:
    # CI and `make install` have cc: a broken build hook must fail here, not silently run 50x slower.
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the Python walk is the expected one")
    if os.environ.get(native.DISABLE_ENV, "").strip() not in ("", "0"):
        pytest.skip(f"{native.DISABLE_ENV} is set")
    assert native.LIBRARY.exists(), f"{native.LIBRARY} missing: reinstall with `make install` (hatch_build.py builds it)"
    assert native.AVAILABLE and native.implementation() == "C"


def _python_walk(raw: bytes, pos: int, count: int) -> tuple[int, int] | None:
    try:
        return _scan_transactions(raw, pos, count)
    except (DecodeError, IndexError, ValueError):
        return None


def _tx_region(raw: bytes) -> tuple[int, int]:
    count, pos = _read_varint(raw, HEADER_SIZE)
    return pos + parse_coinbase(raw, pos).size, count - 1


def _real_blocks() -> list[bytes]:
    if not (FIXTURES / "MANIFEST.tsv").exists():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return [load_block(FIXTURES / row["file"]) for row in manifest(FIXTURES)]


@needs_native
def test_same_walk_on_every_real_block() -> None:
    blocks = _real_blocks()
    assert len(blocks) > 20
    witness_blocks = 0
    for raw in blocks:
        pos, count = _tx_region(raw)
        expected = _scan_transactions(raw, pos, count)
        assert native.scan_transactions(raw, pos, count) == expected
        assert expected[0] == len(raw)
        witness_blocks += expected[1] > 0
    assert witness_blocks >= 3  # the comparison covered segwit serialization, not only legacy blocks


@needs_native
@FUZZ
@given(data=st.data())
def test_same_answer_on_truncated_and_bit_flipped_blocks(data: st.DataObject) -> None:
    blocks = [raw for raw in _real_blocks() if len(raw) < 300_000 and _tx_region(raw)[1] > 0]
    raw = bytearray(data.draw(st.sampled_from(blocks)))
    pos, count = _tx_region(bytes(raw))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(pos, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    raw = raw[:data.draw(st.integers(pos, len(raw)))]
    count = data.draw(st.sampled_from([count, count + 1, max(0, count - 1)]))
    assert native.scan_transactions(bytes(raw), pos, count) == _python_walk(bytes(raw), pos, count)


def _tx(segwit: bool, inputs: list[tuple[bytes, list[bytes]]], outputs: list[bytes]) -> bytes:
    body = varint(len(inputs)) + b"".join(b"\x11" * 36 + varint(len(s)) + s + b"\xff" * 4 for s, _ in inputs)
    body += varint(len(outputs)) + b"".join(b"\x01" * 8 + varint(len(s)) + s for s in outputs)
    witness = b"".join(varint(len(items)) + b"".join(varint(len(i)) + i for i in items) for _, items in inputs)
    return b"\x02\x00\x00\x00" + (b"\x00\x01" if segwit else b"") + body + (witness if segwit else b"") + b"\x00" * 4


_script = st.binary(max_size=300)
_input = st.tuples(_script, st.lists(st.binary(max_size=600), max_size=4))
_txs = st.lists(st.tuples(st.booleans(), st.lists(_input, min_size=1, max_size=4), st.lists(_script, min_size=1,
                                                                                           max_size=4)),
                min_size=0, max_size=8)


@needs_native
@FUZZ
@given(txs=_txs, garbage=st.binary(max_size=8))
def test_same_walk_on_generated_transactions(txs, garbage: bytes) -> None:
    # Lengths up to 600 bytes exercise the 0xfd CompactSize form; garbage after the last one must
    # not change where the walk says the transactions end.
    raw = b"".join(_tx(*t) for t in txs)
    expected = _scan_transactions(raw + garbage, 0, len(txs))
    assert expected[0] == len(raw)
    assert native.scan_transactions(raw + garbage, 0, len(txs)) == expected


@needs_native
def test_decode_block_same_with_and_without_the_c_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    raws = _real_blocks()[:40]
    with_c = [decode_block(raw, MAIN, height=1) for raw in raws]
    monkeypatch.setattr(native, "_scan", None)
    assert [decode_block(raw, MAIN, height=1) for raw in raws] == with_c


@needs_native
def test_error_messages_come_from_the_python_walk() -> None:
    raw = load_block(FIXTURES / "bcoin-org+bcoin/block482683.raw") if (FIXTURES / "bcoin-org+bcoin").exists() \
        else pytest.skip("no fixtures")
    with pytest.raises(DecodeError, match="trailing bytes|runs past|cannot fit|truncated"):
        decode_block(raw[:-3], MAIN, height=482683)
