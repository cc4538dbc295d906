"""Description of the machine a benchmark ran on (goes into results.md / results.json)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("pyarrow", "duckdb", "pandas", "numpy", "great-expectations", "apache-airflow", "python-bitcoinrpc")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _disk(path: Path) -> str:
    """Backing device type of ``path``'s filesystem where Linux tells it (rotational or not)."""
    try:
        dev = os.stat(path).st_dev
        major, minor = os.major(dev), os.minor(dev)
        block = Path(f"/sys/dev/block/{major}:{minor}")
        rotational = block / "queue" / "rotational"
        if not rotational.exists():
            rotational = block / ".." / "queue" / "rotational"
        if rotational.exists():
            return ("rotational per the kernel (HDD, or a virtual disk that says so)"
                    if rotational.read_text().strip() == "1" else "non-rotational (SSD/NVMe)")
    except OSError:
        pass
    return "unknown"


def describe(work_dir: Path) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cpus": cpus,
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "disk": _disk(work_dir),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": versions,
    }
