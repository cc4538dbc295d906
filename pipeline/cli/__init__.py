"""The ``poolwatch`` command line. One module per area registers its commands on ``main``."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import click

_AREAS = ("core", "pools", "metrics", "devnode", "notebook", "templates")


def default_warehouse() -> Path:
    return Path(os.environ.get("POOLWATCH_WAREHOUSE", "warehouse"))


def _configure_logging(verbose: bool) -> None:
    """Our own handler, when we are the program; an embedding host (Airflow, pytest, a notebook)
    that has configured logging already is left alone."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        # Third-party INFO chatter (GX registers hundreds of things on import, and some of its
        # loggers set their own level) hides what matters: keep only their warnings.
        noisy = ("great_expectations", "airflow", "urllib3", "BitcoinRPC")
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(noisy))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--warehouse", "warehouse_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Warehouse folder (default: $POOLWATCH_WAREHOUSE or ./warehouse).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, warehouse_dir: Path | None, verbose: bool) -> None:
    """poolwatch: who mines Bitcoin, block by block."""
    _configure_logging(verbose)
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
