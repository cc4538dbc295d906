"""Headless run of ``notebooks/analysis.ipynb``: ``poolwatch notebook`` and ``make notebook``.

The notebook is executed top to bottom in a fresh Python kernel (this interpreter's, so it imports
this installation of poolwatch) with its settings in the kernel's environment, and written as a
self-contained HTML page (charts embedded) or as the executed ``.ipynb``. The notebook opens the
warehouse read-only; only the output file is written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

NOTEBOOK_NAME = "analysis.ipynb"
DEFAULT_OUTPUT = Path("reports") / "analysis.html"  # relative to the warehouse, next to `poolwatch report`'s
CELL_TIMEOUT = 1800  # seconds per cell: bootstrap intervals over a long mainnet range take minutes


class NotebookError(RuntimeError):
    """The notebook could not run, or a cell failed (the message names the cell and the output file)."""


def notebook_path() -> Path:
    """``notebooks/analysis.ipynb`` beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent.parent  # the package: pipeline/
    for candidate in (here.parent / "notebooks" / NOTEBOOK_NAME, here / "_notebooks" / NOTEBOOK_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {NOTEBOOK_NAME} beside or inside {here} (broken install?)")


def kernel_env(warehouse: Path, window: str, start: str | None, end: str | None, draws: int) -> dict[str, str]:
    """The environment the notebook reads its settings from (see its first cell)."""
    env = dict(os.environ)
    env.update(POOLWATCH_WAREHOUSE=str(Path(warehouse).resolve()), POOLWATCH_WINDOW=window,
               POOLWATCH_DRAWS=str(draws))
    for name, value in (("POOLWATCH_FROM", start), ("POOLWATCH_TO", end)):
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    env.setdefault("MPLBACKEND", "Agg")
    return env


def run_notebook(warehouse: Path, output: Path, *, window: str = "week", start: str | None = None,
                 end: str | None = None, draws: int = 1000, timeout: int = CELL_TIMEOUT,
                 notebook: Path | None = None) -> Path:
    """Execute the analysis notebook against ``warehouse`` and write ``output`` (``.html`` or ``.ipynb``).

    Raises ``NotebookError`` when a cell fails; the output is written anyway, up to and including
    the failing cell's traceback.
    """
    warehouse, output = Path(warehouse), Path(output)
    if output.suffix not in (".html", ".ipynb"):
        raise ValueError(f"output {output}: give a .html or .ipynb file name")
    if not (warehouse / "meta.json").is_file():
        raise FileNotFoundError(f"no warehouse at {warehouse.resolve()} (no meta.json): run `make demo` or "
                                "`poolwatch sync`, or give --warehouse")
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError as exc:
        raise NotebookError(f"running the notebook needs {exc.name}: install poolwatch with its "
                            "'explore' extra (make install does)") from None
    source = notebook or notebook_path()
    nb = nbformat.read(source, as_version=4)
    # Quiet: nbclient's "Executing notebook" and the kernel's warning about its local TCP sockets
    # tell a reader nothing; cell errors still come back as outputs and as the failure below.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", log=_quiet_log("nbclient", logging.WARNING),
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(source.parent)}})
    failure: CellExecutionError | None = None
    try:
        client.execute(env=kernel_env(warehouse, window, start, end, draws))
    except CellExecutionError as exc:
        failure = exc
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".html":
        output.write_text(_html(nb), encoding="utf-8")
    else:
        nbformat.write(nb, output)
    if failure is not None:
        cell = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "error"), None)
        last = next((line for line in reversed(str(failure).strip().splitlines()) if line.strip()), "")
        raise NotebookError(f"{source.name}: cell {cell} failed: {last}; output up to that cell in {output}")
    return output


def _html(nb) -> str:
    try:
        from nbconvert import HTMLExporter
    except ImportError as exc:
        raise NotebookError(f"HTML output needs {exc.name}: install poolwatch with its 'explore' extra "
                            "(make install does), or write a .ipynb") from None
    # PNG outputs are embedded as data: URIs; the exporter's accessibility warning about images
    # without alt text concerns matplotlib output we do not control.
    body, _ = HTMLExporter(log=_quiet_log("nbconvert", logging.ERROR)).from_notebook_node(nb)
    return body


def _quiet_log(name: str, level: int) -> logging.Logger:
    logger = logging.getLogger(f"{__name__}.{name}")
    logger.setLevel(level)
    return logger
