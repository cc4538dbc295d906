"""Centralization metrics: who holds how much of the block production, with honest uncertainty.

Point metrics are DuckDB SQL (window functions) over the warehouse views ``blocks`` and
``attributions``; the bootstrap intervals for HHI and the Nakamoto coefficient run in numpy on the
per-window counts. Every definition, with a worked example, is in ``docs/metrics.md``.

Unknown blocks are never silently dropped: every window-level metric is reported under three
treatments (``excluded``, ``one_entity``, ``each_own``) so a figure like the Nakamoto coefficient is
read as a range, not as a false point. Every metric is also computed at three levels (``pool``,
``legal``, ``inferred``: ``pipeline.metrics.families``), so a reader sees how many independent
parties the pools may be.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.metrics import families as fam
from pipeline.metrics.families import InferenceSettings

if TYPE_CHECKING:
    from pipeline.attribution.registry import Registry
    from pipeline.store.warehouse import Warehouse

log = logging.getLogger("pipeline.metrics.compute")

# Windows materialized by refresh_metrics (others are computed on request).
MATERIALIZED_WINDOWS = ("day", "week", "month", "epoch")
CALENDAR_KINDS = ("day", "week", "month")
LEVELS = fam.LEVELS  # pool, legal, inferred (pipeline/metrics/families.py)
TREATMENTS = ("excluded", "one_entity", "each_own")
UNKNOWN_ID = "unknown"
EPOCH_BLOCKS = 2016
TARGET_SPACING = 600  # seconds per block the difficulty adjustment aims at
HASHES_PER_DIFFICULTY = 2**32  # expected hashes to find a block at difficulty 1
# A window is low_sample when the upper end of its HHI's 95% interval is at least this many times the
# lower end: 1/HHI is the number of equal miners with the same HHI, so such an interval cannot tell 4
# equal miners (HHI 0.25, highly concentrated) from 8 (0.125, unconcentrated). Width, not a block
# count, decides: a 143-block day of a 2024-like mix spans about x1.5 (its windows are mostly flagged
# below ~55 blocks, never from 100).
# Justified with measurements in docs/metrics.md.
LOW_SAMPLE_HHI_RATIO = 2.0
CONFIDENCE = 0.95
BOOTSTRAP_DRAWS = 1000
# The bootstrap draws a (draws x entities) matrix; windows with thousands of singleton entities
# (each_own treatment in 2009-2011) get fewer draws so one refresh stays bounded in memory and time.
BOOTSTRAP_MAX_CELLS = 2_000_000
BOOTSTRAP_MIN_DRAWS = 200
BOOTSTRAP_SEED = 20240101
# The per-window views as SQL files (one per view) in the warehouse's extra-views format.
METRIC_VIEWS_DIR = Path(__file__).resolve().parent.parent / "sql" / "metrics"


class MetricsError(RuntimeError):
    """A metrics computation cannot proceed (missing tables, bad window, empty range)."""


# --------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class WindowScheme:
    """A way to cut the chain into windows.

    kind: ``day``/``week``/``month`` (UTC calendar, ISO weeks start Monday), ``epoch`` (difficulty
    epochs of 2016 blocks), ``blocks`` (consecutive chunks of ``size`` heights aligned at multiples of
    ``size``), ``rolling`` (sliding ``size``-block windows, one ending every ``step`` blocks) or
    ``all`` (one window over the whole selected range).
    """

    kind: str
    size: int | None = None
    step: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "blocks":
            return f"blocks_{self.size}"
        if self.kind == "rolling":
            return f"rolling_{self.size}" + (f"_{self.step}" if self.step and self.step != 1 else "")
        return self.kind

    @property
    def is_calendar(self) -> bool:
        return self.kind in CALENDAR_KINDS


_WINDOW_RE = re.compile(r"^(blocks|rolling)[:_ ](\d+)(?:[:_ ](\d+))?$")


def parse_window(text: str) -> WindowScheme:
    """``day|week|month|epoch|all|blocks:N|rolling:N[:STEP]`` -> WindowScheme (ValueError names the problem)."""
    value = text.strip().lower()
    if value in ("day", "week", "month", "epoch", "all"):
        return WindowScheme(value)
    m = _WINDOW_RE.match(value)
    if not m:
        raise ValueError(f"unknown window {text!r}: use day, week, month, epoch, all, blocks:N or rolling:N[:STEP]")
    size = int(m.group(2))
    step = int(m.group(3)) if m.group(3) else None
    if size < 1:
        raise ValueError(f"window {text!r}: the block count must be >= 1")
    if m.group(1) == "blocks":
        if step is not None:
            raise ValueError(f"window {text!r}: blocks:N takes no step (did you mean rolling:N:STEP?)")
        return WindowScheme("blocks", size)
    step = step or 1
    if step < 1:
        raise ValueError(f"window {text!r}: the step must be >= 1")
    return WindowScheme("rolling", size, step)


@dataclass(frozen=True)
class Range:
    """Optional selection of blocks: heights and/or UTC times (inclusive start, inclusive end)."""

    from_height: int | None = None
    to_height: int | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None

    def where(self, alias: str = "b") -> str:
        parts = ["TRUE"]
        if self.from_height is not None:
            parts.append(f"{alias}.height >= {int(self.from_height)}")
        if self.to_height is not None:
            parts.append(f"{alias}.height <= {int(self.to_height)}")
        if self.from_time is not None:
            parts.append(f"{alias}.time >= TIMESTAMPTZ '{_iso(self.from_time)}'")
        if self.to_time is not None:
            parts.append(f"{alias}.time <= TIMESTAMPTZ '{_iso(self.to_time)}'")
        return " AND ".join(parts)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def parse_bound(text: str | None, end: bool = False) -> tuple[int | None, datetime | None]:
    """A CLI bound: a height (digits) or a UTC date/time (ISO). A bare end date means the whole day."""
    if text is None:
        return None, None
    value = text.strip()
    if value.isdigit():
        return int(value), None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"bound {text!r} is neither a height nor an ISO date/time (e.g. 2024-01-31)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if end and len(value) == 10:  # a date: include the whole day
        parsed = parsed.replace(hour=23, minute=59, second=59)
    return None, parsed


def make_range(start: str | None, end: str | None) -> Range:
    from_height, from_time = parse_bound(start)
    to_height, to_time = parse_bound(end, end=True)
    return Range(from_height, to_height, from_time, to_time)


# --------------------------------------------------------------------------------------------
# SQL: blocks joined to their attributions, windows, counts


def _require_views(con: duckdb.DuckDBPyConnection, names: Iterable[str]) -> None:
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()}
    missing = [n for n in names if n not in present]
    if missing:
        raise MetricsError(f"the warehouse has no {', '.join(missing)} table yet: sync blocks and run attribution first")


# The regtest genesis block carries a timestamp fixed by the chain's parameters (2011-02-02), not a
# mining time: on a regtest chain made today it would open a 15-year hole in every time-based
# window and rate. It is left out of the metrics (said in their output); mainnet's genesis is kept.
REGTEST_GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
_MINED = f"NOT (b.height = 0 AND b.hash = '{REGTEST_GENESIS_HASH}')"


def _base_sql(registry_version: str | None, rng: Range, era: str = "''") -> str:
    """One row per selected block with its attribution; a block without an attribution row counts
    as unknown (it is in the chain, so dropping it would inflate every known share). ``legal_id``:
    ``family:<id>`` for a pool in a family at that block (``attributions.family``), else the pool;
    ``era_key``: the legal entities of the linked pools at that block (``families.era_sql``)."""
    version = "" if registry_version is None else \
        f" AND a.registry_version = '{registry_version.replace(chr(39), chr(39) * 2)}'"
    unknown = "a.pool_id IS NULL OR a.method = 'none'"
    return f"""
        SELECT b.height::BIGINT AS height, b.time AT TIME ZONE 'UTC' AS t_utc,
               b.difficulty * {HASHES_PER_DIFFICULTY}.0 AS work,
               a.pool_id IS NULL OR a.method = 'none' OR a.pool_id = '{UNKNOWN_ID}' AS is_unknown,
               a.height IS NULL AS unattributed,
               CASE WHEN {unknown} THEN '{UNKNOWN_ID}' ELSE a.pool_id END AS pool_id,
               CASE WHEN {unknown} THEN 'Unknown' ELSE a.pool_name END AS pool_name,
               CASE WHEN {unknown} OR a.pool_id = '{UNKNOWN_ID}' THEN '{UNKNOWN_ID}'
                    WHEN a.family IS NOT NULL THEN '{fam.FAMILY_PREFIX}' || a.family ELSE a.pool_id END AS legal_id,
               CASE WHEN {unknown} OR a.pool_id = '{UNKNOWN_ID}' THEN 'Unknown'
                    WHEN a.family IS NOT NULL THEN coalesce(fn.name, a.family) ELSE a.pool_name END AS legal_name,
               {era} AS era_key
        FROM (SELECT *, epoch(time)::BIGINT AS b_epoch FROM blocks) b
        LEFT JOIN attributions a ON a.height = b.height AND a.block_hash = b.hash{version}
        LEFT JOIN _pw_family_names fn ON fn.family = a.family
        WHERE {rng.where('b')} AND {_MINED}
    """


def _inferred_sql() -> str:
    """_pw_legal with the inferred entity: the group its legal entity is in at that block's era."""
    return """
        SELECT l.*, coalesce(g.group_id, l.legal_id) AS inferred_id, coalesce(g.group_name, l.legal_name) AS inferred_name
        FROM _pw_legal l LEFT JOIN _pw_group_map g ON g.era_key = l.era_key AND g.legal_id = l.legal_id
    """


