"""The newcomer path of the README: `make demo`, then the commands it prints (report, SQL, metrics,
the notebook, the DuckDB shell), each run exactly as printed, in a shell, as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import duckdb_cli, pinned_duckdb_cli_version
from test_metrics import build_warehouse, demo_pools

VENV_BIN = Path(sys.executable).parent


def user_env(path_dirs: list[Path] = ()) -> dict[str, str]:
    """A shell environment like a newcomer's after `make demo`: no poolwatch settings, and this
    installation's bin folder not on PATH (make runs .venv/bin/poolwatch without activating .venv)."""
    keep = {k: v for k, v in os.environ.items()
            if k not in ("POOLWATCH_WAREHOUSE", "POOLWATCH_WINDOW", "POOLWATCH_FROM", "POOLWATCH_TO",
                         "POOLWATCH_DRAWS", "VIRTUAL_ENV")}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != VENV_BIN.resolve()]
    keep["PATH"] = os.pathsep.join([str(d) for d in path_dirs] + path)
    return keep


def shell_env(cli: Path) -> dict[str, str]:
    """user_env, plus the DuckDB shell's folder when it is not the one `make install` fills."""
    return user_env([cli.parent] if cli.parent.resolve() != VENV_BIN.resolve() else [])


def run_in_shell(lines: list[str], cwd: Path, env: dict[str, str], stdin: str | None = None):
    return subprocess.run(["bash", "-e", "-c", "\n".join(lines)], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=900)


def check_step(command: str, run, warehouse: Path, blocks: int) -> None:
    """What each printed command must visibly do."""
    assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    assert "error" not in run.stderr.lower(), f"{command}\n{run.stderr[-2000:]}"
    if " report " in command:
        assert (warehouse / "reports" / "index.html").is_file()
    elif " sql " in command:
        assert "blocks" in run.stdout and "pool_name" in run.stdout
    elif " metrics " in command:
        assert "day windows" in run.stdout and "inferred" in run.stdout  # the three levels
    elif " pools families" in command:
        assert "family:bitmain" in run.stdout and "legal links" in run.stdout
    elif " notebook " in command:
        html = (warehouse / "reports" / "analysis.html").read_text(encoding="utf-8")
        assert html.count('src="data:image/png;base64,') == 5
    elif command.startswith("duckdb "):
        assert re.search(rf"(?<![\d,.]){blocks}(?![\d,.])", run.stdout), run.stdout
    else:
        raise AssertionError(f"unexpected next step {command!r}")


def test_printed_next_steps_cover_report_sql_metrics_families_notebook_duckdb(tmp_path, monkeypatch):
    from pipeline.cli.core import demo_next_steps

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", user_env()["PATH"])
    steps = [command for _, command in demo_next_steps(Path("warehouse/demo"))]
    assert steps[0] in (f"source {VENV_BIN.parent / 'bin' / 'activate'}", f'export PATH={VENV_BIN}:"$PATH"')
    assert steps[1:] == [
        "poolwatch --warehouse warehouse/demo report --window day",
        'poolwatch --warehouse warehouse/demo sql "SELECT pool_name, count(*) AS blocks FROM attributions_current '
        'GROUP BY 1 ORDER BY 2 DESC"',
        "poolwatch --warehouse warehouse/demo metrics --window day",
        "poolwatch --warehouse warehouse/demo pools families",
        "poolwatch --warehouse warehouse/demo notebook --window day",
        "duckdb -readonly warehouse/demo/poolwatch.duckdb",
    ]
    # already on PATH (an activated venv): nothing to activate
    monkeypatch.setenv("PATH", user_env([VENV_BIN])["PATH"])
    monkeypatch.setattr(sys, "argv", [str(VENV_BIN / "poolwatch"), "demo"])
    assert [c for _, c in demo_next_steps(Path("warehouse/demo"))][0].startswith("poolwatch ")


def test_printed_next_steps_run_as_printed_on_a_warehouse_outside_the_current_folder(tmp_path, monkeypatch):
    """Absolute paths with a space in them: the printed lines quote them, and every one runs."""
    cli = duckdb_cli(pinned_duckdb_cli_version())
    wh = build_warehouse(tmp_path / "my demo" / "wh", demo_pools(400))
    with wh.writer():
        wh.refresh_catalog()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = shell_env(cli)
    monkeypatch.setenv("PATH", env["PATH"])
    from pipeline.cli.core import demo_next_steps

    steps = [command for _, command in demo_next_steps(wh.root)]
    assert f"'{wh.root}'" in steps[1], "a path with a space is quoted"
    activate, commands = steps[0], steps[1:]
    for command in commands:
        stdin = "SELECT count(*) AS n FROM blocks;\n" if command.startswith("duckdb ") else None
        check_step(command, run_in_shell([activate, command], elsewhere, env, stdin), wh.root, 400)


def test_cli_errors_keep_bracketed_text(tmp_path):
    """Errors are printed through rich markup: '[abc]' in a message (SQL, patterns) used to vanish."""
    from pipeline.cli import main

    result = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "wh"), "sql", "SELECT [abc] x("])
    assert result.exit_code == 1
    assert "SELECT [abc] x(" in result.output


@pytest.mark.node
@pytest.mark.slow
def test_demo_output_ends_with_commands_that_work_as_printed(regtest_binary, tmp_path):
    """`poolwatch demo` as `make demo` runs it (this installation's poolwatch, not on PATH), then
    every command it prints, each in a shell from the same folder, after the printed activation."""
    env = shell_env(duckdb_cli(pinned_duckdb_cli_version()))
    demo = subprocess.run([str(VENV_BIN / "poolwatch"), "demo", "--blocks", "200"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    lines = demo.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Next, from "))
    assert lines[start] == f"Next, from {tmp_path} (copy the lines as they are):"
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line[2:])
    commands = [line for line in block if not line.startswith("#")]
    assert len(commands) == 7 and commands[0].startswith(("source ", "export PATH="))
    assert all(line.startswith("#") for line in block[::2]), "one comment line before each command"
    warehouse = tmp_path / "warehouse" / "demo"
    for command in commands[1:]:
        stdin = "SELECT count(*) AS n FROM blocks;\n" if command.startswith("duckdb ") else None
        check_step(command, run_in_shell([commands[0], command], tmp_path, env, stdin), warehouse, 201)
    # the demo chain holds legal-family pools and a shared-template capture: the levels differ
    levels = run_in_shell([commands[0], "poolwatch --warehouse warehouse/demo metrics --window all --json "
                           "--no-bootstrap"], tmp_path, env)
    assert levels.returncode == 0, levels.stderr
    row = json.loads(levels.stdout)["levels"][0]
    assert row["hhi_pool"] < row["hhi_legal"] < row["hhi_inferred"], row
