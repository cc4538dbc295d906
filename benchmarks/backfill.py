"""Backfill measurements: the production loop, the real ``poolwatch sync`` process, and the bare
loops they are set against (each doing the same work of getting the same blocks' bytes).

Nothing here re-implements the pipeline. A loop run is ``pipeline.load.loop.load`` itself, over a
``BlockSource`` from ``pipeline.source.choice.open_block_source`` (as ``poolwatch sync`` builds
it), in a fresh interpreter (``python -m benchmarks.backfill loop JSON``) so that every run pays the
same imports and helper start-up; its ``stages`` hook gives the stage breakdown and its
``progress`` hook the time of every commit (the steady-state rate: blocks committed between the
first and the last commit over that time). A CLI run is the ``poolwatch`` console script, timed
from process start to exit. Both report the peak resident memory of their process tree.

The bare loops:

* REST: ``http.client``, a new connection per block, ``GET /rest/block/<hash>.bin`` (as issue 15
  measured the node's rate);
* RPC: ``getblock <hash> 0`` through the pipeline's own transport (``pipeline.source.transport``:
  the same HTTP client, batches of ``NodeConfig.block_batch_size`` calls, slices of ``READ_SLICE``
  blocks), hex turned into bytes;
* block files: one ``os.pread`` per record of the same blocks in the same ``blk*.dat`` files, at the
  offsets the block-file reader located (located before the clock starts; no XOR, no hashing: the
  disk's, or the page cache's, rate).

The block hashes of the range are asked of the node before a bare loop starts (untimed); the
pipeline locates them itself (two batched RPCs per batch) inside its time.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class NodeAccess:
    """How to reach the benchmark node (all of it picklable / JSON-able for child processes)."""

    rpc_url: str
    cookie_file: str
    datadir: str

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.rpc_url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        return host, int(port)

    def config(self, use_rest: bool = True) -> Any:
        from pipeline.source.config import NodeConfig

        return dataclasses.replace(NodeConfig.resolve(url=self.rpc_url, cookie_file=self.cookie_file),
                                   use_rest=use_rest, timeout=300)


def node_cpu_seconds(node: NodeAccess) -> float | None:
    """The node process's CPU seconds so far (user + system, from /proc), or None where unknown."""
    for pid_file in sorted(Path(node.datadir).glob("**/bitcoind.pid")):
        try:
            fields = Path(f"/proc/{int(pid_file.read_text().strip())}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return None


def children_cpu_seconds() -> float:
    """CPU seconds of every finished child process (and the children they waited for)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_cpu(node: NodeAccess, fn: Any, *args: Any, child: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``fn``'s result (a dict) with ``cpu``: the CPU seconds this side spent over the call (this
    process's threads; with ``child``, the child process tree ``fn`` ran and reaped instead: this
    process only watched it) and the node's. On a machine with few CPUs their sum over the CPU
    count bounds how fast the work can go."""
    node_before = node_cpu_seconds(node)
    own_before = children_cpu_seconds() if child else time.process_time()
    out = fn(*args, **kwargs)
    own_after = children_cpu_seconds() if child else time.process_time()
    node_after = node_cpu_seconds(node)
    out["cpu"] = {"client": own_after - own_before,
                  "node": None if node_before is None or node_after is None else node_after - node_before}
    return out


def rate(blocks: int, nbytes: int, seconds: float) -> dict[str, float]:
    return {"blocks": blocks, "bytes": nbytes, "seconds": seconds,
            "blocks_per_s": blocks / seconds if seconds > 0 else 0.0,
            "mb_per_s": nbytes / 1e6 / seconds if seconds > 0 else 0.0}


def block_hashes(node: NodeAccess, lo: int, hi: int) -> list[str]:
    from pipeline.source.client import NodeClient

    return NodeClient(node.config()).block_hashes(list(range(lo, hi + 1)))


# ----------------------------------------------------------------------------------- bare loops


def bare_rest(node: NodeAccess, hashes: Sequence[str]) -> dict[str, float]:
    """http.client, a new connection per block: the node's REST serving rate, one request at a time."""
    host, port = node.host_port
    total = 0
    started = time.perf_counter()
    for h in hashes:
        conn = http.client.HTTPConnection(host, port, timeout=300)
        try:
            conn.request("GET", f"/rest/block/{h}.bin")
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"bare REST: block {h}: HTTP {resp.status}")
        total += len(data)
    return rate(len(hashes), total, time.perf_counter() - started)


