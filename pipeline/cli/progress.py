"""Rich progress bars shared by the long-running commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. '812 blocks/s'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "blocks") -> Iterator[callable]:
    """Yield ``advance(n)``; draws a bar with count, rate and ETA (plain lines when not a terminal)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        task_id = progress.add_task(description, total=total)

        def advance(n: int) -> None:
            progress.advance(task_id, n)

        def set_total(total_: int) -> None:
            progress.update(task_id, total=total_)

        advance.set_total = set_total  # type: ignore[attr-defined]
        yield advance
