"""The `poolwatch` command line as a user meets it: arguments checked before any node contact, node
and other errors printed verbatim, `status` exit codes, tables readable in an 80-column terminal,
--csv/--json for every table, and no "-0" anywhere.

Runs on synthetic warehouses (tests/test_metrics.py), registries built here, the fake node of
tests/test_node.py and a local port that records connections; the demo test needs a regtest binary.
"""

from __future__ import annotations

import csv
import io
import json
import math
import socket
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_attribution import P2PKH_B, registry, regtest_wh  # noqa: F401 (regtest_wh is a fixture)
from test_metrics import build_warehouse, demo_pools
from test_node import PASSWORD, USER, FakeCore
from test_node_faults import BAD_HOST, Resolver

from pipeline.metrics import compute as m
from pipeline.cli import main
from pipeline.chain.networks import REGTEST
from pipeline.chain.scripts import script_to_address

# Node settings of the developer's shell must not leak into these runs.
CLEAN_ENV = {"BITCOIN_RPC_URL": None, "BITCOIN_RPC_USER": None, "BITCOIN_RPC_PASSWORD": None,
             "BITCOIN_RPC_COOKIE": None, "POOLWATCH_WAREHOUSE": None}
BRACKETS = "[draft] pools[3] [::1]"  # "[draft]" is a valid rich tag: printed with markup, it vanishes


def run(args: list[str], columns: int = 80) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={**CLEAN_ENV, "COLUMNS": str(columns)})


def lines_of(result: Result) -> list[str]:
    return result.output.splitlines()


def assert_fits(result: Result, width: int = 80) -> None:
    long = [line for line in lines_of(result) if len(line) > width]
    assert not long, f"{len(long)} line(s) wider than {width}:\n" + "\n".join(long[:5])
    assert "…" not in result.output, "an abridged value or header:\n" + result.output


def assert_on_a_line(result: Result, *values: str) -> None:
    """Each value appears whole on one output line (not cut, not wrapped)."""
    for value in values:
        assert any(value in line for line in lines_of(result)), f"{value!r} not shown whole:\n{result.output}"