BUSY_PERIOD = 0.002  # s: the Python work beside a loop runs in bursts of duty x this, then sleeps the rest
BUSY_DUTY = 0.5       # about what the sync's decoding and building threads use beside its fetching thread


def python_work(stop: Any, duty: float = BUSY_DUTY, period: float = BUSY_PERIOD) -> None:
    """Pure-Python work for ``duty`` of every ``period`` (it holds the interpreter lock while it
    runs), until ``stop()`` is true."""
    if not 0 < duty < 1:
        raise ValueError(f"duty must be between 0 and 1, got {duty}")
    busy, idle = duty * period, (1 - duty) * period
    while not stop():
        started = time.perf_counter()
        while time.perf_counter() - started < busy:
            pass
        time.sleep(idle)


def bare_rest_beside(node: NodeAccess, hashes: Sequence[str], where: str, duty: float = BUSY_DUTY
                     ) -> dict[str, float]:
    """The bare REST loop while Python code runs ``duty`` of the time beside it: in a thread of this
    process (``where="thread"``: it competes for the CPUs and for the interpreter lock, as the
    sync's decoding and building threads do beside its fetching thread), or in another process
    (``"process"``: for the CPUs only). What the thread costs beyond the process is what sharing
    the interpreter lock costs a fetching loop; the work beside it is the same."""
    if where == "thread":
        done = threading.Event()
        worker = threading.Thread(target=python_work, args=(done.is_set, duty), name="python-work", daemon=True)
        worker.start()
        try:
            return bare_rest(node, hashes)
        finally:
            done.set()
            worker.join()
    if where == "process":
        script = ("import sys; from benchmarks.backfill import python_work; "
                  "python_work(lambda: False, float(sys.argv[1]))")
        proc = subprocess.Popen([sys.executable, "-c", script, str(duty)], cwd=REPO)
        try:
            time.sleep(1.0)  # its interpreter start-up and imports, before the clock
            if proc.poll() is not None:
                raise RuntimeError(f"the Python work process exited ({proc.returncode}) before the loop")
            return bare_rest(node, hashes)
        finally:
            proc.kill()
            proc.wait()
    raise ValueError(f"where must be 'thread' or 'process', got {where!r}")


def bare_rpc(node: NodeAccess, hashes: Sequence[str]) -> dict[str, float]:
    """``getblock <hash> 0`` with the pipeline's transport and batching (what ``RpcSource.read`` asks
    per slice of ``READ_SLICE`` blocks), hex decoded to bytes."""
    from pipeline.load.loop import READ_SLICE
    from pipeline.source.transport import Transport

    config = node.config(use_rest=False)
    transport = Transport(config)
    total = 0
    started = time.perf_counter()
    for i in range(0, len(hashes), READ_SLICE):
        replies = transport.batch([("getblock", [h, 0]) for h in hashes[i:i + READ_SLICE]], config.block_batch_size)
        total += sum(len(bytes.fromhex(r)) for r in replies)
    return rate(len(hashes), total, time.perf_counter() - started)


def record_locations(node: NodeAccess, hashes: Sequence[str]) -> list[tuple[str, int, int]]:
    """(file path, offset, length) of each block's record, as the block-file source locates them."""
    from pipeline.chain.networks import REGTEST
    from pipeline.source.blockfiles import BlockFileReader

    with BlockFileReader.for_datadir(node.datadir, REGTEST) as reader:
        return [(str(reader.path(loc.file_number)), loc.offset, loc.length) for loc in reader.locate(hashes)]


def bare_pread(locations: Sequence[tuple[str, int, int]]) -> dict[str, float]:
    """One ``pread`` per record (files opened once, before the clock): the same bytes from the same
    files as the block-file path, without XOR, hashing or decoding."""
    fds = {path: os.open(path, os.O_RDONLY) for path in {p for p, _, _ in locations}}
    total = 0
    try:
        started = time.perf_counter()
        for path, offset, length in locations:
            total += len(os.pread(fds[path], length, offset))
        seconds = time.perf_counter() - started
    finally:
        for fd in fds.values():
            os.close(fd)
    return rate(len(locations), total, seconds)


