"""Centralization metrics against hand-computed values on tiny windows (see docs/metrics.md)."""

from __future__ import annotations

import math
import shutil
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.metrics import compute as m

T0 = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday: ISO week 2024-W01 starts here
D = 1000.0  # difficulty of the synthetic blocks
FAMILIES = {"alpha": "AlphaGroup", "beta": "AlphaGroup"}  # alpha and beta are one family (proxy pooling)


def synthetic_tables(pools: list[str | None], start_height: int = 0, start: datetime = T0,
                     spacing: int = 600, difficulty: float = D, version: str = "v1"
                     ) -> tuple[pa.Table, pa.Table]:
    """blocks + attributions for a chain whose i-th block is mined by pools[i] (None = unknown)."""
    heights = list(range(start_height, start_height + len(pools)))
    hashes = [f"{h:064x}" for h in heights]
    blocks = pa.table({
        "height": pa.array(heights, pa.int32()),
        "hash": hashes,
        "time": pa.array([start + timedelta(seconds=spacing * i) for i in range(len(pools))],
                         pa.timestamp("s", tz="UTC")),
        "difficulty": pa.array([difficulty] * len(pools), pa.float64()),
    })
    attributions = pa.table({
        "height": pa.array(heights, pa.int32()),
        "block_hash": hashes,
        "registry_version": [version] * len(pools),
        "pool_id": [p or "unknown" for p in pools],
        "pool_name": [p.title() if p else "Unknown" for p in pools],
        "family": pa.array([FAMILIES.get(p) if p else None for p in pools], pa.string()),
        "method": ["tag" if p else "none" for p in pools],
        "rule": [f"tag:{p}" if p else None for p in pools],
        "candidate_count": pa.array([1 if p else 0 for p in pools], pa.int32()),
        "conflict": [False] * len(pools),
    })
    return blocks, attributions


def connect(blocks: pa.Table, attributions: pa.Table) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("_blocks_arrow", blocks)
    con.register("_attr_arrow", attributions)
    con.execute("CREATE VIEW blocks AS SELECT * FROM _blocks_arrow")
    con.execute("CREATE VIEW attributions AS SELECT * FROM _attr_arrow")
    return con


# The worked example of docs/metrics.md: 10 blocks, A=4, B=3, C=1, unknown=2.
EXAMPLE = ["alpha", "gamma", "alpha", None, "delta", "gamma", "alpha", "gamma", None, "alpha"]


def example_result(window: str = "all", **kw) -> m.MetricsResult:
    con = connect(*synthetic_tables(EXAMPLE))
    return m.compute_metrics(con, window, registry_version="v1", **kw)


def row(frame: pd.DataFrame, **where) -> pd.Series:
    sel = frame
    for key, value in where.items():
        sel = sel[sel[key] == value]
    assert len(sel) == 1, f"expected one row for {where}, got {len(sel)}"
    return sel.iloc[0]


def test_reference_functions_on_hand_values():
    assert m.hhi([4, 3, 1]) == pytest.approx(26 / 64)
    assert m.nakamoto([4, 3, 1]) == 2  # 4/8 is exactly half: not a majority
    assert m.nakamoto([5, 3]) == 1
    assert m.entropy_bits([4, 3, 1]) == pytest.approx(1.405639, abs=1e-6)
    assert m.gini([1, 3, 4]) == pytest.approx(0.25)
    assert m.gini([5, 5, 5]) == pytest.approx(0.0)


def test_treatment_excluded_hand_values():
    r = row(example_result().centralization, level="pool", unknown_treatment="excluded")
    assert (r.blocks_total, r.unknown_blocks, r.blocks, r.n_entities, r.known_entities) == (10, 2, 8, 3, 3)
    assert r.unknown_share == pytest.approx(0.2)
    assert (r.top1_share_of_known, r.top3_share_of_known, r.top5_share_of_known) == pytest.approx((0.5, 1.0, 1.0))
    assert (r.top1_share_of_all, r.top3_share_of_all, r.top5_share_of_all) == pytest.approx((0.4, 0.8, 0.8))
    assert r.hhi == pytest.approx(0.40625)
    assert r.hhi_unbiased == pytest.approx((4 * 3 + 3 * 2 + 0) / (8 * 7))
    assert r.nakamoto == 2
    assert r.entropy_bits == pytest.approx(1.405639, abs=1e-6)
    assert r.entropy_normalized == pytest.approx(0.886860, abs=1e-6)
    assert r.gini == pytest.approx(0.25)
    assert bool(r.low_sample)


def test_treatment_one_entity_hand_values():
    r = row(example_result().centralization, level="pool", unknown_treatment="one_entity")
    assert (r.blocks, r.n_entities, r.known_entities) == (10, 4, 3)
    # top-N never counts the unknown as an entity: the same shares in every treatment's row
    assert (r.top1_share_of_known, r.top3_share_of_known) == pytest.approx((0.5, 1.0))
    assert (r.top1_share_of_all, r.top3_share_of_all, r.top5_share_of_all) == pytest.approx((0.4, 0.8, 0.8))
    assert r.hhi == pytest.approx(0.30)
    assert r.nakamoto == 2
    assert r.entropy_bits == pytest.approx(1.846439, abs=1e-6)
    assert r.entropy_normalized == pytest.approx(0.923220, abs=1e-6)
    assert r.gini == pytest.approx(0.25)


def test_treatment_each_own_hand_values():
    r = row(example_result().centralization, level="pool", unknown_treatment="each_own")
    assert (r.blocks, r.n_entities, r.known_entities) == (10, 5, 3)
    assert r.top1_share_of_all == pytest.approx(0.4)
    assert r.hhi == pytest.approx(0.28)
    assert r.nakamoto == 2
    assert r.entropy_bits == pytest.approx(2.046439, abs=1e-6)
    assert r.entropy_normalized == pytest.approx(0.881353, abs=1e-6)
    assert r.gini == pytest.approx(0.32)