def _stored_sql() -> str:
    """Every stored block that counts as mined (the neighbours of a window are looked up here, not
    only in the selection, so a window's completeness and rate do not depend on --from/--to)."""
    return f"SELECT b.height::BIGINT AS height, b.time AT TIME ZONE 'UTC' AS t_utc FROM blocks b WHERE {_MINED}"


def _gaps_sql() -> str:
    """Height ranges missing between stored blocks (unloaded ranges)."""
    return """
        SELECT height + 1 AS gap_lo, nxt - 1 AS gap_hi
        FROM (SELECT height, lead(height) OVER (ORDER BY height) AS nxt FROM _pw_stored)
        WHERE nxt > height + 1
    """


def _assign_sql(window: WindowScheme) -> str:
    """Rows of _pw_base with window_key (sort order), window_id, and calendar bounds (naive UTC)."""
    if window.kind == "day":
        start = "date_trunc('day', t_utc)"
        return f"""SELECT *, epoch({start})::BIGINT AS window_key, strftime({start}, '%Y-%m-%d') AS window_id,
                   {start} AS cal_start, {start} + INTERVAL 1 DAY AS cal_end FROM _pw_base"""
    if window.kind == "week":
        start = "date_trunc('week', t_utc)"
        return f"""SELECT *, epoch({start})::BIGINT AS window_key, strftime(t_utc, '%G-W%V') AS window_id,
                   {start} AS cal_start, {start} + INTERVAL 7 DAY AS cal_end FROM _pw_base"""
    if window.kind == "month":
        start = "date_trunc('month', t_utc)"
        return f"""SELECT *, epoch({start})::BIGINT AS window_key, strftime({start}, '%Y-%m') AS window_id,
                   {start} AS cal_start, {start} + INTERVAL 1 MONTH AS cal_end FROM _pw_base"""
    if window.kind in ("epoch", "blocks"):
        size = EPOCH_BLOCKS if window.kind == "epoch" else int(window.size or 0)
        label = "'epoch ' || (height // {s})::VARCHAR" if window.kind == "epoch" else \
            "((height // {s}) * {s})::VARCHAR || '-' || ((height // {s}) * {s} + {s} - 1)::VARCHAR"
        return f"""SELECT *, (height // {size})::BIGINT AS window_key, {label.format(s=size)} AS window_id,
                   NULL::TIMESTAMP AS cal_start, NULL::TIMESTAMP AS cal_end FROM _pw_base"""
    if window.kind == "rolling":
        size, step = int(window.size or 0), int(window.step or 1)
        return f"""
            WITH bounds AS (SELECT min(height) AS lo, max(height) AS hi FROM _pw_base),
                 ends AS (SELECT e.range AS end_height FROM bounds, range(bounds.lo + {size} - 1, bounds.hi + 1, {step}) e)
            SELECT b.*, ends.end_height AS window_key,
                   (ends.end_height - {size} + 1)::VARCHAR || '-' || ends.end_height::VARCHAR AS window_id,
                   NULL::TIMESTAMP AS cal_start, NULL::TIMESTAMP AS cal_end
            FROM ends JOIN _pw_base b ON b.height BETWEEN ends.end_height - {size} + 1 AND ends.end_height"""
    if window.kind == "all":
        return """SELECT *, 0::BIGINT AS window_key, 'all' AS window_id,
                  NULL::TIMESTAMP AS cal_start, NULL::TIMESTAMP AS cal_end FROM _pw_base"""
    raise MetricsError(f"unknown window kind {window.kind!r}")


def _expected_blocks(window: WindowScheme) -> str:
    """SQL for how many blocks a complete block-count window holds (NULL for calendar windows)."""
    if window.kind == "epoch":
        return str(EPOCH_BLOCKS)
    if window.kind in ("blocks", "rolling"):
        return str(int(window.size or 0))
    return "NULL"


def _windows_sql(window: WindowScheme) -> str:
    """One row per window: bounds, counts, completeness and the network hashrate estimate.

    No window and no rate spans a gap in the data. A window is complete only when the warehouse
    holds all of it: no height missing between its first and last block and, for a calendar window,
    stored blocks just before and just after it that fall outside it (a window at the edge of the
    stored data, or next to an unloaded range, is partial). Neighbours are looked up among all
    stored blocks, so the answer does not depend on the selected range.

    Hashrate (docs/metrics.md): a complete calendar window has a fixed duration T and a Poisson
    block count, so W/T (W = summed work) is unbiased as it stands. Any other window is closed by
    blocks: its elapsed time, measured from the previous block's timestamp (when that block is
    stored, else from its own first block's) to its last block's, is Gamma(m, rate) for m intervals,
    and E[m/T] = rate * m/(m-1); multiplying by (m-1)/m removes it. A window with missing heights
    inside gets no rate: the missing blocks' work and times are unknown.
    """
    return f"""
        WITH w AS (
            SELECT window_key, window_id, any_value(cal_start) AS cal_start, any_value(cal_end) AS cal_end,
                   min(height) AS first_height, max(height) AS last_height, min(t_utc) AS first_time,
                   max(t_utc) AS last_time, count(*) AS blocks_total,
                   count(*) FILTER (WHERE is_unknown) AS unknown_blocks,
                   count(*) FILTER (WHERE unattributed) AS unattributed_blocks,
                   sum(work) AS work_total
            FROM _pw_assigned GROUP BY window_key, window_id
        ), gapped AS (
            SELECT DISTINCT w.window_key FROM w JOIN _pw_gaps g
                ON g.gap_lo <= w.last_height AND g.gap_hi >= w.first_height
        )
        SELECT w.*,
               coalesce(w.cal_start, w.first_time) AS window_start,
               coalesce(w.cal_end, w.last_time) AS window_end,
               gapped.window_key IS NOT NULL AS has_gap,
               CASE WHEN gapped.window_key IS NOT NULL THEN false
                    WHEN w.cal_start IS NOT NULL
                        THEN coalesce(prev.t_utc < w.cal_start AND nxt.t_utc >= w.cal_end, false)
                    ELSE w.blocks_total = coalesce({_expected_blocks(window)}, w.blocks_total) END AS complete,
               prev.t_utc AS prev_time,
               -- intervals m and elapsed time T for the block-interval estimator
               CASE WHEN prev.height IS NULL THEN w.blocks_total - 1 ELSE w.blocks_total END AS intervals,
               epoch(w.last_time) - epoch(coalesce(prev.t_utc, w.first_time)) AS interval_seconds,
               CASE WHEN prev.height IS NULL THEN w.work_total - first_blk.work ELSE w.work_total END AS interval_work
        FROM w
        LEFT JOIN gapped USING (window_key)
        LEFT JOIN _pw_stored prev ON prev.height = w.first_height - 1
        LEFT JOIN _pw_stored nxt ON nxt.height = w.last_height + 1
        LEFT JOIN _pw_base first_blk ON first_blk.height = w.first_height
    """


