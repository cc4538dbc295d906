"""notebooks/analysis.ipynb runs top to bottom against a small warehouse and writes nothing to it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_metrics import build_warehouse, demo_pools

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def run_notebook(warehouse_root: Path, monkeypatch, window: str, start: str | None = None) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if start is not None:
        monkeypatch.setenv("POOLWATCH_FROM", start)
    else:
        monkeypatch.delenv("POOLWATCH_FROM", raising=False)
    monkeypatch.setenv("POOLWATCH_WAREHOUSE", str(warehouse_root))
    monkeypatch.setenv("POOLWATCH_WINDOW", window)
    monkeypatch.setenv("POOLWATCH_DRAWS", "100")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb


def images(nb) -> int:
    return sum(1 for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []) if "image/png" in out.get("data", {}))


def check_executed(nb, warehouse_root: Path) -> None:
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert images(nb) == 5  # shares, Nakamoto, HHI, top pools, the three levels
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert str(warehouse_root.resolve()) in text


def test_notebook_runs_on_a_synthetic_warehouse(tmp_path, monkeypatch):
    wh = build_warehouse(tmp_path / "wh", demo_pools(1500))
    before = snapshot(wh.root)
    nb = run_notebook(wh.root, monkeypatch, "day")
    check_executed(nb, wh.root)
    assert snapshot(wh.root) == before, "the notebook must open the warehouse read-only"
    assert "stored metric tables are stale (never computed)" in _text(nb)


def _text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_notebook_names_a_missing_warehouse(tmp_path, monkeypatch):
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="no warehouse at"):
        run_notebook(tmp_path / "absent", monkeypatch, "day")


@pytest.mark.node
def test_notebook_runs_on_a_regtest_built_warehouse(regtest_node, tmp_path, monkeypatch):
    """The issue's setting: blocks mined on a regtest node, synced and attributed by the pipeline."""
    from pipeline.source.client import NodeClient
    from pipeline.attribution.registry import load_registry
    from pipeline.devnode.chains import mine_chain
    from pipeline.devnode.demo import demo_specs
    from pipeline.load.jobs import sync_range
    from pipeline.store.warehouse import Warehouse

    registry = load_registry()
    specs = demo_specs(registry, 300, seed=7, allow_p2sh=regtest_node.flavor == "core")
    mine_chain(regtest_node, specs, start_time=1_700_000_000)
    wh = Warehouse(tmp_path / "wh")
    # regtest blocks carry mainnet pools' payout addresses: attribute across networks on purpose
    sync_range(NodeClient(regtest_node.client_config()), wh, registry=registry, allow_cross_network=True)
    con = wh.connect()
    assert con.execute("SELECT count(*) FROM blocks").fetchone()[0] == 301  # genesis + 300
    known = con.execute("SELECT count(*) FROM attributions WHERE method <> 'none'").fetchone()[0]
    assert known > 200, "the demo chain's coinbases should mostly be attributed"
    from pipeline.metrics.compute import refresh_metrics

    refresh_metrics(wh, draws=50)
    before = snapshot(wh.root)
    # the whole warehouse, as the README runs it: the regtest genesis (dated 2011) is left out and said so
    nb = run_notebook(wh.root, monkeypatch, "day")
    check_executed(nb, wh.root)
    assert snapshot(wh.root) == before
    text = _text(nb)
    assert "regtest genesis block (height 0) is left out" in text and "stale" not in text


# --- one command: `make notebook` (-> `poolwatch notebook` -> pipeline.metrics.notebook.run_notebook) ------------

REPO = NOTEBOOK.parent.parent


def make_notebook(demo_warehouse: Path, *extra: str, timeout: int = 900):
    """`make notebook` as the README gives it, with this test's interpreter as the project's venv
    (its install step counted as done: -o) and the demo warehouse pointed elsewhere."""
    import shutil
    import subprocess
    import sys

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLWATCH_")}
    return subprocess.run(["make", "-C", str(REPO), "-o", f"{venv}/.installed", "notebook", f"VENV={venv}",
                           f"DEMO_WAREHOUSE={demo_warehouse}", *extra],
                          capture_output=True, text=True, timeout=timeout, env=env)


def check_html(page: Path, warehouse_root: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 5  # shares, Nakamoto, HHI, top pools, the three levels
    assert f"warehouse {warehouse_root.resolve()}" in html
    assert "Traceback" not in html and 'data-mime-type="application/vnd.jupyter.stderr"' not in html


def test_make_notebook_writes_html_from_an_existing_warehouse(tmp_path):
    wh = build_warehouse(tmp_path / "wh", demo_pools(1500))
    before = snapshot(wh.root)
    run = make_notebook(wh.root)
    assert run.returncode == 0, run.stdout + run.stderr
    page = wh.root / "reports" / "analysis.html"
    assert f"wrote {page}" in run.stdout
    check_html(page, wh.root)
    after = {k: v for k, v in snapshot(wh.root).items() if not k.startswith("reports/")}
    assert after == before, "only the page is written; the warehouse is opened read-only"
    assert "demo" not in run.stdout.split("notebook", 1)[0], "an existing warehouse is not rebuilt"


def test_notebook_command_refuses_a_missing_warehouse_and_a_bad_window(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, ["--warehouse", str(tmp_path / "absent"), "notebook"])
    assert result.exit_code == 1 and f"no warehouse at {tmp_path / 'absent'}" in result.output
    wh = build_warehouse(tmp_path / "wh", demo_pools(50))
    result = CliRunner().invoke(main, ["--warehouse", str(wh.root), "notebook", "--window", "fortnight"])
    assert result.exit_code == 2 and "fortnight" in result.output


def test_a_failing_cell_names_itself_and_keeps_the_output(tmp_path):
    from pipeline.metrics.notebook import NotebookError, run_notebook

    wh = build_warehouse(tmp_path / "wh", demo_pools(50))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nprint(os.environ['POOLWATCH_WAREHOUSE'])"),
                                         nbformat.v4.new_code_cell("raise RuntimeError('cell two broke')")])
    source = tmp_path / "broken.ipynb"
    nbformat.write(nb, source)
    with pytest.raises(NotebookError, match=r"broken.ipynb: cell 1 failed: .*cell two broke.*out.ipynb"):
        run_notebook(wh.root, tmp_path / "out.ipynb", notebook=source)
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"].strip() == str(wh.root.resolve())
    assert executed.cells[1].outputs[0]["ename"] == "RuntimeError"


@pytest.mark.node
@pytest.mark.slow
def test_make_notebook_builds_the_demo_warehouse_when_absent(regtest_binary, tmp_path):
    """A fresh clone has no warehouse: `make notebook` runs the demo first (small here)."""
    demo = tmp_path / "demo"
    run = make_notebook(demo, "DEMO_BLOCKS=200")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "built 200 regtest blocks" in run.stdout
    check_html(demo / "reports" / "analysis.html", demo)
