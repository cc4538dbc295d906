"""The newcomer path of the README: `make demo`, then the commands it prints (report, SQL, metrics,
the DuckDB shell, the notebook), each run exactly as printed."""

from __future__ import annotations

from click.testing import CliRunner


def test_cli_errors_keep_bracketed_text(tmp_path):
    """Errors are printed through rich markup: '[abc]' in a message (SQL, patterns) used to vanish."""
    from pipeline.cli import main

    result = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "wh"), "sql", "SELECT [abc] x("])
    assert result.exit_code == 1
    assert "SELECT [abc] x(" in result.output