def test_nakamoto_is_a_range_across_treatments():
    # A=3, B=2, unknown=5: excluded 3/5 > 50% -> 1; one entity [5,3,2]: 5/10 is not > 50% -> 2;
    # each own [3,2,1,1,1,1,1]: 3, 5 (=50%), 6 -> 3.
    con = connect(*synthetic_tables(["alpha"] * 3 + ["gamma"] * 2 + [None] * 5))
    cent = m.compute_metrics(con, "all", registry_version="v1").centralization
    got = {t: row(cent, level="pool", unknown_treatment=t).nakamoto for t in m.TREATMENTS}
    assert got == {"excluded": 1, "one_entity": 2, "each_own": 3}


def test_sql_agrees_with_reference_functions_on_random_windows():
    rng = np.random.default_rng(3)
    pools = list(rng.choice(["alpha", "beta", "gamma", "delta", "eps", None], size=700,
                            p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05]))
    con = connect(*synthetic_tables(pools))
    res = m.compute_metrics(con, "blocks:100", registry_version="v1", bootstrap=False)
    for r in res.centralization[res.centralization.unknown_treatment == "excluded"].itertuples():
        share = res.pool_share[(res.pool_share.window_id == r.window_id) & (res.pool_share.level == r.level)
                               & ~res.pool_share.is_unknown]
        counts = share["blocks"].to_numpy()
        assert r.hhi == pytest.approx(m.hhi(counts))
        assert r.nakamoto == m.nakamoto(counts)
        assert r.entropy_bits == pytest.approx(m.entropy_bits(counts))
        assert r.gini == pytest.approx(m.gini(counts))
        assert 1 / r.n_entities - 1e-12 <= r.hhi <= 1.0  # HHI bounds
        assert 0.0 <= r.entropy_normalized <= 1.0 + 1e-12


def test_pool_shares_and_legal_level():
    res = example_result()
    share = res.pool_share
    a = row(share, level="pool", entity_id="alpha")
    assert (a.blocks, a.blocks_total, a["rank"]) == (4, 10, 1)
    assert a.share == pytest.approx(0.4)
    assert a.share_of_known == pytest.approx(0.5)
    u = row(share, level="pool", entity_id="unknown")
    assert bool(u.is_unknown) and pd.isna(u.share_of_known) and u.share == pytest.approx(0.2)
    # legal level: alpha (4) is in family AlphaGroup; gamma and delta have no family -> their own
    legal = share[share.level == "legal"].set_index("entity_id")["blocks"].to_dict()
    assert legal == {"family:AlphaGroup": 4, "gamma": 3, "delta": 1, "unknown": 2}
    # no evidence tables: the inferred level is the legal level
    inferred = share[share.level == "inferred"].set_index("entity_id")["blocks"].to_dict()
    assert inferred == legal


def test_legal_level_merges_proxy_pools():
    con = connect(*synthetic_tables(["alpha"] * 3 + ["beta"] * 3 + ["gamma"] * 4))
    cent = m.compute_metrics(con, "all", registry_version="v1").centralization
    pool = row(cent, level="pool", unknown_treatment="excluded")
    legal = row(cent, level="legal", unknown_treatment="excluded")
    assert (pool.n_entities, pool.nakamoto, pool.hhi) == (3, 2, pytest.approx(0.34))
    assert (legal.n_entities, legal.nakamoto, legal.hhi) == (2, 1, pytest.approx(0.52))


def _links_registry():
    from pipeline.attribution.registry import parse_registry

    return parse_registry({
        "format": "poolwatch-registry", "format_version": 1,
        "families": [{"id": "AlphaGroup".lower(), "name": "Alpha Group"}, {"id": "later", "name": "Later Co"}],
        "pools": [{"id": "alpha", "name": "Alpha", "family": [{"family": "alphagroup"}]},
                  {"id": "beta", "name": "Beta", "family": [{"family": "alphagroup"}]},
                  {"id": "gamma", "name": "Gamma"},
                  {"id": "delta", "name": "Delta",
                   "family": [{"family": "later", "from_time": "2024-01-01T01:00:00Z"}]},
                  {"id": "eps", "name": "Eps"}]})


def _with_links(pools, families, template=(), custody=()):
    blocks, attributions = synthetic_tables(pools)
    attributions = attributions.set_column(attributions.schema.get_field_index("family"), "family",
                                           pa.array(families, pa.string()))
    con = connect(blocks, attributions)
    if template is not None:
        con.execute("CREATE TABLE template_links (pool_a VARCHAR, pool_b VARCHAR, shared_groups INTEGER, "
                    "heights_seen INTEGER, first_height INTEGER, last_height INTEGER)")
        for a, b, seen in template:
            con.execute("INSERT INTO template_links VALUES (?, ?, ?, ?, 100, 200)", [a, b, seen, seen])
    if custody is not None:
        con.execute("CREATE TABLE custody_links (pool_a VARCHAR, pool_b VARCHAR, co_spend_txs INTEGER, "
                    "first_height INTEGER, last_height INTEGER)")
        for a, b, txs in custody:
            con.execute("INSERT INTO custody_links VALUES (?, ?, ?, 100, 200)", [a, b, txs])
    return con


def test_inferred_level_joins_legal_entities_by_links_above_the_threshold():
    pools = ["alpha"] * 3 + ["beta"] * 3 + ["gamma"] * 2 + ["eps"] * 2 + ["delta"] * 2
    # delta's family starts at 01:00 (block 6 at 600 s spacing): its two blocks (10, 11) are in it
    families = ["alphagroup"] * 6 + [None] * 4 + ["later"] * 2
    # gamma-eps share templates at 2 heights (counts); eps-delta at 1 (below the default of 2);
    # beta-gamma co-spend in 3 transactions (counts)
    con = _with_links(pools, families, template=[("eps", "gamma", 2), ("delta", "eps", 1)],
                      custody=[("beta", "gamma", 3)])
    reg = _links_registry()
    res = m.compute_metrics(con, "all", registry_version="v1", registry=reg, bootstrap=False)
    shares = {lv: res.pool_share[res.pool_share.level == lv].set_index("entity_id")["blocks"].to_dict()
              for lv in m.LEVELS}
    assert shares["legal"] == {"family:alphagroup": 6, "gamma": 2, "eps": 2, "family:later": 2}
    # beta stands for its family, so the custody link joins all of Alpha Group; ids never collide
    assert shares["inferred"] == {"group:family:alphagroup": 10, "family:later": 2}
    names = res.pool_share[res.pool_share.level == "inferred"].set_index("entity_id")["entity_name"].to_dict()
    assert names["group:family:alphagroup"] == "Alpha Group group"
    cent = res.centralization[res.centralization.unknown_treatment == "excluded"].set_index("level")
    # pool: 3+3+2 of 12 blocks pass half; legal: Alpha Group's 6 of 12 is not more than half
    assert (cent.loc["pool", "nakamoto"], cent.loc["legal", "nakamoto"], cent.loc["inferred", "nakamoto"]) == (3, 2, 1)
    assert cent.loc["inferred", "hhi"] == pytest.approx((10 / 12) ** 2 + (2 / 12) ** 2)
    # a lower threshold lets the single shared template count: delta's family joins too
    low = m.compute_metrics(con, "all", registry_version="v1", registry=reg, bootstrap=False,
                            inference=m.InferenceSettings(min_template_heights=1))
    inferred = low.pool_share[low.pool_share.level == "inferred"].set_index("entity_id")["blocks"].to_dict()
    assert inferred == {"group:family:alphagroup": 12}
    notes = m.data_notes(con, inference=m.InferenceSettings())
    assert any("1 template link(s) and 1 custody link(s)" in n and "1 below it" in n for n in notes)


