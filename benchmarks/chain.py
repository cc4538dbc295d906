"""The benchmark chain: mainnet-shaped blocks on real Bitcoin Core (regtest), one segment per era.

After 101 small blocks (coinbase maturity), one segment per era of ``benchmarks/eras.py``, in
mainnet order: tiny, then growing, then full pre-segwit blocks (no witness, no witness commitment),
then segwit-era blocks (half of the transactions spend segwit outputs), then 2023+ blocks (~1.56
MB / ~3.9 MWU, every transaction a segwit spend). Every coinbase comes from
``pipeline.devnode.demo.demo_specs`` (the registry's pools: tags, payout addresses, OCEAN-style
payouts, merge-mining commitments); blocks with witness data commit to it in their coinbase.

No keys are needed (see ../shared/bitcoin-core/README.md): the transactions spend each other in
one long chain, 1 input and 2 outputs (every 25th a 10-output batch payout), each paying a small fee:

* legacy spends: a 107-byte scriptSig (a 72- and a 33-byte push, P2PKH-shaped) against the 25-byte
  ``<21 bytes> OP_DROP OP_2DROP OP_1`` (P2PKH-sized, clean stack, no signature);
* segwit spends: P2WSH of ``OP_2DROP OP_TRUE`` with the witness ``[<72 bytes>, <33 bytes>, script]``
  (a P2WPKH-like 250-byte transaction), or for ``two_key_share`` of them P2WSH of
  ``OP_2DROP OP_2DROP OP_TRUE`` with two such pairs (multisig-like, more witness per byte).

Blocks go to the node with ``submitblock`` (one at a time, the next block built meanwhile); the
node stores them in XORed block files (Core 28+'s default ``-blocksxor``). Building takes minutes,
so the node's data directory is kept under ``benchmarks/out/chains/<key>``, the key a hash of
every parameter (``ChainPlan.key``), and reused by later runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import queue
import shutil
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.eras import ERAS, Era
from pipeline.chain.decode import header_hash
from pipeline.devnode.blocks import build_block, compact_size
from pipeline.devnode.demo import demo_specs
from pipeline.devnode.node import RegtestNode

log = logging.getLogger("benchmarks.chain")

# Bump when the blocks this module builds change, so cached chains are rebuilt.
BUILDER_VERSION = 3
MATURITY = 100
RECORD = "poolwatch-benchmark-chain.json"  # in a built chain's directory, written last

LEGACY_SCRIPT = b"\x15" + bytes(range(21)) + b"\x75\x6d\x51"   # <21 bytes> OP_DROP OP_2DROP OP_1
LEGACY_SCRIPT_SIG = b"\x48" + b"\x30" * 72 + b"\x21" + b"\x02" * 33  # push 72, push 33 (P2PKH-shaped)
ONE_KEY_SCRIPT = b"\x6d\x51"            # OP_2DROP OP_TRUE
TWO_KEY_SCRIPT = b"\x6d\x6d\x51"        # OP_2DROP OP_2DROP OP_TRUE
SIGNATURE = b"\x30" * 72
PUBKEY = b"\x02" * 33
BATCH_EVERY = 25       # every 25th transaction is a batch payout
BATCH_OUTPUTS = 10
# Header, transaction count and the largest demo coinbase (OCEAN: up to 13 payouts) fit in this.
COINBASE_ALLOWANCE = 1_500
CARRIER_VALUE = 4_000_000_000   # satoshis carried along the chain of transactions (40 of block 1's 50 BTC)
FEE = 10   # satoshis each transaction leaves to its block's coinbase (regtest's subsidy is gone by height 4,950)

LEGACY, ONE_KEY, TWO_KEY = "legacy", "one-key", "two-key"


def p2wsh(script: bytes) -> bytes:
    return b"\x00\x20" + hashlib.sha256(script).digest()


# The shared README's output for OP_2DROP OP_TRUE: a check that p2wsh() builds what Core expects.
assert p2wsh(ONE_KEY_SCRIPT).hex() == "0020f786191b137fda9907fcaa13d402eb7ecda3f30ea4c9712cc9f1d21255a65759"
assert len(LEGACY_SCRIPT) == 25 and len(LEGACY_SCRIPT_SIG) == 107

SPEND_SCRIPT = {LEGACY: LEGACY_SCRIPT, ONE_KEY: p2wsh(ONE_KEY_SCRIPT), TWO_KEY: p2wsh(TWO_KEY_SCRIPT)}
WITNESS = {ONE_KEY: [SIGNATURE, PUBKEY, ONE_KEY_SCRIPT], TWO_KEY: [SIGNATURE, PUBKEY, SIGNATURE, PUBKEY, TWO_KEY_SCRIPT]}
# Filler outputs (never spent): P2PKH-sized before segwit, P2WSH/P2TR-sized (34 bytes) after.
FILLER = {False: b"\x76\xa9\x14" + b"\x11" * 20 + b"\x88\xac", True: b"\x51\x20" + b"\x22" * 32}


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _output(script: bytes, value: int) -> bytes:
    return struct.pack("<q", value) + compact_size(len(script)) + script


@dataclass(frozen=True)
class Tx:
    raw: bytes
    txid: bytes
    weight: int


def spend(kind: str, prev_txid: bytes, prev_vout: int, outputs: Sequence[tuple[bytes, int]]) -> Tx:
    """One transaction spending ``prev_txid:prev_vout`` (an output of ``SPEND_SCRIPT[kind]``)."""
    outs = compact_size(len(outputs)) + b"".join(_output(s, v) for s, v in outputs)
    outpoint = prev_txid + struct.pack("<I", prev_vout)
    if kind == LEGACY:
        raw = (b"\x02\x00\x00\x00\x01" + outpoint + compact_size(len(LEGACY_SCRIPT_SIG)) + LEGACY_SCRIPT_SIG
               + b"\xff\xff\xff\xff" + outs + b"\x00\x00\x00\x00")
        return Tx(raw, _sha256d(raw), 4 * len(raw))
    base_in = b"\x01" + outpoint + b"\x00" + b"\xff\xff\xff\xff"
    stripped = b"\x02\x00\x00\x00" + base_in + outs + b"\x00\x00\x00\x00"
    items = WITNESS[kind]
    witness = compact_size(len(items)) + b"".join(compact_size(len(i)) + i for i in items)
    raw = b"\x02\x00\x00\x00\x00\x01" + base_in + outs + witness + b"\x00\x00\x00\x00"
    return Tx(raw, _sha256d(stripped), 3 * len(stripped) + len(raw))


def tx_kinds(era: Era, n: int, offset: int) -> list[str]:
    """Kinds of transactions ``offset .. offset + n - 1`` of an era's segment: a deterministic,
    evenly spread mix with the era's segwit and two-key shares."""
    kinds = []
    for i in range(offset, offset + n):
        # Spread by a fixed-point sequence so every stretch of a block has the era's proportions.
        segwit = int((i + 1) * era.segwit_share) > int(i * era.segwit_share)
        if not segwit:
            kinds.append(LEGACY)
            continue
        j = int(i * era.segwit_share)
        two = int((j + 1) * era.two_key_share) > int(j * era.two_key_share)
        kinds.append(TWO_KEY if two else ONE_KEY)
    return kinds


