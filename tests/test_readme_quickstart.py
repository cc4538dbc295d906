"""The README's Airflow quickstart, run as written: the shell block after ``<!-- quickstart:airflow -->``
is executed line for line by bash, in a scratch folder that holds this checkout's ``dags`` and
``.venv`` (so ``$PWD`` paths resolve as in a checkout). Two substitutions only: port 8080 becomes a
free port (8080 may be taken on a test machine), and ``make install`` is left out (``make test``
has just run it). Then the triggered backfill must succeed on the real scheduler and the warehouse
must hold the blocks. Every process the block started is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from airflow_deploy import descendants, free_port, listening_addresses
from deploy_support import only_loopback, stopped_everything

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.deployment]


def quickstart_block() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- quickstart:airflow -->\s*```sh\n(.*?)```", text, re.S)
    assert match, "README.md has no quickstart block marked <!-- quickstart:airflow -->"
    return match.group(1)


def test_block_is_found_and_starts_components_on_loopback():
    block = quickstart_block()
    assert "airflow scheduler --skip-serve-logs" in block and "AIRFLOW__API__HOST=127.0.0.1" in block
    assert "unpause" in block and "trigger poolwatch_backfill" in block


def _run_state(db: Path, dag_id: str) -> str | None:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = con.execute("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                              (dag_id,)).fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def test_readme_airflow_quickstart_runs_as_written(tmp_path, regtest_binary):
    port = free_port()
    lines = [line for line in quickstart_block().splitlines() if not line.startswith("make install")]
    script = "set -euo pipefail\n" + "\n".join(lines).replace("8080", str(port)) + "\n"
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "dags").symlink_to(REPO / "dags")
    (work / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "POOLWATCH_WAREHOUSE"))}
    env["POOLWATCH_BITCOIND"] = str(regtest_binary[0])  # the node the test suite runs on
    env["PATH"] = os.environ.get("PATH", "")
    shell = subprocess.Popen(["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    components: list[int] = []
    try:
        output, _ = shell.communicate(timeout=900)
        assert shell.returncode == 0, output[-4000:]
        db = work / ".airflow" / "airflow.db"
        deadline = time.monotonic() + 900
        state = None
        while time.monotonic() < deadline:
            state = _run_state(db, "poolwatch_backfill")
            if state in ("success", "failed"):
                break
            time.sleep(2)
        components = [p for p in _group_pids(shell.pid)]
        assert state == "success", (work / ".airflow" / "scheduler.log").read_text()[-4000:]
        assert only_loopback(listening_addresses(components))

        from pipeline.store.warehouse import Warehouse

        con = Warehouse(work / "warehouse" / "airflow").connect()
        count, low, high = con.execute("SELECT count(*), min(height), max(height) FROM blocks").fetchone()
        # the backfill's 0..2999, and the unpaused incremental DAG may already have added the tip (3000)
        assert (low, count) == (0, high + 1) and high in (2999, 3000)
        state_file = json.loads((work / ".devnode" / "devnode.json").read_text())
        assert state_file["blocks"] == 3000
    finally:
        components = sorted(set(components) | set(_group_pids(shell.pid)))
        _terminate(shell.pid, components)  # what `kill %1 %2 %3` does, plus SIGKILL for stragglers
        stop = subprocess.run([str(REPO / ".venv" / "bin" / "poolwatch"), "devnode", "stop"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        stopped_everything(components, timeout=30)


def _terminate(pgid: int, pids: list[int], grace: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_exists(p) for p in pids):
            time.sleep(0.2)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_pids(pgid: int) -> list[int]:
    """Processes of the quickstart's process group (the background components and their children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.extend(descendants(int(stat.parent.name)))
    return sorted(set(found))
