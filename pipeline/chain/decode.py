"""Raw block bytes -> ``DecodedBlock`` (header, coinbase, outputs), plus the coinbase and script facts the tables need.

Only the header and the coinbase transaction are decoded into fields. The other transactions are
walked by ``scan_transactions`` just far enough to learn the block's size, stripped size and weight:
no object per transaction. The walk runs in C (``pipeline.native``, built at install) when it is
available, a full-size block then decodes in well under a millisecond; the Python reference walk,
used otherwise and for error messages, takes about 3-11 ms (figures in docs/decoding.md).

Given the coinbase txids of the lower blocks (``decode_block(..., coinbases=...)``, a
``pipeline.chain.coinbases.CoinbaseIndex``), the same walk looks every input's previous txid up and
reports the inputs that spend a coinbase (``DecodedBlock.spends``, docs/custody.md); only the
transactions holding such an input are hashed, for their txid.

``DecodeError`` is the only exception raised for bad bytes: every parser error (short reads,
impossible counts, trailing garbage) is turned into one with a message naming the problem and the
byte offset.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from typing import Protocol


from pipeline import native
from pipeline.chain.networks import Network, block_subsidy
from pipeline.chain.scripts import classify, script_to_address

HEADER_SIZE = 80
# Smallest possible serialized parts; used to reject absurd counts before looping over them.
_MIN_TX_SIZE = 60        # version 4 + 1 + one input 41 + 1 + one output 9 + locktime 4
_MIN_INPUT_SIZE = 41     # outpoint 36 + script length 1 + sequence 4
_MIN_OUTPUT_SIZE = 9     # value 8 + script length 1
_NULL_OUTPOINT = b"\x00" * 32 + b"\xff\xff\xff\xff"
# Core's MAX_MONEY: an output or total above it (or below 0) is invalid, and would overflow int64 sums.
MAX_MONEY = 21_000_000 * 100_000_000


class DecodeError(ValueError):
    """Malformed, truncated or non-block bytes. The only exception the decoder raises on bad input."""


@dataclass(frozen=True)
class CoinbaseOutput:
    index: int
    value_sat: int
    script_hex: str
    script_type: str
    address: str | None


@dataclass(frozen=True)
class CoinbaseSpend:
    """An input of a block's transaction that spends an output of an earlier block's coinbase."""

    tx_index: int          # position of the spending transaction in its block (the coinbase is 0)
    input_index: int       # position of the input in that transaction
    txid: str              # the spending transaction's txid (display order)
    coinbase_txid: str     # the spent coinbase's txid (display order)
    coinbase_vout: int     # the spent output's index in that coinbase
    coinbase_height: int   # height of the block whose coinbase it is


class CoinbaseLookup(Protocol):
    """What the walk needs of a coinbase index (``pipeline.chain.coinbases.CoinbaseIndex``)."""

    def __contains__(self, txid: object) -> bool: ...

    def height_of(self, txid: bytes) -> int | None: ...

    def native_table(self) -> tuple[int, int, int] | None: ...


@dataclass(frozen=True)
class DecodedBlock:
    """Field names are the columns of schemas/tables/blocks.json, plus ``outputs`` and, when the
    block was walked with a coinbase index, ``spends`` and ``inputs`` (None otherwise: not checked)."""

    height: int
    hash: str
    prev_hash: str
    merkle_root: str
    version: int
    time: int
    median_time: int | None
    bits: str
    nonce: int
    difficulty: float
    size: int
    stripped_size: int
    weight: int
    tx_count: int
    coinbase_txid: str
    coinbase_wtxid: str
    coinbase_version: int
    coinbase_locktime: int
    coinbase_script_sig_hex: str
    coinbase_tag: str
    coinbase_bip34_height: int | None
    coinbase_sequence: int
    coinbase_witness_reserved_hex: str | None
    coinbase_value_sat: int
    subsidy_sat: int
    fees_sat: int
    output_count: int
    outputs: tuple[CoinbaseOutput, ...]
    spends: tuple[CoinbaseSpend, ...] | None = None   # inputs spending a coinbase of the index
    inputs: int | None = None                          # inputs of the non-coinbase transactions walked


@dataclass(frozen=True)
class Coinbase:
    """The parsed coinbase transaction (also usable on its own, e.g. on a getblock coinbase hex)."""

    txid: str
    wtxid: str
    version: int
    locktime: int
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...]
    outputs: tuple[tuple[int, bytes], ...]   # (value_sat, scriptPubKey)
    size: int            # serialized bytes, witness included
    stripped_size: int   # without marker, flag and witness


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _display(digest: bytes) -> str:
    """Hashes are shown byte-reversed, as Bitcoin Core prints them."""
    return digest[::-1].hex()


def header_hash(header: bytes) -> str:
    """A block's hash (display order) from its first 80 bytes."""
    return _display(sha256d(header[:80]))