def test_inferred_level_follows_a_dated_family_per_block():
    # delta is in Later Co from 01:00 (block 6). A block counts with the links as they stand at its
    # own time: eps's blocks (00:00-00:30) and delta's first two join delta; delta's later blocks
    # are Later Co's, joined to eps then (two groups, one id each, no collision)
    pools = ["eps"] * 4 + ["delta"] * 8
    families = [None] * 6 + ["later"] * 6
    con = _with_links(pools, families, template=[("delta", "eps", 5)], custody=None)
    res = m.compute_metrics(con, "all", registry_version="v1", registry=_links_registry(), bootstrap=False)
    inferred = res.pool_share[res.pool_share.level == "inferred"].set_index("entity_id")["blocks"].to_dict()
    assert inferred == {"group:delta": 4 + 2, "group:family:later": 6}
    assert "custody_links" not in m.fam.present_tables(con)  # absent custody table: taken as empty


def test_inferred_level_needs_the_registry_of_linked_pools():
    con = _with_links(["alpha", "gamma"], [None, None], template=[("alpha", "gamma", 2)], custody=None)
    with pytest.raises(m.MetricsError, match="not stored in pool_definitions"):
        m.compute_metrics(con, "all", registry_version="v1", bootstrap=False)
    con.execute("CREATE OR REPLACE TABLE custody_links (pool_a VARCHAR, pool_b VARCHAR)")
    with pytest.raises(m.MetricsError, match="custody_links has no column"):
        m.compute_metrics(con, "all", registry_version="v1", bootstrap=False)


def test_wilson_interval_hand_value():
    lo, hi = m.wilson_interval(4, 10)
    assert (float(lo), float(hi)) == pytest.approx((0.16818, 0.68733), abs=5e-5)
    lo0, hi0 = m.wilson_interval(0, 10)
    assert float(lo0) == 0.0 and float(hi0) == pytest.approx(0.27753, abs=5e-5)
    a = row(example_result().pool_share, level="pool", entity_id="alpha")
    assert (a.share_lo, a.share_hi) == pytest.approx((0.16818, 0.68733), abs=5e-5)


def test_unbiased_hhi_and_standard_error_hand_values():
    # [4, 3, 1], N = 8. Falling factorials (c)_2 = 12, 6, 0; (c)_3 = 24, 6, 0; (c)_4 = 24, 0, 0.
    assert m.hhi_unbiased([4, 3, 1]) == pytest.approx(18 / 56)
    # Σp³ ≈ 30/336 = 5/56; HHI² ≈ (18² − (144 + 36) + 24)/1680 = 1/10;
    # Var = [4·6·(5/56 − 1/10) + 2·(18/56 − 1/10)] / 56 = 52/15680
    assert m.hhi_standard_error([4, 3, 1]) == pytest.approx(math.sqrt(52 / 15680))
    assert m.hhi_unbiased([1]) is None and m.hhi_standard_error([1]) is None
    assert m.hhi_standard_error([7]) == 0.0  # one entity, every block: nothing varies


def test_hhi_variance_formula_matches_simulation():
    """The exact multinomial variance behind the standard error, and its estimate's mean, against
    the spread of the unbiased HHI over simulated windows."""
    rng = np.random.default_rng(7)
    p, n = np.array([0.45, 0.3, 0.15, 0.1]), 30
    draws = rng.multinomial(n, p, size=200_000)
    estimates, se = m._hhi_estimate_and_se(draws, n, axis=1)
    assert estimates.mean() == pytest.approx((p * p).sum(), rel=0.005)  # unbiased
    h, cube = (p * p).sum(), (p ** 3).sum()
    exact = (4 * (n - 2) * (cube - h * h) + 2 * (h - h * h)) / (n * (n - 1))
    assert estimates.var() == pytest.approx(exact, rel=0.02)
    assert (se ** 2).mean() == pytest.approx(exact, rel=0.03)  # the variance estimate is unbiased too


def test_bootstrap_intervals_are_sane_and_reproducible():
    counts = np.array([300, 250, 200, 150, 100])
    h_lo, h_hi, k_lo, k_hi = m.bootstrap_intervals(counts, 2000, seed=1)
    # an interval for the population HHI, around the unbiased estimate (the plug-in is 0.001 higher)
    assert h_lo < m.hhi_unbiased(counts) < h_hi and h_hi - h_lo < 0.03
    assert k_lo <= m.nakamoto(counts) <= k_hi and k_lo >= 1
    assert m.bootstrap_intervals(counts, 2000, seed=1) == (h_lo, h_hi, k_lo, k_hi)
    # one entity takes every block: no uncertainty left that a resample could show
    assert m.bootstrap_intervals(np.array([50]), 200, seed=1) == (1.0, 1.0, 1, 1)
    # one block says nothing about the population
    assert m.bootstrap_intervals(np.array([1]), 200, seed=1)[:2] == (0.0, 1.0)
    # a borderline majority (51%) leaves the coefficient undecided between 1 and 2
    assert m.bootstrap_intervals(np.array([51, 49]), 1000, seed=1)[2:] == (1, 2)


