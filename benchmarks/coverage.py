"""Coverage of the HHI and Nakamoto intervals on simulated windows, through compute_metrics.

    python -m benchmarks.coverage                      # writes benchmarks/coverage.md (~10 min on 2 cores)
    python -m benchmarks.coverage --windows 0.25       # a quarter of the windows, for a quick look

For each window kind (day, week, month) and each mix of miners below, one synthetic chain of
consecutive whole windows is built: blocks 600 s apart from 2024-01-01 00:00 UTC (a Monday and the
first of a month), so a day holds 144 blocks, a week 1008 and a month 4,032-4,464; each block's miner
is drawn independently from the mix (so each window's counts are one multinomial draw). The chain is
exposed as DuckDB views ``blocks`` and ``attributions`` and goes through
``pipeline.metrics.compute_metrics`` as refresh_metrics runs it (the SQL, the per-window seeds, 1000
draws). Each window's ``hhi_lo``/``hhi_hi`` is then compared with the true HHI of the mix under the
row's unknown treatment, and ``nakamoto_lo``/``nakamoto_hi`` with the true Nakamoto coefficient.

"old" is the interval poolwatch published before this change: the 2.5-97.5 percentiles of the plug-in
HHI over the same multinomial replicates (same seed, same draws), recomputed here from the window's
counts (``percentile_hhi_interval``; checked identical to the old compute_metrics output); "new" is
what compute_metrics returns. "Methods considered" computes every candidate interval from those same
replicates (the one compute_metrics returns among them, checked equal). The last table is the share of
simulated windows of each size that the low_sample rule flags. tests/test_metrics_calibration.py runs
a smaller version of the coverage measurement as a test.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.metrics import compute as m

HERE = Path(__file__).resolve().parent
START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday and the first of a month: whole days, weeks, months
SPACING = 600
SEED = 20240615
NOMINAL = m.CONFIDENCE
TOLERANCE = 0.015  # what the metrics promise: coverage within 1.5 points of nominal


@dataclass(frozen=True)
class Mix:
    """Shares of all blocks by pool (the rest, ``unknown``, is mined by pools nobody identifies) and an
    optional grouping of pools into families (the family level of the metrics)."""

    name: str
    pools: dict[str, float]
    unknown: float
    families: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        total = sum(self.pools.values()) + self.unknown
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"mix {self.name}: shares sum to {total}, not 1")

    def known_shares(self, level: str) -> np.ndarray:
        """Shares of all blocks held by each known pool (level pool) or family (level family)."""
        if level == "pool":
            return np.array(list(self.pools.values()))
        grouped: dict[str, float] = {}
        for pool, share in self.pools.items():
            key = self.families.get(pool, pool)
            grouped[key] = grouped.get(key, 0.0) + share
        return np.array(list(grouped.values()))

    def entity_shares(self, level: str, treatment: str) -> np.ndarray:
        """The population the metric describes under an unknown treatment: ``excluded`` renormalises
        the known entities, ``one_entity`` adds the unknown share as one miner, ``each_own`` spreads it
        over infinitely many miners of no size (they add nothing to HHI and never make a majority)."""
        known = self.known_shares(level)
        if treatment == "excluded":
            return known / known.sum()
        if treatment == "one_entity":
            return np.append(known, self.unknown)
        return known

    def true_hhi(self, level: str, treatment: str) -> float:
        p = self.entity_shares(level, treatment)
        return float((p * p).sum())

    def true_nakamoto(self, level: str, treatment: str) -> int:
        p = np.sort(self.entity_shares(level, treatment))[::-1]
        above = np.cumsum(p) > 0.5
        if not above.any():
            raise ValueError(f"mix {self.name}: the known entities never pass 50% ({treatment})")
        return int(np.argmax(above) + 1)

    @property
    def levels(self) -> tuple[str, ...]:
        return ("pool", "legal") if self.families else ("pool",)  # legal: the registry-family level


# Rounded shares of 2024 blocks as public pool trackers reported them (Foundry ~30%, AntPool ~25%, ...,
# about 2% unidentified): a realistic shape, not a measurement poolwatch makes. The family level groups
# AntPool with five smaller brands under one operator, the kind of grouping registry families express,
# which gives a second population (two ~30% entities) at no extra simulation cost.
MAINNET_2024 = Mix(
    "2024-like",
    {"foundryusa": 0.300, "antpool": 0.245, "viabtc": 0.130, "f2pool": 0.105, "marapool": 0.046,
     "spiderpool": 0.041, "binancepool": 0.028, "luxor": 0.021, "secpool": 0.016, "braiinspool": 0.015,
     "sbicrypto": 0.009, "poolin": 0.006, "btccom": 0.005, "ocean": 0.004, "ultimuspool": 0.003,
     "whitepool": 0.002, "carbonnegative": 0.0015, "titan": 0.001, "solock": 0.0005},
    unknown=0.021,
    families={p: "antpool-group" for p in ("antpool", "binancepool", "secpool", "btccom", "poolin", "ultimuspool")},
)
# Ten pools of similar size (13% .. 4.5%) and 2% unknown: where the plug-in HHI's bias, about
# (1 - HHI)/N, is largest next to its spread, so a percentile interval around it misses most.
FLAT_10 = Mix(
    "flat 10",
    {f"pool{i:02d}": s for i, s in enumerate((0.13, 0.12, 0.115, 0.11, 0.105, 0.10, 0.095, 0.085, 0.075, 0.045), 1)},
    unknown=0.02,
)
MIXES = (MAINNET_2024, FLAT_10)
# Only for the low_sample table: one pool near 40% (as GHash.io came close to in 2014), the most
# concentrated shape mainnet days have had since pools took over from unidentified miners.
ONE_40 = Mix(
    "one 40% pool",
    {"big": 0.40, "p2": 0.15, "p3": 0.10, "p4": 0.08, "p5": 0.07, "p6": 0.05, "p7": 0.05, "p8": 0.04, "p9": 0.03},
    unknown=0.03,
)
FLAG_SIZES = (5, 10, 20, 30, 40, 50, 60, 80, 100, 120, 143)
FLAG_DRAWS = 2000
KINDS = ("day", "week", "month")
# Windows per (kind, mix) in the full run: the standard error of a 95% coverage is sqrt(.95*.05/n),
# 0.34 points for 4000 days, 0.49 for 2000 weeks, 0.69 for 1000 months.
DEFAULT_WINDOWS = {"day": 4000, "week": 2000, "month": 1000}


def chain_end(kind: str, windows: int, start: datetime = START) -> datetime:
    """End of ``windows`` whole calendar windows of ``kind`` from ``start``."""
    if kind == "day":
        return start + timedelta(days=windows)
    if kind == "week":
        return start + timedelta(weeks=windows)
    if kind == "month":
        months = start.month - 1 + windows
        return start.replace(year=start.year + months // 12, month=months % 12 + 1)
    raise ValueError(f"no calendar window kind {kind!r}: use day, week or month")


def chain_seed(kind: str, mix: Mix, seed: int) -> int:
    # Each chain its own stream, so adding a kind or a mix leaves the others' draws as they were.
    return seed ^ zlib.crc32(f"{kind}|{mix.name}".encode())


def simulated_chain(mix: Mix, kind: str, windows: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """(blocks, attributions) of a chain of ``windows`` whole ``kind`` windows mined by ``mix``.

    Only the columns compute_metrics reads; miners as dictionary arrays so a 4-million-block chain
    takes seconds to build, not minutes.
    """
    n = int((chain_end(kind, windows) - START).total_seconds()) // SPACING
    rng = np.random.default_rng(chain_seed(kind, mix, seed))
    names = list(mix.pools) + [m.UNKNOWN_ID]
    shares = np.array(list(mix.pools.values()) + [mix.unknown])
    miner = rng.choice(len(names), size=n, p=shares / shares.sum()).astype(np.int32)
    heights = np.arange(n, dtype=np.int64)
    times = np.datetime64(START.replace(tzinfo=None), "s") + heights * SPACING
    # Block hashes are 64 hex digits in the real schema (compute_metrics compares them as text).
    hashes = pa.array([f"{h:064x}" for h in heights.tolist()], pa.string())
    blocks = pa.table({
        "height": heights, "hash": hashes,
        "time": pa.array(times, pa.timestamp("s")).cast(pa.timestamp("s", tz="UTC")),
        "difficulty": np.ones(n),
    })
    family_names = sorted(set(mix.families.values()))
    family_of = np.array([family_names.index(mix.families[p]) if p in mix.families else -1 for p in names],
                         dtype=np.int32)
    family_index = family_of[miner]
    unknown = miner == len(names) - 1
    attributions = pa.table({
        "height": heights, "block_hash": hashes,
        "pool_id": pa.DictionaryArray.from_arrays(pa.array(miner), pa.array(names)),
        "pool_name": pa.DictionaryArray.from_arrays(pa.array(miner), pa.array(names)),
        "family": pa.DictionaryArray.from_arrays(pa.array(family_index, mask=family_index < 0),
                                                 pa.array(family_names or [""], pa.string())),
        "method": pa.DictionaryArray.from_arrays(pa.array(unknown.astype(np.int32)), pa.array(["tag", "none"])),
    })
    return blocks, attributions


def connect(blocks: pa.Table, attributions: pa.Table) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the ``blocks`` and ``attributions`` views compute_metrics needs."""
    con = duckdb.connect()
    con.register("_sim_blocks", blocks)
    con.register("_sim_attributions", attributions)
    con.execute("CREATE VIEW blocks AS SELECT * FROM _sim_blocks")
    # Dictionary columns arrive as ENUMs of different types; the metrics SQL coalesces them as text.
    con.execute("""CREATE VIEW attributions AS
                   SELECT height, block_hash, pool_id::VARCHAR AS pool_id, pool_name::VARCHAR AS pool_name,
                          family::VARCHAR AS family, method::VARCHAR AS method
                   FROM _sim_attributions""")
    return con