def difficulty_from_bits(bits: int) -> float:
    """Bitcoin Core's GetDifficulty, step for step, so the float is bit-identical to getblock's."""
    mantissa = bits & 0x00FFFFFF
    if mantissa == 0:
        raise DecodeError(f"nBits 0x{bits:08x} has a zero mantissa (no valid target)")
    shift = (bits >> 24) & 0xFF
    diff = float(0x0000FFFF) / float(mantissa)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """CompactSize at ``pos`` -> (value, next position); IndexError/struct.error on a short read."""
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    if first == 0xFD:
        return struct.unpack_from("<H", raw, pos + 1)[0], pos + 3
    if first == 0xFE:
        return struct.unpack_from("<I", raw, pos + 1)[0], pos + 5
    return struct.unpack_from("<Q", raw, pos + 1)[0], pos + 9


def _check_count(count: int, min_item: int, pos: int, end: int, what: str) -> None:
    if count * min_item > end - pos:
        raise DecodeError(f"{what} count {count} at offset {pos} cannot fit in the {end - pos} bytes left")


def parse_coinbase(raw: bytes, pos: int = 0) -> Coinbase:
    """Parse the coinbase transaction starting at ``pos`` (segwit serialization understood)."""
    try:
        return _parse_coinbase(raw, pos)
    except DecodeError:
        raise
    except (IndexError, struct.error, ValueError, OverflowError) as exc:
        raise DecodeError(f"truncated or malformed coinbase transaction at offset {pos}: {exc}") from None


