"""Charts and the `poolwatch metrics` / `poolwatch report` commands on a small synthetic warehouse."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from test_metrics import build_warehouse, connect, demo_pools, synthetic_tables

from pipeline.metrics import compute as m
from pipeline.metrics import report as r


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    # 3000 blocks every 10 minutes from 2024-01-01: about 21 days, three ISO weeks
    return build_warehouse(tmp_path_factory.mktemp("report") / "wh", demo_pools(3000))


def test_figures_have_the_expected_content():
    con = connect(*synthetic_tables(demo_pools(1200)))
    data = r.load_report_data(con, "day", registry_version="v1", draws=200)
    figs = r.figures(data)
    assert set(figs) == set(r.CHARTS)
    stacked = figs["pool_shares"].axes[0]
    labels = {t.get_text() for t in stacked.get_legend().get_texts()}
    assert {"Alpha", "Gamma", "unknown"} <= labels
    nak_lines = {t.get_text() for t in figs["nakamoto"].axes[0].get_legend().get_texts()}
    assert set(r.TREATMENT_LABELS.values()) <= nak_lines
    bars = figs["top_pools"].axes[0].patches
    assert len(bars) == 6  # five pools and unknown
    # the widest bar is the largest pool over the whole range
    overall = data.overall.pool_share[data.overall.pool_share.level == "pool"]
    assert max(b.get_width() for b in bars) == pytest.approx(overall["share"].max())


def test_legal_level_report():
    con = connect(*synthetic_tables(demo_pools(400)))
    data = r.load_report_data(con, "blocks:100", level="legal", registry_version="v1", draws=100)
    labels = {t.get_text() for t in r.pool_shares_figure(data).axes[0].get_legend().get_texts()}
    assert "AlphaGroup" in labels and "Alpha" not in labels


def test_levels_chart_and_summary_show_the_three_levels(tmp_path):
    con = connect(*synthetic_tables(demo_pools(400)))
    data = r.load_report_data(con, "blocks:100", registry_version="v1", draws=100)
    nak_ax, hhi_ax = r.levels_figure(data).axes
    lines = {line.get_label(): line for line in nak_ax.get_lines()}
    assert [label.split(":")[0] for label in lines] == list(m.LEVELS)
    levels = m.level_comparison(data.series.centralization)
    # the drawn steps are the computed coefficients (each window's value held over its span)
    for level in m.LEVELS:
        drawn = [v for v in lines[next(k for k in lines if k.startswith(level))].get_ydata() if v == v]
        assert drawn[::2] == levels[f"nakamoto_{level}"].tolist()
    assert len(hhi_ax.get_lines()) == 3
    page = (r.write_report(data, tmp_path)[-1]).read_text()
    assert "Nakamoto pool / legal / inferred" in page and "HHI pool / legal / inferred" in page
    first = levels.iloc[0]
    cell = m.format_levels([first[f"nakamoto_{lv}"] for lv in m.LEVELS], "d")
    assert f"<td>{cell}</td>" in page


def test_empty_range_is_a_clear_error():
    con = connect(*synthetic_tables(demo_pools(50)))
    with pytest.raises(m.MetricsError, match="no blocks"):
        r.load_report_data(con, "day", rng=m.Range(from_time=datetime(2030, 1, 1, tzinfo=UTC)))
    with pytest.raises(ValueError, match="level"):
        r.load_report_data(con, "day", level="galaxy")


def test_report_command_writes_pngs_and_self_contained_html(warehouse, tmp_path):
    from pipeline.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["--warehouse", str(warehouse.root), "report", "--window", "day",
                                    "--draws", "100", "--out", str(out)])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"{c}_pool_day.png" for c in r.CHARTS)
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(r.CHARTS)
    first = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(first)[:4] == b"\x89PNG"
    assert "2024-01-21" in page  # the summary table lists the latest windows


def test_metrics_command_prints_a_table(warehouse, tmp_path):
    from pipeline.cli import main

    res = CliRunner().invoke(main, ["--warehouse", str(warehouse.root), "metrics", "--window", "week",
                                    "--draws", "100", "--csv-dir", str(tmp_path)], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert "2024-W01" in res.output and "2024-W03" in res.output
    assert "Alpha" in res.output  # the pool table of the latest window
    assert (tmp_path / "centralization.csv").read_text().count("2024-W02") == len(m.LEVELS) * len(m.TREATMENTS)
    assert "Nakamoto pool / legal / inferred" in res.output and "HHI pool / legal / inferred" in res.output
    bad = CliRunner().invoke(main, ["--warehouse", str(warehouse.root), "metrics", "--window", "fortnight"])
    assert bad.exit_code != 0 and "unknown window" in bad.output
    missing = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "nowhere"), "metrics"])
    assert missing.exit_code == 1 and "no warehouse" in missing.output


def test_metrics_refresh_command(warehouse):
    from pipeline.cli import main

    res = CliRunner().invoke(main, ["--warehouse", str(warehouse.root), "metrics", "--refresh",
                                    "--draws", "100", "--last", "2", "--pools", "0"], terminal_width=250)
    assert res.exit_code == 0, res.output
    assert "refreshed" in res.output
    con = warehouse.connect()
    assert con.execute("SELECT count(DISTINCT window_id) FROM centralization WHERE window_kind='week'").fetchone()[0] == 3


def test_area_chart_breaks_between_windows_that_are_not_adjacent():
    """A regtest genesis dated 2011 and blocks from 2026 must not be joined by a straight line."""
    import numpy as np
    import pandas as pd

    from pipeline.metrics import compute as m
    from pipeline.metrics.report import _break_at_gaps

    rows = pd.DataFrame({"window_start": pd.to_datetime(["2011-02-01", "2026-11-02", "2026-11-09"], utc=True),
                         "window_end": pd.to_datetime(["2011-02-08", "2026-11-09", "2026-11-16"], utc=True),
                         "first_height": [0, 1, 1001], "last_height": [0, 1000, 2000]})
    x = rows["window_start"].to_numpy()
    x2, (y2,) = _break_at_gaps(x, [np.array([1.0, 0.5, 0.25])], rows, m.parse_window("week"))
    assert len(x2) == 4 and np.isnan(y2[1]) and list(y2[[0, 2, 3]]) == [1.0, 0.5, 0.25]
    heights = pd.DataFrame({"first_height": [0, 10, 20], "last_height": [9, 19, 29]})
    same, _ = _break_at_gaps(np.array([5.0, 15.0, 25.0]), [np.ones(3)], heights, m.parse_window("blocks:10"))
    assert len(same) == 3  # adjacent block windows: nothing inserted


def _frame_with_gaps():
    """Five day windows: day 3 is empty (a gap in time) and heights 400..499 are missing between
    days 4 and 5 (a gap in the data although the days are adjacent)."""
    import pandas as pd

    starts = pd.to_datetime(["2026-11-01", "2026-11-02", "2026-11-04", "2026-11-05"], utc=True)
    return pd.DataFrame({
        "window_start": starts, "window_end": starts + pd.Timedelta(days=1),
        "first_height": [0, 144, 288, 500], "last_height": [143, 287, 399, 643],
        "value": [3.0, 4.0, 2.0, 5.0], "low_sample": [False, False, True, False]})


def test_step_lines_break_at_every_gap_and_never_span_one():
    import numpy as np

    from pipeline.metrics import compute as m
    from pipeline.metrics.report import _steps

    rows = _frame_with_gaps()
    x, (y,) = _steps(rows, m.parse_window("day"), rows["value"])
    segments = [(x[i], x[i + 1]) for i in range(len(x) - 1) if not (np.isnan(y[i]) or np.isnan(y[i + 1]))]
    day = np.timedelta64(1, "D")
    for a, b in segments:
        assert b - a <= day  # a step or a jump inside one day's span: never across the empty day
    assert int(np.isnan(y).sum()) == 2  # broken at the empty day and at the missing heights
    blocks = rows.assign(first_height=[0, 100, 200, 400], last_height=[99, 199, 299, 499])
    xb, (yb,) = _steps(blocks, m.parse_window("blocks:100"), blocks["value"])
    assert int(np.isnan(yb).sum()) == 1  # heights 300..399 missing


def test_low_sample_shading_covers_exactly_the_step_it_flags():
    from matplotlib.figure import Figure

    from pipeline.metrics import compute as m
    from pipeline.metrics.report import _mark_low_sample, _steps

    rows = _frame_with_gaps()
    window = m.parse_window("day")
    ax = Figure().subplots()
    _mark_low_sample(ax, rows, window)
    spans = [p for p in ax.patches]
    assert len(spans) == 1
    left, right = spans[0].get_x(), spans[0].get_x() + spans[0].get_width()
    x, (y,) = _steps(rows, window, rows["value"])
    import matplotlib.dates as mdates

    flagged = [i for i in range(len(y) - 1) if y[i] == 2.0 and y[i + 1] == 2.0]  # the flagged window's step
    step_left, step_right = mdates.date2num(x[flagged[0]]), mdates.date2num(x[flagged[0] + 1])
    assert (left, right) == (step_left, step_right)