class ConnectionRecorder:
    """A local port that counts the connections made to it (closing each at once, like a dead node)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    @property
    def url(self) -> str:
        return f"http://u:p@127.0.0.1:{self.server.getsockname()[1]}"

    def __enter__(self) -> ConnectionRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    """3,000 synthetic blocks every 10 minutes from 2024-01-01 (three ISO weeks), five pools and unknown."""
    return build_warehouse(tmp_path_factory.mktemp("wh"), demo_pools(3000))


@pytest.fixture(scope="module")
def one_pool_wh(tmp_path_factory):
    """50 blocks of a single pool: its entropy is computed as -0.0."""
    return build_warehouse(tmp_path_factory.mktemp("one"), ["alpha"] * 50)


# --------------------------------------------------------------------------------------------------
# 1. arguments are checked before any node contact
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (["sync", "--from", "10", "--to", "5"], ["--from 10 is above --to 5"]),
    (["sync", "--from", "-1"], ["'--from'", "-1", ">=0"]),
    (["sync", "--to", "-3"], ["'--to'", "-3", ">=0"]),
    (["sync", "--wait", "-1"], ["'--wait'", "-1"]),
    (["sync", "--rpc-user", "alice"], ["--rpc-user", "--rpc-password"]),
    (["status", "--rpc-user", "alice"], ["--rpc-user", "--rpc-password"]),
])
def test_bad_arguments_are_refused_before_any_node_contact(tmp_path: Path, args: list[str],
                                                            needles: list[str]) -> None:
    with ConnectionRecorder() as node:
        result = run(["--warehouse", tmp_path / "wh", *args, "--rpc-url", node.url])
    assert result.exit_code == 2, result.output  # a usage error, not a node error
    for needle in needles:
        assert needle in result.output, result.output
    assert node.connections == 0, f"{node.connections} connection(s) to the node before refusing"


@pytest.mark.parametrize("url, needle", [("http://127.0.0.1:notaport", "invalid port"),
                                         ("ftp://127.0.0.1:8332", "must look like")])
@pytest.mark.parametrize("command", ["sync", "status"])
def test_bad_node_url_is_a_usage_error(tmp_path: Path, command: str, url: str, needle: str) -> None:
    result = run(["--warehouse", tmp_path / "wh", command, "--rpc-url", url])
    assert result.exit_code == 2, result.output
    assert "--rpc-url" in result.output and needle in result.output


@pytest.mark.parametrize("command", ["metrics", "report"])
@pytest.mark.parametrize("bounds, needle", [
    (["--from", "10", "--to", "5"], "--from 10 is above --to 5"),
    (["--from", "2024-02-01", "--to", "2024-01-01"], "--from 2024-02-01 is after --to 2024-01-01"),
    (["--from", "-5"], "heights start at 0"),
    (["--draws", "0"], "'--draws'"),
])
def test_metrics_bounds_are_checked_before_the_warehouse(tmp_path: Path, command: str, bounds: list[str],
                                                          needle: str) -> None:
    result = run(["--warehouse", tmp_path / "nowhere", command, *bounds])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "no warehouse" not in result.output, result.output


@pytest.mark.parametrize("args", [["metrics", "--last", "-1"], ["metrics", "--pools", "-2"],
                                  ["sql", "--limit", "-1", "SELECT 1"], ["pools", "diff", "a", "b", "--limit", "-1"],
                                  ["pools", "suggest", "--min-blocks", "0"], ["attribute", "--wait", "-5"]])
def test_negative_counts_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = run(["--warehouse", tmp_path / "nowhere", *args])
    assert result.exit_code == 2, result.output
    option = next(a for a in args if a.startswith("--"))
    assert f"'{option}'" in result.output, result.output


# --------------------------------------------------------------------------------------------------
# 2. a host name that does not resolve
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["sync", "status"])
def test_cli_names_a_host_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                command: str) -> None:
    resolver = Resolver(monkeypatch, socket.EAI_NONAME)
    result = run(["--warehouse", tmp_path / "wh", command, "--rpc-url", f"http://u:p@{BAD_HOST}:8332"])
    assert result.exit_code == 1, result.output
    assert f"host name '{BAD_HOST}' does not resolve" in " ".join(result.output.split())
    assert "refused" not in result.output
    assert resolver.calls == 1  # one lookup: no retry


# --------------------------------------------------------------------------------------------------
# 3. foreign text printed verbatim
# --------------------------------------------------------------------------------------------------

def test_error_messages_are_printed_verbatim(tmp_path: Path, wh) -> None:
    folder = tmp_path / "[draft]"
    folder.mkdir()
    bad_registry = folder / "pools[3].json"
    bad_registry.write_text('{"pools": [1]}')
    # pools (_fail), sync (friendly_errors), metrics (_fail), sql (friendly_errors, raised at fetch time)
    checks = [
        (["pools", "validate", bad_registry], [str(bad_registry), "pools[0]"]),
        (["--warehouse", tmp_path / "wh", "sync", "--registry", bad_registry, "--rpc-url", "http://u:p@127.0.0.1:1"],
         [str(bad_registry)]),
        (["--warehouse", folder / "wh", "metrics"], [f"no warehouse at {folder / 'wh'}"]),
        (["--warehouse", wh.root, "sql", f"SELECT CAST('{BRACKETS}' AS INTEGER)"], [BRACKETS]),
    ]
    for args, needles in checks:
        result = run(args, columns=250)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        for needle in needles:
            assert needle in result.output, (args, result.output)


def test_node_errors_and_table_cells_are_printed_verbatim(tmp_path: Path, wh) -> None:
    folder = tmp_path / "[draft]"
    status = run(["--warehouse", folder / "wh", "status", "--rpc-url", f"http://u:p@[::1]:{free_port()}"],
                 columns=250)
    assert str(folder / "wh") in status.output, status.output
    assert "[::1]:" in status.output and "cannot reach" in status.output, status.output
    cells = run(["--warehouse", wh.root, "sql", f"SELECT '{BRACKETS}' AS s, 'pools[3]' AS \"[b]col\""])
    assert cells.exit_code == 0, cells.output
    assert_on_a_line(cells, BRACKETS, "[b]col")
    doc = registry([{"id": "draft", "name": "[draft] Pool", "tags": [{"tag": "[b]mined[/b]"}]}]).document
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    listed = run(["pools", "list", "--registry", path, "--search", "draft"])
    assert listed.exit_code == 0, listed.output
    assert_on_a_line(listed, "[draft] Pool", "[b]mined[/b]")


# --------------------------------------------------------------------------------------------------
# 4. status exit codes
# --------------------------------------------------------------------------------------------------

def test_status_exits_non_zero_when_the_node_is_unreachable(tmp_path: Path, wh) -> None:
    url = f"http://u:p@127.0.0.1:{free_port()}"
    down = run(["--warehouse", wh.root, "status", "--rpc-url", url])
    assert down.exit_code == 1, down.output
    assert "cannot reach the Bitcoin node" in " ".join(down.output.split())
    assert "stored range" in down.output  # the warehouse side is still shown
    offline = run(["--warehouse", wh.root, "status", "--offline", "--rpc-url", url])
    assert offline.exit_code == 0, offline.output
    assert "stored range" in offline.output and "cannot reach" not in offline.output
    with FakeCore(["getblockchaininfo.json"]) as core:
        up = run(["--warehouse", wh.root, "status", "--rpc-url", core.url, "--rpc-user", USER,
                  "--rpc-password", PASSWORD])
    assert up.exit_code == 0, up.output
    assert "node tip" in up.output


# --------------------------------------------------------------------------------------------------
# 5. 80 columns, --csv and --json
# --------------------------------------------------------------------------------------------------

def parse_csv(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows, f"no CSV rows in {text!r}"
    return rows


def _pct(value: float) -> str:
    return f"{value:.1%}"


def test_metrics_tables_fit_80_columns_with_every_value_whole(wh) -> None:
    base = ["--warehouse", wh.root, "metrics", "--window", "week", "--draws", "100"]
    data = json.loads(run([*base, "--json"]).output)
    week = {r["unknown_treatment"]: r for r in data["centralization"] if r["window_id"] == "2024-W02"}
    one = week["one_entity"]
    naks = " / ".join(f"{week[t]['nakamoto']} [{week[t]['nakamoto_lo']}-{week[t]['nakamoto_hi']}]"
                      for t in ("excluded", "one_entity", "each_own"))
    expected = ["2024-W02", f"{one['blocks_total']:,}", _pct(one["unknown_share"]), _pct(one["top1_share_of_known"]),
                _pct(one["top5_share_of_known"]), f"{one['hhi']:.3f} [{one['hhi_lo']:.3f}-{one['hhi_hi']:.3f}]",
                naks, f"{one['gini']:.2f}", m.column_label("top1_share_of_known"), m.column_label("known_entities")]
    alpha = next(r for r in data["pool_share"] if r["entity_name"] == "Alpha")
    expected += ["Alpha", f"{alpha['share']:.1%} [{alpha['share_lo']:.1%}-{alpha['share_hi']:.1%}]"]
    narrow = run(base)
    assert narrow.exit_code == 0, narrow.output
    assert_fits(narrow)
    assert_on_a_line(narrow, *expected)
    assert "--csv" in narrow.output and "--json" in narrow.output  # the hint: the rows did not fit as a table
    wide = run(base, columns=250)  # wide enough: one table line per window, all columns
    assert_fits(wide, 250)
    row = next(line for line in lines_of(wide) if "2024-W02" in line)
    for value in expected[1:-4]:
        assert value in row, (value, row)


def test_metrics_csv_and_json(wh, tmp_path: Path) -> None:
    base = ["--warehouse", wh.root, "metrics", "--window", "week", "--draws", "100", "--last", "2"]
    as_json = run([*base, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert {r["window_id"] for r in data["centralization"]} == {"2024-W02", "2024-W03"}
    assert list(data["centralization"][0]) == m.CENTRALIZATION_COLUMNS
    assert {r["level"] for r in data["centralization"]} == {"pool"}
    assert len(data["pool_share"]) == 6 and {r["window_id"] for r in data["pool_share"]} == {"2024-W03"}
    as_csv = run([*base, "--csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = parse_csv(as_csv.stdout)  # notes go to stderr
    assert list(rows[0]) == m.CENTRALIZATION_COLUMNS and len(rows) == 2 * len(m.TREATMENTS)
    # the folder of CSV files, as before, under its own name
    folder = run([*base, "--csv-dir", tmp_path / "out"])
    assert folder.exit_code == 0, folder.output
    assert (tmp_path / "out" / "centralization.csv").read_text().count("2024-W02") == len(m.TREATMENTS) * len(m.LEVELS)
    assert run([*base, "--csv", "--json"]).exit_code == 2


def test_sql_fits_80_columns_and_prints_csv_and_json(wh) -> None:
    base = ["--warehouse", wh.root, "sql"]
    query = "SELECT * EXCLUDE (time) FROM blocks ORDER BY height LIMIT 3"  # 27 columns
    rows = json.loads(run([*base, "--json", query]).output)
    assert [r["height"] for r in rows] == [0, 1, 2]
    narrow = run([*base, query])
    assert narrow.exit_code == 0, narrow.output
    assert_fits(narrow)
    shown = [str(v) for v in rows[1].values() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    assert len(shown) > 10
    assert_on_a_line(narrow, *shown)
    assert "--csv" in narrow.output
    small = run([*base, "SELECT height, pool_id FROM attributions ORDER BY height LIMIT 4"])
    assert_fits(small)
    header = next(line for line in lines_of(small) if "height" in line)
    assert "pool_id" in header  # two narrow columns: a plain table
    empty = run([*base, "SELECT * FROM blocks WHERE height < 0"])
    assert empty.exit_code == 0 and "(no rows)" in empty.output, empty.output
    as_csv = parse_csv(run([*base, "--csv", query]).output)
    assert [r["hash"] for r in as_csv] == [r["hash"] for r in rows]
    assert run([*base, "--csv", "--json", query]).exit_code == 2


def test_status_fits_80_columns_and_prints_csv_and_json(wh) -> None:
    base = ["--warehouse", wh.root, "status", "--offline"]
    narrow = run(base)
    assert narrow.exit_code == 0, narrow.output
    assert_fits(narrow)
    assert_on_a_line(narrow, "0..2,999", "v1")
    data = json.loads(run([*base, "--json"]).output)
    assert data["stored_range"] == [0, 2999] and data["attribution_version"] == "v1" and data["gaps"] == []
    fields = {r["field"]: r["value"] for r in parse_csv(run([*base, "--csv"]).output)}
    assert fields["stored_range"] == "[0, 2999]" and fields["attribution_version"] == "v1"


def test_pools_list_fits_80_columns_and_prints_csv_and_json() -> None:
    narrow = run(["pools", "list"])
    assert narrow.exit_code == 0, narrow.output
    assert_fits(narrow)
    data = json.loads(run(["pools", "list", "--json"]).output)
    antpool = next(p for p in data if p["id"] == "antpool")
    assert_on_a_line(narrow, antpool["name"], antpool["link"], *antpool["tags"][:2],
                     f"{antpool['addresses']['main']} main")
    assert len(data) > 100 and "--csv" in narrow.output
    rows = parse_csv(run(["pools", "list", "--csv"]).output)
    assert [r["id"] for r in rows] == [p["id"] for p in data]
    assert json.loads(next(r for r in rows if r["id"] == "antpool")["tags"]) == antpool["tags"]


def test_pools_diff_and_suggest_fit_80_columns_and_print_csv_and_json(regtest_wh) -> None:  # noqa: F811
    wh_root, old, new = regtest_wh
    base = ["--warehouse", wh_root]
    for path in (old, new):
        assert run([*base, "attribute", "--registry", path, "--cross-network-registry", "--no-validate"]).exit_code == 0
    diff = run([*base, "pools", "diff", old, new])
    assert diff.exit_code == 0, diff.output
    assert_fits(diff)
    assert_on_a_line(diff, "+ pool newguys (New Guys)", "3 stored blocks change pool", "3: unknown -> newguys")
    pairs = next(line for line in lines_of(diff) if "newguys" in line and "unknown" in line and ":" not in line)
    assert pairs.split() == ["unknown", "newguys", "3"]
    data = json.loads(run([*base, "pools", "diff", old, new, "--json"]).output)
    assert data["pool_changes"] == [{"from": "unknown", "to": "newguys", "blocks": 3}]
    assert [b["height"] for b in data["changed_blocks"]] == [3, 4, 5]
    assert any("newguys" in line for line in data["pools"])
    assert parse_csv(run([*base, "pools", "diff", old, new, "--csv"]).output) == [
        {"from": "unknown", "to": "newguys", "blocks": "3"}]

    suggest = run([*base, "pools", "suggest", "--registry", old])
    assert suggest.exit_code == 0, suggest.output
    assert_fits(suggest)
    address = script_to_address(P2PKH_B, REGTEST)
    assert_on_a_line(suggest, "/NewGuys/", address)
    rows = parse_csv(run([*base, "pools", "suggest", "--registry", old, "--csv"]).output)
    assert json.loads(rows[0]["tags"]) == ["/NewGuys/"] and rows[0]["blocks"] == "3"
    proposals = json.loads(run([*base, "pools", "suggest", "--registry", old, "--json"]).output)
    assert proposals[0]["evidence"]["blocks"] == 3  # --json: the proposals as registry entries, as before


def test_demo_summary_fits_80_columns(regtest_binary, tmp_path: Path) -> None:
    result = run(["--warehouse", tmp_path, "demo", "--blocks", "30"])
    assert result.exit_code == 0, result.output
    table = result.output.split("Blocks per pool")[1].split("warehouse:")[0]
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "…" not in table
    rows = [line.split() for line in table.splitlines() if line.strip()]
    # pool, blocks, share %: whole numbers on one line per pool
    assert sum(1 for r in rows if len(r) >= 3 and r[-2].replace(",", "").isdigit()
               and r[-1].replace(".", "").isdigit()) >= 3, table


# --------------------------------------------------------------------------------------------------
# 6. -0.0 printed as 0
# --------------------------------------------------------------------------------------------------

def _no_negative_zero(text: str) -> None:
    import re

    assert not re.search(r"(?<![\w.%])-0(\.0*)?(?![\d.])", text), text


def test_negative_zero_is_printed_as_zero_in_sql(wh) -> None:
    query = "SELECT -0.0::DOUBLE AS z, 'x' AS s, -0.0::DECIMAL(5, 2) AS d"
    table = run(["--warehouse", wh.root, "sql", query])
    assert table.exit_code == 0, table.output
    _no_negative_zero(table.output)
    assert [r["z"] for r in parse_csv(run(["--warehouse", wh.root, "sql", "--csv", query]).output)] == ["0.0"]
    _no_negative_zero(run(["--warehouse", wh.root, "sql", "--csv", query]).output)
    text = run(["--warehouse", wh.root, "sql", "--json", query]).output
    _no_negative_zero(text)
    value = json.loads(text)[0]["z"]
    assert value == 0 and math.copysign(1, value) == 1


def test_negative_zero_is_printed_as_zero_in_metrics(one_pool_wh, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--warehouse", one_pool_wh.root, "metrics", "--window", "all", "--draws", "50"]
    # entropy of a single pool comes out of the computation as -0.0
    text = run([*base, "--json"]).output
    _no_negative_zero(text)
    assert {r["entropy_bits"] for r in json.loads(text)["centralization"]} == {0.0}
    as_csv = run([*base, "--csv"]).stdout  # notes go to stderr
    _no_negative_zero(as_csv)
    assert {r["entropy_bits"] for r in parse_csv(as_csv)} == {"0.0"}
    # and every number shown in the table: give the shown columns -0.0 too
    real = m.compute_metrics

    def negative_zeros(*args, **kwargs):
        result = real(*args, **kwargs)
        cent = result.centralization
        for column in ("unknown_share", "top1_share_of_known", "hhi", "hhi_lo", "entropy_normalized", "gini",
                       "network_hashrate"):
            cent[column] = cent[column].astype("float64") * 0.0 * -1.0
        share = result.pool_share
        share["share_of_known"] = share["share_of_known"].astype("float64") * 0.0 * -1.0
        return result

    monkeypatch.setattr(m, "compute_metrics", negative_zeros)
    for columns in (80, 250):
        shown = run(base, columns=columns)
        assert shown.exit_code == 0, shown.output
        _no_negative_zero(shown.output)
        assert "0.00" in shown.output and "0.0%" in shown.output