def _parse_coinbase(raw: bytes, start: int) -> Coinbase:
    end = len(raw)
    if end - start < 60:  # smallest transaction: version 4 + 1 + input 41 + 1 + output 9 + locktime 4
        raise DecodeError(f"coinbase transaction at offset {start} is truncated ({end - start} bytes left)")
    (version,) = struct.unpack_from("<I", raw, start)
    pos = start + 4
    segwit = raw[pos] == 0
    if segwit:
        if raw[pos + 1] != 1:
            raise DecodeError(f"coinbase at offset {start}: segwit marker followed by flag {raw[pos + 1]}, expected 1")
        pos += 2
    body_start = pos
    n_in, pos = _read_varint(raw, pos)
    if n_in != 1:
        raise DecodeError(f"first transaction has {n_in} inputs; a coinbase has exactly one")
    if raw[pos:pos + 36] != _NULL_OUTPOINT:
        raise DecodeError("first transaction does not spend the null outpoint: not a coinbase")
    pos += 36
    script_len, pos = _read_varint(raw, pos)
    if pos + script_len + 4 > end:
        raise DecodeError(f"coinbase scriptSig of {script_len} bytes runs past the end of the data")
    script_sig = bytes(raw[pos:pos + script_len])
    pos += script_len
    (sequence,) = struct.unpack_from("<I", raw, pos)
    pos += 4
    n_out, pos = _read_varint(raw, pos)
    _check_count(n_out, _MIN_OUTPUT_SIZE, pos, end, "coinbase output")
    outputs = []
    for _ in range(n_out):
        (value,) = struct.unpack_from("<q", raw, pos)
        if not 0 <= value <= MAX_MONEY:
            raise DecodeError(f"coinbase output {len(outputs)} has value {value} sat, outside 0..MAX_MONEY")
        pk_len, pos = _read_varint(raw, pos + 8)
        if pos + pk_len > end:
            raise DecodeError(f"coinbase output script of {pk_len} bytes runs past the end of the data")
        outputs.append((value, bytes(raw[pos:pos + pk_len])))
        pos += pk_len
    body_end = pos
    witness: list[bytes] = []
    if segwit:
        n_items, pos = _read_varint(raw, pos)
        _check_count(n_items, 1, pos, end, "coinbase witness item")
        for _ in range(n_items):
            item_len, pos = _read_varint(raw, pos)
            if pos + item_len > end:
                raise DecodeError(f"coinbase witness item of {item_len} bytes runs past the end of the data")
            witness.append(bytes(raw[pos:pos + item_len]))
            pos += item_len
    if pos + 4 > end:
        raise DecodeError("coinbase transaction is truncated before its locktime")
    (locktime,) = struct.unpack_from("<I", raw, pos)
    pos += 4
    # txid: the serialization without marker, flag and witness; wtxid (Core's "hash"): all bytes.
    stripped = raw[start:start + 4] + raw[body_start:body_end] + raw[pos - 4:pos]
    txid = _display(sha256d(stripped))
    wtxid = _display(sha256d(raw[start:pos])) if segwit else txid
    return Coinbase(txid=txid, wtxid=wtxid, version=version, locktime=locktime, script_sig=script_sig,
                    sequence=sequence, witness=tuple(witness), outputs=tuple(outputs), size=pos - start,
                    stripped_size=len(stripped))


def scan_transactions(raw: bytes, pos: int, count: int) -> tuple[int, int]:
    """(end position, witness bytes incl. marker/flag) of ``count`` transactions from ``pos``.

    The C walk (pipeline.native) when it is built, else the Python reference below; on malformed
    data the Python walk always runs, so the DecodeError names the problem and its offset.
    """
    found = native.scan_transactions(raw, pos, count)
    if found is not None:
        return found
    return _scan_transactions(raw, pos, count)


# One per input that spends a coinbase of the index (the C walk's MATCH_FIELDS, same order):
# (transaction index from the walk's start, input index, vout, offset of the outpoint's txid,
#  transaction start, start of its non-witness body, end of that body, transaction end).
SpendMatch = tuple[int, int, int, int, int, int, int, int]


def scan_spends(raw: bytes, pos: int, count: int, coinbases: CoinbaseLookup
                ) -> tuple[int, int, int, list[SpendMatch]]:
    """``scan_transactions`` plus the lookup of every input's previous txid in ``coinbases``:
    (end position, witness bytes, inputs walked, the inputs that spend one of them, in order).

    The C walk when it is built and the index has its C table (the lookup then runs inside the
    walk, without the GIL), else the Python reference; malformed data raises as there."""
    table = coinbases.native_table()
    if table is not None:
        found = native.scan_spends(raw, pos, count, table)
        if found is not None:
            return found
    return _walk_transactions(raw, pos, count, coinbases)


def transaction_ids(raw: bytes, pos: int = 0) -> tuple[bytes, bytes, int]:
    """(txid, wtxid, end position) of the transaction at ``pos``, both hashes in internal byte order
    (as merkle trees and outpoints use them). The txid hashes the serialization without marker, flag
    and witness, which the walk measures: those bytes sit after the 4-byte version and before the
    4-byte locktime. A transaction without witness has wtxid == txid."""
    end, witness = scan_transactions(raw, pos, 1)
    full = bytes(raw[pos:end])
    if not witness:
        txid = sha256d(full)
        return txid, txid, end
    stripped = full[:4] + full[6:len(full) - 4 - (witness - 2)] + full[-4:]
    return sha256d(stripped), sha256d(full), end