def test_studentized_interval_survives_replicates_with_one_entity():
    # A 2010 day under one_entity: 142 unknown blocks and 2 by a known pool. About 13% of the
    # replicates give the unknown miner every block (se* = 0); they must not blow the interval up.
    lo, hi, _, _ = m.bootstrap_intervals(np.array([142, 2]), 1000, seed=3)
    assert 0.9 < lo < m.hhi_unbiased([142, 2]) < hi <= 1.0


def test_studentized_interval_corrects_the_plug_in_bias():
    # A typical day of ten equal pools (true HHI 0.1): the plug-in HHI is 0.1057, about (1 - HHI)/N
    # too high; the percentile interval around it was [0.104, 0.124] and missed the truth.
    counts = np.array([20, 18, 17, 15, 14, 13, 12, 12, 10, 9])
    lo, hi, _, _ = m.bootstrap_intervals(counts, 1000, seed=5)
    assert lo <= 0.1 <= hi
    assert lo < m.hhi_unbiased(counts) < hi


def test_bootstrap_columns_in_result():
    cent = example_result().centralization
    for r in cent.itertuples():
        # The population may hold miners this window never saw: the lower end can go below 1/n.
        assert 0.0 <= r.hhi_lo <= r.hhi_unbiased <= r.hhi_hi <= 1.0
        assert 1 <= r.nakamoto_lo <= r.nakamoto_hi <= r.n_entities
        assert r.bootstrap_draws == m.BOOTSTRAP_DRAWS


def test_calendar_windows_and_low_sample_flag():
    # 3 days of blocks every 600 s: 144 per full day; the chain starts at midnight of day 1
    pools = (["alpha", "gamma"] * 216)
    con = connect(*synthetic_tables(pools))
    res = m.compute_metrics(con, "day", registry_version="v1", bootstrap=False)
    c = res.centralization[(res.centralization.level == "pool") & (res.centralization.unknown_treatment == "excluded")]
    assert list(c.window_id) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert list(c.blocks_total) == [144, 144, 144]
    assert not c.low_sample.any()
    # day 1 has no stored block before it, day 3 none after: only day 2 is complete
    assert list(c.complete) == [False, True, False]
    week = m.compute_metrics(con, "week", registry_version="v1", bootstrap=False).centralization
    assert set(week.window_id) == {"2024-W01"}
    month = m.compute_metrics(con, "month", registry_version="v1", bootstrap=False).centralization
    assert set(month.window_id) == {"2024-01"}
    # 100 blocks split evenly between two pools leave no doubt about the HHI (0.49-0.50): not flagged;
    # windows of 5 blocks are.
    blocks100 = m.compute_metrics(con, "blocks:100", registry_version="v1", bootstrap=False).centralization
    assert not blocks100.low_sample.any()
    short = m.compute_metrics(con, "blocks:5", registry_version="v1", bootstrap=False)
    assert short.centralization.low_sample.all() and short.pool_share.low_sample.all()


def test_low_sample_rule_hand_cases():
    # one block, or a handful: flagged
    assert m.low_sample([1]) and m.low_sample([1, 1]) and m.low_sample([4, 3, 2, 1])
    # one pool with every block: se is 0, the Wilson bound of its share decides (5 blocks: HHI >= 0.32)
    assert m.low_sample([5]) and not m.low_sample([100])
    # even halves over 100 blocks: HHI within 0.48-0.51
    assert not m.low_sample([50, 50])


def test_low_sample_never_flags_a_mainnet_day_and_always_a_tiny_window():
    from benchmarks.coverage import FLAT_10, MAINNET_2024

    rng = np.random.default_rng(143)
    for mix in (MAINNET_2024, FLAT_10):
        p = np.append(mix.known_shares("pool"), mix.unknown)
        assert not any(m.low_sample(c) for c in rng.multinomial(143, p, size=1000))
        assert all(m.low_sample(c) for c in rng.multinomial(10, p, size=1000))


def test_low_sample_flag_is_the_windows_on_both_tables():
    """A 143-block day of a 2024-like mix through the SQL path: not flagged; the 5-block day after it is."""
    from benchmarks.coverage import MAINNET_2024

    rng = np.random.default_rng(2024)
    names = list(MAINNET_2024.pools) + [None]
    p = np.append(MAINNET_2024.known_shares("pool"), MAINNET_2024.unknown)
    day1 = [names[i] for i in rng.choice(len(names), size=143, p=p)]
    blocks, attributions = synthetic_tables(day1 + [None] + ["alpha"] * 5)  # 143 blocks fill day 1 to 23:40
    # block 143 (unknown, 23:50) is dropped so day 1 holds 143 blocks; day 2 holds the 5 after it.
    keep = [i for i in range(blocks.num_rows) if i != 143]
    con = connect(blocks.take(keep), attributions.take(keep))
    res = m.compute_metrics(con, "day", registry_version="v1", bootstrap=False)
    cent, share = res.centralization, res.pool_share
    assert cent.groupby("window_id")["blocks_total"].first().to_dict() == {"2024-01-01": 143, "2024-01-02": 5}
    flags = {w: set(g.low_sample) for w, g in cent.groupby("window_id")}
    assert flags == {"2024-01-01": {False}, "2024-01-02": {True}}  # one flag per window, every row
    assert {w: set(g.low_sample) for w, g in share.groupby("window_id")} == flags


def test_epoch_and_rolling_windows():
    pools = ["alpha"] * 2016 + ["gamma"] * 100
    con = connect(*synthetic_tables(pools))
    cent = m.compute_metrics(con, "epoch", registry_version="v1", bootstrap=False).centralization
    c = cent[(cent.level == "pool") & (cent.unknown_treatment == "excluded")]
    assert list(c.window_id) == ["epoch 0", "epoch 1"]
    assert list(c.blocks_total) == [2016, 100]
    assert list(c.complete) == [True, False]
    con2 = connect(*synthetic_tables(["alpha", "gamma", "gamma", "alpha", "alpha"]))
    roll = m.compute_metrics(con2, "rolling:3", registry_version="v1", bootstrap=False).centralization
    r = roll[(roll.level == "pool") & (roll.unknown_treatment == "excluded")]
    assert list(r.window_id) == ["0-2", "1-3", "2-4"]
    assert list(r.top1_share_of_known) == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert list(r.nakamoto) == [1, 1, 1]
    stepped = m.compute_metrics(con2, "rolling:2:2", registry_version="v1", bootstrap=False).centralization
    assert sorted(set(stepped.window_id)) == ["0-1", "2-3"]


