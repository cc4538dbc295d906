"""Helper processes that never re-import the parent's main module.

``multiprocessing``'s ``spawn`` and ``forkserver`` start methods run the parent's ``__main__``
again in every child (as ``__mp_main__``). Inside an Airflow 3 task that main module is the
``airflow`` script, whose import initialises Airflow with the task process's
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///`` and kills the child
(``BrokenProcessPool``); a Celery worker is the same. ``fork`` is no answer either: the parent holds
threads (Airflow's supervisor comms, our fetching thread) whose locks a forked child inherits.

So a helper here is a fresh interpreter started as ``python -m pipeline.load.processes <fd>``: its
main module is this file, whatever the parent's was. Parent and child talk over one end each of a
socketpair (``multiprocessing.connection.Connection``: length-prefixed pickles). Functions travel
by reference (module + name), so only importable module-level functions can be submitted, exactly
as with ``ProcessPoolExecutor``.

A child ends when its parent closes the connection (also when the parent dies: the socket closes
with it), so no helper outlives the task that started it.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("pipeline.load.processes")

# A helper that has not imported its modules and run its initializer by then is considered unable
# to start (Great Expectations alone takes 3-4 s to import on a loaded 2-core machine).
START_TIMEOUT = 180.0
STOP_TIMEOUT = 10.0


class HelperStartError(RuntimeError):
    """A helper process could not be started or initialised; the message says why."""


class HelperDiedError(RuntimeError):
    """A helper process exited while it was running a call."""


class RemoteError(RuntimeError):
    """An exception raised in a helper that could not be sent back as itself (not picklable)."""


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Future = field(default_factory=Future)


def _child_env() -> dict[str, str]:
    """The parent's environment, with its import path, so the child imports the same ``pipeline``
    (e.g. a checkout on Airflow's dags-folder path rather than an installed copy)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class Helper:
    """One helper process running calls one at a time (not thread-safe: one caller thread)."""

    def __init__(self, initializer: Callable[..., Any] | None = None, initargs: Sequence[Any] = (),
                 name: str = "poolwatch-helper", start_timeout: float = START_TIMEOUT) -> None:
        self.name = name
        parent_sock, child_sock = socket.socketpair()
        try:
            child_fd = child_sock.fileno()
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.load.processes", str(child_fd), name],
                    pass_fds=(child_fd,), env=_child_env(), stdin=subprocess.DEVNULL, close_fds=True)
            except OSError as exc:
                parent_sock.close()
                raise HelperStartError(f"cannot start a helper process ({sys.executable}): {exc}") from exc
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        try:
            self._handshake(initializer, tuple(initargs), start_timeout)
        except BaseException:
            self.close(kill=True)
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _handshake(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], timeout: float) -> None:
        try:
            self.conn.send(("init", initializer, initargs))
            if not self.conn.poll(timeout):
                raise HelperStartError(f"helper process {self.pid} did not start within {timeout:g} s")
            kind, payload = self.conn.recv()
        except (EOFError, OSError) as exc:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
            raise HelperStartError(f"helper process {self.pid} exited during start-up (exit code {code}); "
                                   "its error is in the log above") from exc
        if kind != "ready":
            raise HelperStartError(f"helper process {self.pid} failed to initialise: {payload}")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the helper and return its result (or raise its exception)."""
        try:
            self.conn.send(("call", fn, args, kwargs))
            kind, payload = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            code = self.proc.poll()
            raise HelperDiedError(f"helper process {self.pid} exited (code {code}) while running "
                                  f"{getattr(fn, '__qualname__', fn)}") from exc
        if kind == "ok":
            return payload
        raise payload

    def close(self, kill: bool = False) -> None:
        """Ask the helper to stop (closing its connection), then wait; kill if it does not go."""
        try:
            self.conn.close()
        except OSError:
            pass
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("helper process %d did not stop within %g s; killing it", self.pid, STOP_TIMEOUT)
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


class HelperPool:
    """``workers`` helper processes and a queue: ``submit`` returns a ``Future`` like an executor's.

    Each helper is driven by one thread of this process that sends a call, waits for its reply and
    takes the next; calls are started in submission order. Helpers start lazily on first use
    (``start()`` starts them now). ``shutdown`` cancels what has not started and stops every helper.
    """

    def __init__(self, workers: int = 1, initializer: Callable[..., Any] | None = None,
                 initargs: Sequence[Any] = (), name: str = "poolwatch-helper",
                 start_timeout: float = START_TIMEOUT) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._name = name
        self._start_timeout = start_timeout
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._helpers: list[Helper] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self._helpers]

    def start(self) -> float:
        """Start every helper now (imports and initializer included); seconds taken.
        HelperStartError if one cannot start (the others are stopped again)."""
        started = time.perf_counter()
        with self._lock:
            if self._closed:
                raise RuntimeError("pool is shut down")
            while len(self._helpers) < self.workers:
                index = len(self._helpers)
                try:
                    helper = Helper(self._initializer, self._initargs, f"{self._name}-{index}", self._start_timeout)
                except HelperStartError:
                    self._stop_helpers()
                    raise
                self._helpers.append(helper)
                thread = threading.Thread(target=self._drive, args=(helper,), name=f"{self._name}-{index}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
        return time.perf_counter() - started

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("cannot submit to a shut-down helper pool")
        if not self._helpers:
            self.start()
        call = _Call(fn, args, kwargs)
        self._queue.put(call)
        return call.future

    def _drive(self, helper: Helper) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            if not call.future.set_running_or_notify_cancel():
                continue
            try:
                result = helper.call(call.fn, *call.args, **call.kwargs)
            except HelperDiedError as exc:
                call.future.set_exception(exc)
                self._fail_queued(exc)
                return
            except BaseException as exc:  # noqa: BLE001 - the call's own exception, re-raised by result()
                call.future.set_exception(exc)
            else:
                call.future.set_result(result)

    def _fail_queued(self, exc: BaseException) -> None:
        """A helper died: every call still queued fails too (the caller decides what to do)."""
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                return
            if call is None:
                self._queue.put(None)
                return
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(HelperDiedError(str(exc)))

    def _stop_helpers(self) -> None:
        for helper in self._helpers:
            helper.close()

    def shutdown(self, cancel_futures: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if cancel_futures:
            while True:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call.future.cancel()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._stop_helpers()
        self._helpers.clear()
        self._threads.clear()

    def __enter__(self) -> HelperPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# --------------------------------------------------------------------------------------------
# The child side


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure: send a description instead
        text = "".join(traceback.format_exception(exc)).strip()
        return RemoteError(f"{type(exc).__name__}: {exc}\n{text}")


def _serve(conn: Connection) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the connection or died: stop
        kind = message[0]
        try:
            if kind == "init":
                _, initializer, initargs = message
                if initializer is not None:
                    initializer(*initargs)
                reply: tuple[str, Any] = ("ready", os.getpid())
            elif kind == "call":
                _, fn, args, kwargs = message
                reply = ("ok", fn(*args, **kwargs))
            else:
                reply = ("error", RemoteError(f"unknown message {kind!r}"))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, raised there
            reply = ("error", _picklable(exc))
        try:
            conn.send(reply)
        except (OSError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send(("error", RemoteError(f"cannot send the result back: {type(exc).__name__}: {exc}")))


def main(argv: Sequence[str]) -> None:
    fd, name = int(argv[0]), argv[1] if len(argv) > 1 else "poolwatch-helper"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    _serve(Connection(fd))
    # The parent waits for this exit, and a normal one tears down every module a helper imported
    # (Great Expectations, pandas, pyarrow: ~1 s) for nothing: a helper keeps no file open and
    # its replies are sent. Flush what it printed, then leave at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: exceptions sent to the parent must
    # pickle as pipeline.load.processes.RemoteError, which the parent can import.
    from pipeline.load import processes

    processes.main(sys.argv[1:])