def _scan_transactions(raw: bytes, pos: int, count: int) -> tuple[int, int]:
    """The Python reference walk without lookup: (end position, witness bytes incl. marker/flag)."""
    end, witness, _, _ = _walk_transactions(raw, pos, count, None)
    return end, witness


def _walk_transactions(raw: bytes, pos: int, count: int, coinbases: CoinbaseLookup | None
                       ) -> tuple[int, int, int, list[SpendMatch]]:
    """Walk ``count`` serialized transactions from ``pos``: (end position, witness bytes incl.
    marker/flag, inputs walked, inputs whose previous txid is in ``coinbases`` as ``SpendMatch``).

    Deliberately inlined CompactSize reads and no per-transaction objects: this loop is the cost of
    decoding a block. Bounds: every count is checked against the bytes left before looping, so garbage
    cannot make it spin; a length that jumps past the end surfaces as IndexError on the next read.
    Without ``coinbases`` the input loop does no lookup at all (the plain walk's speed).
    """
    end = len(raw)
    from_bytes = int.from_bytes
    witness_bytes = 0
    inputs = 0
    matches: list[list[int]] = []
    for t in range(count):
        tx_start = pos
        first_match = len(matches)
        pos += 4
        segwit = raw[pos] == 0
        if segwit:
            if raw[pos + 1] != 1:
                raise DecodeError(f"transaction at offset {pos - 4}: segwit flag {raw[pos + 1]}, expected 1")
            pos += 2
        body_start = pos
        b = raw[pos]
        if b < 0xFD:
            n_in = b
            pos += 1
        elif b == 0xFD:
            n_in = raw[pos + 1] | raw[pos + 2] << 8
            pos += 3
        else:
            n_in = from_bytes(raw[pos + 1:pos + 5 if b == 0xFE else pos + 9], "little")
            pos += 5 if b == 0xFE else 9
        if n_in * _MIN_INPUT_SIZE > end - pos:
            raise DecodeError(f"input count {n_in} at offset {pos} cannot fit in the block")
        inputs += n_in
        for i in range(n_in):
            if coinbases is not None and raw[pos:pos + 32] in coinbases:
                matches.append([t, i, from_bytes(raw[pos + 32:pos + 36], "little"), pos, tx_start, body_start])
            pos += 36
            b = raw[pos]
            if b < 0xFD:
                pos += b + 5
            elif b == 0xFD:
                pos += (raw[pos + 1] | raw[pos + 2] << 8) + 7
            else:
                width = 4 if b == 0xFE else 8
                pos += from_bytes(raw[pos + 1:pos + 1 + width], "little") + width + 5
        b = raw[pos]
        if b < 0xFD:
            n_out = b
            pos += 1
        elif b == 0xFD:
            n_out = raw[pos + 1] | raw[pos + 2] << 8
            pos += 3
        else:
            n_out = from_bytes(raw[pos + 1:pos + 5 if b == 0xFE else pos + 9], "little")
            pos += 5 if b == 0xFE else 9
        if n_out * _MIN_OUTPUT_SIZE > end - pos:
            raise DecodeError(f"output count {n_out} at offset {pos} cannot fit in the block")
        for _ in range(n_out):
            pos += 8
            b = raw[pos]
            if b < 0xFD:
                pos += b + 1
            elif b == 0xFD:
                pos += (raw[pos + 1] | raw[pos + 2] << 8) + 3
            else:
                width = 4 if b == 0xFE else 8
                pos += from_bytes(raw[pos + 1:pos + 1 + width], "little") + width + 1
        body_end = pos
        if segwit:
            for _ in range(n_in):
                b = raw[pos]
                if b < 0xFD:
                    n_items = b
                    pos += 1
                elif b == 0xFD:
                    n_items = raw[pos + 1] | raw[pos + 2] << 8
                    pos += 3
                else:
                    n_items = from_bytes(raw[pos + 1:pos + 5 if b == 0xFE else pos + 9], "little")
                    pos += 5 if b == 0xFE else 9
                if n_items > end - pos:
                    raise DecodeError(f"witness item count {n_items} at offset {pos} cannot fit in the block")
                for _ in range(n_items):
                    b = raw[pos]
                    if b < 0xFD:
                        pos += b + 1
                    elif b == 0xFD:
                        pos += (raw[pos + 1] | raw[pos + 2] << 8) + 3
                    else:
                        width = 4 if b == 0xFE else 8
                        pos += from_bytes(raw[pos + 1:pos + 1 + width], "little") + width + 1
            witness_bytes += pos - body_end + 2
        pos += 4
        if pos > end:
            raise DecodeError(f"transaction runs past the end of the block (needs {pos - end} more bytes)")
        for match in matches[first_match:]:
            match += (body_end, pos)
    return pos, witness_bytes, inputs, [tuple(m) for m in matches]  # type: ignore[misc]


