"""Regtest blocks built in pure Python: coinbases with chosen tags and payout scripts, headers
ground to regtest's easy target.

Only serialization lives here (CompactSize, script numbers, pushes, BIP34 height, merkle root,
witness commitment); reading bytes back (hashes, txids, coinbase parsing) is the pipeline's own
decoder, ``pipeline.chain.decode``, so a block built here is checked by the code that loads it.
See docs/regtest.md.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.chain.decode import DecodeError, sha256d, transaction_ids
from pipeline.chain.networks import REGTEST, block_subsidy

REGTEST_BITS = 0x207FFFFF
DEFAULT_BLOCK_VERSION = 0x20000000
MAX_COINBASE_SCRIPT_SIG = 100  # consensus: coinbase scriptSig is 2..100 bytes ("bad-cb-length")
MIN_COINBASE_SCRIPT_SIG = 2
WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")
WITNESS_RESERVED_VALUE = bytes(32)


# --------------------------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------------------------



def compact_size(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"compact size cannot be negative: {n}")
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def script_num(n: int) -> bytes:
    """CScriptNum serialization: minimal little-endian, sign bit in the top byte."""
    if n == 0:
        return b""
    neg, mag = n < 0, abs(n)
    out = bytearray()
    while mag:
        out.append(mag & 0xFF)
        mag >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0x00)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def push_data(data: bytes) -> bytes:
    """Minimal push opcode for ``data`` (direct push, OP_PUSHDATA1/2/4)."""
    n = len(data)
    if n < 0x4C:
        return bytes([n]) + data
    if n <= 0xFF:
        return b"\x4c" + bytes([n]) + data
    if n <= 0xFFFF:
        return b"\x4d" + n.to_bytes(2, "little") + data
    return b"\x4e" + n.to_bytes(4, "little") + data


def bip34_height_push(height: int) -> bytes:
    """The scriptSig prefix BIP34 requires: exactly Core's ``CScript() << height``.

    Heights 1..16 are the single opcodes OP_1..OP_16 (0x51..0x60), 0 is OP_0; everything else a
    direct push of the CScriptNum bytes (e.g. 17 -> 01 11, 128 -> 02 80 00). A decoder that only
    reads pushes misses heights 1..16 on regtest; mainnet never has them.
    """
    if height < 0:
        raise ValueError(f"block height cannot be negative: {height}")
    if height == 0:
        return b"\x00"
    if height <= 16:
        return bytes([0x50 + height])
    return push_data(script_num(height))


def compact_target(bits: int) -> int:
    """The 256-bit target that nBits encodes."""
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if bits & 0x00800000:
        raise ValueError(f"nBits {bits:#010x} encodes a negative target")
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Bitcoin merkle root of internal-byte-order hashes (odd levels duplicate the last)."""
    if not hashes:
        raise ValueError("merkle root of zero transactions")
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


# --------------------------------------------------------------------------------------------
# Coinbase and block building
# --------------------------------------------------------------------------------------------



@dataclass
class CoinbaseSpec:
    """What one block's coinbase says and pays.

    ``payouts`` are ``(scriptPubKey, weight)``: the block reward (subsidy for the height plus any
    ``fees`` passed to :func:`build_block`, minus ``extra_outputs``) is split by weight, integer
    satoshis, the rounding remainder to the first payout. Weights need not sum to anything in
    particular; all-zero weights put everything on the first payout.

    ``extra_outputs`` are ``(scriptPubKey, exact value)`` outputs after the payouts, typically
    zero-value OP_RETURNs (merge-mining commitments). ``witness_commitment`` appends a BIP141
    commitment output last, as Core-style pools do (see ``segwit`` in :func:`build_block`).
    Scripts are opaque bytes to the node: P2WPKH/P2WSH/P2TR outputs are fine on Bitcoin SV too.
    """

    tag: bytes
    payouts: list[tuple[bytes, int]]
    extranonce: bytes = b"\x00\x00\x00\x00"
    extra_outputs: list[tuple[bytes, int]] = field(default_factory=list)
    witness_commitment: bool = False
    tx_version: int = 1
    pool: str | None = None  # demo plan bookkeeping (which pool the spec imitates); not in the block


def coinbase_script_sig(height: int, tag: bytes, extranonce: bytes) -> bytes:
    """BIP34 height, then the tag and the extranonce as pushes (the tag bytes stay contiguous)."""
    sig = bip34_height_push(height)
    if tag:
        sig += push_data(tag)
    if extranonce:
        sig += push_data(extranonce)
    if len(sig) > MAX_COINBASE_SCRIPT_SIG:
        raise ValueError(f"coinbase scriptSig would be {len(sig)} bytes (max {MAX_COINBASE_SCRIPT_SIG}): "
                         f"tag of {len(tag)} bytes + extranonce of {len(extranonce)} bytes is too long")
    if len(sig) < MIN_COINBASE_SCRIPT_SIG:
        raise ValueError(f"coinbase scriptSig would be {len(sig)} byte(s) (min {MIN_COINBASE_SCRIPT_SIG}): "
                         "give a tag or an extranonce")
    return sig