@dataclass
class Carrier:
    """The output the next transaction spends: where the chain of transactions stands."""

    txid: bytes
    vout: int
    kind: str          # which script it pays (LEGACY, ONE_KEY or TWO_KEY)
    value: int
    serial: int = 0    # transactions made so far (for the kind sequence and batch payouts)


def fill_block(era: Era, carrier: Carrier, era_offset: int) -> tuple[list[bytes], Carrier, int]:
    """Transactions for one block of ``era``: up to the era's mean size and weight cap (minus the
    coinbase's allowance). Returns them, the new carrier, and how many the era has made so far."""
    txs: list[bytes] = []
    size, weight = 0, 0
    budget_bytes = era.mean_bytes - COINBASE_ALLOWANCE
    budget_weight = era.max_weight - 4 * COINBASE_ALLOWANCE
    offset = era_offset
    while True:
        # The kind of the transaction after this one decides which script this one's carrier pays.
        this_kind, next_kind = tx_kinds(era, 2, offset)
        if this_kind != carrier.kind:
            # Era change: the carrier pays the previous era's script; spend it as it is.
            this_kind = carrier.kind
        outputs = [(SPEND_SCRIPT[next_kind], carrier.value - FEE), (FILLER[era.witness], 0)]
        if (carrier.serial + 1) % BATCH_EVERY == 0:
            outputs += [(FILLER[era.witness], 0)] * (BATCH_OUTPUTS - 2)
        tx = spend(this_kind, carrier.txid, carrier.vout, outputs)
        if txs and (size + len(tx.raw) > budget_bytes or weight + tx.weight > budget_weight):
            break
        txs.append(tx.raw)
        size += len(tx.raw)
        weight += tx.weight
        carrier = Carrier(tx.txid, 0, next_kind, carrier.value - FEE, carrier.serial + 1)
        offset += 1
    return txs, carrier, offset


