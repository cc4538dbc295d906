"""Invariants of a batch that span rows or tables: height links, sums, consensus rules, registry facts.

Great Expectations checks what one column (or a pair of columns) of one table must satisfy, as
declared in ``schemas/expectations/<table>.json``. What needs more than that (the row before, the
stored block the batch follows, another table of the batch, the network's subsidy schedule, a sum
over a window) is a plain function here, declared by name under ``invariants`` in the same suite
file (with the rule it protects), and run by ``pipeline.store.validation`` beside the suite. Each
returns the failing rows (positions in the table) and their values, or nothing; a row whose fact
cannot be decided from the batch and its context (the first row's link when the stored predecessor
is unknown, say) is not a failure.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipeline.chain.decode import bip34_height
from pipeline.chain.networks import Network, block_subsidy, network_for_chain

GENESIS_PREV_HASH = "0" * 64
# Core's GetMedianTimePast window.
MEDIAN_TIME_SPAN = 11
# Core rejects a block whose time is more than 2 h ahead of its network-adjusted time
# (MAX_FUTURE_BLOCK_TIME). Any stored block was accepted at some moment <= now, so "now + 2 h" is
# a bound every valid stored block satisfies.
MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60
# The earliest block time any chain has (mainnet's genesis, 2009-01-03).
EARLIEST_BLOCK_TIME = 1231006505
# Shares and indices are floats computed by DuckDB/numpy; sums may differ from 1 in the last bits.
FLOAT_TOLERANCE = 1e-9
UNKNOWN_POOL_ID = "unknown"  # pipeline.attribution.engine's id for blocks no rule matched
# Script types with an address on every network, and those that never have one.
ADDRESS_REQUIRED = frozenset({"p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr"})
ADDRESS_FORBIDDEN = frozenset({"p2pk", "multisig", "op_return", "nonstandard", "witness_commitment"})


@dataclass(frozen=True)
class CheckContext:
    """What checking a batch needs from outside it (``validate_batch``'s context)."""

    chain: str | None = None
    previous_height: int | None = None     # the stored block the batch follows
    previous_hash: str | None = None
    previous_median_time: int | None = None
    registry_version: str | None = None    # the attribution version the batch was attributed with
    pool_ids: frozenset[str] | None = None  # the pools of that registry
    now: int = 0                            # epoch seconds: the future-time bound

    @property
    def network(self) -> Network | None:
        return network_for_chain(self.chain) if self.chain else None

    @classmethod
    def from_mapping(cls, context: Mapping[str, Any]) -> CheckContext:
        def optional_int(key: str) -> int | None:
            value = context.get(key)
            return int(value) if value is not None else None

        pool_ids = context.get("pool_ids")
        return cls(chain=context.get("chain"), previous_height=optional_int("previous_height"),
                   previous_hash=context.get("previous_hash"), previous_median_time=optional_int("previous_median_time"),
                   registry_version=context.get("registry_version"),
                   pool_ids=frozenset(pool_ids) if pool_ids is not None else None,
                   now=int(context.get("now") or datetime.now().timestamp()))


@dataclass
class Violation:
    """Rows (positions in the checked table) that break an invariant, with the values shown."""

    rows: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)


Invariant = Callable[[pa.Table, Mapping[str, pa.Table], CheckContext], Violation]
INVARIANTS: dict[str, Invariant] = {}


def invariant(name: str) -> Callable[[Invariant], Invariant]:
    def register(fn: Invariant) -> Invariant:
        INVARIANTS[name] = fn
        return fn
    return register