def test_hashrate_block_interval_estimator_with_bias_correction():
    # heights 0..9 every 600 s at difficulty D; window blocks:5 -> 0-4 (no predecessor) and 5-9
    pools = ["alpha", "alpha", "gamma", "alpha", "gamma"] * 2
    con = connect(*synthetic_tables(pools))
    res = m.compute_metrics(con, "blocks:5", registry_version="v1", bootstrap=False)
    c = res.centralization[(res.centralization.level == "pool") & (res.centralization.unknown_treatment == "excluded")]
    rate = D * 2**32 / 600
    second = c[c.window_id == "5-9"].iloc[0]
    # m = 5 intervals from block 4 to block 9, T = 3000 s, W = 5 D 2^32: W/T * (m-1)/m
    assert second.network_hashrate == pytest.approx(rate * 4 / 5)
    assert second.hashrate_method == "block_intervals" and second.elapsed_seconds == 3000
    assert second.expected_blocks == pytest.approx(5)
    first = c[c.window_id == "0-4"].iloc[0]
    # no block before height 0: m = 4 intervals over 2400 s carrying the work of 4 blocks
    assert first.network_hashrate == pytest.approx(rate * 3 / 4)
    alpha = row(res.pool_share, window_id="5-9", level="pool", entity_id="alpha")
    assert alpha.hashrate == pytest.approx(rate * 4 / 5 * 3 / 5)


def test_hashrate_fixed_time_for_complete_calendar_windows():
    pools = ["alpha"] * 188 + ["gamma"] * 244  # 432 blocks = 3 days; day 2 = heights 144..287
    con = connect(*synthetic_tables(pools))
    res = m.compute_metrics(con, "day", registry_version="v1", bootstrap=False)
    day2 = row(res.centralization, window_id="2024-01-02", level="pool", unknown_treatment="excluded")
    assert day2.hashrate_method == "fixed_time" and day2.elapsed_seconds == 86400
    assert day2.network_hashrate == pytest.approx(144 * D * 2**32 / 86400)
    gamma = row(res.pool_share, window_id="2024-01-02", level="pool", entity_id="gamma")
    assert gamma.hashrate == pytest.approx((144 - 44) / 144 * D * 2**32 / 600)


def test_bias_correction_removes_small_sample_bias():
    """Simulate Poisson mining: the corrected block-interval estimator averages to the true rate."""
    rng = np.random.default_rng(11)
    n, trials = 6, 20000
    intervals = rng.exponential(600.0, size=(trials, n))
    naive = (n / intervals.sum(axis=1)).mean() * 600
    corrected = ((n - 1) / intervals.sum(axis=1)).mean() * 600
    assert naive == pytest.approx(n / (n - 1), rel=0.03)  # 20% too high with 6 blocks
    assert corrected == pytest.approx(1.0, rel=0.02)


def test_range_registry_version_and_missing_attributions():
    blocks, attr = synthetic_tables(EXAMPLE)
    old = attr.set_column(attr.schema.get_field_index("registry_version"), "registry_version",
                          pa.array(["v0"] * attr.num_rows))
    con = connect(blocks, pa.concat_tables([attr, old.set_column(3, "pool_id", pa.array(["zzz"] * 10))]))
    res = m.compute_metrics(con, "all", registry_version="v1")
    assert "zzz" not in set(res.pool_share.entity_id)
    sub = m.compute_metrics(con, "all", registry_version="v1", rng=m.Range(from_height=5, to_height=9))
    assert int(row(sub.centralization, level="pool", unknown_treatment="one_entity").blocks) == 5
    # a block without an attribution row counts as unknown, not as nothing
    con2 = connect(blocks, attr.slice(0, 8))
    r = row(m.compute_metrics(con2, "all", registry_version="v1").centralization,
            level="pool", unknown_treatment="one_entity")
    assert (r.blocks_total, r.unknown_blocks) == (10, 3)


def test_parse_window_and_bounds():
    assert m.parse_window("week") == m.WindowScheme("week")
    assert m.parse_window("blocks:2016").name == "blocks_2016"
    assert m.parse_window("rolling:144:6") == m.WindowScheme("rolling", 144, 6)
    for bad in ("fortnight", "blocks:0", "blocks:10:2", "rolling:"):
        with pytest.raises(ValueError):
            m.parse_window(bad)
    rng = m.make_range("800000", "2024-01-31")
    assert rng.from_height == 800000 and rng.to_time == datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a height"):
        m.make_range("yesterday", None)


def test_missing_tables_named():
    con = duckdb.connect()
    con.execute("CREATE TABLE blocks (height INT)")
    with pytest.raises(m.MetricsError, match="attributions"):
        m.compute_metrics(con, "day")


def test_empty_selection_gives_empty_frames():
    con = connect(*synthetic_tables(["alpha"] * 20))
    for window in ("day", "epoch", "rolling:5", "all"):
        res = m.compute_metrics(con, window, registry_version="v1", rng=m.Range(from_height=1000))
        assert res.centralization.empty and res.pool_share.empty
        assert list(res.centralization.columns) == m.CENTRALIZATION_COLUMNS


def test_refresh_on_an_empty_warehouse(tmp_path):
    from pipeline.store.warehouse import Warehouse

    wh = Warehouse(tmp_path / "empty")
    assert m.refresh_metrics(wh).rows == {"centralization": 0, "pool_share": 0}


def test_last_windows_only():
    con = connect(*synthetic_tables(["alpha", "gamma"] * 50))
    res = m.compute_metrics(con, "blocks:10", registry_version="v1", last=2)
    assert sorted(set(res.centralization.window_id)) == ["80-89", "90-99"]
    assert set(res.pool_share.window_id) == {"80-89", "90-99"}


