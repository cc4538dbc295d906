"""A real Airflow 3 deployment for tests: api-server, scheduler, dag-processor (and Celery workers
with a Redis broker), each its own process on 127.0.0.1, the way docs/airflow.md starts them.

Nothing here runs a DAG in-process: runs are triggered with the ``airflow`` CLI, scheduled by the
real scheduler, executed by the real executor (LocalExecutor's worker processes or Celery workers),
and their states are read from the metadata database. Every process started here belongs to the
``AirflowDeployment`` (or ``RedisServer``) object and is stopped by its ``stop()``; the fixtures in
``tests/test_airflow_deployment.py`` call it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TERMINAL_RUN_STATES = {"success", "failed"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_process_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group (the component and every child it started), then SIGKILL."""
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children it left behind
        except (ProcessLookupError, PermissionError):
            pass
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def listening_addresses(pids: Iterable[int]) -> list[str]:
    """Local addresses on which any of ``pids`` has a listening TCP socket (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if family == 4:
                addr = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr_hex)[::-1])
            else:
                raw = bytes.fromhex(addr_hex)
                addr = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found.append(f"{addr}:{int(port_hex, 16)}")
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class RedisServer:
    """Debian's redis-server on 127.0.0.1 and a free port, no persistence; stopped by ``stop()``."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "yes", "--logfile", str(self.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{self.port}: {self.log.read_text()[-500:]}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop_process_group(self.proc)


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    log: Path


class AirflowDeployment:
    """One AIRFLOW_HOME with its SQLite metadata database and the components started on it."""

    def __init__(self, home: Path, executor: str = "LocalExecutor", *, env: Mapping[str, str] | None = None,
                 broker_url: str | None = None, parallelism: int = 4) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        self.api_port = free_port()
        self.components: list[Component] = []
        self.db = self.home / "airflow.db"
        base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        base.update({
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": "poolwatch-test-secret-" + os.urandom(8).hex(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Find new DAG files and runs quickly: the defaults are tuned for production, not tests.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "GX_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": str(REPO),
        })
        if broker_url is not None:
            base.update({
                "AIRFLOW__CELERY__BROKER_URL": f"{broker_url}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"{broker_url}/1",
                "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            })
        base.update(env or {})
        self.env = base

    # -- processes --------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 300, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "airflow"), *args], env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done

    def spawn(self, name: str, args: list[str], *, env: Mapping[str, str] | None = None,
              wrapper: list[str] | None = None) -> Component:
        log = self.home / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen([*(wrapper or []), str(BIN / "airflow"), *args], env={**self.env, **(env or {})},
                                    stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        component = Component(name, proc, log)
        self.components.append(component)
        return component

    def start(self, *, triggerer: bool = False) -> None:
        self.cli("db", "migrate")
        self.spawn("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port)])
        self.spawn("scheduler", ["scheduler", "--skip-serve-logs"])
        self.spawn("dag-processor", ["dag-processor"])
        if triggerer:
            self.spawn("triggerer", ["triggerer", "--skip-serve-logs"])
        self.wait_for_api()

    def start_celery_worker(self, name: str, *, hostname: str | None = None, concurrency: int = 1) -> Component:
        """A Celery worker; with ``hostname``, in its own UTS namespace under that host name (a
        second "host" on this machine: the warehouse sees another nodename), when allowed."""
        wrapper = None
        if hostname is not None and can_use_uts_namespace():
            wrapper = ["unshare", "--uts", "--", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh"]
        return self.spawn(name, ["celery", "worker", "--skip-serve-logs", "--concurrency", str(concurrency),
                                 "--celery-hostname", f"{name}@%h"], wrapper=wrapper)

    def wait_for_api(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", self.api_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"api-server not listening on 127.0.0.1:{self.api_port} after {timeout:g} s; "
                           f"{self.tail('api-server')}")

    def check_alive(self) -> None:
        for c in self.components:
            if c.proc.poll() is not None:
                raise RuntimeError(f"airflow {c.name} exited with {c.proc.returncode}: {self.tail(c.name)}")

    def tail(self, name: str, chars: int = 4000) -> str:
        for c in self.components:
            if c.name == name:
                return c.log.read_text(errors="replace")[-chars:]
        return ""

    def pids(self) -> list[int]:
        out: list[int] = []
        for c in self.components:
            if c.proc.poll() is None:
                out.extend(descendants(c.proc.pid))
        return out

    def stop(self) -> None:
        for c in reversed(self.components):
            _stop_process_group(c.proc)

    # -- metadata database ------------------------------------------------------------------------
    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "no such table" in str(exc):
                return []
            raise
        finally:
            con.close()

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 300) -> None:
        wanted = set(dag_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            found = {r["dag_id"] for r in self.query("SELECT dag_id FROM dag WHERE is_stale = 0")}
            if wanted <= found:
                return
            time.sleep(1)
        errors = self.query("SELECT filename, stacktrace FROM import_error")
        raise TimeoutError(f"DAGs {sorted(wanted)} not parsed after {timeout:g} s; import errors: "
                           f"{[dict(e) for e in errors]}; {self.tail('dag-processor')}")

    def unpause(self, *dag_ids: str) -> None:
        for dag_id in dag_ids:
            self.cli("dags", "unpause", dag_id)

    def trigger(self, dag_id: str, conf: Mapping | None = None, run_id: str | None = None) -> str:
        run_id = run_id or f"test__{dag_id}__{time.time_ns()}"
        args = ["dags", "trigger", dag_id, "--run-id", run_id]
        if conf is not None:
            args += ["--conf", json.dumps(conf)]
        self.cli(*args)
        return run_id

    def runs(self, dag_id: str) -> list[dict]:
        return [dict(r) for r in self.query(
            "SELECT run_id, run_type, state, conf, start_date, end_date FROM dag_run WHERE dag_id = ? "
            "ORDER BY id", (dag_id,))]

    def wait_for_run(self, dag_id: str, run_id: str | None = None, *, run_type: str | None = None,
                     timeout: float = 900, after: int = 0) -> dict:
        """The run once it has finished (success or failed); ``run_id`` or the first run of
        ``run_type`` beyond the first ``after`` runs of the DAG."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            runs = self.runs(dag_id)[after:]
            for run in runs:
                if (run_id is None or run["run_id"] == run_id) and (run_type is None or run["run_type"] == run_type):
                    if run["state"] in TERMINAL_RUN_STATES:
                        return run
                    break
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id or run_type} not finished after {timeout:g} s: "
                           f"{self.runs(dag_id)}; tasks {self.task_instances(dag_id, run_id) if run_id else ''}; "
                           f"scheduler: {self.tail('scheduler', 3000)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return [dict(r) for r in self.query(
            "SELECT task_id, map_index, rendered_map_index, state, try_number, hostname, pool, start_date, end_date "
            "FROM task_instance WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index", (dag_id, run_id))]

    def asset_events(self, uri: str) -> list[dict]:
        rows = self.query(
            "SELECT e.id, e.extra, e.source_dag_id, e.source_run_id, e.timestamp FROM asset_event e "
            "JOIN asset a ON a.id = e.asset_id WHERE a.uri = ? ORDER BY e.id", (uri,))
        return [{**dict(r), "extra": json.loads(r["extra"] or "{}")} for r in rows]

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int = 1) -> str:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        path = folder / f"attempt={try_number}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def can_use_uts_namespace() -> bool:
    """Whether ``unshare --uts`` works here (root, or a user namespace allowed)."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "--uts", "--", "sh", "-c", "hostname poolwatch-probe && hostname"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "poolwatch-probe"