def split_reward(total: int, payouts: Sequence[tuple[bytes, int]]) -> list[int]:
    """Integer split of ``total`` satoshis by weight; remainder to the first payout."""
    if not payouts:
        raise ValueError("a coinbase needs at least one payout")
    weights = [w for _, w in payouts]
    if any(w < 0 for w in weights):
        raise ValueError(f"payout weights must be >= 0, got {weights}")
    wsum = sum(weights)
    if wsum == 0:
        return [total] + [0] * (len(payouts) - 1)
    values = [total * w // wsum for w in weights]
    values[0] += total - sum(values)
    return values


def _output(script: bytes, value: int) -> bytes:
    if not 0 <= value <= 21_000_000 * 100_000_000:
        raise ValueError(f"output value out of range: {value}")
    return value.to_bytes(8, "little") + compact_size(len(script)) + script


def witness_commitment_script(wtxids: Sequence[bytes]) -> bytes:
    """BIP141 commitment output for a block whose non-coinbase wtxids are ``wtxids``."""
    root = merkle_root([bytes(32), *wtxids])  # the coinbase's wtxid counts as zero
    return WITNESS_COMMITMENT_PREFIX + sha256d(root + WITNESS_RESERVED_VALUE)


def build_coinbase(height: int, spec: CoinbaseSpec, fees: int = 0, wtxids: Sequence[bytes] = (),
                   segwit: bool = False) -> bytes:
    """The serialized coinbase transaction (with its witness only if segwit and a commitment)."""
    sig = coinbase_script_sig(height, spec.tag, spec.extranonce)
    extra_total = sum(v for _, v in spec.extra_outputs)
    total = block_subsidy(height, REGTEST) + fees - extra_total
    if total < 0:
        raise ValueError(f"extra outputs pay {extra_total} sat, more than the block reward at height {height}")
    values = split_reward(total, spec.payouts)
    outputs = [_output(s, v) for (s, _), v in zip(spec.payouts, values)]
    outputs += [_output(s, v) for s, v in spec.extra_outputs]
    if spec.witness_commitment:
        outputs.append(_output(witness_commitment_script(wtxids), 0))
    with_witness = segwit and spec.witness_commitment
    tx = struct.pack("<i", spec.tx_version)
    if with_witness:
        tx += b"\x00\x01"
    tx += compact_size(1) + bytes(32) + b"\xff\xff\xff\xff" + compact_size(len(sig)) + sig + b"\xff\xff\xff\xff"
    tx += compact_size(len(outputs)) + b"".join(outputs)
    if with_witness:
        # Core requires the 32-byte reserved value as the coinbase witness when a commitment is present.
        tx += compact_size(1) + compact_size(32) + WITNESS_RESERVED_VALUE
    return tx + b"\x00\x00\x00\x00"


def build_block(prev_hash: str, height: int, time: int, spec: CoinbaseSpec, bits: int = REGTEST_BITS,
                txs: Sequence[bytes] = (), *, version: int = DEFAULT_BLOCK_VERSION, fees: int = 0,
                segwit: bool = False) -> bytes:
    """A complete serialized block: header with a nonce meeting ``bits``, coinbase, then ``txs``.

    ``txs`` are serialized transactions (witness serialization allowed only with ``segwit`` and a
    ``spec.witness_commitment``); ``fees`` is what they leave unspent, claimable by the coinbase.
    ``segwit=True`` serializes the coinbase with its witness reserved value when the spec has a
    witness commitment: required by Bitcoin Core, impossible on Bitcoin SV (no SegWit). Without it
    the commitment output is still there (a valid OP_RETURN to SV) and the block has no witness.
    """
    if len(prev_hash) != 64:
        raise ValueError(f"prev_hash must be 64 hex digits, got {prev_hash!r}")
    ids = []
    for i, tx in enumerate(txs):
        try:
            txid, wtxid, end = transaction_ids(tx)
        except (DecodeError, IndexError) as exc:
            raise ValueError(f"txs[{i}] is not a serialized transaction: {exc}") from None
        if end != len(tx):
            raise ValueError(f"txs[{i}] has {len(tx) - end} trailing bytes")
        if wtxid != txid and not (segwit and spec.witness_commitment):
            raise ValueError(f"txs[{i}] has witness data: needs segwit=True and spec.witness_commitment")
        ids.append((txid, wtxid))
    coinbase = build_coinbase(height, spec, fees, [w for _, w in ids], segwit)
    root = merkle_root([transaction_ids(coinbase)[0]] + [t for t, _ in ids])
    target = compact_target(bits)
    prefix = struct.pack("<i", version) + bytes.fromhex(prev_hash)[::-1] + root + struct.pack("<II", time, bits)
    for nonce in range(1 << 32):
        header = prefix + struct.pack("<I", nonce)
        if int.from_bytes(sha256d(header), "little") <= target:
            break
    else:
        raise ValueError(f"no nonce meets nBits {bits:#010x}; change the extranonce or time")
    body = [coinbase] + [bytes(t) for t in txs]
    return header + compact_size(len(body)) + b"".join(body)