def _col(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def _epoch(values: Iterable[Any]) -> list[int | None]:
    return [None if v is None else int(v.timestamp()) if isinstance(v, datetime) else int(v) for v in values]


def _failing(flags: Sequence[bool | None], values: Sequence[Any]) -> Violation:
    """A Violation of the rows flagged False (None: undecided, not a failure)."""
    rows = [i for i, ok in enumerate(flags) if ok is False]
    return Violation(rows, [values[i] for i in rows])


# ------------------------------------------------------------------------------------------ blocks


@invariant("height_contiguous")
def heights_contiguous(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Rows sorted by height: each height is the one before + 1; the first continues the stored
    predecessor (undecided when that is unknown)."""
    heights = [int(h) for h in _col(blocks, "height")]
    order = sorted(range(len(heights)), key=lambda i: heights[i])
    flags: list[bool | None] = [None] * len(heights)
    for pos, i in enumerate(order):
        before = heights[order[pos - 1]] if pos else ctx.previous_height
        flags[i] = None if before is None else heights[i] == before + 1
    return _failing(flags, heights)


def _first_by_height(heights: Sequence[int], values: Sequence[Any]) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for h, v in zip(heights, values, strict=True):
        out.setdefault(int(h), v)  # a repeated height is the uniqueness expectation's to report
    return out


@invariant("prev_link_ok")
def prev_hash_links(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """prev_hash is the hash of the block one lower (in the batch, or the stored predecessor);
    height 0 links to 64 zeros."""
    heights, prevs = _col(blocks, "height"), _col(blocks, "prev_hash")
    hash_at = _first_by_height(heights, _col(blocks, "hash"))
    flags: list[bool | None] = []
    for h, prev in zip(heights, prevs, strict=True):
        if h == 0:
            flags.append(prev == GENESIS_PREV_HASH)
        elif h - 1 in hash_at:
            flags.append(prev == hash_at[h - 1])
        elif ctx.previous_hash is not None and ctx.previous_height == h - 1:
            flags.append(prev == ctx.previous_hash)
        else:
            flags.append(None)
    return _failing(flags, prevs)


@invariant("time_in_bounds")
def time_in_bounds(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """A block time no earlier than mainnet's genesis and at most 2 hours after now."""
    return _times_in_bounds(_col(blocks, "time"), ctx)


def _times_in_bounds(values: list[Any], ctx: CheckContext) -> Violation:
    """Each time no earlier than mainnet's genesis and at most 2 hours after ``ctx.now``."""
    latest = ctx.now + MAX_FUTURE_BLOCK_TIME
    return _failing([None if t is None else EARLIEST_BLOCK_TIME <= t <= latest for t in _epoch(values)], values)


def _median_time_past(times: Mapping[int, int | None], height: int) -> int | None:
    """Core's GetMedianTimePast of the block at ``height`` from header times, or None if unknown."""
    window = [times.get(h) for h in range(max(0, height - MEDIAN_TIME_SPAN + 1), height + 1)]
    if any(t is None for t in window):
        return None
    ordered = sorted(window)  # type: ignore[type-var]
    return ordered[len(ordered) // 2]


@invariant("time_after_mtp")
def time_after_median_time_past(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Core's consensus rule: a block's time exceeds the median time past of its predecessor (from
    header times in the batch, else the node's median_time of the predecessor)."""
    heights = [int(h) for h in _col(blocks, "height")]
    times = _epoch(_col(blocks, "time"))
    by_height = dict(zip(heights, times, strict=True))
    node_mtp = dict(zip(heights, _epoch(_col(blocks, "median_time")), strict=True))
    flags: list[bool | None] = []
    for h, t in zip(heights, times, strict=True):
        if h == 0 or t is None:
            flags.append(None)  # genesis has no predecessor rule
            continue
        mtp = _median_time_past(by_height, h - 1)
        if mtp is None:
            mtp = node_mtp.get(h - 1)
        if mtp is None and ctx.previous_median_time is not None and ctx.previous_height == h - 1:
            mtp = ctx.previous_median_time
        flags.append(None if mtp is None else t > mtp)
    return _failing(flags, _col(blocks, "time"))


@invariant("median_time_consistent")
def median_time_matches_headers(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """The node-reported median_time is the median of the (up to) 11 header times ending at the block,
    where those are all in the batch."""
    heights = [int(h) for h in _col(blocks, "height")]
    times = dict(zip(heights, _epoch(_col(blocks, "time")), strict=True))
    reported = _epoch(_col(blocks, "median_time"))
    flags = [None if mt is None or (exp := _median_time_past(times, h)) is None else mt == exp
             for h, mt in zip(heights, reported, strict=True)]
    return _failing(flags, _col(blocks, "median_time"))


@invariant("subsidy_ok")
def subsidy_by_schedule(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """subsidy_sat is the network's subsidy at the height (halving schedule; undecided without a chain)."""
    network = ctx.network
    subsidies = _col(blocks, "subsidy_sat")
    if network is None:
        return Violation()
    return _failing([int(s) == block_subsidy(int(h), network) for h, s in zip(_col(blocks, "height"), subsidies,
                                                                                strict=True)], subsidies)


def _outputs_by_height(batch: Mapping[str, pa.Table]) -> tuple[dict[int, int], Counter] | None:
    outputs = batch.get("coinbase_outputs")
    if outputs is None:
        return None
    total: dict[int, int] = {}
    count: Counter = Counter()
    for h, v in zip(_col(outputs, "height"), _col(outputs, "value_sat"), strict=True):
        total[int(h)] = total.get(int(h), 0) + int(v)
        count[int(h)] += 1
    return total, count


@invariant("outputs_sum_ok")
def value_is_sum_of_outputs(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """coinbase_value_sat is the sum of the block's coinbase_outputs rows (when the batch has them)."""
    by_height = _outputs_by_height(batch)
    values = _col(blocks, "coinbase_value_sat")
    if by_height is None:
        return Violation()
    total = by_height[0]
    return _failing([total.get(int(h), 0) == int(v) for h, v in zip(_col(blocks, "height"), values, strict=True)],
                    values)


@invariant("output_count_ok")
def output_count_matches(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """output_count is the number of the block's coinbase_outputs rows (when the batch has them)."""
    by_height = _outputs_by_height(batch)
    counts = _col(blocks, "output_count")
    if by_height is None:
        return Violation()
    return _failing([by_height[1].get(int(h), 0) == int(n) for h, n in zip(_col(blocks, "height"), counts,
                                                                            strict=True)], counts)


@invariant("attribution_count")
def one_attribution_per_block(blocks: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Exactly one attributions row per block (when the batch carries attributions)."""
    attributions = batch.get("attributions")
    if attributions is None:
        return Violation()
    counts = Counter(_col(attributions, "height"))
    got = [counts.get(h, 0) for h in _col(blocks, "height")]
    return _failing([n == 1 for n in got], got)


# ------------------------------------------------------------------------ outputs and attributions


@invariant("block_hash_ok")
def block_hash_matches_block(table: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """A row's block_hash is the hash of the block at its height in the same batch (when it has blocks)."""
    blocks = batch.get("blocks")
    values = _col(table, "block_hash")
    if blocks is None:
        return Violation()
    hash_at = _first_by_height(_col(blocks, "height"), _col(blocks, "hash"))
    return _failing([hash_at.get(int(h)) == bh for h, bh in zip(_col(table, "height"), values, strict=True)], values)


@invariant("address_presence_ok")
def address_presence_by_script_type(outputs: pa.Table, batch: Mapping[str, pa.Table],
                                    ctx: CheckContext) -> Violation:
    """Outputs of an address type have an address; p2pk, multisig, OP_RETURN, nonstandard and the
    witness commitment never do."""
    flags: list[bool | None] = []
    types = _col(outputs, "script_type")
    for st, addr in zip(types, _col(outputs, "address"), strict=True):
        has = isinstance(addr, str) and addr != ""
        flags.append(has if st in ADDRESS_REQUIRED else (not has) if st in ADDRESS_FORBIDDEN else None)
    return _failing(flags, types)


@invariant("pool_id_known")
def pool_ids_in_registry(table: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """pool_id is 'unknown' or a pool of the registry the batch was attributed with."""
    values = _col(table, "pool_id")
    if ctx.pool_ids is None:
        return Violation()
    known = ctx.pool_ids | {UNKNOWN_POOL_ID}
    return _failing([p in known for p in values], values)


@invariant("registry_version_ok")
def one_attribution_version(table: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Rows carry the attribution version the batch was attributed with."""
    values = _col(table, "registry_version")
    if ctx.registry_version is None:
        return Violation()
    return _failing([v == ctx.registry_version for v in values], values)


@invariant("unknown_consistent")
def unknown_iff_no_evidence(table: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """A block is 'unknown' exactly when no evidence (method none) decided it."""
    pools, methods = _col(table, "pool_id"), _col(table, "method")
    return _failing([(p == UNKNOWN_POOL_ID) == (m == "none") for p, m in zip(pools, methods, strict=True)],
                    [f"{p}/{m}" for p, m in zip(pools, methods, strict=True)])


# ---------------------------------------------------------------------------------- coinbase spends


@invariant("spend_scanned")
def spends_of_scanned_blocks(spends: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """A coinbase_spends row's height has a spend_scans row in the batch (undecided without that table)."""
    scans = batch.get("spend_scans")
    heights = _col(spends, "height")
    if scans is None:
        return Violation()
    scanned = {int(h) for h in _col(scans, "height")}
    return _failing([int(h) in scanned for h in heights], heights)


@invariant("coinbase_ok")
def spent_coinbase_matches_block(spends: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """coinbase_txid is the coinbase of the block at coinbase_height and coinbase_vout one of its
    outputs, where that block is in the batch (undecided for coinbases of earlier batches)."""
    blocks = batch.get("blocks")
    txids = _col(spends, "coinbase_txid")
    if blocks is None:
        return Violation()
    heights = _col(blocks, "height")
    txid_at = _first_by_height(heights, _col(blocks, "coinbase_txid"))
    outputs_at = _first_by_height(heights, _col(blocks, "output_count"))
    flags: list[bool | None] = []
    for h, txid, vout in zip(_col(spends, "coinbase_height"), txids, _col(spends, "coinbase_vout"), strict=True):
        h = int(h)
        flags.append(None if h not in txid_at else txid_at[h] == txid and 0 <= int(vout) < int(outputs_at[h]))
    return _failing(flags, [f"{t}:{v}" for t, v in zip(txids, _col(spends, "coinbase_vout"), strict=True)])


@invariant("spend_count_ok")
def scan_counts_its_spends(scans: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """spends is the number of coinbase_spends rows at the height (a batch without that table
    recorded none, so every count must be 0)."""
    spends = batch.get("coinbase_spends")
    counts: Counter = Counter(int(h) for h in _col(spends, "height")) if spends is not None else Counter()
    values = _col(scans, "spends")
    return _failing([counts.get(int(h), 0) == int(n) for h, n in zip(_col(scans, "height"), values, strict=True)],
                    values)


@invariant("inputs_cover_transactions")
def scan_inputs_cover_transactions(scans: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Every non-coinbase transaction has at least one input: inputs >= tx_count - 1 of the block
    at the height (undecided when that block is not in the batch)."""
    blocks = batch.get("blocks")
    values = _col(scans, "inputs")
    if blocks is None:
        return Violation()
    tx_count_at = _first_by_height(_col(blocks, "height"), _col(blocks, "tx_count"))
    flags = [None if int(h) not in tx_count_at else int(n) >= int(tx_count_at[int(h)]) - 1
             for h, n in zip(_col(scans, "height"), values, strict=True)]
    return _failing(flags, values)


@invariant("custody_pair_ordered")
def custody_pair_ordered(links: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """A custody link names two different pools, pool_a < pool_b."""
    pairs = list(zip(_col(links, "pool_a"), _col(links, "pool_b"), strict=True))
    return _failing([a < b for a, b in pairs], [f"{a}/{b}" for a, b in pairs])


@invariant("custody_pools_known")
def custody_pools_known(links: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Both pools of a custody link are pools of the batch's registry ('unknown' blocks make no link)."""
    pairs = list(zip(_col(links, "pool_a"), _col(links, "pool_b"), strict=True))
    if ctx.pool_ids is None:
        return Violation()
    return _failing([a in ctx.pool_ids and b in ctx.pool_ids for a, b in pairs], [f"{a}/{b}" for a, b in pairs])


# ------------------------------------------------------------------------------------------ metrics


def _window_sums(table: pa.Table, column: str, where: Sequence[bool] | None = None) -> list[tuple[float, int]]:
    """Per row: (sum of ``column`` over the row's window and level, rows summed), rows kept by ``where``."""
    keys = list(zip(_col(table, "window_kind"), _col(table, "window_id"), _col(table, "level"), strict=True))
    values = _col(table, column)
    sums: dict[tuple, float] = {}
    counts: Counter = Counter()
    for i, (key, v) in enumerate(zip(keys, values, strict=True)):
        if v is None or (where is not None and not where[i]):
            continue
        sums[key] = sums.get(key, 0.0) + float(v)
        counts[key] += 1
    return [(sums.get(k, 0.0), counts.get(k, 0)) for k in keys]


@invariant("share_sum_ok")
def shares_sum_to_one(share: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """The shares of all entities of a window (the unknown row included) sum to 1."""
    sums = _window_sums(share, "share")
    return _failing([abs(s - 1.0) <= FLOAT_TOLERANCE for s, _ in sums], [s for s, _ in sums])


@invariant("share_of_known_sum_ok")
def shares_of_known_sum_to_one(share: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """share_of_known over the known entities of a window sums to 1 (undecided with no known entity)."""
    known = [not bool(u) for u in _col(share, "is_unknown")]
    sums = _window_sums(share, "share_of_known", known)
    return _failing([None if n == 0 else abs(s - 1.0) <= FLOAT_TOLERANCE for s, n in sums], [s for s, _ in sums])


@invariant("blocks_sum_ok")
def blocks_sum_to_total(share: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """The blocks of all entities of a window add up to its blocks_total."""
    sums = _window_sums(share, "blocks")
    totals = _col(share, "blocks_total")
    return _failing([int(s) == int(t) for (s, _), t in zip(sums, totals, strict=True)], [s for s, _ in sums])


@invariant("share_in_interval")
def share_within_interval(share: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """share_lo <= share <= share_hi."""
    e = FLOAT_TOLERANCE
    rows = zip(_col(share, "share_lo"), _col(share, "share"), _col(share, "share_hi"), strict=True)
    flags = [None if None in (lo, s, hi) else lo <= s + e and s <= hi + e for lo, s, hi in rows]
    return _failing(flags, _col(share, "share"))


def _missing(*values: Any) -> bool:
    return any(v is None or v != v for v in values)  # None or NaN


@invariant("hhi_in_bounds")
def hhi_within_bounds(cent: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """HHI lies in [1/n, 1] for n entities (undecided when the window counts no block)."""
    e = FLOAT_TOLERANCE
    hhis = _col(cent, "hhi")
    flags = [None if _missing(h) or not n else 1.0 / n - e <= h <= 1.0 + e
             for h, n in zip(hhis, _col(cent, "n_entities"), strict=True)]
    return _failing(flags, hhis)


@invariant("top_shares_ordered")
def top_shares_ordered(cent: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """0 < top1 <= top3 <= top5 <= 1 of known blocks; each share of all <= its share of known
    (undecided when no block is known)."""
    e = FLOAT_TOLERANCE
    columns = ("top1_share_of_known", "top3_share_of_known", "top5_share_of_known", "top1_share_of_all",
               "top3_share_of_all", "top5_share_of_all")
    flags: list[bool | None] = []
    for k1, k3, k5, a1, a3, a5 in zip(*(_col(cent, c) for c in columns), strict=True):
        if _missing(k1, k3, k5, a1, a3, a5):
            flags.append(None)
        else:
            flags.append(0 < k1 <= k3 + e and k3 <= k5 + e and k5 <= 1 + e
                         and a1 <= k1 + e and a3 <= k3 + e and a5 <= k5 + e and a1 > 0)
    return _failing(flags, _col(cent, "top1_share_of_known"))


@invariant("nakamoto_in_bounds")
def nakamoto_within_bounds(cent: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """1 <= Nakamoto coefficient <= number of entities (undecided when not computed)."""
    values = _col(cent, "nakamoto")
    flags = [None if _missing(k) else 1 <= k <= n for k, n in zip(values, _col(cent, "n_entities"), strict=True)]
    return _failing(flags, values)


# ---------------------------------------------------------------------------------------- templates

# The marker pipeline.attribution.templates gives a pool reference that resolved to no registry pool.
UNMAPPED_PREFIX = "unmapped:"
EMPTY_BRANCH_HASH = hashlib.sha256(b"").hexdigest()  # branch_hash of an empty-block job
_BRANCH_RE = re.compile(r"^[0-9a-f]{64}$")
# A coinbase transaction starts: version (4 bytes), input count 1, the null prevout (32 zero bytes and
# index 0xffffffff), then the scriptSig's length and the scriptSig, whose first push is the height.
_NULL_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"


def coinbase1_height(coinbase1_hex: str) -> int | None:
    """The BIP34 height at the start of a stratum coinbase1's scriptSig; None when coinbase1 is not
    the start of a coinbase transaction or commits to no height. Parsed here on its own (not with the
    importer's code) so the check stays independent of what it checks."""
    try:
        raw = bytes.fromhex(coinbase1_hex)
    except ValueError:
        return None
    if len(raw) < 42 or raw[4] != 1 or raw[5:41] != _NULL_PREVOUT:
        return None
    # The scriptSig of a coinbase is 2-100 bytes: its length is always a one-byte compact size.
    if raw[41] > 100:
        return None
    return bip34_height(raw[42:])


@invariant("template_branch_hash_ok")
def branch_hash_of_branches(obs: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Every branch is 64 lowercase hex digits; branch_hash is SHA-256 of the branches' bytes in order."""
    hashes = _col(obs, "branch_hash")
    flags = []
    for branches, value in zip(_col(obs, "merkle_branches"), hashes, strict=True):
        if branches is None or not all(isinstance(b, str) and _BRANCH_RE.match(b) for b in branches):
            flags.append(False)
        else:
            flags.append(hashlib.sha256(bytes.fromhex("".join(branches))).hexdigest() == value)
    return _failing(flags, hashes)


@invariant("template_height_matches_coinbase")
def height_matches_coinbase1(obs: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """height is the BIP34 height pushed first in coinbase1's scriptSig (a coinbase1 without one fails)."""
    heights = _col(obs, "height")
    return _failing([coinbase1_height(c) == h for c, h in zip(_col(obs, "coinbase1"), heights, strict=True)],
                    heights)


@invariant("template_one_height_per_prev_hash")
def one_height_per_prev_hash(obs: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Rows with the same prev_hash have the same height; where they do not, every row of that
    prev_hash fails (which one is wrong cannot be told from the rows)."""
    prevs, heights = _col(obs, "prev_hash"), _col(obs, "height")
    seen: dict[str, set[int]] = {}
    for p, h in zip(prevs, heights, strict=True):
        seen.setdefault(p, set()).add(h)
    return _failing([len(seen[p]) == 1 for p in prevs], heights)


@invariant("template_pool_ref_ok")
def pool_reference_resolved(obs: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """An unmapped row's pool_id is 'unmapped:' + pool_name_raw; any other row's is a registry pool
    (undecided without the registry's pool ids in the context)."""
    pools = _col(obs, "pool_id")
    flags: list[bool | None] = []
    for pool, raw, match in zip(pools, _col(obs, "pool_name_raw"), _col(obs, "pool_match"), strict=True):
        if match == "unmapped":
            flags.append(pool == UNMAPPED_PREFIX + raw)
        elif pool.startswith(UNMAPPED_PREFIX):
            flags.append(False)
        else:
            flags.append(None if ctx.pool_ids is None else pool in ctx.pool_ids)
    return _failing(flags, pools)


@invariant("template_observed_at_in_bounds")
def observed_at_in_bounds(obs: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """No earlier than mainnet's genesis block, at most 2 hours after now."""
    return _times_in_bounds(_col(obs, "observed_at"), ctx)


@invariant("template_observation_grouped")
def observation_in_its_group(obs: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """A job with branches is in the group of its (prev_hash, branch_hash), its pool in pool_ids
    (when the batch carries template_groups; empty-block jobs belong to no group)."""
    groups = batch.get("template_groups")
    pools = _col(obs, "pool_id")
    if groups is None:
        return Violation()
    members = {(p, b): set(ids) for p, b, ids in zip(_col(groups, "prev_hash"), _col(groups, "branch_hash"),
                                                      _col(groups, "pool_ids"), strict=True)}
    flags: list[bool | None] = []
    for prev, branch, pool in zip(_col(obs, "prev_hash"), _col(obs, "branch_hash"), pools, strict=True):
        flags.append(None if branch == EMPTY_BRANCH_HASH else pool in members.get((prev, branch), ()))
    return _failing(flags, pools)


def template_group_id(prev_hash: str, branch_hash: str) -> str:
    return hashlib.sha256((prev_hash + branch_hash).encode("ascii")).hexdigest()[:16]


@invariant("template_group_ok")
def group_consistent(groups: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """group_id = template_group_id(prev_hash, branch_hash); pool_ids sorted and distinct, pools its
    length; first_seen <= last_seen."""
    ids = _col(groups, "group_id")
    rows = zip(ids, _col(groups, "prev_hash"), _col(groups, "branch_hash"), _col(groups, "pool_ids"),
               _col(groups, "pools"), _epoch(_col(groups, "first_seen")), _epoch(_col(groups, "last_seen")),
               strict=True)
    flags = [gid == template_group_id(prev, branch) and members == sorted(set(members)) and n == len(members)
             and first <= last
             for gid, prev, branch, members, n, first, last in rows]
    return _failing(flags, ids)


def _pairs(members: Sequence[str]) -> list[tuple[str, str]]:
    ordered = sorted(set(members))
    return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:]]


@invariant("template_group_pairs_linked")
def group_pairs_linked(groups: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """Every pair of a group's pools has a template_links row (when the batch carries template_links)."""
    links = batch.get("template_links")
    ids = _col(groups, "group_id")
    if links is None:
        return Violation()
    linked = set(zip(_col(links, "pool_a"), _col(links, "pool_b"), strict=True))
    return _failing([all(pair in linked for pair in _pairs(members)) for members in _col(groups, "pool_ids")], ids)


@invariant("template_link_counts_ok")
def link_counts_from_groups(links: pa.Table, batch: Mapping[str, pa.Table], ctx: CheckContext) -> Violation:
    """pool_a < pool_b; with template_groups in the batch, (shared_groups, heights_seen, first_height,
    last_height) are the pair's count of groups, distinct heights, lowest and highest height there."""
    groups = batch.get("template_groups")
    expected: dict[tuple[str, str], tuple[int, int, int, int]] | None = None
    if groups is not None:
        heights: dict[tuple[str, str], list[int]] = {}
        for members, height in zip(_col(groups, "pool_ids"), _col(groups, "height"), strict=True):
            for pair in _pairs(members):
                heights.setdefault(pair, []).append(int(height))
        expected = {pair: (len(hs), len(set(hs)), min(hs), max(hs)) for pair, hs in heights.items()}
    rows = list(zip(_col(links, "pool_a"), _col(links, "pool_b"), _col(links, "shared_groups"),
                    _col(links, "heights_seen"), _col(links, "first_height"), _col(links, "last_height"), strict=True))
    flags = [a < b and (expected is None or expected.get((a, b)) == (n, k, lo, hi)) for a, b, n, k, lo, hi in rows]
    return _failing(flags, [f"{a}/{b}" for a, b, *_ in rows])


__all__ = ["CheckContext", "INVARIANTS", "Violation", "invariant"]