def test_arrow_conformance_and_views():
    res = example_result("blocks:5")
    cent = m.to_arrow(res.centralization, "centralization")
    share = m.to_arrow(res.pool_share, "pool_share")
    assert cent.num_rows == len(res.centralization) and share.num_rows == len(res.pool_share)
    con = duckdb.connect()
    con.register("centralization", cent.set_column(0, "window_kind", pa.array(["epoch"] * cent.num_rows)))
    con.register("pool_share", share.set_column(0, "window_kind", pa.array(["epoch"] * share.num_rows)))
    con.execute("CREATE VIEW freshness AS SELECT false AS stale")
    for path in sorted(m.METRIC_VIEWS_DIR.glob("*.sql")):  # as Warehouse.refresh_catalog loads them
        con.execute(f"CREATE VIEW {path.stem} AS {path.read_text()}")
    names = {path.stem for path in m.METRIC_VIEWS_DIR.glob("*.sql")}
    assert {"centralization_legal_epoch", "centralization_inferred_epoch", "pool_share_day"} <= names
    assert not any("family" in name for name in names)
    n = con.execute("SELECT count(*) FROM centralization_epoch").fetchone()[0]
    assert n == 2 * len(m.TREATMENTS)  # two windows x three treatments at pool level
    assert math.isclose(con.execute("SELECT sum(share) FROM pool_share_epoch WHERE window_id = '0-4'").fetchone()[0], 1.0)


def test_view_files_match_the_code():
    files = {p.stem: p.read_text() for p in m.METRIC_VIEWS_DIR.glob("*.sql")}
    assert set(files) == set(m.metric_views())
    for name, sql in m.metric_views().items():
        assert sql in files[name], f"{name}.sql is stale: run pipeline.metrics.write_view_files()"


# ---- a real (synthetic) warehouse ------------------------------------------------------------


def conformed(table: pa.Table, name: str) -> pa.Table:
    """Fill the declared columns a synthetic table lacks with placeholder values of the right type."""
    from pipeline.store.schemas import table_spec

    spec = table_spec(name)
    n = table.num_rows
    filler = {"string": "00", "int32": 0, "int64": 0, "float64": 0.0, "bool": False}
    cols = {}
    for col in spec.columns:
        if col.name in table.column_names:
            cols[col.name] = table.column(col.name)
        elif col.type == "list<string>":
            cols[col.name] = pa.array([[]] * n, pa.list_(pa.string()))
        elif col.nullable:
            cols[col.name] = pa.nulls(n, col.arrow)
        else:
            cols[col.name] = pa.array([filler[col.type]] * n, col.arrow)
    return spec.conform(pa.table(cols))


def build_warehouse(root, pools: list[str | None], **kw):
    """A warehouse holding synthetic blocks + attributions (registry version v1)."""
    from pipeline.store.warehouse import Warehouse

    blocks, attributions = synthetic_tables(pools, **kw)
    wh = Warehouse(root)
    with wh.writer():
        wh.commit({"blocks": conformed(blocks, "blocks"), "attributions": conformed(attributions, "attributions")})
        wh.set_meta(registry_version="v1")
    return wh


def demo_pools(n: int, seed: int = 5) -> list[str | None]:
    rng = np.random.default_rng(seed)
    return list(rng.choice(["alpha", "beta", "gamma", "delta", "eps", None], size=n,
                           p=[0.3, 0.15, 0.25, 0.15, 0.1, 0.05]))


def test_refresh_metrics_materializes_tables_and_views(tmp_path):
    from pipeline.store.warehouse import Warehouse

    wh = build_warehouse(tmp_path / "wh", demo_pools(600))
    counts = m.refresh_metrics(wh, draws=200).rows
    assert counts["centralization"] > 0 and counts["pool_share"] > 0
    con = Warehouse(wh.root, views_dir=m.METRIC_VIEWS_DIR).connect()
    kinds = {r[0] for r in con.execute("SELECT DISTINCT window_kind FROM centralization").fetchall()}
    assert kinds == set(m.MATERIALIZED_WINDOWS)
    days = con.execute("SELECT count(DISTINCT window_id) FROM centralization_day").fetchone()[0]
    assert days == 5  # 600 blocks every 10 minutes from midnight: 4 days and a sixth
    total = con.execute("SELECT sum(blocks) FROM pool_share_legal_epoch").fetchone()[0]
    assert total == 600
    # a second (full) refresh replaces the rows instead of adding to them
    m.refresh_metrics(wh, draws=200, full=True)
    con = wh.connect()
    assert con.execute("SELECT count(*) FROM centralization WHERE window_kind = 'day'").fetchone()[0] == \
        5 * len(m.LEVELS) * len(m.TREATMENTS)


# ------------------------------------------------------------------ freshness and incremental refresh


def _stored_metrics(wh) -> dict:
    """Every stored metric row, as comparable Python values (bytes of the files are compared too)."""
    return {t: wh.read(t).to_pylist() for t in ("centralization", "pool_share")}


def _data_files(root) -> dict:
    import hashlib

    out = {}
    for table in ("centralization", "pool_share"):
        for path in sorted((root / "data" / table).rglob("part.parquet")):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _append(wh, pools, start_height, **kw):
    kw.setdefault("start", T0 + timedelta(seconds=600 * start_height))
    blocks, attributions = synthetic_tables(pools, start_height=start_height, **kw)
    with wh.writer():
        wh.commit({"blocks": conformed(blocks, "blocks"), "attributions": conformed(attributions, "attributions")})


def test_stored_metrics_are_marked_stale_when_data_changes_and_views_say_so(tmp_path):
    wh = build_warehouse(tmp_path / "wh", demo_pools(600))
    assert wh.freshness()["stale"] and wh.freshness()["reason"] == "never computed"
    m.refresh_metrics(wh, draws=50)
    assert not wh.freshness()["stale"]
    con = wh.connect()
    assert con.execute("SELECT bool_or(stale) FROM centralization_day").fetchone()[0] is False
    _append(wh, demo_pools(30, seed=9), 600)
    fresh = wh.freshness()
    assert fresh["stale"] and fresh["dirty"] == [600, 629] and "600..629" in fresh["reason"]
    con = wh.connect()  # the views read meta.json live: no catalog refresh needed to see it
    assert con.execute("SELECT stale, dirty_from, dirty_to FROM freshness").fetchone() == (True, 600, 629)
    assert con.execute("SELECT bool_and(stale) FROM pool_share_week").fetchone()[0] is True
    assert m.refresh_metrics(wh, draws=50).mode == "incremental"
    assert not wh.freshness()["stale"]
    assert m.refresh_metrics(wh, draws=50).mode == "up to date"