def direct_read(paths: Sequence[str], max_bytes: int = 1 << 30, chunk: int = 8 << 20) -> dict[str, Any]:
    """The disk's sequential read rate: ``paths`` read in order with O_DIRECT (past the page cache,
    which holds the benchmark's files), ``chunk`` bytes per read, up to ``max_bytes``. What a
    backfill of blocks not in memory reads at, on this machine; a virtual disk's host may still
    cache (stated with the figure)."""
    import mmap

    if not hasattr(os, "O_DIRECT"):
        return {"error": "O_DIRECT is not available on this system"}
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    total = 0
    started = time.perf_counter()
    try:
        for path in paths:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                offset = 0
                while total < max_bytes:
                    n = os.preadv(fd, [buf], offset)
                    total, offset = total + n, offset + n
                    if n < chunk:
                        break
            finally:
                os.close(fd)
            if total >= max_bytes:
                break
    except OSError as exc:  # e.g. a file system without O_DIRECT (tmpfs)
        return {"error": f"O_DIRECT read failed: {exc}"}
    finally:
        buf.close()
    seconds = time.perf_counter() - started
    return {"bytes": total, "seconds": seconds, "mb_per_s": total / 1e6 / seconds if seconds > 0 else 0.0,
            "files": len(paths)}


def warm_files(locations: Sequence[tuple[str, int, int]]) -> None:
    """Read every record once (page cache warm for the block-file measurements, stated as such)."""
    bare_pread(locations)


# ------------------------------------------------------------------------ process-tree peak memory


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set of a process's current program image (VmHWM), in MB. Not
    ``ru_maxrss``: on Linux that survives exec, so a child started from a big process reports the
    parent's size."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def _children(pid: int | str) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (a child belongs to the
    thread that forked it while that thread lives: the validating helper is started by one)."""
    children = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(x) for x in path.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return children


class TreePeaks:
    """Polls the VmHWM of a process and all its descendants until stopped; ``total_mb`` adds each
    process's peak (an upper bound: the peaks need not coincide)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            peak = vm_hwm_mb(pid)
            if peak is not None:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))
            todo += _children(pid)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        main = self.peaks.get(self.pid, 0.0)
        others = sorted((v for k, v in self.peaks.items() if k != self.pid), reverse=True)
        return {"main_mb": main, "helpers_mb": others, "total_mb": main + sum(others)}


# ------------------------------------------------------------------------------ the production loop


def loop_job(node: NodeAccess, source: str, lo: int, hi: int, warehouse: str, batch_size: int = 1000,
             workers: int = 1) -> dict[str, Any]:
    """One run of ``pipeline.load.loop.load`` over [lo, hi] into a fresh warehouse (in this process;
    ``run_loop`` starts it in a fresh one). The warehouse is set up as ``sync_range`` sets up a new
    one: chain bound, the shipped registry made current (cross-network matching on: regtest coinbases
    pay the registry's mainnet addresses)."""
    started = time.perf_counter()
    from pipeline.attribution.registry import load_registry
    from pipeline.load.jobs import reattribute
    from pipeline.load.loop import BatchPlan, load
    from pipeline.source.choice import open_block_source
    from pipeline.source.client import NodeClient
    from pipeline.store.warehouse import Warehouse

    imported = time.perf_counter()
    shutil.rmtree(warehouse, ignore_errors=True)
    registry = load_registry()
    client = NodeClient(node.config(use_rest=source != "rpc"))
    network = client.network()
    wh = Warehouse(Path(warehouse))
    with wh.writer():
        wh.bind_chain(network.name, client.block_hashes([0], require_blocks=False)[0])
        reattribute(wh, registry, allow_cross_network=True)
    blocks_source = open_block_source(client, network, source, Path(node.datadir))
    plan = BatchPlan(registry, network.name, allow_cross_network=True, validate=True)
    stages: dict[str, float] = {}
    commits: list[tuple[float, int]] = []
    committed = [0]

    def on_commit(n: int) -> None:
        committed[0] += n
        commits.append((time.perf_counter(), committed[0]))

    set_up = time.perf_counter()
    try:
        result = load(blocks_source, wh, lo, hi, plan, batch_size=batch_size, workers=workers,
                      progress=on_commit, stages=stages)
    finally:
        blocks_source.close()
    done = time.perf_counter()
    stored = wh.stored_range()
    if stored != (lo, hi) or result.blocks != hi - lo + 1:
        raise RuntimeError(f"loop run stored {stored}, {result.blocks} blocks; expected {lo}..{hi}")
    blocks_table = wh.read("blocks", columns=["height", "hash", "size", "weight", "stripped_size", "tx_count"])
    return {"source": source, "blocks": result.blocks, "batches": result.batches, "batch_size": batch_size,
            "workers": workers, "import_seconds": imported - started, "setup_seconds": set_up - imported,
            "load_seconds": done - set_up, "stages": stages,
            "commits": [(t - set_up, n) for t, n in commits],
            "steady": steady_state(commits),
            "blocks_digest": _digest(blocks_table),
            "bytes": int(sum(blocks_table.column("size").to_pylist()))}


