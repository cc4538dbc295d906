"""Build a regtest chain of realistic ~1 MB blocks on a local node, for the backfill benchmarks.

Every block's coinbase comes from ``pipeline.devnode.demo.demo_specs`` (real pool tags and payout
addresses from the shipped registry, several payout outputs for some pools) plus one spendable output.
The block is filled with ordinary-looking transactions that spend each other in a chain:

* each spends the previous one's first output with a 107-byte scriptSig (a 72-byte signature-sized
  push and a 33-byte public-key-sized push, like P2PKH);
* outputs are 25-byte scripts ``<21 bytes> OP_DROP OP_2DROP OP_1`` (the size of P2PKH; spendable by
  that scriptSig with a clean stack, so no keys or signatures are needed), 2 outputs per transaction
  and, every 20th transaction, a 12-output "batch payout" plus an 80-byte OP_RETURN;

which gives ~4,300 transactions per MB (mainnet averages ~2,000-4,000 per block). The first 101
blocks are small (coinbase maturity); the filled blocks come after. Blocks are submitted one by one.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.chain.decode import header_hash as block_hash
from pipeline.devnode.blocks import build_block, compact_size
from pipeline.devnode.chains import mine_chain
from pipeline.devnode.demo import demo_specs
from pipeline.devnode.node import RegtestNode

log = logging.getLogger("benchmarks.chain")

MATURITY = 100
SPEND_SCRIPT = b"\x15" + bytes(range(21)) + b"\x75\x6d\x51"   # <21 bytes> OP_DROP OP_2DROP OP_1
SCRIPT_SIG = b"\x48" + b"\x30" * 72 + b"\x21" + b"\x02" * 33    # push 72, push 33 (P2PKH-shaped)
SPEND_VALUE = 1_000_000     # the coinbase's spendable output, carried along the transaction chain
assert len(SPEND_SCRIPT) == 25 and len(SCRIPT_SIG) == 107


@dataclass
class BuiltChain:
    first_filled: int
    last: int
    hashes: list[str]         # of the filled blocks
    total_bytes: int          # of the filled blocks
    seconds: float


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _output(script: bytes, value: int) -> bytes:
    return struct.pack("<q", value) + compact_size(len(script)) + script


def fill_transactions(prev_txid: bytes, prev_vout: int, value: int, target_bytes: int,
                      serial: int) -> tuple[list[bytes], bytes]:
    """Chained transactions totalling at most ``target_bytes``; returns them and the last txid."""
    txs: list[bytes] = []
    size = 0
    n = 0
    while True:
        n += 1
        outputs = [_output(SPEND_SCRIPT, value), _output(SPEND_SCRIPT, 0)]
        if n % 20 == 0:
            outputs += [_output(SPEND_SCRIPT, 0) for _ in range(10)]
            outputs.append(_output(b"\x6a\x4c\x50" + struct.pack("<Q", serial) + bytes(72), 0))
        tx = (b"\x02\x00\x00\x00" + b"\x01" + prev_txid + struct.pack("<I", prev_vout)
              + compact_size(len(SCRIPT_SIG)) + SCRIPT_SIG + b"\xff\xff\xff\xff"
              + compact_size(len(outputs)) + b"".join(outputs) + b"\x00\x00\x00\x00")
        if size + len(tx) > target_bytes:
            break
        txs.append(tx)
        size += len(tx)
        prev_txid, prev_vout = _sha256d(tx), 0
        serial += 1
    return txs, prev_txid


def build_chain(node: RegtestNode, registry, n_blocks: int, block_bytes: int = 1_000_000,
                progress: Callable[[int], None] | None = None) -> BuiltChain:
    """Mine MATURITY+1 small blocks then ``n_blocks`` filled ones on ``node``."""
    started = time.monotonic()
    allow_p2sh = node.flavor == "core"
    specs = demo_specs(registry, MATURITY + 1 + n_blocks, seed=11, allow_p2sh=allow_p2sh)
    # Time the chain so it ends about now; spacing 600 s keeps median-time rules happy.
    now = int(time.time())
    start_time = now - (MATURITY + 1 + n_blocks) * 600 - 3600
    for spec in specs[:MATURITY + 1]:
        spec.extra_outputs = [*spec.extra_outputs, (SPEND_SCRIPT, SPEND_VALUE)]
    small = mine_chain(node, specs[:MATURITY + 1], start_time=start_time, jitter=0.0)
    # The coinbase of the first small block funds the chain of transactions through all filled
    # blocks; its spendable output is the last extra output (a witness commitment, if any, follows).
    cb_txid = bytes.fromhex(node.rpc("getblock", small[0], 1)["tx"][0])[::-1]
    cb_vout = len(specs[0].payouts) + len(specs[0].extra_outputs) - 1
    prev_txid, prev_vout = cb_txid, cb_vout
    prev_hash = small[-1]
    height = MATURITY + 1
    hashes: list[str] = []
    total = 0
    serial = 0
    segwit = node.flavor == "core"
    for i, spec in enumerate(specs[MATURITY + 1:]):
        height += 1
        # Filler bytes: header, counts and coinbase take at most ~1,000 bytes of the target, so a
        # 1 MB block stays within Core's 4,000,000 weight units (no witness: weight = 4 x size).
        txs, last_txid = fill_transactions(prev_txid, prev_vout, SPEND_VALUE, block_bytes - 1000, serial)
        serial += len(txs)
        raw = build_block(prev_hash, height, start_time + (height - 1) * 600, spec, txs=txs, segwit=segwit)
        node.submit(raw)
        prev_hash = block_hash(raw)
        hashes.append(prev_hash)
        total += len(raw)
        prev_txid, prev_vout = last_txid, 0
        if progress:
            progress(i + 1)
    tip = node.tip()
    if tip.hash != prev_hash:
        raise RuntimeError(f"benchmark chain: node tip {tip.hash} at {tip.height} is not the last built block")
    return BuiltChain(first_filled=MATURITY + 2, last=height, hashes=hashes, total_bytes=total,
                      seconds=time.monotonic() - started)