def _network_hashrate_sql() -> str:
    """Columns hashrate_method, elapsed_seconds and network_hashrate over _pw_windows."""
    return """
        SELECT *,
               CASE WHEN cal_start IS NOT NULL AND complete THEN 'fixed_time'
                    WHEN has_gap THEN 'none: missing heights'
                    ELSE 'block_intervals' END AS hashrate_method,
               CASE WHEN cal_start IS NOT NULL AND complete THEN epoch(cal_end) - epoch(cal_start)
                    WHEN has_gap THEN NULL
                    ELSE interval_seconds END AS elapsed_seconds,
               CASE WHEN cal_start IS NOT NULL AND complete
                        THEN work_total / (epoch(cal_end) - epoch(cal_start))
                    WHEN has_gap THEN NULL
                    WHEN intervals >= 2 AND interval_seconds > 0
                        THEN interval_work / interval_seconds * (intervals - 1) / intervals
                    ELSE NULL END AS network_hashrate
        FROM _pw_windows_raw
    """


def _counts_sql() -> str:
    """Blocks and work per (window, level, entity); the unknown entity included. An entity's name
    is a function of its id (min() only makes that explicit)."""
    return """
        SELECT window_key, 'pool' AS level, pool_id AS entity_id, min(pool_name) AS entity_name,
               bool_or(is_unknown) AS is_unknown, count(*) AS blocks, sum(work) AS work
        FROM _pw_assigned GROUP BY window_key, pool_id
        UNION ALL
        SELECT window_key, 'legal', legal_id, min(legal_name), bool_or(is_unknown), count(*), sum(work)
        FROM _pw_assigned GROUP BY window_key, legal_id
        UNION ALL
        SELECT window_key, 'inferred', inferred_id, min(inferred_name), bool_or(is_unknown), count(*), sum(work)
        FROM _pw_assigned GROUP BY window_key, inferred_id
    """


_LEVEL_VALUES = ", ".join(f"('{level}')" for level in LEVELS)


def _entities_sql() -> str:
    """The entity list of each (window, level) under each unknown treatment."""
    return f"""
        SELECT window_key, level, 'excluded' AS treatment, entity_id, blocks
        FROM _pw_counts WHERE NOT is_unknown
        UNION ALL
        SELECT window_key, level, 'one_entity', entity_id, blocks FROM _pw_counts
        UNION ALL
        SELECT window_key, level, 'each_own', entity_id, blocks FROM _pw_counts WHERE NOT is_unknown
        UNION ALL
        SELECT a.window_key, lv.level, 'each_own', '{UNKNOWN_ID}#' || a.height::VARCHAR, 1
        FROM _pw_assigned a CROSS JOIN (VALUES {_LEVEL_VALUES}) lv(level) WHERE a.is_unknown
    """


def _centralization_sql() -> str:
    """Point metrics per (window, level, treatment); integer arithmetic where a tie matters."""
    return f"""
        WITH ranked AS (
            SELECT window_key, level, treatment, entity_id, blocks::DOUBLE AS c,
                   sum(blocks) OVER part AS total, count(*) OVER part AS n,
                   row_number() OVER (part ORDER BY blocks DESC, entity_id) AS rank_desc,
                   row_number() OVER (part ORDER BY blocks ASC, entity_id DESC) AS rank_asc,
                   sum(blocks) OVER (part ORDER BY blocks DESC, entity_id
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS cum_before
            FROM _pw_entities
            WINDOW part AS (PARTITION BY window_key, level, treatment)
        ), agg AS (
            SELECT window_key, level, treatment,
                   any_value(total)::BIGINT AS blocks, any_value(n)::BIGINT AS n_entities,
                   sum(c) FILTER (WHERE rank_desc <= 1) AS top1_blocks,
                   sum(c) FILTER (WHERE rank_desc <= 3) AS top3_blocks,
                   sum(c) FILTER (WHERE rank_desc <= 5) AS top5_blocks,
                   sum(c * c) / (any_value(total)::DOUBLE * any_value(total)) AS hhi,
                   CASE WHEN any_value(total) >= 2
                        THEN sum(c * (c - 1)) / (any_value(total)::DOUBLE * (any_value(total) - 1)) END AS hhi_unbiased,
                   -- smallest k with top-k blocks * 2 > total: the entities whose preceding sum is <= half
                   count(*) FILTER (WHERE 2 * coalesce(cum_before, 0) <= total)::BIGINT AS nakamoto,
                   -sum(c / total * log2(c / total)) AS entropy_bits,
                   2.0 * sum(rank_asc * c) / (any_value(n) * any_value(total)) - (any_value(n) + 1.0) / any_value(n)
                       AS gini
            FROM ranked GROUP BY window_key, level, treatment
        ), grid AS (
            SELECT w.window_key, lv.level, tr.treatment
            FROM _pw_windows w CROSS JOIN (VALUES {_LEVEL_VALUES}) lv(level)
            CROSS JOIN (VALUES {", ".join(f"('{t}')" for t in TREATMENTS)}) tr(treatment)
        )
        -- Top-N shares and the number of known entities do not depend on the unknown treatment:
        -- the N largest known entities (never "unknown"), over the known blocks and over all blocks.
        , known AS (
            SELECT a.window_key, a.level, a.n_entities AS known_entities, a.top1_blocks, a.top3_blocks,
                   a.top5_blocks, a.blocks AS known_blocks, w.blocks_total
            FROM agg a JOIN _pw_windows w USING (window_key) WHERE a.treatment = 'excluded'
        )
        SELECT g.window_key, g.level, g.treatment AS unknown_treatment,
               coalesce(a.blocks, 0) AS blocks, coalesce(a.n_entities, 0) AS n_entities,
               coalesce(k.known_entities, 0) AS known_entities,
               k.top1_blocks / k.known_blocks AS top1_share_of_known,
               k.top3_blocks / k.known_blocks AS top3_share_of_known,
               k.top5_blocks / k.known_blocks AS top5_share_of_known,
               k.top1_blocks / k.blocks_total AS top1_share_of_all,
               k.top3_blocks / k.blocks_total AS top3_share_of_all,
               k.top5_blocks / k.blocks_total AS top5_share_of_all,
               a.hhi, a.hhi_unbiased, a.nakamoto,
               greatest(a.entropy_bits, 0.0) AS entropy_bits,
               CASE WHEN a.n_entities >= 2 THEN greatest(a.entropy_bits, 0.0) / log2(a.n_entities) END
                   AS entropy_normalized,
               greatest(a.gini, 0.0) AS gini
        FROM grid g LEFT JOIN agg a USING (window_key, level, treatment)
        LEFT JOIN known k USING (window_key, level)
    """


def _pool_share_sql() -> str:
    """Share of every entity (unknown included) in all of the window's blocks, Wilson interval."""
    return """
        SELECT c.window_key, c.level, c.entity_id, c.entity_name, c.is_unknown, c.blocks,
               w.blocks_total, c.blocks::DOUBLE / w.blocks_total AS share,
               CASE WHEN c.is_unknown OR w.blocks_total = w.unknown_blocks THEN NULL
                    ELSE c.blocks::DOUBLE / (w.blocks_total - w.unknown_blocks) END AS share_of_known,
               c.work / w.work_total AS work_share,
               row_number() OVER (PARTITION BY c.window_key, c.level ORDER BY c.blocks DESC, c.entity_id) AS rank,
               w.network_hashrate * c.work / w.work_total AS hashrate
        FROM _pw_counts c JOIN _pw_windows w USING (window_key)
    """


