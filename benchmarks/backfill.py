"""Backfill benchmarks: the node's bare serving rate, full backfills per read path, stage costs, peak RSS.

Also runnable on its own as the child process whose peak RSS is measured:

    python -m benchmarks.backfill --config JSON
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
import time
from pathlib import Path
from typing import Any

from pipeline.source.client import NodeClient
from pipeline.source.config import NodeConfig


def node_config(rpc_url: str, cookie_file: str, source: str) -> NodeConfig:
    """REST for "rest" and "blkfiles" (it is not used by the latter), getblock 0 for "rpc"."""
    config = NodeConfig.resolve(url=rpc_url, cookie_file=cookie_file)
    return dataclasses.replace(config, use_rest=(source != "rpc"), timeout=120)


# ------------------------------------------------------------------------------------------------
# the node's own rate: a loop that does nothing but fetch raw blocks
# ------------------------------------------------------------------------------------------------


def bare_rest(config: NodeConfig, hashes: list[str]) -> dict[str, float]:
    """GET /rest/block/<hash>.bin for each hash, bytes only: the fastest of three plain loops.

    http.client on one kept-alive connection; http.client with a new connection per block (on this
    node kept-alive replies of a megabyte stall); and the raw-socket GET that NodeClient itself
    uses (one recv_into per body). The node's bare rate is the best of them, so no ratio is
    flattered by a slow baseline."""
    kept, fresh = _bare_rest_kept_alive(config, hashes), _bare_rest_new_connections(config, hashes)
    raw = _bare_rest_raw_socket(config, hashes)
    best = dict(max(kept, fresh, raw, key=lambda r: r["blocks_per_s"]))
    best["kept_alive_blocks_per_s"] = kept["blocks_per_s"]
    best["new_connection_blocks_per_s"] = fresh["blocks_per_s"]
    best["raw_socket_blocks_per_s"] = raw["blocks_per_s"]
    return best


def _bare_rest_raw_socket(config: NodeConfig, hashes: list[str]) -> dict[str, float]:
    """The leanest client: the same raw-socket GET NodeClient uses, nothing else per block."""
    return bare_rest_in_flight(config, hashes, 1)


def bare_rest_in_flight(config: NodeConfig, hashes: list[str], in_flight: int) -> dict[str, float]:
    """Raw-socket GETs with ``in_flight`` requests at once (one thread each, taking the next hash).

    With 1 this is the bare loop the goal is judged on. With N it is what the node serves to N
    clients at once, the fair yardstick for N worker processes (each keeps one request in flight)."""
    import threading

    from pipeline.source.transport import http_get as _http_get

    todo = iter(hashes)
    lock = threading.Lock()
    total = [0]
    errors: list[str] = []

    def loop() -> None:
        while not errors:
            with lock:
                h = next(todo, None)
            if h is None:
                return
            status, data = _http_get(config.host, config.port, f"/rest/block/{h}.bin", 120)
            with lock:
                if status != 200:
                    errors.append(f"REST block {h}: HTTP {status}")
                total[0] += len(data)

    started = time.perf_counter()
    if in_flight == 1:
        loop()
    else:
        threads = [threading.Thread(target=loop) for _ in range(in_flight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    return _rate(len(hashes), total[0], seconds)


def _bare_rest_kept_alive(config: NodeConfig, hashes: list[str]) -> dict[str, float]:
    conn = http.client.HTTPConnection(config.host, config.port, timeout=120)
    total = 0
    started = time.perf_counter()
    try:
        for h in hashes:
            conn.request("GET", f"/rest/block/{h}.bin")
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"REST block {h}: HTTP {resp.status}")
            total += len(data)
    finally:
        conn.close()
    return _rate(len(hashes), total, time.perf_counter() - started)


def _bare_rest_new_connections(config: NodeConfig, hashes: list[str]) -> dict[str, float]:
    total = 0
    started = time.perf_counter()
    for h in hashes:
        conn = http.client.HTTPConnection(config.host, config.port, timeout=120)
        try:
            conn.request("GET", f"/rest/block/{h}.bin")
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"REST block {h}: HTTP {resp.status}")
        total += len(data)
    return _rate(len(hashes), total, time.perf_counter() - started)


def bare_rpc(config: NodeConfig, hashes: list[str]) -> dict[str, float]:
    """getblock <hash> 0 for each hash (one call at a time), hex decoded to bytes."""
    client = NodeClient(config)
    total = 0
    started = time.perf_counter()
    try:
        for h in hashes:
            total += len(bytes.fromhex(client.call("getblock", h, 0)))
    finally:
        client.close()
    return _rate(len(hashes), total, time.perf_counter() - started)


def _rate(blocks: int, nbytes: int, seconds: float) -> dict[str, float]:
    return {"blocks": blocks, "bytes": nbytes, "seconds": seconds, "blocks_per_s": blocks / seconds,
            "mb_per_s": nbytes / 1e6 / seconds}


# ------------------------------------------------------------------------------------------------
# full backfill: fetch, decode, attribute, validate, commit (what `poolwatch sync` does)
# ------------------------------------------------------------------------------------------------


def run_backfill(rpc_url: str, cookie_file: str, warehouse_root: str, start: int, end: int, *, source: str,
                 workers: int, datadir: str | None, batch_size: int = 1000, validate: bool = True) -> dict[str, Any]:
    """One backfill of [start, end] into a fresh warehouse; the same steps as ``sync_range``."""
    from pipeline.attribution.engine import pool_definitions_table
    from pipeline.load.loop import BatchPlan, ChunkFetcher, load_chunks
    from pipeline.attribution.registry import load_registry
    from pipeline.load.loop import plan_chunks
    from pipeline.store.warehouse import Warehouse

    shutil.rmtree(warehouse_root, ignore_errors=True)
    registry = load_registry()
    client = NodeClient(node_config(rpc_url, cookie_file, source))
    stages: dict[str, float] = {}
    network = client.network()
    genesis = client.block_hashes([0])[0]
    warehouse = Warehouse(Path(warehouse_root))
    fetch_source = "blkfiles" if source == "blkfiles" else "node"
    plan = BatchPlan(registry=registry, chain=network.name, validate=validate)
    with warehouse.writer(), ChunkFetcher(client, network, workers=workers, source=fetch_source,
                                          datadir=datadir, plan=plan) as fetcher:
        # Worker start-up (spawn + imports, once per run) is reported apart from the throughput.
        startup = fetcher.start()
        started = time.perf_counter()
        warehouse.bind_chain(network.name, genesis)
        # The registry is the warehouse's before any batch attributed with it is committed.
        warehouse.commit({"pool_definitions": pool_definitions_table(registry)})
        warehouse.set_meta(registry_version=registry.version, registry_cross_network=False)
        loaded = load_chunks(warehouse, fetcher, plan_chunks(start, end, batch_size), stages=stages)
        finished = time.perf_counter()
        warehouse.refresh_catalog()
    client.close()
    seconds = finished - started
    stored = warehouse.stored_range()
    return {"source": source, "workers": workers, "blocks": loaded, "seconds": seconds, "startup_seconds": startup,
            "catalog_seconds": time.perf_counter() - finished, "stages": stages, "stored_range": stored,
            "blocks_per_s": loaded / seconds}


def stage_breakdown(rpc_url: str, cookie_file: str, heights: list[int], warehouse_root: str,
                    batch_size: int = 1000) -> dict[str, float]:
    """Seconds per stage for one sequential pass over ``heights`` via REST (each stage timed alone)."""
    from pipeline.attribution.engine import attribute_tables
    from pipeline.chain.decode import blocks_to_tables, decode_block
    from pipeline.load.loop import BatchPlan, batch_context, locate_chunk
    from pipeline.attribution.registry import load_registry
    from pipeline.store.validation import validate_batch
    from pipeline.store.warehouse import Warehouse

    shutil.rmtree(warehouse_root, ignore_errors=True)
    registry = load_registry()
    client = NodeClient(node_config(rpc_url, cookie_file, "rest"))
    network = client.network()
    warehouse = Warehouse(Path(warehouse_root))
    t: dict[str, float] = {k: 0.0 for k in ("locate_rpc", "raw_blocks_rest", "decode", "to_arrow", "attribute",
                                             "validate", "commit")}
    clock = time.perf_counter
    with warehouse.writer():
        warehouse.bind_chain(network.name, client.block_hashes([0])[0])
        plan = BatchPlan(registry=registry, chain=network.name)
        for lo in range(0, len(heights), batch_size):
            chunk = heights[lo:lo + batch_size]
            a = clock()
            # As sync does: hashes and median times of the chunk and of its predecessor (batched RPC).
            located = locate_chunk(client, chunk[0], chunk[-1], with_previous=True)
            c = clock()
            context = batch_context(plan, chunk[0], *located.previous)
            raws = client.raw_blocks(located.hashes)
            d = clock()
            blocks = [decode_block(r, network, height=h, median_time=m)
                      for r, h, m in zip(raws, chunk, located.median_times)]
            e = clock()
            tables = blocks_to_tables(blocks)
            f = clock()
            tables.update(attribute_tables(tables["blocks"], tables["coinbase_outputs"], registry, network.name))
            g = clock()
            report = validate_batch(tables, context)
            if not report.ok:
                raise RuntimeError(f"benchmark batch rejected: {report.summary()}")
            h_ = clock()
            warehouse.commit(tables)
            i = clock()
            for key, dt in zip(t, (c - a, d - c, e - d, f - e, g - f, h_ - g, i - h_)):
                t[key] += dt
    client.close()
    return t


def run_read(rpc_url: str, cookie_file: str, start: int, end: int, *, source: str, workers: int,
             datadir: str | None, batch_size: int) -> dict[str, Any]:
    """Read path alone: fetch and decode [start, end] (no attribution, validation or commit)."""
    from pipeline.load.loop import ChunkFetcher
    from pipeline.load.loop import plan_chunks

    client = NodeClient(node_config(rpc_url, cookie_file, source))
    network = client.network()
    fetch_source = "blkfiles" if source == "blkfiles" else "node"
    with ChunkFetcher(client, network, workers=workers, source=fetch_source, datadir=datadir) as fetcher:
        startup = fetcher.start()
        started = time.perf_counter()
        blocks = sum(len(b) for _, b in fetcher.iter_chunks(plan_chunks(start, end, batch_size)))
        seconds = time.perf_counter() - started
    client.close()
    return {"blocks": blocks, "seconds": seconds, "startup_seconds": startup, "blocks_per_s": blocks / seconds}


# ------------------------------------------------------------------------------------------------
# peak RSS: a child process does the backfill; wait4 gives its rusage
# ------------------------------------------------------------------------------------------------


def measure_rss(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``run_backfill(**job)`` in a fresh interpreter; its own and its workers' peak RSS in MB."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.backfill", "--config", json.dumps(job)],
                            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"backfill child failed ({proc.returncode}): {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set of a process's current program image (VmHWM), in MB.

    Not ``getrusage().ru_maxrss``: on Linux that survives exec, so a child started from a big
    process (fork/vfork + exec) reports its parent's size (measured: 810 MB for a 9 MB child)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class _ChildPeaks:
    """Polls the VmHWM of this process's children (the pool's workers) until stopped."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _children(self) -> list[int]:
        me = str(os.getpid())
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                # Field 4 (after the parenthesised command name) is the parent pid.
                if stat[stat.rfind(")") + 2:].split()[1] == me:
                    pids.append(int(entry.name))
        return pids

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for pid in self._children():
                peak = vm_hwm_mb(pid)
                if peak is not None:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def _child(job: dict[str, Any]) -> None:
    started = time.perf_counter()
    watcher = _ChildPeaks()
    result = run_backfill(**job)
    peaks = watcher.stop()
    # The resource tracker of multiprocessing is a child too but tiny; the big children are the
    # workers, or with one worker the validating process of the one-process pipeline.
    worker_peaks = sorted(peaks.values(), reverse=True)[:job["workers"]]
    own = vm_hwm_mb() or 0.0
    result.update({"wall_seconds_with_imports": time.perf_counter() - started, "peak_rss_mb": own,
                   "worker_peak_rss_mb": max(worker_peaks, default=0.0),
                   "peak_rss_total_mb_upper_bound": own + sum(worker_peaks)})
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one backfill in this process (for peak-RSS measurement)")
    parser.add_argument("--config", required=True, help="JSON arguments of run_backfill")
    _child(json.loads(parser.parse_args().config))
