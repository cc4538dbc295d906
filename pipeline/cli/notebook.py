"""`poolwatch notebook`: run notebooks/analysis.ipynb headless into an HTML page (what `make notebook` calls)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.core import err, friendly_errors, out


@click.command()
@click.option("--window", default="week", show_default=True,
              help="day, week, month, epoch, blocks:N or rolling:N[:STEP].")
@click.option("--from", "start", default=None, help="First height, or a UTC date/time.")
@click.option("--to", "end", default=None, help="Last height, or a UTC date/time.")
@click.option("--draws", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Bootstrap replicates.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file, .html (charts embedded) or .ipynb (default: <warehouse>/reports/analysis.html).")
@click.pass_context
@friendly_errors
def notebook(ctx, window, start, end, draws, output):
    """Execute notebooks/analysis.ipynb on the warehouse (read-only) and write it as HTML."""
    from pipeline.metrics import compute as metrics
    from pipeline.metrics.notebook import DEFAULT_OUTPUT, NotebookError, run_notebook

    try:  # the notebook would fail on these in its first cell; say it here, naming the option
        metrics.parse_window(window)
        metrics.make_range(start, end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    warehouse = Path(ctx.obj["warehouse"])
    target = output or warehouse / DEFAULT_OUTPUT
    with err.status(f"running the notebook on {warehouse} ..."):
        try:
            run_notebook(warehouse, target, window=window, start=start, end=end, draws=draws)
        except NotebookError as exc:
            raise ValueError(str(exc)) from None
    out.print(f"wrote {target} (open it in a browser)", soft_wrap=True, highlight=False)


def register(main: click.Group) -> None:
    main.add_command(notebook)