def simulate(mix: Mix, kind: str, windows: int, seed: int = SEED) -> m.MetricsResult:
    """compute_metrics over a simulated chain (default bootstrap: 1000 draws, per-window seeds)."""
    con = connect(*simulated_chain(mix, kind, windows, seed))
    try:
        return m.compute_metrics(con, kind)
    finally:
        con.close()


def replicates(counts: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """The multinomial replicates bootstrap_intervals draws for these counts, seed and draws."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    return np.random.default_rng(seed).multinomial(total, counts / total, size=draws)


def percentile_hhi_interval(counts: np.ndarray, sample: np.ndarray, confidence: float = NOMINAL
                            ) -> tuple[float, float]:
    """The HHI interval before this change: percentiles of the plug-in HHI over the replicates."""
    total = float(np.asarray(counts).sum())
    hhis = (sample.astype(float) ** 2).sum(axis=1) / total ** 2
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(hhis, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _studentized_observed_variance(counts: np.ndarray, sample: np.ndarray, confidence: float
                                   ) -> tuple[float, float]:
    """The chosen method with the observed shares, not unbiased estimates, in the variance."""
    total = int(counts.sum())
    estimate, se = m._hhi_estimate_and_se(counts, total, unbiased_variance=False)
    if se == 0:
        return float(estimate), float(estimate)
    replicate, replicate_se = m._hhi_estimate_and_se(sample, total, axis=1, unbiased_variance=False)
    t = (replicate - m.hhi(counts)) / np.where(replicate_se > 0, replicate_se, se)
    alpha = (1 - confidence) / 2
    t_lo, t_hi = np.quantile(t, [alpha, 1 - alpha])
    return float(estimate - t_hi * se), float(estimate - t_lo * se)


def _bca(counts: np.ndarray, sample: np.ndarray, unbiased: np.ndarray, confidence: float) -> tuple[float, float]:
    """BCa percentile interval of the unbiased HHI's replicates, shifted so the resampling world's
    truth (the plug-in) lands on the estimate; acceleration from the leave-one-block-out jackknife."""
    c = counts.astype(float)
    n = c.sum()
    plug_in, estimate = m.hhi(counts), m.hhi_unbiased(counts)
    shifted = unbiased + (estimate - plug_in)
    below = np.mean(unbiased < plug_in) + 0.5 * np.mean(unbiased == plug_in)
    normal = NormalDist()
    z0 = normal.inv_cdf(min(max(below, 0.5 / len(unbiased)), 1 - 0.5 / len(unbiased)))
    # Leaving out one block of entity i: Σc(c-1) loses 2(c_i - 1); c_i such leave-outs each.
    jack = ((c * (c - 1)).sum() - 2 * (c - 1)) / ((n - 1) * (n - 2))
    d = (c * jack).sum() / n - jack
    spread = (c * d * d).sum()
    accel = (c * d ** 3).sum() / (6 * spread ** 1.5) if spread > 0 else 0.0
    alpha = (1 - confidence) / 2
    levels = [normal.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))) for z in (normal.inv_cdf(alpha),
                                                                        normal.inv_cdf(1 - alpha))]
    lo, hi = np.quantile(shifted, levels)
    return float(lo), float(hi)


ALTERNATIVES = ("percentile (old)", "percentile, bias-shifted", "basic around unbiased", "BCa around unbiased",
                "Wald around unbiased", "studentized, observed-share se", "studentized (new)")


def alternative_intervals(counts: np.ndarray, sample: np.ndarray, confidence: float = NOMINAL
                          ) -> dict[str, tuple[float, float]]:
    """Every interval measured when choosing the method, from the same replicates; clipped to [0, 1]."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    plug_in, estimate = m.hhi(counts), m.hhi_unbiased(counts)
    hhis = (sample.astype(float) ** 2).sum(axis=1) / float(total) ** 2
    unbiased = (total * hhis - 1) / (total - 1)
    alpha = (1 - confidence) / 2
    z = NormalDist().inv_cdf(1 - alpha)
    q_lo, q_hi = np.quantile(hhis, [alpha, 1 - alpha])
    bias = hhis.mean() - plug_in
    u_lo, u_hi = np.quantile(unbiased, [alpha, 1 - alpha])
    se = float(m._hhi_estimate_and_se(counts, total)[1])
    out = {
        "percentile (old)": percentile_hhi_interval(counts, sample, confidence),
        "percentile, bias-shifted": (q_lo - bias, q_hi - bias),
        "basic around unbiased": (estimate - (u_hi - plug_in), estimate - (u_lo - plug_in)),
        "BCa around unbiased": _bca(counts, sample, unbiased, confidence),
        "Wald around unbiased": (estimate - z * se, estimate + z * se),
        "studentized, observed-share se": _studentized_observed_variance(counts, sample, confidence),
        "studentized (new)": m.studentized_hhi_interval(counts, sample, confidence),
    }
    return {k: (float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))) for k, (lo, hi) in out.items()}