def test_incremental_refresh_gives_the_rows_of_a_full_refresh(tmp_path):
    """New blocks at the tip (touching the last day/week/month/epoch and the completeness of the one
    before), a rewrite in the middle, and a rollback: after each, the incrementally refreshed tables
    equal those of a full refresh of the same data, to the byte."""
    inc = build_warehouse(tmp_path / "inc", demo_pools(2100, seed=1))
    m.refresh_metrics(inc, draws=50)
    steps = [lambda wh: _append(wh, demo_pools(250, seed=2), 2100),
             lambda wh: _append(wh, demo_pools(40, seed=3), 1000),        # rewrites heights 1000..1039
             lambda wh: _rollback(wh, 2200)]
    for i, step in enumerate(steps):
        step(inc)
        done = m.refresh_metrics(inc, draws=50)
        assert done.mode == "incremental" and 0 < done.windows_recomputed < 30, done
        full = tmp_path / f"full{i}"
        shutil.copytree(inc.root, full, ignore=shutil.ignore_patterns("centralization", "pool_share"))
        from pipeline.store.warehouse import Warehouse

        reference = Warehouse(full)
        with reference.writer():
            reference.set_meta(derived=None, dirty=None)
        m.refresh_metrics(reference, draws=50, full=True)
        assert _stored_metrics(inc) == _stored_metrics(reference), f"step {i}"
        assert _data_files(inc.root) == _data_files(full), f"step {i}"


def _full_reference(wh, root):
    """A copy of ``wh`` without its metric tables, refreshed in full."""
    from pipeline.store.warehouse import Warehouse

    shutil.copytree(wh.root, root, ignore=shutil.ignore_patterns("centralization", "pool_share"))
    reference = Warehouse(root)
    with reference.writer():
        reference.set_meta(derived=None, dirty=None)
    m.refresh_metrics(reference, draws=50, full=True)
    return reference


@pytest.fixture
def small_metric_partitions(monkeypatch):
    """The metric tables partitioned every 300 first heights (not 50,000), so a small chain has many."""
    import dataclasses

    from pipeline.store import warehouse as warehouse_module
    from pipeline.store.schemas import table_spec

    def spec(name):
        found = table_spec(name)
        return dataclasses.replace(found, bucket_size=300) if name in ("centralization", "pool_share") else found

    monkeypatch.setattr(warehouse_module, "table_spec", spec)


