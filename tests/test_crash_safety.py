"""A writer killed with SIGKILL at random moments never leaves a torn or inconsistent warehouse."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pipeline.store.warehouse as warehouse_module
from pipeline.store.warehouse import Warehouse
from tests.synthetic import synthetic_tables

REPO = Path(__file__).resolve().parent.parent
STEPS = 30
STEP = 40

# The same deterministic sequence of operations on every run: batches of STEP heights, and every
# 7th step a reorg (delete from 30 below the step, then re-load with other hashes). Every height
# below STEPS*STEP is written again by a later step, so re-running the whole sequence over any
# interrupted state must end in the state of an uninterrupted run.
#
# A "zygote" process imports pyarrow/duckdb once and forks one child per run (a fresh interpreter
# per run would spend most of the time budget importing); the test SIGKILLs the child.
ZYGOTE = textwrap.dedent(f"""
    import os, sys
    from pipeline.store.warehouse import Warehouse
    from tests.synthetic import synthetic_tables

    def work(root):
        wh = Warehouse(root)
        with wh.writer(wait=10):
            for k in range({STEPS}):
                lo = k * {STEP}
                if k % 7 == 3:
                    wh.delete_heights_from(lo - 30)
                    wh.commit(synthetic_tables(range(lo - 30, lo + {STEP}), salt=f"r{{k}}"))
                else:
                    wh.commit(synthetic_tables(range(lo, lo + {STEP})))
                if k % 5 == 0:
                    wh.refresh_catalog()
            wh.refresh_catalog()

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                work(line.strip())
                code = 0
            except BaseException as exc:
                print("child error", repr(exc), file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)
""")


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, root: Path, kill_after: float | None) -> bool:
        """One run of the operation sequence; True if it finished before the kill."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{root}\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        status = int(self.proc.stdout.readline())
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            return False
        assert os.WEXITSTATUS(status) == 0, "worker failed (see stderr)"
        return True

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _tables(wh: Warehouse) -> dict[str, list]:
    con = wh.connect()
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in ("blocks", "coinbase_outputs")}


def _assert_consistent(wh: Warehouse) -> None:
    con = wh.connect()
    blocks = con.execute("SELECT height, hash FROM blocks ORDER BY height").fetchall()
    outs = con.execute("SELECT DISTINCT height, block_hash FROM coinbase_outputs ORDER BY height").fetchall()
    assert blocks == outs, "blocks and coinbase_outputs hold different heights/hashes"
    assert len({h for h, _ in blocks}) == len(blocks)


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    root = tmp_path / "killed"
    kills = 0
    zygote = Zygote()
    try:
        for _ in range(20):
            finished = zygote.run(root, kill_after=rng.uniform(0.0, 0.3))
            kills += not finished
            wh = Warehouse(root)
            # Readable at once, before any recovery: no torn file is ever visible.
            con = wh.connect()
            con.execute("SELECT count(*) FROM blocks").fetchall()
            con.execute("SELECT count(*) FROM coinbase_outputs").fetchall()
            if not list((root / "journal").glob("*.json")):
                _assert_consistent(wh)  # no commit was half-applied
            with wh.writer():  # rolls a complete journal forward, drops orphan temp files
                pass
            _assert_consistent(wh)
            assert not list(root.rglob("*.tmp"))
            assert not list((root / "journal").iterdir())
        assert kills >= 10, f"only {kills} of 20 runs were killed mid-way; the test did not test much"
        assert zygote.run(root, kill_after=None)
        reference = tmp_path / "uninterrupted"
        assert zygote.run(reference, kill_after=None)
    finally:
        zygote.close()
    assert _tables(Warehouse(root)) == _tables(Warehouse(reference))
    assert Warehouse(root).stored_range() == (0, STEPS * STEP - 1)


def test_complete_journal_is_rolled_forward_and_orphans_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a crash right after the journal became durable, and one before it was written."""
    wh = Warehouse(tmp_path / "wh")

    def crash(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt("simulated crash after the journal became durable")

    with wh.writer():
        wh.commit(synthetic_tables(range(10)))
        monkeypatch.setattr(warehouse_module, "_apply_plan", crash)
        with pytest.raises(KeyboardInterrupt):
            wh.commit(synthetic_tables(range(10, 20)))
        monkeypatch.undo()
    assert len(list((wh.root / "journal").glob("*.json"))) == 1
    assert wh.stored_range() == (0, 9)  # not applied yet: old state, still consistent
    orphan = wh.root / "data" / "blocks" / "bucket=0" / "part.parquet.deadbeef.tmp"
    orphan.write_bytes(b"half a file")
    with wh.writer():
        pass
    assert wh.stored_range() == (0, 19)
    _assert_consistent(wh)
    assert not orphan.exists()
    assert not list((wh.root / "journal").iterdir())