def _digest(table: Any) -> str:
    """A fingerprint of the stored blocks table: every read path must store the same one."""
    import hashlib

    h = hashlib.sha256()
    for column in table.columns:
        h.update(repr(column.to_pylist()).encode())
    return h.hexdigest()[:16]


def steady_state(commits: Sequence[tuple[float, int]]) -> dict[str, float] | None:
    """Blocks per second between the first and the last commit (start-up, the first batch's read
    and the end of the range excluded): the loop's rate once every stage is busy. None with fewer
    than two commits."""
    if len(commits) < 2:
        return None
    (t0, n0), (t1, n1) = commits[0], commits[-1]
    if t1 <= t0:
        return None
    return {"blocks": n1 - n0, "seconds": t1 - t0, "blocks_per_s": (n1 - n0) / (t1 - t0)}


def run_child(args: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> tuple[dict[str, Any], float, dict[str, Any], str]:
    """Run a command; (its last stdout line as JSON or {}, wall seconds, memory peaks, stdout)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    peaks = TreePeaks(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{' '.join(args[:4])} ...: no exit after {timeout:.0f} s") from None
    finally:
        memory = peaks.stop()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {proc.returncode}: {err.strip()[-2000:]}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        doc = json.loads(last)
    except ValueError:
        doc = {}
    return doc, wall, memory, out


def run_loop(node: NodeAccess, source: str, lo: int, hi: int, warehouse: Path, batch_size: int = 1000,
             workers: int = 1) -> dict[str, Any]:
    """``loop_job`` in a fresh interpreter; adds the process's wall time and peak memory."""
    job = {"node": dataclasses.asdict(node), "source": source, "lo": lo, "hi": hi, "warehouse": str(warehouse),
           "batch_size": batch_size, "workers": workers}
    doc, wall, memory, _ = run_child([sys.executable, "-m", "benchmarks.backfill", "loop", json.dumps(job)])
    doc.update({"process_seconds": wall, "memory": memory})
    return doc


# --------------------------------------------------------------------------------- the CLI process


def poolwatch_executable() -> str:
    exe = Path(sys.executable).with_name("poolwatch")
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing: install the project (make install) to time the real CLI")
    return str(exe)


def run_cli(node: NodeAccess, source: str, lo: int, hi: int, warehouse: Path, *, metrics: bool = False,
            batch_size: int = 1000) -> dict[str, Any]:
    """``poolwatch sync --from lo --to hi`` into a fresh warehouse, timed from process start to exit.
    ``metrics`` False adds ``--no-metrics`` (loading only); True is the default command, which also
    computes the metric tables."""
    shutil.rmtree(warehouse, ignore_errors=True)
    args = [poolwatch_executable(), "--warehouse", str(warehouse), "sync", "--from", str(lo), "--to", str(hi),
            "--rpc-url", node.rpc_url, "--rpc-cookie", node.cookie_file, "--cross-network-registry",
            "--batch-size", str(batch_size)]
    if source == "blkfiles":
        args += ["--source", "blkfiles", "--datadir", node.datadir]
    elif source == "rpc":
        args += ["--no-rest"]
    if not metrics:
        args.append("--no-metrics")
    _, wall, memory, out = run_child(args, env={"COLUMNS": "200"})
    reported = _reported_rate(out)
    return {"source": source, "metrics": metrics, "blocks": hi - lo + 1, "seconds": wall,
            "blocks_per_s": (hi - lo + 1) / wall, "reported": reported, "memory": memory}


def _reported_rate(out: str) -> dict[str, float] | None:
    """The CLI's own summary line: 'loaded N blocks (a..b) from the ... node in S s (R blocks/s)'."""
    import re

    match = re.search(r"loaded ([\d,]+) blocks .* in ([\d.]+) s \(([\d,.]+) blocks/s\)", out)
    if not match:
        return None
    return {"blocks": int(match.group(1).replace(",", "")), "seconds": float(match.group(2)),
            "blocks_per_s": float(match.group(3).replace(",", ""))}


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one loop run in this process (for benchmarks.backfill.run_loop)")
    parser.add_argument("what", choices=["loop"])
    parser.add_argument("job", help="JSON arguments of loop_job")
    args = parser.parse_args(argv)
    job = json.loads(args.job)
    job["node"] = NodeAccess(**job["node"])
    print(json.dumps(loop_job(**job), default=str))


if __name__ == "__main__":
    _main()