def coinbase_spends(raw: bytes, matches: list[SpendMatch], coinbases: CoinbaseLookup) -> tuple[CoinbaseSpend, ...]:
    """The walk's matches as ``CoinbaseSpend`` rows; each spending transaction is hashed once (its
    serialization without marker, flag and witness: version, body, locktime)."""
    txids: dict[int, str] = {}
    spends = []
    for t, i, vout, outpoint, start, body_start, body_end, end in matches:
        txid = txids.get(t)
        if txid is None:
            txid = txids[t] = _display(sha256d(raw[start:start + 4] + raw[body_start:body_end] + raw[end - 4:end]))
        prev = bytes(raw[outpoint:outpoint + 32])
        height = coinbases.height_of(prev)
        if height is None:  # the walk matched it a moment ago: an index changed under the walk
            raise RuntimeError(f"coinbase {_display(prev)} vanished from the index during the walk")
        spends.append(CoinbaseSpend(tx_index=t + 1, input_index=i, txid=txid, coinbase_txid=_display(prev),
                                    coinbase_vout=vout, coinbase_height=height))
    return tuple(spends)


def _script_num(data: bytes) -> int:
    """CScriptNum: little-endian magnitude, sign in the top bit of the last byte."""
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def _first_push(script_sig: bytes) -> tuple[int, int] | None:
    """(height, bytes used) if the scriptSig starts exactly like Core's ``CScript() << nHeight``.

    That serialization is OP_0 for 0, OP_1..OP_16 for 1-16, else a direct push of the minimal
    CScriptNum encoding. A height is "plausible" when it is encoded that way in at most 3 data bytes
    (heights up to 8,388,607, reached around the year 2160): pre-BIP34 coinbases usually start with a
    4-byte push of nBits (04ffff001d -> 486604799), which this rejects.
    """
    if not script_sig:
        return None
    op = script_sig[0]
    if 0x51 <= op <= 0x60:
        return op - 0x50, 1
    if not 1 <= op <= 3 or len(script_sig) < 1 + op:
        return None
    data = script_sig[1:1 + op]
    value = _script_num(data)
    if value <= 16:
        return None  # Core would have used OP_0/OP_n; also rejects negatives
    # Minimal encoding: the last byte is needed (non-zero, or zero only to hold the sign bit).
    if data[-1] == 0 and (len(data) == 1 or not data[-2] & 0x80):
        return None
    return value, 1 + op


def bip34_height(script_sig: bytes) -> int | None:
    """Height pushed first in the coinbase scriptSig (BIP34), None when it is not a plausible one."""
    parsed = _first_push(script_sig)
    return None if parsed is None else parsed[0]


