"""One warehouse folder shared by writers on several hosts (Celery or Kubernetes workers on a
shared POSIX file system): the writer lock and the clean-up of leftovers must not rely on a PID
being alive, which on another host says nothing.

The "other host" is a process in its own UTS namespace with its own host name (``unshare --uts``),
writing to the same folder; skipped where namespaces are not allowed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from airflow_deploy import can_use_uts_namespace
from pipeline.store.warehouse import CATALOG_NAME, Warehouse, WarehouseBusyError

REPO = Path(__file__).resolve().parent.parent
OTHER_HOST = "poolwatch-other-host"

needs_namespaces = pytest.mark.skipif(not can_use_uts_namespace(), reason="unshare --uts is not allowed here")


def _writer_on_other_host(root: Path, ready: Path) -> subprocess.Popen:
    """A writer on OTHER_HOST that takes the lock, leaves a catalog temp file (as a build in
    progress would) and holds both until killed."""
    code = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from pipeline.store.warehouse import Warehouse, CATALOG_NAME
        wh = Warehouse({str(root)!r})
        with wh.writer():
            tmp = Path({str(root)!r}) / f".{{CATALOG_NAME}}.{{os.uname().nodename}}.{{os.getpid()}}.abcd.tmp"
            tmp.write_bytes(b"half-built catalog")
            Path({str(ready)!r}).write_text(str(tmp))
            time.sleep(600)
    """)
    return subprocess.Popen(["unshare", "--uts", "--", "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh",
                             sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            start_new_session=True)


@needs_namespaces
def test_a_live_writer_on_another_host_is_waited_for_and_its_files_kept(tmp_path):
    root = tmp_path / "shared-warehouse"
    with Warehouse(root).writer():
        pass  # create the folder and lock file, as a first run would
    ready = tmp_path / "ready"
    other = _writer_on_other_host(root, ready)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            assert other.poll() is None, "the other host's writer exited"
            time.sleep(0.1)
        their_tmp = Path(ready.read_text())
        holder = json.loads((root / ".writer.lock").read_text())
        assert holder["host"] == OTHER_HOST and holder["pid"] == other.pid

        # On this host that PID may not exist at all, or be someone else: it must not matter.
        with pytest.raises(WarehouseBusyError, match=rf"pid {other.pid} on {OTHER_HOST}"):
            with Warehouse(root).writer(wait=0.5):
                pass
        assert their_tmp.exists()  # a live writer's file is never touched
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait(10)

    # Its process is gone, so is its lock; the next writer (here) removes the leftover, without
    # asking whether any PID is alive.
    with Warehouse(root).writer(wait=5):
        pass
    assert not their_tmp.exists()
    assert json.loads((root / ".writer.lock").read_text())["host"] == os.uname().nodename


def test_leftover_temp_files_are_removed_by_the_next_writer_whatever_their_pid(tmp_path):
    """A crashed writer's leftovers carry a host and PID that may be alive (PID reuse, other host):
    the next writer removes them because it holds the lock, not because the PID is dead."""
    root = tmp_path / "wh"
    with Warehouse(root).writer():
        pass
    leftovers = [root / f".{CATALOG_NAME}.elsewhere.{os.getpid()}.beef.tmp",  # our own, live PID
                 root / f".{CATALOG_NAME}.elsewhere.1.cafe.tmp"]
    for path in leftovers:
        path.write_bytes(b"x")
    (root / ".data_docs.tmp").mkdir()
    (root / "quarantine" / ".tmp-20260101T000000Z-h1-2-abcdef").mkdir(parents=True)
    (root / "validations").mkdir()
    (root / "validations" / "x.json.tmp").write_text("{}")
    with Warehouse(root).writer():
        pass
    assert not any(p.exists() for p in leftovers)
    assert not (root / ".data_docs.tmp").exists()
    assert not list((root / "quarantine").iterdir())
    assert not list((root / "validations").iterdir())


def test_catalog_refresh_needs_the_writer_lock(tmp_path):
    from pipeline.store.warehouse import WriterLockRequiredError

    with pytest.raises(WriterLockRequiredError, match="refresh_catalog"):
        Warehouse(tmp_path / "wh").refresh_catalog()
