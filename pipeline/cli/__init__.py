"""The ``poolwatch`` command line. One module per area registers its commands on ``main``."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

_AREAS = ("core", "pools", "metrics")


def default_warehouse() -> Path:
    return Path(os.environ.get("POOLWATCH_WAREHOUSE", "warehouse"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--warehouse", "warehouse_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Warehouse folder (default: $POOLWATCH_WAREHOUSE or ./warehouse).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, warehouse_dir: Path | None, verbose: bool) -> None:
    """poolwatch: who mines Bitcoin, block by block."""
    import logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party INFO chatter (GX registers hundreds of things on import) hides what matters; some
    # GX loggers set their own level, so the filter sits on the handlers too.
    noisy = ("great_expectations", "airflow", "urllib3", "BitcoinRPC")
    for name in noisy:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        def quiet(record: logging.LogRecord) -> bool:
            return record.levelno >= logging.WARNING or not record.name.startswith(noisy)

        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet)
    ctx.ensure_object(dict)
    ctx.obj["warehouse"] = warehouse_dir or default_warehouse()


for _area in _AREAS:
    try:
        _mod = importlib.import_module(f"pipeline.cli.{_area}")
    except ModuleNotFoundError as exc:  # an area not built yet must not break the others
        if exc.name != f"pipeline.cli.{_area}":
            raise
        continue
    _mod.register(main)
