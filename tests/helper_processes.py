"""Watching the loop's helper processes from a test: its live children (from /proc) and a record of
every helper pool it starts."""

from __future__ import annotations

from pathlib import Path


def live_children(command_part: bytes | None = None) -> set[int]:
    """Live child processes of this one, from every thread's /proc children list (a child belongs to
    the thread that started it); zombies, reaped ones' remains, are not counted. ``command_part``:
    only children whose command line contains it."""
    found = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if state != "Z" and (command_part is None or command_part in cmdline):
                found.add(int(pid))
    return found


def counted_starts(monkeypatch) -> list[str]:
    """Record every start of a helper pool the loop makes (its name, then "up" once started), starting
    them as usual."""
    from pipeline.load import loop

    started: list[str] = []
    real = loop._start_pool

    def counting(workers, initializer, initargs, name):
        started.append(name)
        pool = real(workers, initializer, initargs, name)
        started.append("up")
        return pool

    monkeypatch.setattr(loop, "_start_pool", counting)
    return started
