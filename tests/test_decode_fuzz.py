"""Fuzzing the decoder: garbage, truncations and bit flips of real blocks raise DecodeError or decode.

Never another exception, never a hang (every test is bounded by hypothesis' example count and the
decoder's own count-versus-bytes-left checks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.chain.decode import DecodeError, coinbase_tag, decode_block, parse_coinbase
from pipeline.load.tables import blocks_to_tables
from pipeline.chain.networks import MAIN
from pipeline.chain.scripts import SCRIPT_TYPES, address_to_script, classify, script_to_address
from conftest import FIXTURES  # tests/ is on sys.path (pytest prepend import mode)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Small real blocks keep each example fast: a segwit block (9 kB, 12 txs) and a 2009 block.
_SEGWIT = FIXTURES / "bcoin-org+bcoin/block482683.raw"
_OLD = FIXTURES / "bcoin-org+bcoin/block1.raw"


def _real_blocks() -> list[bytes]:
    if not _SEGWIT.exists():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return [_SEGWIT.read_bytes(), _OLD.read_bytes()]


def _decode_or_decode_error(raw: bytes) -> None:
    try:
        block = decode_block(raw, MAIN, height=500_000)
    except DecodeError:
        return
    # Whatever decodes must be self-consistent.
    assert block.size == len(raw)
    assert block.weight == 3 * block.stripped_size + block.size
    assert all(o.script_type in SCRIPT_TYPES for o in block.outputs)
    assert blocks_to_tables([block])["blocks"].num_rows == 1  # the writer accepts whatever decodes


@FUZZ
@given(data=st.binary(max_size=4000))
def test_random_bytes(data: bytes) -> None:
    _decode_or_decode_error(data)


@FUZZ
@given(data=st.binary(min_size=0, max_size=400))
def test_random_bytes_after_a_real_header(data: bytes) -> None:
    header = _OLD.read_bytes()[:80] if _OLD.exists() else bytes(80)
    _decode_or_decode_error(header + data)


@FUZZ
@given(which=st.integers(0, 1), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_real_blocks(which: int, cut: float) -> None:
    raw = _real_blocks()[which]
    with pytest.raises(DecodeError):
        decode_block(raw[:int(len(raw) * cut)], MAIN, height=1)


@FUZZ
@given(which=st.integers(0, 1), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                                                  min_size=1, max_size=4))
def test_bit_flips(which: int, flips: list[tuple[float, int]]) -> None:
    raw = bytearray(_real_blocks()[which])
    for where, bit in flips:
        raw[int(len(raw) * where)] ^= 1 << bit
    _decode_or_decode_error(bytes(raw))


@FUZZ
@given(data=st.binary(max_size=300))
def test_coinbase_parser_and_tag(data: bytes) -> None:
    try:
        parse_coinbase(data)
    except DecodeError:
        pass
    assert isinstance(coinbase_tag(data), str)


@FUZZ
@given(data=st.binary(max_size=60))
def test_scripts_never_fail(data: bytes) -> None:
    assert classify(data) in SCRIPT_TYPES
    address = script_to_address(data, MAIN)
    if address is not None:
        assert address_to_script(address) == (data, MAIN)


@FUZZ
@given(text=st.text(max_size=100))
def test_address_parser_only_raises_value_error(text: str) -> None:
    try:
        address_to_script(text)
    except ValueError:
        pass


@FUZZ
@given(data=st.binary(max_size=300), key=st.sampled_from([bytes(8), bytes(range(1, 9))]))
def test_blk_file_scan_never_raises_and_stays_in_the_file(data: bytes, key: bytes) -> None:
    """The block-file indexer (pipeline.source.blockfiles.scan_file) on arbitrary bytes after a
    magic: no exception, and every record it indexes lies inside the file."""
    import tempfile

    from pipeline.source.blockfiles import scan_file, xor_at

    stream = xor_at(MAIN.magic + data, key, 0)
    with tempfile.TemporaryFile() as f:
        f.write(stream)
        f.flush()
        result = scan_file(f.fileno(), 0, len(stream), MAIN.magic, key)
    assert 0 <= result.resume_at <= len(stream)
    for _, loc in result.records:
        assert 8 <= loc.offset and loc.offset + loc.length <= len(stream)


def test_fixture_paths_exist_when_shared_is_present() -> None:
    if FIXTURES.is_dir():
        assert Path(_SEGWIT).exists() and Path(_OLD).exists()
