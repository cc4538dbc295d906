"""Helper processes (pipeline.load.processes): fresh interpreters that never re-import the parent's
main module, so they work inside Airflow task processes (whose main module is the airflow script)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.load.processes import HelperDiedError, HelperPool, HelperStartError, RemoteError

ping = os.getpid  # a call that says which process ran it

REPO = Path(__file__).resolve().parent.parent


def _fail_to_init() -> None:
    raise RuntimeError("initializer refused")


def _raise_value_error(text: str) -> None:
    raise ValueError(text)


def _exit_now() -> None:
    os._exit(3)


class _Unpicklable(Exception):
    def __init__(self, handle):
        super().__init__("has a lock")
        self.handle = handle

    def __reduce__(self):
        raise TypeError("not picklable")


def _raise_unpicklable() -> None:
    import threading

    raise _Unpicklable(threading.Lock())


def test_calls_run_in_other_processes_and_results_come_back():
    with HelperPool(2) as pool:
        pool.start()
        assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids
        pids = {pool.submit(ping).result(timeout=60) for _ in range(8)}
        assert pids <= set(pool.pids)
        assert pool.submit(sorted, [3, 1, 2]).result(timeout=60) == [1, 2, 3]


def test_exceptions_of_a_call_are_raised_in_the_caller():
    with HelperPool(1) as pool:
        with pytest.raises(ValueError, match="bad row 7"):
            pool.submit(_raise_value_error, "bad row 7").result(timeout=60)
        with pytest.raises(RemoteError, match="_Unpicklable: has a lock"):
            pool.submit(_raise_unpicklable).result(timeout=60)
        assert pool.submit(ping).result(timeout=60) in pool.pids  # still usable


def test_a_helper_that_cannot_initialise_is_a_start_error():
    pool = HelperPool(1, initializer=_fail_to_init)
    with pytest.raises(HelperStartError, match="initializer refused"):
        pool.start()
    pool.shutdown()


def test_a_helper_that_dies_fails_its_call_and_the_queued_ones():
    with HelperPool(1) as pool:
        pool.start()
        first = pool.submit(_exit_now)
        second = pool.submit(ping)
        with pytest.raises(HelperDiedError, match="exited"):
            first.result(timeout=60)
        with pytest.raises(HelperDiedError):
            second.result(timeout=60)


def test_helpers_stop_with_the_pool():
    pool = HelperPool(2)
    pool.start()
    procs = [h.proc for h in pool._helpers]
    pool.shutdown()
    assert all(p.poll() is not None for p in procs)


def test_helper_never_imports_the_parents_main_module(tmp_path):
    """The Airflow case: the task process's main module must not run again in a child (with
    multiprocessing's spawn it does, as __mp_main__, and Airflow's import dies on the task
    process's AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///)."""
    marker = tmp_path / "imported-again"
    script = tmp_path / "fake_airflow_main.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        if __name__ != "__main__":
            open({str(marker)!r}, "w").write(__name__)
            raise SystemExit("main module re-imported in a child")
        import os

        from pipeline.load.processes import HelperPool
        ping = os.getpid
        with HelperPool(2) as pool:
            pids = {{pool.submit(ping).result(timeout=120) for _ in range(4)}}
        print("ok", len(pids) >= 1)
    """))
    env = dict(os.environ, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="airflow-db-not-allowed:///",
               PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok True"
    assert not marker.exists()


def test_spawn_would_have_reimported_it(tmp_path):
    """The check above can fail: the same script with multiprocessing's spawn re-imports main."""
    marker = tmp_path / "imported-again"
    script = tmp_path / "fake_airflow_main.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, os
        if __name__ != "__main__":
            open({str(marker)!r}, "w").write(__name__)
        else:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                pool.submit(os.getpid).result(timeout=120)
    """))
    subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert marker.read_text() == "__mp_main__"
