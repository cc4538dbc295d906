"""Regtest chains: one block per ``CoinbaseSpec`` on a node's tip, timed like a real chain.

See docs/regtest.md.
"""

from __future__ import annotations

import logging
import random
import time as _time
from collections.abc import Iterable, Sequence

from pipeline.chain.decode import header_hash
from pipeline.devnode.blocks import CoinbaseSpec, build_block
from pipeline.devnode.node import BlockRejected, RegtestNode

log = logging.getLogger(__name__)

MAX_FUTURE_DRIFT = 2 * 60 * 60  # nodes reject blocks more than 2 h ahead of their clock ("time-too-new")




def block_times(n: int, start_time: int, spacing: int = 600, jitter: float = 0.25,
                seed: int = 0) -> list[int]:
    """``n`` strictly increasing timestamps ``spacing`` apart, each moved by up to ±jitter*spacing.

    jitter < 0.5 keeps them strictly increasing, so each one exceeds the median of the previous 11
    (the node's "time-too-old" rule).
    """
    if not 0 <= jitter < 0.5:
        raise ValueError(f"jitter must be in [0, 0.5), got {jitter}")
    rng = random.Random(seed)
    span = int(spacing * jitter)
    return [start_time + i * spacing + (rng.randint(-span, span) if span else 0) for i in range(n)]


def is_p2sh(script: bytes) -> bool:
    return len(script) == 23 and script[:2] == b"\xa9\x14" and script[-1] == 0x87


def _reject_p2sh_for_sv(specs: Sequence[CoinbaseSpec]) -> None:
    """Fail before submitting anything: Bitcoin SV 1.0.13 rejects P2SH outputs in any block.

    Measured: submitblock answers RPC -26 "bad-txns-vout-p2sh" on regtest whatever
    -genesisactivationheight says, so no flag makes such a chain acceptable there.
    """
    for i, spec in enumerate(specs):
        scripts = [s for s, _ in spec.payouts] + [s for s, _ in spec.extra_outputs]
        if any(is_p2sh(s) for s in scripts):
            raise ValueError(f"spec {i} pays a P2SH script, which the Bitcoin SV node rejects (bad-txns-vout-p2sh); "
                             "plan the chain with demo_specs(..., allow_p2sh=False) or run real Bitcoin Core "
                             "(POOLWATCH_BITCOIND=/path/to/bitcoind)")


def mine_chain(node: RegtestNode, specs: Iterable[CoinbaseSpec], start_time: int | None = None,
               spacing: int = 600, *, jitter: float = 0.25, batch_size: int = 200,
               seed: int = 0) -> list[str]:
    """Build one block per spec on the node's tip, submit them, return their hashes in order.

    Default ``start_time``: chosen so the chain ends about one spacing before now (and never before
    the tip), giving realistic dates for demo charts; if the tip is too recent for that, the blocks
    are squeezed (smaller spacing) between the tip and now + 1 h. Explicit times must be after the tip's median
    time past and end before node time + 2 h. Blocks go to the node in JSON-RPC batches (one HTTP
    round trip per ``batch_size`` blocks); a rejection raises BlockRejected naming height and reason,
    blocks before it stay on the chain.
    """
    specs = list(specs)
    if not specs:
        return []
    if node.flavor == "sv":
        _reject_p2sh_for_sv(specs)
    tip = node.tip()
    tip_header = node.rpc("getblockheader", tip.hash)
    mtp, tip_time = int(tip_header["mediantime"]), int(tip_header["time"])
    now = int(_time.time())
    margin = int(spacing * jitter)  # the largest shift block_times applies
    if start_time is None:
        start_time = max(now - len(specs) * spacing, tip_time + spacing)
        if start_time + len(specs) * spacing > now + MAX_FUTURE_DRIFT // 2:
            # The tip is already recent (e.g. a second chain on the same node): squeeze the blocks
            # between the tip and now + 1 h rather than fail; explicit times are never changed.
            spacing = max(1, (now + MAX_FUTURE_DRIFT // 2 - tip_time) // (len(specs) + 1))
            start_time = tip_time + spacing
            margin = int(spacing * jitter)  # the largest shift block_times applies
            log.info("tip time is recent: mining %d blocks %d s apart", len(specs), spacing)
    if start_time - margin <= mtp:
        raise ValueError(f"start_time {start_time} (minus jitter {margin}) is not after the tip's median time "
                         f"past {mtp}; blocks would be rejected as time-too-old")
    end = start_time + (len(specs) - 1) * spacing + margin
    if end > now + MAX_FUTURE_DRIFT - 60:
        raise ValueError(f"the last block would be timed {end - now} s in the future (limit {MAX_FUTURE_DRIFT} s): "
                         f"pass an earlier start_time or a smaller spacing for {len(specs)} blocks")
    times = block_times(len(specs), start_time, spacing, jitter, seed=seed or start_time)
    segwit = node.flavor == "core"
    hashes: list[str] = []
    prev, height = tip.hash, tip.height
    pending: list[tuple[bytes, int]] = []

    def flush() -> None:
        results = node.rpc_batch([("submitblock", [raw.hex()]) for raw, _ in pending])
        for (raw, h), res in zip(pending, results):
            if res is not None:
                raise BlockRejected(header_hash(raw), h, str(res))
        pending.clear()

    for spec, t in zip(specs, times):
        height += 1
        raw = build_block(prev, height, t, spec, segwit=segwit)
        prev = header_hash(raw)
        hashes.append(prev)
        pending.append((raw, height))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    log.info("mined %d regtest blocks, heights %d..%d", len(hashes), tip.height + 1, height)
    return hashes