def coinbase_tag(script_sig: bytes) -> str:
    """Human-readable text of a coinbase scriptSig (see docs/decoding.md for the exact rule).

    Skip the BIP34 height push; decode the rest as UTF-8 dropping invalid bytes; keep maximal runs of
    printable characters, with spaces collapsed and stripped, whose UTF-8 encoding is at least 2 bytes
    (so one multi-byte character such as F2Pool's fish survives but lone ASCII noise does not); join
    them with one space.
    """
    parsed = _first_push(script_sig)
    rest = script_sig[parsed[1]:] if parsed else script_sig
    text = rest.decode("utf-8", errors="ignore")
    runs: list[str] = []
    current: list[str] = []
    for ch in text + "\x00":  # the sentinel closes the last run
        if ch.isprintable():
            current.append(ch)
            continue
        if current:
            # ' ' is the only whitespace str.isprintable accepts; collapse and strip it.
            run = " ".join(part for part in "".join(current).split(" ") if part)
            if len(run.encode("utf-8")) >= 2:
                runs.append(run)
            current = []
    return " ".join(runs).strip()


def decode_header(raw: bytes) -> dict:
    """Fields of an 80-byte header (extra bytes after it are ignored), keyed like DecodedBlock."""
    if len(raw) < HEADER_SIZE:
        raise DecodeError(f"block header needs {HEADER_SIZE} bytes, got {len(raw)}")
    version, prev, merkle, time, bits, nonce = struct.unpack_from("<i32s32sIII", raw, 0)
    return {
        "hash": _display(sha256d(raw[:HEADER_SIZE])),
        "prev_hash": _display(prev),
        "merkle_root": _display(merkle),
        "version": version,
        "time": time,
        "bits": f"{bits:08x}",
        "nonce": nonce,
        "difficulty": difficulty_from_bits(bits),
    }