def wilson_interval(k: np.ndarray | int, n: np.ndarray | int, confidence: float = CONFIDENCE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion k/n (vectorised).

    Unlike the normal (Wald) interval it never leaves [0, 1] and stays sensible at k=0 or k=n.
    """
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    k_arr = np.asarray(k, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k_arr / n_arr
        denom = 1 + z * z / n_arr
        centre = (p + z * z / (2 * n_arr)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n_arr + z * z / (4 * n_arr * n_arr))
    # At k=0 (k=n) the bound is exactly 0 (1); floating point leaves a 1e-17 residue otherwise.
    lo = np.where(k_arr == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(k_arr == n_arr, 1.0, np.clip(centre + half, 0.0, 1.0))
    return lo, hi


# --------------------------------------------------------------------------------------------
# Metric functions on plain count vectors (the reference definitions; the SQL must agree)


def hhi(counts: Sequence[int] | np.ndarray) -> float:
    c = np.asarray(counts, dtype=float)
    return float((c * c).sum() / c.sum() ** 2)


def nakamoto(counts: Sequence[int] | np.ndarray) -> int:
    """Smallest number of entities whose blocks are strictly more than half of the total."""
    c = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
    return int(np.argmax(2 * np.cumsum(c) > c.sum()) + 1)


def entropy_bits(counts: Sequence[int] | np.ndarray) -> float:
    c = np.asarray(counts, dtype=float)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def gini(counts: Sequence[int] | np.ndarray) -> float:
    """Gini coefficient over the entities present (mean absolute difference / (2 * mean))."""
    c = np.sort(np.asarray(counts, dtype=float))
    n = len(c)
    ranks = np.arange(1, n + 1)
    return float(max(0.0, 2 * (ranks * c).sum() / (n * c.sum()) - (n + 1) / n))


def hhi_unbiased(counts: Sequence[int] | np.ndarray) -> float | None:
    """Unbiased estimate of the population HHI (sum of squared hashrate shares): Σc(c−1) / (N(N−1)).

    The plug-in HHI (Σ(c/N)²) overestimates it by about (1 − HHI)/N: one block counted against itself.
    None for fewer than 2 blocks, where it is undefined.
    """
    c = np.asarray(counts, dtype=float)
    total = c.sum()
    return None if total < 2 else float((c * (c - 1)).sum() / (total * (total - 1)))


def _hhi_estimate_and_se(counts: np.ndarray, total: int, axis: int | None = None,
                         unbiased_variance: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased HHI and its standard error for counts summing to ``total`` >= 2 (``axis=1``: one row
    per multinomial replicate).

    The unbiased HHI Û is a U-statistic of order 2 (kernel: two blocks share a miner), so its exact
    multinomial variance is [4(N−2)(Σp³ − H²) + 2(H − H²)] / (N(N−1)) with H = Σp². Σp³ and H² are
    replaced by their unbiased estimates from falling factorials (c)_k = c(c−1)..(c−k+1):
    Σ(c)_3/(N)_3 and [(Σ(c)_2)² − Σ(c)_2² + Σ(c)_4]/(N)_4, which makes the variance estimate unbiased.
    Measured, that balances the two tails of the studentized interval on day windows of a flat mix
    (coverage 94.4-95.6% instead of 95.9-96.9% with the observed shares in the formula;
    benchmarks/coverage.md). Where the unbiased
    estimate is not positive (fewer than 4 blocks, or by chance in a flat window), or with
    ``unbiased_variance=False``, the observed shares go into the formula; that variance is 0 only
    when one entity has every block.
    """
    n = float(total)
    # Power sums Σc², Σc³, Σc⁴ (floats: c⁴ overflows int64 beyond 55,000 blocks of one entity); the
    # falling-factorial sums follow from them, which keeps the replicate matrix to three passes.
    c = counts.astype(float)
    c2 = c * c
    s2, s3 = c2.sum(axis=axis), (c2 * c).sum(axis=axis)
    hhi = (s2 - n) / (n * (n - 1.0))
    p2, p3 = s2 / (n * n), s3 / (n * n * n)
    # Rounding can leave a -1e-17 where the variance is exactly 0 (one entity with every block).
    variance = np.maximum(4.0 * (n - 2.0) * (p3 - p2 * p2) + 2.0 * (p2 - p2 * p2), 0.0) / (n * (n - 1.0))
    if unbiased_variance and total >= 4:
        s4 = (c2 * c2).sum(axis=axis)
        f2 = s2 - n  # Σ(c)_2
        f3 = s3 - 3.0 * s2 + 2.0 * n  # Σ(c)_3
        f4 = s4 - 6.0 * s3 + 11.0 * s2 - 6.0 * n  # Σ(c)_4
        f2_squared = s4 - 2.0 * s3 + s2  # Σ(c)_2²
        cube = f3 / (n * (n - 1.0) * (n - 2.0))
        square = (f2 * f2 - f2_squared + f4) / (n * (n - 1.0) * (n - 2.0) * (n - 3.0))
        unbiased = (4.0 * (n - 2.0) * (cube - square) + 2.0 * (hhi - square)) / (n * (n - 1.0))
        variance = np.where(unbiased > 0, unbiased, variance)
    return hhi, np.sqrt(variance)


def hhi_standard_error(counts: Sequence[int] | np.ndarray) -> float | None:
    """Standard error of ``hhi_unbiased`` (see _hhi_estimate_and_se); None below 2 blocks."""
    c = np.asarray(counts, dtype=np.int64)
    total = int(c.sum())
    if total < 2:
        return None
    return float(_hhi_estimate_and_se(c, total)[1])


def low_sample(counts: Sequence[int] | np.ndarray, confidence: float = CONFIDENCE) -> bool:
    """True when a window's HHI is too uncertain to tell a concentrated window from a dispersed one.

    ``counts``: the window's blocks per entity, unknown blocks as one entity (all of its blocks). The
    interval is the normal approximation Û ± z·se around the unbiased HHI, so the flag needs no random
    draws and is the same without the bootstrap; the window is flagged when its upper end is at least
    LOW_SAMPLE_HHI_RATIO times its lower end (see the constant and docs/metrics.md). When one entity
    has every block, se is 0 (no resample can differ) and would call a 3-block window certain; the
    lower end is then the square of that entity's Wilson lower bound (an HHI is at least the largest
    share squared).
    """
    c = np.asarray(counts, dtype=np.int64)
    c = c[c > 0]
    total = int(c.sum())
    if total < 2:
        return True
    # Observed shares in the variance: it errs wide in small windows, where the unbiased variance
    # estimate is noisy (simulated 2024-like windows of 10-30 blocks: 9-13% pass unflagged with it,
    # at most 1% with this one); the two agree from ~80 blocks on.
    estimate, se = _hhi_estimate_and_se(c, total, unbiased_variance=False)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    if len(c) == 1:
        lo, hi = float(wilson_interval(total, total, confidence)[0]) ** 2, 1.0
    else:
        lo, hi = float(estimate - z * se), float(min(estimate + z * se, 1.0))
    return lo <= 0 or hi >= LOW_SAMPLE_HHI_RATIO * lo


def studentized_hhi_interval(counts: np.ndarray, sample: np.ndarray, confidence: float = CONFIDENCE
                             ) -> tuple[float, float]:
    """Bootstrap-t interval for the population HHI from multinomial resamples ``sample`` of ``counts``.

    In the resampling world the true HHI is the observed plug-in Σ(c/N)², so t* = (Û* − Σ(c/N)²) / se*
    has the distribution of (Û − HHI) / se; inverting it around the unbiased Û gives
    [Û − t*_hi·se, Û − t*_lo·se]. Unlike the percentile interval of the plug-in HHI it is centred on an
    unbiased estimate and takes the skew of small windows from the replicates (docs/metrics.md has the
    coverage measured against the alternatives). Clipped to [0, 1], the range of an HHI.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total < 2:
        return 0.0, 1.0  # one block says nothing about how concentrated the miners are
    estimate, se = _hhi_estimate_and_se(counts, total)
    if se == 0:  # one entity has every block: so has every replicate (the bootstrap's blind spot)
        return float(estimate), float(estimate)
    replicate, replicate_se = _hhi_estimate_and_se(sample, total, axis=1)
    plug_in = float((counts.astype(float) ** 2).sum()) / float(total) ** 2
    deviation = replicate - plug_in
    # A replicate where one entity took every block has se* = 0 (its shares are 0 and 1), which says
    # nothing about the spread; dividing by it would put it infinitely far out and turn a 2010 day
    # (one_entity: almost every block unknown) into [0, 1]. It is scaled by the window's se instead.
    t = deviation / np.where(replicate_se > 0, replicate_se, se)
    alpha = (1 - confidence) / 2
    t_lo, t_hi = np.quantile(t, [alpha, 1 - alpha])
    return float(np.clip(estimate - t_hi * se, 0.0, 1.0)), float(np.clip(estimate - t_lo * se, 0.0, 1.0))


def bootstrap_intervals(counts: np.ndarray, draws: int, seed: int, confidence: float = CONFIDENCE
                        ) -> tuple[float, float, int, int]:
    """Multinomial (parametric) bootstrap: (hhi_lo, hhi_hi, nakamoto_lo, nakamoto_hi).

    Each replicate redraws the window's N blocks among its entities with the observed shares. HHI:
    the studentized (bootstrap-t) interval for the population HHI (``studentized_hhi_interval``).
    Nakamoto coefficient: the percentile interval over the replicates (inverted CDF, so bounds are
    attained values).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    sample = rng.multinomial(total, counts / total, size=draws)
    h_lo, h_hi = studentized_hhi_interval(counts, sample, confidence)
    ordered = -np.sort(-sample, axis=1)
    before = np.cumsum(ordered, axis=1) - ordered  # blocks of the larger entities
    naks = ((2 * before <= total) & (ordered > 0)).sum(axis=1)
    alpha = (1 - confidence) / 2
    n_lo, n_hi = np.quantile(naks, [alpha, 1 - alpha], method="inverted_cdf")
    return h_lo, h_hi, int(n_lo), int(n_hi)


def _draws_for(entities: int, draws: int) -> int:
    return max(BOOTSTRAP_MIN_DRAWS, min(draws, BOOTSTRAP_MAX_CELLS // max(entities, 1)))


def _seed(window_name: str, window_id: str, level: str, treatment: str) -> int:
    # Per-window seeds: a window's interval does not change when other windows are added.
    return BOOTSTRAP_SEED ^ zlib.crc32(f"{window_name}|{window_id}|{level}|{treatment}".encode())


def data_notes(con: duckdb.DuckDBPyConnection, rng: Range | None = None,
               inference: InferenceSettings | None = None) -> list[str]:
    """What a reader of metrics over ``rng`` must know about the data behind them: blocks left out,
    heights that are not stored, and the evidence behind the inferred level (or that it has none
    and equals the legal level). Every output that shows metrics prints these."""
    rng = rng or Range()
    notes = []
    genesis = con.execute(f"SELECT count(*) FROM blocks b WHERE {rng.where('b')} AND NOT ({_MINED})").fetchone()[0]
    if genesis:
        notes.append("the regtest genesis block (height 0) is left out: its time is fixed by the chain's parameters "
                     "(2011), not mined, and would open a 15-year gap in every time window and rate")
    bounds = con.execute(f"SELECT min(height), max(height) FROM blocks b WHERE {rng.where('b')} AND {_MINED}").fetchone()
    if bounds[0] is not None:
        gaps = con.execute(f"""
            SELECT height + 1, nxt - 1 FROM (SELECT height, lead(height) OVER (ORDER BY height) AS nxt
                                            FROM blocks b WHERE {_MINED})
            WHERE nxt > height + 1 AND height + 1 <= {int(bounds[1])} AND nxt - 1 >= {int(bounds[0])}
            ORDER BY height""").fetchall()
        if gaps:
            shown = ", ".join(f"{a}..{b}" for a, b in gaps[:5]) + (f" (+{len(gaps) - 5} more)" if len(gaps) > 5 else "")
            notes.append(f"heights {shown} are not stored: windows next to them are partial and get no hashrate; "
                         "charts break there")
    links, state = fam.read_links(con)
    notes += fam.notes(links, state, inference or InferenceSettings())
    return notes


# --------------------------------------------------------------------------------------------
# Orchestration


@dataclass
class MetricsResult:
    window: WindowScheme
    centralization: pd.DataFrame
    pool_share: pd.DataFrame


def _setup(con: duckdb.DuckDBPyConnection, window: WindowScheme, registry_version: str | None, rng: Range,
           inference: InferenceSettings, registry: Registry | None) -> None:
    try:
        links, _ = fam.read_links(con)
    except fam.FamiliesError as exc:
        raise MetricsError(str(exc)) from None
    used = fam.counted(links, inference)
    if registry is None:
        registry = fam.registry_for_version(con, registry_version)
    if used and registry is None:
        raise MetricsError(f"the registry of attribution version {registry_version} is not stored in pool_definitions: "
                           "the inferred level needs the families of the linked pools (run `poolwatch attribute`)")
    families = registry.families if registry is not None else ()
    con.execute("CREATE OR REPLACE TEMP TABLE _pw_family_names (family VARCHAR, name VARCHAR)")
    if families:
        con.executemany("INSERT INTO _pw_family_names VALUES (?, ?)", [(f.id, f.name) for f in families])
    era, era_pools = fam.era_sql(registry, used)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pw_legal AS {_base_sql(registry_version, rng, era)}")
    con.execute("CREATE OR REPLACE TEMP TABLE _pw_group_map "
                "(era_key VARCHAR, legal_id VARCHAR, group_id VARCHAR, group_name VARCHAR)")
    if used:
        eras = [r[0] for r in con.execute("SELECT DISTINCT era_key FROM _pw_legal").fetchall()]
        rows = fam.group_map_rows(eras, era_pools, used, fam.entity_names(registry))
        if rows:
            con.executemany("INSERT INTO _pw_group_map VALUES (?, ?, ?, ?)", rows)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _pw_base AS {_inferred_sql()}")
    # Only the stored blocks from one below the selection to one above it: every window is made of
    # selected blocks, so its neighbours and any gap inside it lie there, and a refresh of the
    # windows at the tip does not scan the whole history (the same rows as over every block).
    lo, hi = con.execute("SELECT min(height), max(height) FROM _pw_legal").fetchone()
    near = "FALSE" if lo is None else f"height BETWEEN {int(lo) - 1} AND {int(hi) + 1}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pw_stored AS SELECT * FROM ({_stored_sql()}) WHERE {near}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pw_gaps AS {_gaps_sql()}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pw_assigned AS {_assign_sql(window)}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW _pw_windows_raw AS {_windows_sql(window)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pw_windows AS {_network_hashrate_sql()}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pw_counts AS {_counts_sql()}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW _pw_entities AS {_entities_sql()}")


def _teardown(con: duckdb.DuckDBPyConnection) -> None:
    for name, kind in (("_pw_entities", "VIEW"), ("_pw_counts", "TABLE"), ("_pw_windows", "TABLE"),
                       ("_pw_windows_raw", "VIEW"), ("_pw_assigned", "TABLE"), ("_pw_gaps", "TABLE"),
                       ("_pw_stored", "TABLE"), ("_pw_base", "VIEW"), ("_pw_group_map", "TABLE"),
                       ("_pw_legal", "TABLE"), ("_pw_family_names", "TABLE")):
        con.execute(f"DROP {kind} IF EXISTS {name}")


def _require_one_version(con: duckdb.DuckDBPyConnection) -> None:
    """Without a version every stored attribution row counts: with rows of several attribution
    versions side by side (each re-attribution keeps the older ones) each block would be counted
    once per version, so that is refused."""
    columns = {r[0] for r in con.execute("DESCRIBE attributions").fetchall()}
    if "registry_version" not in columns:  # attributions of one unnamed version (e.g. a simulation)
        return
    versions = [r[0] for r in con.execute(
        "SELECT DISTINCT registry_version FROM attributions ORDER BY 1 LIMIT 6").fetchall()]
    if len(versions) > 1:
        shown = ", ".join(str(v) for v in versions[:5]) + (", ..." if len(versions) > 5 else "")
        raise MetricsError(f"the attributions hold rows of several attribution versions ({shown}): pass "
                           "registry_version (the warehouse's current one is Warehouse.attribution_version), "
                           "else every block would be counted once per version")


def compute_metrics(con: duckdb.DuckDBPyConnection, window: WindowScheme | str, *,
                    registry_version: str | None = None, rng: Range | None = None,
                    last: int | None = None, bootstrap: bool = True,
                    draws: int = BOOTSTRAP_DRAWS, confidence: float = CONFIDENCE,
                    inference: InferenceSettings | None = None, registry: Registry | None = None) -> MetricsResult:
    """Centralization and pool-share tables for ``window`` over the blocks in ``rng``, at the pool,
    legal and inferred levels.

    ``con`` needs views ``blocks`` and ``attributions`` (``Warehouse.connect()`` gives them), and
    reads ``template_links`` and ``custody_links`` when it has them. ``last`` keeps only the most
    recent windows (and bootstraps only those). ``inference``: the inferred links' thresholds
    (default: ``InferenceSettings()``; callers with a warehouse pass its recorded ones,
    ``inference_settings(warehouse)``). ``registry``: the registry of ``registry_version`` (default:
    read from ``pool_definitions``), for family names and the families of linked pools.
    ``registry_version`` None counts every attribution row: refused (``MetricsError``) when rows
    of several versions are stored.
    """
    window = parse_window(window) if isinstance(window, str) else window
    rng = rng or Range()
    _require_views(con, ("blocks", "attributions"))
    if registry_version is None:
        _require_one_version(con)
    _setup(con, window, registry_version, rng, inference or InferenceSettings(), registry)
    try:
        windows = con.execute("SELECT * FROM _pw_windows ORDER BY window_key").df()
        if last is not None:
            windows = windows.tail(last)
        keys = windows["window_key"].tolist()
        key_filter = "TRUE" if last is None else \
            ("window_key IN (" + ",".join(str(int(k)) for k in keys) + ")" if keys else "FALSE")
        cent = con.execute(f"SELECT * FROM ({_centralization_sql()}) WHERE {key_filter}").df()
        share = con.execute(f"SELECT * FROM ({_pool_share_sql()}) WHERE {key_filter}").df()
        per_window = con.execute(
            f"""SELECT window_key, level, list(blocks ORDER BY blocks DESC) AS known
                FROM _pw_counts WHERE NOT is_unknown AND {key_filter} GROUP BY window_key, level""").df()
    finally:
        _teardown(con)
    return _assemble(window, windows, cent, share, per_window, registry_version, bootstrap, draws, confidence)


def _assemble(window: WindowScheme, windows: pd.DataFrame, cent: pd.DataFrame, share: pd.DataFrame,
              per_window: pd.DataFrame, registry_version: str | None, bootstrap: bool, draws: int,
              confidence: float) -> MetricsResult:
    info_cols = ["window_key", "window_id", "window_start", "window_end", "first_height", "last_height",
                 "blocks_total", "unknown_blocks", "complete"]
    info = windows[info_cols + ["network_hashrate", "hashrate_method", "elapsed_seconds",
                                "unattributed_blocks"]].copy()
    info["unknown_share"] = info["unknown_blocks"] / info["blocks_total"]
    info["low_sample"] = _window_low_sample(info, per_window)
    info["expected_blocks"] = info["elapsed_seconds"] / TARGET_SPACING
    unattributed = int(info["unattributed_blocks"].sum())
    if unattributed:
        log.warning("%d blocks have no attribution row for registry version %s; they count as unknown "
                    "(run `poolwatch attribute` to attribute them)", unattributed, registry_version)

    cent = cent.merge(info, on="window_key", how="inner")
    cent = _add_bootstrap(window, cent, per_window, bootstrap, draws, confidence)
    cent.insert(0, "window_kind", window.name)
    cent["registry_version"] = registry_version
    cent = cent.sort_values(["window_key", "level", "unknown_treatment"], kind="stable")

    share = share.merge(info[info_cols + ["low_sample"]].drop(columns=["blocks_total", "unknown_blocks"]),
                        on="window_key", how="inner")
    lo, hi = wilson_interval(share["blocks"].to_numpy(), share["blocks_total"].to_numpy(), confidence)
    share["share_lo"], share["share_hi"] = lo, hi
    share.insert(0, "window_kind", window.name)
    share["registry_version"] = registry_version
    share = share.sort_values(["window_key", "level", "rank"], kind="stable")
    return MetricsResult(window, _order(cent, CENTRALIZATION_COLUMNS), _order(share, POOL_SHARE_COLUMNS))


def treatment_counts(known: np.ndarray, unknown: int, treatment: str) -> np.ndarray:
    """A window's blocks per entity under an unknown treatment (``known``: the attributed entities')."""
    known = np.asarray(known, dtype=np.int64)
    if treatment == "one_entity" and unknown:
        return np.append(known, unknown)
    if treatment == "each_own" and unknown:
        return np.concatenate([known, np.ones(unknown, dtype=np.int64)])
    return known


def _known_counts(per_window: pd.DataFrame) -> dict[tuple[int, str], np.ndarray]:
    return {(int(r.window_key), r.level): np.asarray(r.known, dtype=np.int64)
            for r in per_window.itertuples(index=False)}


def _window_low_sample(info: pd.DataFrame, per_window: pd.DataFrame) -> pd.Series:
    """One flag per window (every level, every treatment and the pool_share rows agree), from its
    pool-level counts with unknown blocks as one entity: every block of the window counts, as in
    pool_share's shares, and no treatment's assumption about the unknown miners decides it. Always
    judged on the 95% interval, whatever confidence the caller asked of the intervals, so that
    low_sample means one thing in every table."""
    known = _known_counts(per_window)
    empty = np.zeros(0, dtype=np.int64)
    flags = [low_sample(treatment_counts(known.get((int(key), "pool"), empty), int(unknown), "one_entity"))
             for key, unknown in zip(info["window_key"].tolist(), info["unknown_blocks"].tolist(), strict=True)]
    return pd.Series(flags, index=info.index, dtype=bool)


def _add_bootstrap(window: WindowScheme, cent: pd.DataFrame, per_window: pd.DataFrame, bootstrap: bool,
                   draws: int, confidence: float) -> pd.DataFrame:
    known = _known_counts(per_window)
    cols: dict[str, list] = {"hhi_lo": [], "hhi_hi": [], "nakamoto_lo": [], "nakamoto_hi": [],
                             "bootstrap_draws": []}
    for row in cent.itertuples(index=False):
        counts = treatment_counts(known.get((int(row.window_key), row.level), np.zeros(0, dtype=np.int64)),
                                  int(row.unknown_blocks), row.unknown_treatment)
        if not bootstrap or counts.sum() == 0:
            for name in cols:
                cols[name].append(None)
            continue
        n_draws = _draws_for(len(counts), draws)
        h_lo, h_hi, k_lo, k_hi = bootstrap_intervals(
            counts, n_draws, _seed(window.name, row.window_id, row.level, row.unknown_treatment), confidence)
        for name, value in zip(cols, (h_lo, h_hi, k_lo, k_hi, n_draws), strict=True):
            cols[name].append(value)
    for name, values in cols.items():
        cent[name] = pd.array(values, dtype="Float64" if name.startswith("hhi") else "Int64")
    return cent


CENTRALIZATION_COLUMNS = [
    "window_kind", "window_id", "window_start", "window_end", "first_height", "last_height", "level",
    "unknown_treatment", "blocks_total", "unknown_blocks", "unknown_share", "blocks", "n_entities",
    "known_entities", "top1_share_of_known", "top3_share_of_known", "top5_share_of_known", "top1_share_of_all",
    "top3_share_of_all", "top5_share_of_all", "hhi", "hhi_unbiased", "hhi_lo", "hhi_hi", "nakamoto",
    "nakamoto_lo", "nakamoto_hi", "entropy_bits", "entropy_normalized", "gini", "bootstrap_draws",
    "low_sample", "complete", "network_hashrate", "hashrate_method", "elapsed_seconds", "expected_blocks",
    "registry_version",
]
# One display label per column, shared by the CLI table, the HTML report and the notebook, so a name
# means the same everywhere (definitions: docs/metrics.md).
COLUMN_LABELS = {
    "known_entities": "known {entities}",
    "n_entities": "{entities} under the treatment",
    "top1_share_of_known": "top-1 of known",
    "top3_share_of_known": "top-3 of known",
    "top5_share_of_known": "top-5 of known",
    "top1_share_of_all": "top-1 of all",
    "top3_share_of_all": "top-3 of all",
    "top5_share_of_all": "top-5 of all",
    "unknown_share": "unknown",
    "entropy_normalized": "entropy (normalised)",
    "gini": "Gini",
    "network_hashrate": "hashrate",
    "share_of_known": "share of known",
}


# What an entity is called at each level: a pool; a legal owner (a family, or a pool in none); an
# inferred group (or a legal owner in none).
LEVEL_ENTITIES = {"pool": "pools", "legal": "owners", "inferred": "groups"}


def column_label(column: str, level: str = "pool") -> str:
    """The display label of a metrics column (``known pools`` at pool level, ``known owners``...)."""
    return COLUMN_LABELS.get(column, column).format(entities=LEVEL_ENTITIES[level])


LEVEL_TREATMENT = "one_entity"  # the unknown treatment the side-by-side level columns use


def level_comparison(cent: pd.DataFrame, treatment: str = LEVEL_TREATMENT) -> pd.DataFrame:
    """The Nakamoto coefficient and HHI of each window at the three levels side by side (one row per
    window, in height order; columns ``nakamoto_<level>``, ``hhi_<level>``): what every
    centralization table and chart shows next to its own level, so a reader sees the range from
    pools as reported to inferred groups. Unknown blocks count as one miner (``treatment``)."""
    keys = ["first_height", "window_id"]
    rows = cent[cent.unknown_treatment == treatment]
    out = rows[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    for value in ("nakamoto", "hhi"):
        for level in LEVELS:
            part = rows.loc[rows.level == level, keys + [value]].rename(columns={value: f"{value}_{level}"})
            out = out.merge(part, on=keys, how="left")
    return out


def format_levels(values: Sequence, spec: str) -> str:
    """``3 / 2 / 2``: one value per level, in LEVELS order ('-' where undefined)."""
    # + 0.0 turns -0.0 into 0.0: no "-0.000" for a value that is zero
    return " / ".join("-" if v is None or pd.isna(v) else format(int(v) if spec == "d" else float(v) + 0.0, spec)
                      for v in values)


POOL_SHARE_COLUMNS = [
    "window_kind", "window_id", "window_start", "window_end", "first_height", "last_height", "level",
    "entity_id", "entity_name", "is_unknown", "rank", "blocks", "blocks_total", "share", "share_lo",
    "share_hi", "share_of_known", "work_share", "hashrate", "low_sample", "complete", "registry_version",
]


def _order(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Materialization in the warehouse


def metric_views() -> dict[str, str]:
    """View name -> SQL over the materialized tables: pool_share_<window>, centralization_<window>
    (pool level) and their ``_legal`` and ``_inferred`` variants, for ad-hoc SQL. Each row carries
    ``stale`` (from the view ``freshness``): true when the data changed after the tables were computed."""
    views: dict[str, str] = {}
    for kind in MATERIALIZED_WINDOWS:
        for table in ("pool_share", "centralization"):
            for level, suffix in (("pool", ""), ("legal", "_legal"), ("inferred", "_inferred")):
                views[f"{table}{suffix}_{kind}"] = (
                    f"SELECT t.* EXCLUDE (window_kind, level), f.stale FROM {table} t "
                    f"CROSS JOIN (SELECT stale FROM freshness) f "
                    f"WHERE t.window_kind = '{kind}' AND t.level = '{level}'")
    return views


def write_view_files(directory: Path = METRIC_VIEWS_DIR) -> list[Path]:
    """(Re)generate the ``<view>.sql`` files the warehouse catalog loads; generated files of views
    that no longer exist (e.g. the ``_family_`` views, now ``_legal_``) are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    header = "-- Generated from pipeline.metrics.metric_views(); tests/test_metrics.py keeps it in sync."
    views = metric_views()
    for old in directory.glob("*.sql"):
        if old.stem not in views and old.read_text().startswith(header):
            old.unlink()
    paths = []
    for name, sql in views.items():
        path = directory / f"{name}.sql"
        path.write_text(f"{header}\n{sql}\n")
        paths.append(path)
    return paths


def to_arrow(frame: pd.DataFrame, table: str) -> pa.Table:
    """A metrics frame as an Arrow table conformed to schemas/tables/<table>.json."""
    from pipeline.store.schemas import table_spec

    spec = table_spec(table)
    out = frame.copy()
    for col in ("window_start", "window_end"):
        out[col] = pd.to_datetime(out[col], utc=True)
    arrays = {}
    for field in spec.arrow_schema:
        values = out[field.name]
        arrays[field.name] = pa.array(values.astype(object).where(values.notna(), None).tolist(),
                                      type=field.type)
    return pa.table(arrays, schema=spec.arrow_schema)


def current_registry_version(warehouse: Warehouse) -> str | None:
    """The attribution version (registry version + settings) the metrics are computed from."""
    return warehouse.attribution_version


@dataclass(frozen=True)
class RefreshResult:
    """What ``refresh_metrics`` did: rows written per table, windows recomputed, and how."""

    mode: str                 # "full", "incremental" or "up to date"
    rows: dict[str, int]
    windows_recomputed: int
    seconds: float


def _affected_span(con: duckdb.DuckDBPyConnection, window: WindowScheme, lo: int, hi: int) -> tuple[Range, str] | None:
    """The selection that recomputes every ``window`` window touched by heights [lo, hi] (a changed
    block, its neighbours, or a stored metric row whose window lost blocks), plus the SQL condition
    on stored metric rows that those windows replace. Calendar windows are cut by block time, which
    is not monotonic in height, so the selection is by time, aligned to whole windows."""
    touched = f"height BETWEEN {int(lo)} AND {int(hi)}"
    if window.kind == "epoch":
        row = con.execute(f"""
            SELECT min(k), max(k) FROM (
                SELECT height // {EPOCH_BLOCKS} AS k FROM blocks WHERE {touched}
                UNION ALL SELECT first_height // {EPOCH_BLOCKS} FROM centralization
                WHERE window_kind = 'epoch' AND last_height >= {int(lo)} AND first_height <= {int(hi)})""").fetchone()
        if row[0] is None:
            return None
        first, last = int(row[0]) * EPOCH_BLOCKS, (int(row[1]) + 1) * EPOCH_BLOCKS - 1
        return Range(from_height=first, to_height=last), f"first_height BETWEEN {first} AND {last}"
    unit = {"day": "1 DAY", "week": "7 DAY", "month": "1 MONTH"}[window.kind]
    trunc = f"date_trunc('{window.kind}', time AT TIME ZONE 'UTC')"
    row = con.execute(f"""
        SELECT min(s), max(e) FROM (
            SELECT {trunc} AS s, {trunc} + INTERVAL {unit} AS e FROM blocks WHERE {touched}
            UNION ALL SELECT window_start AT TIME ZONE 'UTC', window_end AT TIME ZONE 'UTC' FROM centralization
            WHERE window_kind = '{window.kind}' AND last_height >= {int(lo)} AND first_height <= {int(hi)})""").fetchone()
    if row[0] is None:
        return None
    start, end = row[0].replace(tzinfo=UTC), row[1].replace(tzinfo=UTC)
    rng = Range(from_time=start, to_time=end - timedelta(seconds=1))  # block times are whole seconds
    return rng, f"window_start >= TIMESTAMPTZ '{_iso(start)}' AND window_start < TIMESTAMPTZ '{_iso(end)}'"


def _incremental_batch(warehouse: Warehouse, computed: dict[str, pa.Table], replaced: dict[str, str],
                       top: int | None) -> tuple[dict[str, pa.Table], dict[str, tuple[int, int]] | None]:
    """What an incremental refresh commits: the first heights [lo, hi] spanned by the recomputed
    windows and the stored windows they replace, and for each table every row that range must hold
    afterwards (the recomputed rows, plus the stored rows of the windows in it that were not
    recomputed). Committed with ``replace_range``, so only the partitions (window kind x 50,000
    first heights) overlapping the range are read and rewritten: the work follows the windows
    touched, not the length of the history."""
    if not replaced:
        return {}, None
    condition = " OR ".join(f"(window_kind = '{kind}' AND ({sql}))" for kind, sql in replaced.items())
    stored = [warehouse.read(t, where=condition, columns=["first_height"]) for t in computed]
    firsts = np.concatenate([np.asarray(t.column("first_height").to_numpy(), dtype=np.int64)
                             for t in [*computed.values(), *stored]])
    if not len(firsts):
        return {}, None
    lo, hi = int(firsts.min()), int(firsts.max())
    keep = f"first_height BETWEEN {lo} AND {hi} AND NOT ({condition})"
    if top is not None:
        keep += f" AND last_height <= {int(top)}"  # windows that lost their blocks (a reorg) vanish
    tables = {t: pa.concat_tables([warehouse.read(t, where=keep), rows]) for t, rows in computed.items()}
    return tables, {t: (lo, hi) for t in tables}


def inference_settings(warehouse: Warehouse) -> InferenceSettings:
    """The inferred-level thresholds the warehouse's metric tables were computed with (meta.json
    ``metrics_settings``), else the defaults: what every reader of a warehouse should use so that
    numbers computed on request agree with the stored tables."""
    return InferenceSettings.from_meta(warehouse.meta)


def _metrics_inputs(warehouse: Warehouse, settings: InferenceSettings) -> str:
    """Fingerprint of what the metrics depend on besides blocks and attributions (the settings and
    the inferred links that reach them)."""
    con = warehouse.connect()
    try:
        links, _ = fam.read_links(con)
    except fam.FamiliesError as exc:
        raise MetricsError(str(exc)) from None
    finally:
        con.close()
    return fam.inputs_fingerprint(links, settings)


def refresh_metrics(warehouse: Warehouse, draws: int = BOOTSTRAP_DRAWS, validate: bool = True, *,
                    full: bool = False, wait: float = 0.0,
                    inference: InferenceSettings | None = None) -> RefreshResult:
    """Bring the materialized metric tables (pool_share, centralization; day, week, month and
    epoch windows) up to date with the stored blocks and the current attributions.

    Runs under the warehouse's writer lock, so nothing changes between reading the inputs and
    committing the result, and the commit records (in the same journal as the rows) that the
    tables follow from the data (``Warehouse.freshness``). Incremental when the tables were computed
    from the current attribution version and only some heights changed since (meta ``dirty``): the
    windows holding a changed height or its neighbour are recomputed, vanished windows dropped, the
    rest kept; that gives the same rows as a full refresh (tests/test_metrics.py). ``full``, a new
    attribution version, or no tables yet: everything is recomputed. Called by ``poolwatch sync``,
    ``attribute``, ``metrics --refresh``, the demo and the Airflow metrics DAG.

    ``inference``: the inferred level's thresholds; None keeps the recorded ones (the defaults on a
    new warehouse). The settings and a fingerprint of the inferred links they select are recorded
    in meta.json with the tables (``metrics_settings``, ``metrics_inputs``); when either changed
    since, everything is recomputed.
    """
    import time

    from pipeline.store.validation import gate, save_report, validate_batch

    started = time.monotonic()
    with warehouse.writer(wait=wait):
        settings = inference or inference_settings(warehouse)
        fresh = warehouse.freshness()
        version = warehouse.attribution_version
        nothing = {"centralization": 0, "pool_share": 0}
        if version is None or warehouse.max_height() is None:
            return RefreshResult("nothing to compute (no attributed blocks)", nothing, 0, time.monotonic() - started)
        inputs = _metrics_inputs(warehouse, settings)
        recorded = {"metrics_settings": settings.to_meta(), "metrics_inputs": inputs}
        same_inputs = all(warehouse.meta.get(k) == v for k, v in recorded.items())
        if not fresh["stale"] and not full and same_inputs:
            return RefreshResult("up to date", nothing, 0, time.monotonic() - started)
        dirty = fresh["dirty"]
        if (not full and same_inputs and dirty is None and fresh["computed_from"] == version
                and warehouse.file_count("centralization") > 0):
            # Only tables outside the chain changed, and not what the metrics read from them (e.g.
            # an import of links below the threshold): the stored rows still follow; say so.
            warehouse.commit({}, derived_from=version, derived_meta=recorded)
            return RefreshResult("up to date (inputs unchanged)", nothing, 0, time.monotonic() - started)
        incremental = (not full and same_inputs and dirty is not None and fresh["computed_from"] == version
                       and warehouse.file_count("centralization") > 0)
        top = warehouse.max_height()
        con = warehouse.connect()
        new: dict[str, list[pd.DataFrame]] = {"centralization": [], "pool_share": []}
        replaced: dict[str, str] = {}  # window kind -> SQL condition on the stored rows recomputed
        recomputed = 0
        try:
            for name in MATERIALIZED_WINDOWS:
                window = parse_window(name)
                if not incremental:
                    result = compute_metrics(con, window, registry_version=version, draws=draws, inference=settings)
                else:
                    span = _affected_span(con, window, int(dirty[0]) - 1, int(dirty[1]) + 1)
                    if span is None:
                        result = None
                    else:
                        rng, replaced[name] = span
                        result = compute_metrics(con, window, registry_version=version, rng=rng, draws=draws,
                                                 inference=settings)
                if result is not None:
                    new["centralization"].append(result.centralization)
                    new["pool_share"].append(result.pool_share)
                    recomputed += result.centralization["window_id"].nunique() if len(result.centralization) else 0
        finally:
            con.close()
        computed = {t: to_arrow(pd.concat(frames, ignore_index=True), t) if frames else
                    to_arrow(pd.DataFrame(columns=[f.name for f in _spec(t).arrow_schema]), t)
                    for t, frames in new.items()}
        report = None
        if validate and any(t.num_rows for t in computed.values()):
            # The same gate as every other batch: shares sum to 1 per window, HHI within [1/n, 1], ...
            report = validate_batch(computed, {"registry_version": version})
        scope = None
        if incremental:
            tables, scope = _incremental_batch(warehouse, computed, replaced, top)
        else:
            tables = computed
        if report is not None and not report.ok:
            gate(warehouse, computed, report)  # quarantines the recomputed rows and raises
        warehouse.commit(tables, derived_from=version, derived_meta=recorded, replace_range=scope)
        if report is not None:
            save_report(warehouse.root, report)
        warehouse.refresh_catalog()
        counts = {name: warehouse.row_count(name) for name in computed}
    mode = "incremental" if incremental else "full"
    log.info("metrics refreshed (%s, %d windows recomputed, attribution version %s): %s", mode, recomputed, version,
             counts)
    return RefreshResult(mode, counts, recomputed, time.monotonic() - started)


def _spec(table: str):
    from pipeline.store.schemas import table_spec

    return table_spec(table)