@dataclass(frozen=True)
class ChainPlan:
    """What to build: blocks per era (in ``ERAS`` order; 0 leaves an era out) and the demo seed."""

    blocks: dict[str, int]
    seed: int = 11

    def eras(self) -> list[tuple[Era, int]]:
        return [(e, self.blocks[e.name]) for e in ERAS if self.blocks.get(e.name, 0) > 0]

    def key(self) -> str:
        """Cache key: every parameter that changes the chain's bytes, the eras' shapes included."""
        doc = {"builder": BUILDER_VERSION, "seed": self.seed, "maturity": MATURITY,
               "eras": [[dataclasses.asdict(e), n] for e, n in self.eras()]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# The default chain: 3 batches of sync's default 1,000 blocks per era, so every era is measured in
# the loop's steady state (a batch read while the one before is validated and committed); ~15,100
# blocks, ~11 GB. --quick: a smoke test of every part (50 blocks, 10 per era, ~40 MB, seconds to build).
FULL_PLAN = ChainPlan({"early": 3000, "growth": 3000, "legacy-full": 3000, "segwit": 3000, "current": 3000})
QUICK_PLAN = ChainPlan({"early": 10, "growth": 10, "legacy-full": 10, "segwit": 10, "current": 10})


@dataclass
class Segment:
    """One era's blocks in the built chain."""

    era: str
    first: int
    last: int
    bytes: int = 0
    weight: int = 0
    transactions: int = 0
    witness_commitments: int = 0

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1


@dataclass
class BuiltChain:
    key: str
    segments: list[Segment]
    tip_hash: str
    build_seconds: float
    node_subversion: str
    xor_key: bool              # the block files are XORed (blocks/xor.dat holds a non-zero key)
    plan: dict[str, Any] = field(default_factory=dict)

    def segment(self, era: str) -> Segment:
        for s in self.segments:
            if s.era == era:
                return s
        raise KeyError(f"the chain has no {era!r} segment (built: {', '.join(s.era for s in self.segments)})")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BuiltChain:
        doc = dict(doc)
        doc["segments"] = [Segment(**s) for s in doc["segments"]]
        return cls(**doc)


SHARED_CORE = Path(__file__).resolve().parent.parent.parent / "shared" / "bitcoin-core" / "bin" / "bitcoind"


def core_binary() -> tuple[Path, str]:
    """(bitcoind, "core") for the benchmark node: ``$POOLWATCH_BITCOIND``, else ../shared/bitcoin-core
    (the tests' lookup), else the usual search. Refuses any other node before a data directory is
    touched: another node (Bitcoin SV) started on a cached Core chain would write its own databases
    into it."""
    import os

    from pipeline.devnode.node import find_bitcoind

    if not os.environ.get("POOLWATCH_BITCOIND") and SHARED_CORE.is_file() and os.access(SHARED_CORE, os.X_OK):
        os.environ["POOLWATCH_BITCOIND"] = str(SHARED_CORE)
    path, flavor = find_bitcoind()
    if flavor != "core":
        raise RuntimeError(f"the benchmark chain needs Bitcoin Core (witness data, XORed block files); {path} is "
                           f"{flavor}: set POOLWATCH_BITCOIND to Core's bitcoind")
    return path, flavor


def node_args() -> tuple[str, ...]:
    """Extra bitcoind options for the benchmark node (the rest: RegtestNode's regtest defaults)."""
    return ("-fixedseeds=0",)


def _submitter(node: RegtestNode, todo: queue.Queue, errors: list[BaseException]) -> None:
    while True:
        raw = todo.get()
        if raw is None:
            return
        if errors:
            continue
        try:
            node.submit(raw)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the building thread
            errors.append(exc)


def build_chain(node: RegtestNode, registry: Any, plan: ChainPlan,
                progress: Callable[[str, int, int], None] | None = None) -> BuiltChain:
    """Mine the maturity blocks, then every era's segment, on a fresh node; check the tip."""
    from pipeline.devnode.chains import mine_chain

    if node.flavor != "core":
        raise RuntimeError(f"the benchmark chain needs Bitcoin Core (witness data, XORed block files); "
                           f"{node.binary} is {node.flavor}: set POOLWATCH_BITCOIND to Core's bitcoind")
    started = time.monotonic()
    total = MATURITY + 1 + sum(n for _, n in plan.eras())
    specs = demo_specs(registry, total, seed=plan.seed, allow_p2sh=True)
    now = int(time.time())
    start_time = now - total * 600 - 3600
    first = specs[0]
    first.extra_outputs = [*first.extra_outputs, (LEGACY_SCRIPT, CARRIER_VALUE)]
    small = mine_chain(node, specs[:MATURITY + 1], start_time=start_time, jitter=0.0)
    # The first block's coinbase funds the chain of transactions; its carrier is the last extra
    # output (a witness commitment, when there is one, comes after it).
    coinbase_txid = bytes.fromhex(node.rpc("getblock", small[0], 1)["tx"][0])[::-1]
    vout = len(first.payouts) + len(first.extra_outputs) - 1
    carrier = Carrier(coinbase_txid, vout, LEGACY, CARRIER_VALUE)
    prev_hash, height = small[-1], MATURITY + 1
    segments: list[Segment] = []
    todo: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    submitter = threading.Thread(target=_submitter, args=(node, todo, errors), daemon=True)
    submitter.start()
    spec_iter = iter(specs[MATURITY + 1:])
    try:
        for era, n in plan.eras():
            segment = Segment(era.name, height + 1, height + n)
            offset = 0
            for i in range(n):
                height += 1
                spec = dataclasses.replace(next(spec_iter), witness_commitment=era.witness)
                txs, carrier, offset = fill_block(era, carrier, offset)
                raw = build_block(prev_hash, height, start_time + (height - 1) * 600, spec, txs=txs,
                                  fees=FEE * len(txs), segwit=era.witness)
                if errors:
                    raise errors[0]
                todo.put(raw)
                prev_hash = header_hash(raw)
                segment.bytes += len(raw)
                segment.weight += block_weight(raw)
                segment.transactions += len(txs) + 1
                segment.witness_commitments += int(era.witness)
                if progress:
                    progress(era.name, i + 1, n)
            segments.append(segment)
    finally:
        todo.put(None)
        submitter.join()
    if errors:
        raise errors[0]
    tip = node.tip()
    if tip.hash != prev_hash or tip.height != height:
        raise RuntimeError(f"benchmark chain: the node's tip {tip.hash} at {tip.height} is not the last built "
                           f"block {prev_hash} at {height}")
    info = node.rpc("getnetworkinfo")
    return BuiltChain(key=plan.key(), segments=segments, tip_hash=tip.hash,
                      build_seconds=time.monotonic() - started, node_subversion=str(info.get("subversion")),
                      xor_key=xor_key_in_use(node.datadir), plan={"blocks": plan.blocks, "seed": plan.seed})


def block_weight(raw_block: bytes) -> int:
    """A block's weight (BIP141: 3 x its size without witness data + its size), by the decoder."""
    from pipeline.chain.decode import decode_block
    from pipeline.chain.networks import REGTEST

    return decode_block(raw_block, REGTEST, height=0).weight


def xor_key_in_use(datadir: Path) -> bool:
    key = Path(datadir) / "regtest" / "blocks" / "xor.dat"
    return key.exists() and any(key.read_bytes())


def chain_dir(out: Path, plan: ChainPlan) -> Path:
    return Path(out) / "chains" / plan.key()


def load_built(directory: Path) -> BuiltChain | None:
    """The chain recorded in ``directory`` (complete builds only: the record is written last)."""
    try:
        return BuiltChain.from_json(json.loads((directory / RECORD).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def ensure_chain(out: Path, registry: Any, plan: ChainPlan, *, rebuild: bool = False,
                 progress: Callable[[str, int, int], None] | None = None,
                 say: Callable[[str], None] = log.info) -> tuple[Path, BuiltChain, bool]:
    """(node datadir, chain, reused?) for ``plan``: the cached build when there is a complete one
    (and not ``rebuild``), else a new build in its place."""
    directory = chain_dir(out, plan)
    core_binary()  # before anything touches the directory
    built = None if rebuild else load_built(directory)
    if built is not None:
        return directory / "node", built, True
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    say(f"building the benchmark chain {plan.key()} in {directory} ({', '.join(f'{e.name} {n}' for e, n in plan.eras())}"
        " blocks; cached for later runs)")
    with RegtestNode(binary=core_binary(), datadir=directory / "node", extra_args=node_args()) as node:
        built = build_chain(node, registry, plan, progress)
    tmp = directory / (RECORD + ".tmp")
    tmp.write_text(json.dumps(built.to_json(), indent=1))
    tmp.replace(directory / RECORD)
    return directory / "node", built, False


__all__ = ["BUILDER_VERSION", "BuiltChain", "Carrier", "ChainPlan", "FULL_PLAN", "QUICK_PLAN", "Segment", "block_weight", "build_chain",
           "chain_dir", "core_binary", "ensure_chain", "fill_block", "load_built", "node_args", "p2wsh", "spend", "tx_kinds",
           "xor_key_in_use"]