def decode_block(raw: bytes, network: Network, height: int | None = None,
                 median_time: int | None = None, coinbases: CoinbaseLookup | None = None) -> DecodedBlock:
    """Decode a serialized block. ``height`` None -> the BIP34 height, DecodeError if there is none.

    ``coinbases``: the coinbase txids of (every) lower block; the result's ``spends`` lists the
    inputs that spend one of them and ``inputs`` counts the inputs walked. The caller vouches that
    the index holds only lower heights (a block cannot spend its own or a later coinbase)."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected block bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) < HEADER_SIZE + 1 + 60:
        raise DecodeError(f"{len(raw)} bytes is too short for a block (80-byte header + coinbase)")
    try:
        header = decode_header(raw)
        tx_count, pos = _read_varint(raw, HEADER_SIZE)
        if tx_count < 1:
            raise DecodeError("block has no transactions (a block needs at least its coinbase)")
        _check_count(tx_count, _MIN_TX_SIZE, pos, len(raw), "transaction")
        coinbase = _parse_coinbase(raw, pos)
        if coinbases is None:
            end, witness_bytes = scan_transactions(raw, pos + coinbase.size, tx_count - 1)
        else:
            end, witness_bytes, inputs, matches = scan_spends(raw, pos + coinbase.size, tx_count - 1, coinbases)
    except DecodeError:
        raise
    except (IndexError, struct.error, ValueError, OverflowError) as exc:
        raise DecodeError(f"truncated or malformed block: {type(exc).__name__}: {exc}") from None
    if end != len(raw):
        raise DecodeError(f"{len(raw) - end} trailing bytes after the last of {tx_count} transactions")
    # Core counts the coinbase witness too; scan_transactions only saw the other transactions.
    witness_bytes += coinbase.size - coinbase.stripped_size
    block = _assemble(header, coinbase, tx_count, len(raw), witness_bytes, network, height, median_time)
    if coinbases is None:
        return block
    return replace(block, spends=coinbase_spends(raw, matches, coinbases), inputs=inputs)


# BIP141 witness commitment: an output script of at least 38 bytes starting OP_RETURN, push 36,
# then this tag (Core's GetWitnessCommitmentIndex takes the last such output).
_WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")


def commits_to_witness(coinbase: Coinbase) -> bool:
    """True when the coinbase carries a witness commitment or a witness of its own."""
    return bool(coinbase.witness) or any(len(script) >= 38 and script.startswith(_WITNESS_COMMITMENT_PREFIX)
                                         for _, script in coinbase.outputs)


def decode_block_head(head: bytes, size: int, network: Network, height: int | None = None,
                      median_time: int | None = None) -> DecodedBlock | None:
    """Decode a block of ``size`` bytes from its first bytes ``head`` (header and coinbase), or None
    when the whole block is needed.

    Consensus makes this exact: Core rejects a block whose transactions carry witness data unless
    its coinbase commits to it ("unexpected-witness"), so a block whose coinbase has no witness
    commitment has no witness bytes at all: stripped size = size and weight = 4 x size, without
    reading the other transactions. None when the coinbase does commit (the weight needs every
    transaction: decode the whole block) or when ``head`` ends inside the coinbase (read more).
    Unlike ``decode_block`` it cannot check that the unread transactions parse and end exactly at
    ``size``: use it only on bytes whose hash the node vouches for (the block-file reader does).
    """
    if len(head) >= size:
        return decode_block(head[:size], network, height=height, median_time=median_time)
    head = bytes(head)
    if len(head) < HEADER_SIZE + 1 + 60:
        return None
    try:
        header = decode_header(head)
        tx_count, pos = _read_varint(head, HEADER_SIZE)
        if tx_count < 1:
            raise DecodeError("block has no transactions (a block needs at least its coinbase)")
        _check_count(tx_count, _MIN_TX_SIZE, pos, size, "transaction")
        coinbase = _parse_coinbase(head, pos)
    except (IndexError, struct.error, ValueError, OverflowError):  # DecodeError is a ValueError
        return None  # mostly: head ends inside the coinbase; decode_block on the whole block says what is wrong
    if commits_to_witness(coinbase):
        return None
    if tx_count == 1 and pos + coinbase.size != size:
        return None  # let decode_block name the trailing bytes
    return _assemble(header, coinbase, tx_count, size, 0, network, height, median_time)


def _assemble(header: dict, coinbase: Coinbase, tx_count: int, size: int, witness_bytes: int, network: Network,
              height: int | None, median_time: int | None) -> DecodedBlock:
    bip34 = bip34_height(coinbase.script_sig)
    if height is None:
        if bip34 is None:
            raise DecodeError(f"block {header['hash']} has no BIP34 height in its coinbase; pass height=")
        height = bip34
    if height < 0:
        raise DecodeError(f"negative height {height}")
    value = sum(v for v, _ in coinbase.outputs)
    if value > MAX_MONEY:
        raise DecodeError(f"coinbase outputs total {value} sat, more than MAX_MONEY")
    subsidy = block_subsidy(height, network)
    outputs = tuple(
        CoinbaseOutput(index=i, value_sat=v, script_hex=script.hex(), script_type=classify(script),
                       address=script_to_address(script, network))
        for i, (v, script) in enumerate(coinbase.outputs)
    )
    stripped = size - witness_bytes
    return DecodedBlock(
        height=height, median_time=median_time, size=size, stripped_size=stripped,
        weight=3 * stripped + size, tx_count=tx_count,
        coinbase_txid=coinbase.txid, coinbase_wtxid=coinbase.wtxid, coinbase_version=coinbase.version,
        coinbase_locktime=coinbase.locktime, coinbase_script_sig_hex=coinbase.script_sig.hex(),
        coinbase_tag=coinbase_tag(coinbase.script_sig), coinbase_bip34_height=bip34,
        coinbase_sequence=coinbase.sequence,
        coinbase_witness_reserved_hex=coinbase.witness[0].hex() if coinbase.witness else None,
        coinbase_value_sat=value, subsidy_sat=subsidy, fees_sat=value - subsidy,
        output_count=len(outputs), outputs=outputs, **header,
    )
