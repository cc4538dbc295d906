"""bitcoin-etl (PyPI) exporting the same range from the same node, in its own venv.

bitcoin-etl pins old libraries (Click 7, requests 2.20) that conflict with ours, so it is installed
into ``benchmarks/out/etl-venv`` with the interpreter running the benchmark. What it does per block
is ``getblock <hash> 2`` plus JSON/CSV export of every transaction (more than poolwatch needs: that is
the point of the comparison, a general-purpose exporter versus a coinbase-only pipeline).
Failures (no network, install error, incompatible node) are recorded, not raised.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.source.config import read_cookie


def ensure_venv(out_dir: Path) -> tuple[Path | None, str]:
    """(bitcoinetl executable or None, what happened)."""
    venv = out_dir / "etl-venv"
    exe = venv / "bin" / "bitcoinetl"
    if exe.exists():
        return exe, "reused existing venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "bitcoin-etl"], capture_output=True,
                              timeout=900, text=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not create the venv / run pip: {type(exc).__name__}: {exc}"
    if proc.returncode != 0 or not exe.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return None, "pip install bitcoin-etl failed: " + " | ".join(tail)
    version = subprocess.run([str(venv / "bin" / "pip"), "show", "bitcoin-etl"], capture_output=True, text=True)
    line = next((x for x in version.stdout.splitlines() if x.startswith("Version:")), "Version: ?")
    return exe, f"installed bitcoin-etl {line.split(':', 1)[1].strip()}"


def run_export(exe: Path, rpc_url: str, cookie_file: Path, start: int, end: int, out_dir: Path,
               workers: int) -> dict[str, Any]:
    """Time ``bitcoinetl export_blocks_and_transactions`` over [start, end]."""
    user, password = read_cookie(cookie_file)
    host_port = rpc_url.split("://", 1)[1].rstrip("/")
    # The provider URI must carry the credentials (bitcoin-etl has no other way); it is only
    # passed in argv to the child, never printed or stored in the results.
    provider = f"http://{user}:{password}@{host_port}"
    blocks_out = out_dir / "etl-blocks.json"
    txs_out = out_dir / "etl-transactions.json"
    cmd = [str(exe), "export_blocks_and_transactions", "--start-block", str(start), "--end-block", str(end),
           "--provider-uri", provider, "--max-workers", str(workers), "--batch-size", "1", "--chain", "bitcoin",
           "--blocks-output", str(blocks_out), "--transactions-output", str(txs_out)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if password not in line][-6:]
        return {"ok": False, "seconds": seconds, "error": " | ".join(tail)}
    n_blocks = sum(1 for _ in blocks_out.open()) if blocks_out.exists() else 0
    result = {"ok": n_blocks == end - start + 1, "seconds": seconds, "blocks": n_blocks, "workers": workers,
              "blocks_per_s": n_blocks / seconds if seconds else 0.0,
              "output_mb": (blocks_out.stat().st_size + txs_out.stat().st_size) / 1e6 if txs_out.exists() else None}
    if not result["ok"]:
        result["error"] = f"exported {n_blocks} blocks, expected {end - start + 1}"
    for path in (blocks_out, txs_out):
        path.unlink(missing_ok=True)  # hundreds of MB of JSON nobody reads
    return result