def evaluate(result: m.MetricsResult, mix: Mix, alternatives: bool = True) -> pd.DataFrame:
    """One row per (window, level, treatment): the truth, whether each interval holds it, widths."""
    window = result.window
    cent, share = result.centralization, result.pool_share
    known = {key: np.sort(g["blocks"].to_numpy(np.int64))[::-1]
             for key, g in share[~share["is_unknown"].astype(bool)].groupby(["window_id", "level"])}
    rows = []
    for r in cent[cent["level"].isin(mix.levels)].itertuples(index=False):
        truth = mix.true_hhi(r.level, r.unknown_treatment)
        naka = mix.true_nakamoto(r.level, r.unknown_treatment)
        row = {"window_id": r.window_id, "level": r.level, "treatment": r.unknown_treatment,
               "blocks_total": int(r.blocks_total), "true_hhi": truth, "low_sample": bool(r.low_sample),
               "new_covered": bool(r.hhi_lo <= truth <= r.hhi_hi), "new_width": float(r.hhi_hi - r.hhi_lo),
               "nakamoto_covered": bool(r.nakamoto_lo <= naka <= r.nakamoto_hi)}
        if alternatives:
            counts = m.treatment_counts(known.get((r.window_id, r.level), np.zeros(0, np.int64)),
                                        int(r.unknown_blocks), r.unknown_treatment)
            # The same per-window seed as compute_metrics, so every method sees the same replicates.
            sample = replicates(counts, int(r.bootstrap_draws),
                                m._seed(window.name, r.window_id, r.level, r.unknown_treatment))
            intervals = alternative_intervals(counts, sample)
            if intervals["studentized (new)"] != (r.hhi_lo, r.hhi_hi):
                raise AssertionError(f"{r.window_id} {r.level} {r.unknown_treatment}: the replicates here are "
                                     "not the ones compute_metrics drew")
            for name, (lo, hi) in intervals.items():
                row[f"{name}|covered"] = lo <= truth <= hi
                row[f"{name}|width"] = hi - lo
            row.update(old_covered=row["percentile (old)|covered"], old_width=row["percentile (old)|width"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(frame: pd.DataFrame, kind: str, mix: Mix, seed: int) -> list[dict]:
    out = []
    for level in mix.levels:
        for treatment in m.TREATMENTS:
            g = frame[(frame["level"] == level) & (frame["treatment"] == treatment)]
            if len(g):
                out.append(_summary(g, kind, mix, level, treatment, seed))
    return out


def _summary(g: pd.DataFrame, kind: str, mix: Mix, level: str, treatment: str, seed: int) -> dict:
    n = len(g)
    label = mix.name if len(mix.levels) == 1 else f"{mix.name} {'families' if level == 'family' else 'pools'}"
    has_old = "old_covered" in g
    return {
        "kind": kind, "mix": label, "treatment": treatment, "nominal": NOMINAL,
        "blocks": _blocks_label(g["blocks_total"]), "true_hhi": float(g["true_hhi"].iloc[0]), "windows": n,
        "old": float(g["old_covered"].mean()) if has_old else None,
        "new": float(g["new_covered"].mean()), "se": float(np.sqrt(NOMINAL * (1 - NOMINAL) / n)),
        "old_width": float(g["old_width"].mean()) if has_old else None,
        "new_width": float(g["new_width"].mean()), "nakamoto": float(g["nakamoto_covered"].mean()),
        "true_nakamoto": mix.true_nakamoto(level, treatment),
        "low_sample": int(g["low_sample"].sum()), "seed": chain_seed(kind, mix, seed),
        "alternatives": {name: float(g[f"{name}|covered"].mean()) for name in ALTERNATIVES
                         if f"{name}|covered" in g},
    }


def flag_rates(mixes: Sequence[Mix] = (MAINNET_2024, FLAT_10, ONE_40), sizes: Sequence[int] = FLAG_SIZES,
               draws: int = FLAG_DRAWS, seed: int = SEED) -> list[dict]:
    """Share of simulated windows of each size that pipeline.metrics.low_sample flags (the window's
    counts with unknown blocks as one entity, as compute_metrics judges it)."""
    rows = []
    for size in sizes:
        row: dict = {"blocks": size}
        for mix in mixes:
            rng = np.random.default_rng(chain_seed(f"flag{size}", mix, seed))
            p = np.append(mix.known_shares("pool"), mix.unknown)
            row[mix.name] = float(np.mean([m.low_sample(c) for c in rng.multinomial(size, p, size=draws)]))
        rows.append(row)
    return rows


def alternatives_table(rows: Sequence[dict]) -> list[str]:
    lines = ["| window | mix | treatment | " + " | ".join(ALTERNATIVES) + " | windows |",
             "|---|---|---|" + "---:|" * (len(ALTERNATIVES) + 1)]
    for r in rows:
        cov = r["alternatives"]
        lines.append(f"| {r['kind']} | {r['mix']} | {r['treatment']} | "
                     + " | ".join(_pct(cov.get(name)) for name in ALTERNATIVES) + f" | {r['windows']:,} |")
    return lines


def method_summary(rows: Sequence[dict]) -> list[str]:
    """Per method: the range of its coverage over the treatments (and levels) of each kind and mix,
    and how many cells miss the nominal by more than 1.5 points."""
    groups = list(dict.fromkeys((r["kind"], r["mix"].split(" pools")[0].split(" families")[0]) for r in rows))
    lines = ["| method | " + " | ".join(f"{k}, {x}" for k, x in groups)
             + f" | cells off by > {100 * TOLERANCE:g} points |",
             "|---|" + "---:|" * (len(groups) + 1)]
    for name in ALTERNATIVES:
        if not all(name in r["alternatives"] for r in rows):
            continue
        ranges = []
        for kind, mix in groups:
            values = [r["alternatives"][name] for r in rows if r["kind"] == kind and r["mix"].startswith(mix)]
            ranges.append(f"{100 * min(values):.1f}-{100 * max(values):.1f}")
        # Rounded: 93.5% of 1000 windows is 1.5 points off, which the float difference puts a hair above.
        off = sum(round(abs(r["alternatives"][name] - NOMINAL), 9) > TOLERANCE for r in rows)
        lines.append(f"| {name} | " + " | ".join(ranges) + f" | {off} of {len(rows)} |")
    return lines


def flag_table(rows: Sequence[dict], draws: int) -> list[str]:
    names = [k for k in rows[0] if k != "blocks"]
    lines = ["| blocks in the window | " + " | ".join(f"flagged, {n}" for n in names) + " |",
             "|---:|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['blocks']} | " + " | ".join(f"{100 * r[n]:.1f}%" for n in names) + " |")
    lines.append("")
    lines.append(f"{draws} simulated windows per cell.")
    return lines


def _blocks_label(totals: pd.Series) -> str:
    lo, hi = int(totals.min()), int(totals.max())
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(rows: Sequence[dict]) -> list[str]:
    lines = ["| window | blocks | mix | treatment | true HHI | nominal | coverage old | coverage new | SE | "
             "mean width old | mean width new | true Nakamoto | Nakamoto coverage | low_sample | windows | seed |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['blocks']} | {r['mix']} | {r['treatment']} | {r['true_hhi']:.4f} | "
                     f"{_pct(r['nominal'])} | {_pct(r['old'])} | **{_pct(r['new'])}** | {100 * r['se']:.2f} | "
                     f"{r['old_width']:.4f} | {r['new_width']:.4f} | {r['true_nakamoto']} | {_pct(r['nakamoto'])} | "
                     f"{r['low_sample']} | "
                     f"{r['windows']:,} | {r['seed']} |")
    return lines


def machine() -> str:
    from benchmarks.machine import describe

    info = describe(HERE)
    load = info.get("load_average_at_start")
    try:
        uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        uname = " ".join(part for part in platform.uname() if part)
    return (f"`{uname}`; CPU: {info['cpu_model']} x {info['cpus']}, {info['ram_gb']} GB RAM"
            + (f"; load average {load[0]:.1f} at the end" if load else ""))


def run(scale: float = 1.0, kinds: Sequence[str] = KINDS, seed: int = SEED) -> tuple[list[dict], dict[str, float]]:
    rows, seconds = [], {}
    for kind in kinds:
        windows = max(1, round(DEFAULT_WINDOWS[kind] * scale))
        for mix in MIXES:
            started = time.perf_counter()
            result = simulate(mix, kind, windows, seed)
            computed = time.perf_counter() - started
            rows += summarize(evaluate(result, mix), kind, mix, seed)
            seconds[f"{kind} / {mix.name}"] = computed
            print(f"{kind} / {mix.name}: {windows} windows, compute_metrics {computed:.1f} s", file=sys.stderr,
                  flush=True)
    return rows, seconds


def report(rows: Sequence[dict], seconds: dict[str, float], seed: int, flags: Sequence[dict] = ()) -> str:
    lines = ["# HHI interval coverage (benchmarks/coverage.py)", "",
             f"Generated by `python -m benchmarks.coverage` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
             f"machine: {machine()}; base seed {seed}; {m.BOOTSTRAP_DRAWS} bootstrap draws per window.", "",
             "Coverage: the share of simulated windows whose 95% interval holds the true value of the mix "
             "(percent). SE: standard error of a coverage of exactly 95% over that many windows. Old: the "
             "percentile interval of the plug-in HHI; new: the studentized bootstrap interval around the "
             "unbiased HHI that compute_metrics returns. Nakamoto coverage: the Nakamoto interval (unchanged "
             "method). low_sample: windows flagged.", ""]
    lines += table(rows)
    lines += ["", "compute_metrics time per simulated chain (SQL and bootstrap, both levels and all treatments): "
              + "; ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) + ".", ""]
    lines += ["## Methods considered", "",
              "Coverage (percent) of every interval measured when choosing the method, on the same windows and "
              "the same replicates (compute_metrics' seeds and draws). The unbiased HHI is (N Σp² - 1)/(N - 1); "
              "its se is the square root of the U-statistic's exact multinomial variance, estimated without "
              "bias (\"observed-share se\": the observed shares put in the same formula).", ""]
    lines += method_summary(rows) + ["", "Per treatment and level:", ""]
    lines += alternatives_table(rows) + [""]
    if flags:
        lines += ["## low_sample by window size", "",
                  "Share of simulated windows flagged `low_sample` (the upper end of the HHI's 95% interval at "
                  "least twice the lower end):", ""]
        lines += flag_table(flags, FLAG_DRAWS) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage", description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=float, default=1.0,
                        help="scale of the number of simulated windows (1.0: 4000 days, 2000 weeks, 1000 months)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="window kinds, comma-separated")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=HERE / "coverage.md")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    rows, seconds = run(args.windows, kinds, args.seed)
    flags = flag_rates(draws=FLAG_DRAWS, seed=args.seed)
    text = report(rows, seconds, args.seed, flags)
    print(text)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