def test_incremental_refresh_rewrites_only_the_partitions_of_the_windows_it_recomputes(
        tmp_path, small_metric_partitions):
    """The metric tables are partitioned by window kind and first height: after blocks at the tip,
    only the partitions holding recomputed windows are rewritten (the other files keep their bytes
    and mtimes), and the rows and files equal a full refresh's. A warehouse whose metric tables are
    still one file each (before they were partitioned) moves to the partitioned layout at its next
    refresh, with the rows a full refresh gives."""
    spacing = 3000  # 2100 blocks over 73 days: three months, many days and weeks

    def append(pools, start_height):
        _append(inc, pools, start_height, spacing=spacing,
                start=T0 + timedelta(seconds=spacing * start_height))

    inc = build_warehouse(tmp_path / "inc", demo_pools(2100, seed=1), spacing=spacing)
    m.refresh_metrics(inc, draws=50)
    before = {p: p.stat().st_mtime_ns for p in (inc.root / "data" / "pool_share").rglob("part.parquet")}
    assert len(before) > 15
    last_month = max(inc.read("centralization", where="window_kind = 'month'")["first_height"].to_pylist())
    append(demo_pools(40, seed=2), 2100)
    done = m.refresh_metrics(inc, draws=50)
    assert done.mode == "incremental"
    after = {p: p.stat().st_mtime_ns for p in (inc.root / "data" / "pool_share").rglob("part.parquet")}
    rewritten = {p for p in before if after[p] != before[p]}
    assert rewritten and len(rewritten) < len(before) / 2, sorted(map(str, rewritten))
    # nothing older than the last month's partition is rewritten
    assert all(int(p.parent.name.split("=")[1]) >= last_month // 300 for p in rewritten), sorted(map(str, rewritten))
    reference = _full_reference(inc, tmp_path / "full")
    assert _stored_metrics(inc) == _stored_metrics(reference)
    assert _data_files(inc.root) == _data_files(reference.root)
    assert done.rows == {t: reference.row_count(t) for t in ("centralization", "pool_share")}

    # The layout before partitioning: one file per table.
    import pyarrow.parquet as pq

    for table in ("centralization", "pool_share"):
        rows = inc.read(table)
        shutil.rmtree(inc.root / "data" / table)
        (inc.root / "data" / table).mkdir()
        pq.write_table(rows, inc.root / "data" / table / "part.parquet")
    assert _stored_metrics(inc) == _stored_metrics(reference)
    append(demo_pools(30, seed=3), 2140)
    assert m.refresh_metrics(inc, draws=50).mode == "incremental"
    legacy = {f"data/{t}/part.parquet" for t in ("centralization", "pool_share")}
    assert all(pq.read_metadata(inc.root / path).num_rows == 0 for path in legacy)  # emptied, not deleted
    reference = _full_reference(inc, tmp_path / "full2")
    assert _stored_metrics(inc) == _stored_metrics(reference)
    assert {k: v for k, v in _data_files(inc.root).items() if k not in legacy} == _data_files(reference.root)


def _rollback(wh, height):
    with wh.writer():
        wh.delete_heights_from(height)


# ------------------------------------------------------------------ windows and rates never span a gap


def _regtest_like(n: int = 3000) -> tuple[pa.Table, pa.Table]:
    """A regtest chain as `poolwatch demo` makes it: the genesis block dated 2011 by the chain's
    parameters, then n blocks ten minutes apart from 2026-11-09 (not a month boundary)."""
    start = datetime(2026, 11, 9, 3, 0, tzinfo=UTC)
    blocks, attributions = synthetic_tables(demo_pools(n, seed=4), start_height=1, start=start)
    genesis_b, genesis_a = synthetic_tables([None], start_height=0, start=datetime(2011, 2, 2, 23, 16, 42, tzinfo=UTC))
    genesis_b = genesis_b.set_column(1, "hash", pa.array([m.REGTEST_GENESIS_HASH]))
    genesis_a = genesis_a.set_column(1, "block_hash", pa.array([m.REGTEST_GENESIS_HASH]))
    return (pa.concat_tables([genesis_b, blocks]),
            pa.concat_tables([genesis_a.cast(attributions.schema), attributions]))


def test_the_regtest_genesis_gap_never_enters_a_window_or_a_rate():
    blocks, attributions = _regtest_like()
    con = connect(blocks, attributions)
    month = m.compute_metrics(con, "month", registry_version="v1", bootstrap=False).centralization
    month = month[(month.level == "pool") & (month.unknown_treatment == "excluded")]
    assert list(month.window_id) == ["2026-11"]  # no 2011 window
    nov = month.iloc[0]
    # 3000 blocks 600 s apart from Nov 9: the elapsed time is the blocks' own (about 21 days, the
    # November part), not the 5,779 days back to the genesis timestamp.
    assert nov.elapsed_seconds == pytest.approx((nov.last_height - nov.first_height + 1) * 600, rel=0.01)
    expected_rate = D * 2**32 / 600  # every block at difficulty D, one per 600 s
    assert nov.network_hashrate == pytest.approx(expected_rate, rel=0.01)
    # the same with --from 1: the default already leaves the genesis out
    again = m.compute_metrics(con, "month", registry_version="v1", bootstrap=False, rng=m.Range(from_height=1))
    assert again.centralization.equals(m.compute_metrics(con, "month", registry_version="v1",
                                                          bootstrap=False).centralization)
    notes = m.data_notes(con)
    assert any("regtest genesis" in n for n in notes)


def test_a_missing_height_range_breaks_windows_and_rates():
    blocks, attributions = synthetic_tables(demo_pools(2000, seed=6))
    keep = pa.compute.or_(pa.compute.less(blocks["height"], 600), pa.compute.greater(blocks["height"], 649))
    con = connect(blocks.filter(keep), attributions.filter(keep))
    day = m.compute_metrics(con, "day", registry_version="v1", bootstrap=False).centralization
    day = day[(day.level == "pool") & (day.unknown_treatment == "excluded")].set_index("window_id")
    # Heights 600..649 (inside 2024-01-05, which holds heights 576..719) are missing: that day is
    # partial and gets no rate (the missing blocks' work and times are unknown); the days around it
    # are complete, with their fixed-time rate.
    gapped = day.loc["2024-01-05"]
    assert not gapped.complete and pd.isna(gapped.network_hashrate) and pd.isna(gapped.elapsed_seconds)
    assert gapped.hashrate_method == "none: missing heights" and gapped.blocks_total == 144 - 50
    for whole in ("2024-01-04", "2024-01-06"):
        assert day.loc[whole].complete and day.loc[whole].hashrate_method == "fixed_time"
        assert day.loc[whole].network_hashrate == pytest.approx(D * 2**32 / 600)
    assert any("600..649" in n for n in m.data_notes(con))
    # a window that merely ends at the missing range (the data stop there, like at the tip) keeps a
    # rate from its own consecutive blocks, and is partial
    edge = m.compute_metrics(con, "blocks:600", registry_version="v1", bootstrap=False).centralization
    first = edge[(edge.level == "pool") & (edge.unknown_treatment == "excluded")].iloc[0]
    assert first.complete and first.hashrate_method == "block_intervals"


def test_the_default_report_covers_the_stored_data_not_the_calendar_since_genesis():
    from pipeline.metrics import report as r

    blocks, attributions = _regtest_like(1200)
    data = r.load_report_data(connect(blocks, attributions), "week", registry_version="v1", draws=50)
    starts = pd.to_datetime(data.series.centralization["window_start"])
    assert starts.min().year == 2026 and starts.max().year == 2026
    fig = r.hhi_figure(data)
    import matplotlib.dates as mdates

    left, right = fig.axes[0].get_xlim()
    assert mdates.num2date(left).year == 2026  # the axis starts at the data, not in 2011


def test_refresh_records_the_inference_settings_and_recomputes_when_they_change(tmp_path):
    wh = build_warehouse(tmp_path / "wh", demo_pools(300))
    first = m.refresh_metrics(wh, draws=50, inference=m.InferenceSettings(min_template_heights=3))
    assert first.rows["centralization"] > 0
    assert wh.meta["metrics_settings"] == {"min_template_heights": 3, "min_co_spend_txs": 2}
    assert m.inference_settings(wh) == m.InferenceSettings(min_template_heights=3)
    assert m.refresh_metrics(wh, draws=50).mode == "up to date"  # None keeps the recorded settings
    again = m.refresh_metrics(wh, draws=50, inference=m.InferenceSettings(min_co_spend_txs=5))
    assert again.rows["centralization"] > 0 and wh.meta["metrics_settings"]["min_co_spend_txs"] == 5
    levels = wh.connect().execute("SELECT DISTINCT level FROM centralization ORDER BY level").fetchall()
    assert [r[0] for r in levels] == sorted(m.LEVELS)


def test_no_version_is_refused_where_several_are_stored() -> None:
    """Each re-attribution keeps the older versions' rows: without ``registry_version`` every block
    would count once per version (each pool's count doubled here), so that is refused by name; one
    version alone is counted as before."""
    import pyarrow as pa

    blocks, v1 = synthetic_tables(EXAMPLE)
    _, v2 = synthetic_tables(EXAMPLE, version="v2")
    alone = m.compute_metrics(connect(blocks, v1), "all", bootstrap=False).centralization
    assert alone["blocks"].tolist() == m.compute_metrics(
        connect(blocks, v1), "all", registry_version="v1", bootstrap=False).centralization["blocks"].tolist()
    both = connect(blocks, pa.concat_tables([v1, v2]))
    with pytest.raises(m.MetricsError, match=r"several attribution versions \(v1, v2\).*registry_version"):
        m.compute_metrics(both, "all", bootstrap=False)
    chosen = m.compute_metrics(both, "all", registry_version="v2", bootstrap=False).centralization
    assert chosen["blocks"].tolist() == alone["blocks"].tolist()
