"""How the command line prints results and errors.

* Text that comes from outside the code (error messages, paths, pool names, tags, SQL results) is
  printed verbatim: as ``rich.text.Text``, never parsed as rich markup, where ``[draft]`` would vanish
  and ``[/x]`` would crash the print.
* A table is drawn only when all its columns fit the terminal (``COLUMNS``, else the terminal, else
  80) at their full width: numbers and identifiers are never squeezed, wrapped or cut with an
  ellipsis. Otherwise the optional columns are left out, and if it still does not fit, every row is
  printed one field per line. Either way a one-line hint on stderr points to ``--csv``/``--json``.
* ``--csv`` and ``--json`` print the unabridged rows for programs (stdout holds nothing else).
* A number that is zero is never printed with a minus sign (``-0.0``, ``-0.00``, ``-0.0%``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

# --------------------------------------------------------------------------------------------------
# consoles and errors
# --------------------------------------------------------------------------------------------------


def stdout() -> Console:
    """A console on stdout, made at each use so that it follows COLUMNS as it is now. Never wider
    than the terminal: a piped stdout gets COLUMNS or 80, and wide results a narrower layout (or
    --csv/--json) instead of lines nobody can read."""
    return Console(highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def verbatim(value: object, style: str = "") -> Text:
    return Text(str(value), style=style)


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, the message verbatim and on one line (the terminal wraps it)."""
    stderr().print(Text.assemble(("error:", "bold red"), " ", str(message)), soft_wrap=True)


def fail(message: object) -> NoReturn:
    print_error(message)
    sys.exit(1)


def hint(message: str) -> None:
    stderr().print(Text(message, style="dim"), soft_wrap=True)


# --------------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------------

_SIGNED_ZERO = re.compile(r"-(?=[.,]*0[0.,]*(?![\d.,]))")


def no_negative_zero(value: Any) -> Any:
    """-0.0 -> 0.0 (floats, numpy floats, Decimal); anything else unchanged."""
    if isinstance(value, float) and value == 0:
        return 0.0
    if isinstance(value, Decimal) and value.is_zero() and value.is_signed():
        return value.copy_abs()
    return value


def signless_zero(text: str) -> str:
    """Drop the minus of a formatted number that shows as zero: '-0.00' -> '0.00', '-0.0%' -> '0.0%'
    (a tiny negative that rounds to zero is not negative on screen either)."""
    if text.startswith("-") and _SIGNED_ZERO.match(text):
        return text[1:]
    return text


def fmt_number(value: Any, spec: str = "") -> str:
    """format(value, spec) without a negative zero; '-' for a missing value (None, NaN, NA)."""
    if is_missing(value):
        return "-"
    return signless_zero(format(no_negative_zero(value), spec))


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return True
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return isinstance(value, float) and math.isnan(value)


def display(value: Any) -> str:
    """A database value as text for a table cell (SQL results)."""
    if value is None:
        return ""
    value = no_negative_zero(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, float):
        return signless_zero(str(value))
    return str(value)


# --------------------------------------------------------------------------------------------------
# machine-readable output
# --------------------------------------------------------------------------------------------------


def machine(value: Any) -> Any:
    """A value as plain JSON data: missing -> None, numpy/Decimal -> int/float, -0.0 -> 0.0, times ->
    ISO 8601, bytes -> hex, containers recursively."""
    import numpy as np

    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return None if math.isinf(number) else no_negative_zero(number)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        value = no_negative_zero(value)
        if value == value.to_integral_value() and value.as_tuple().exponent >= 0:
            return int(value)
        as_float = float(value)
        # exact decimals a float cannot hold (money, long fractions) stay text rather than change
        return as_float if Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): machine(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [machine(v) for v in value]
    if hasattr(value, "isoformat"):  # pandas Timestamp and kin
        return value.isoformat()
    return str(value)


def records(frame) -> list[dict[str, Any]]:
    """The rows of a pandas frame as JSON-ready dicts, in column order."""
    columns = [str(c) for c in frame.columns]
    return [{c: machine(v) for c, v in zip(columns, row, strict=True)}
            for row in frame.itertuples(index=False, name=None)]


def print_json(data: Any) -> None:
    click.echo(json.dumps(machine(data), indent=1, ensure_ascii=False, allow_nan=False))


def _csv_cell(value: Any) -> Any:
    value = machine(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):  # one cell: the value as JSON
        return json.dumps(value, ensure_ascii=False)
    return value


def print_csv(columns: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> None:
    """CSV with a header line on stdout; list or object values become JSON text in their cell."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else row
        writer.writerow([_csv_cell(v) for v in values])


def output_options(csv_help: str = "Print CSV (a header line, then one line per row) instead of a table.",
                   json_help: str = "Print JSON instead of a table.") -> Callable:
    """--csv and --json flags (the command gets ``as_csv`` and ``as_json``; ``output_format`` turns them
    into "table", "csv" or "json"); giving both is a usage error."""

    def check(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        chosen = ctx.meta.setdefault("poolwatch_output", [])
        if value:
            chosen.append(param.opts[0])
        if len(chosen) > 1:
            raise click.UsageError(f"{' and '.join(chosen)} exclude each other: choose one", ctx=ctx)
        return value

    def decorate(fn: Callable) -> Callable:
        fn = click.option("--json", "as_json", is_flag=True, callback=check, help=json_help)(fn)
        return click.option("--csv", "as_csv", is_flag=True, callback=check, help=csv_help)(fn)

    return decorate


def output_format(as_csv: bool, as_json: bool) -> str:
    return "csv" if as_csv else "json" if as_json else "table"


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------

WRAP_MIN = 16  # narrowest width a free-text column is given before the table counts as too wide
_GAP = 3  # characters between two columns (padding, rule, padding)


@dataclass(frozen=True)
class Column:
    label: str
    justify: str = "left"  # "right" for numbers
    wrap: bool = False  # free text that may wrap between words; numbers and identifiers never wrap
    optional: bool = False  # left out first when the table is too wide (--csv/--json keep it)


def _text(cell: Any, separator: str = ", ") -> Text:
    if isinstance(cell, Text):
        return cell
    if isinstance(cell, (list, tuple)):
        return Text(separator).join(_text(item) for item in cell)
    return Text("" if cell is None else str(cell))


def _width(text: Text) -> int:
    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def _fitted_widths(columns: Sequence[Column], cells: list[list[Text]], width: int) -> list[int] | None:
    """Column widths that show every cell whole in ``width`` characters, or None. Headers may wrap
    between words; free-text columns take what is left. Slack goes first to headers that would
    otherwise wrap (fewest extra characters first), then to free-text columns."""
    lows, highs = [], []
    for i, column in enumerate(columns):
        body = max((_width(row[i]) for row in cells), default=0)
        head_word, head = _longest_word(column.label), cell_len(column.label)
        if column.wrap:
            words = max((_longest_word(row[i].plain) for row in cells), default=0)
            low = max(head_word, words, min(body, WRAP_MIN))
        else:
            low = max(head_word, body)
        lows.append(max(low, 1))
        highs.append(max(low, head, body))
    slack = width - sum(lows) - _GAP * (len(columns) - 1)
    if slack < 0:
        return None
    widths = list(lows)
    fixed = sorted((i for i, c in enumerate(columns) if not c.wrap), key=lambda i: highs[i] - widths[i])
    for i in fixed + [i for i, c in enumerate(columns) if c.wrap]:
        grow = min(slack, highs[i] - widths[i])
        widths[i] += grow
        slack -= grow
    return widths


def _table(columns: Sequence[Column], cells: list[list[Text]], widths: list[int]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column, w in zip(columns, widths, strict=True):
        table.add_column(Text(column.label), justify=column.justify, width=w, overflow="fold")
    for row in cells:
        table.add_row(*row)
    return table


def _print_records(console: Console, columns: Sequence[Column], rows: list[list[Any]], key: int) -> None:
    """One field per line, a blank line between rows; the key field first and in bold. A value too
    long to sit beside its label goes on the lines below it, so that a hash or an address stays
    whole whenever it fits the width at all."""
    label_width = min(max(cell_len(c.label) for c in columns), max(8, console.width // 2))
    beside = console.width - label_width - 2
    order = [key] + [i for i in range(len(columns)) if i != key]
    grid: Table | None = None  # consecutive short fields share one grid (rendering is the slow part)

    def flush() -> None:
        nonlocal grid
        if grid is not None:
            console.print(grid)
            grid = None

    for n, row in enumerate(rows):
        for i in order:
            value = _text(row[i], separator="\n")
            if i == key:
                value = value.copy()
                value.stylize("bold")
            label = Text(columns[i].label, style="dim")
            if n and i == key:
                if grid is None:
                    console.print()
                else:
                    grid.add_row("", "")
            if _width(value) <= beside:
                if grid is None:
                    grid = Table.grid(padding=(0, 2))
                    grid.add_column(width=label_width, overflow="fold")
                    grid.add_column(overflow="fold")
                grid.add_row(label, value)
                continue
            flush()
            console.print(label)
            console.print(Padding(value, (0, 0, 0, 2)), overflow="fold")
    flush()


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, title: str | Text | None = None,
                key: int = 0, machine_hint: bool = True, console: Console | None = None) -> str:
    """Print rows under ``columns``: a table if it fits, else without the optional columns, else one
    field per line. Returns the layout used ("table", "narrow table" or "fields").

    Cells: ``str`` (verbatim), ``Text`` (verbatim, styled) or a sequence of those (a list value:
    ", "-separated in a table, one item per line in the field layout)."""
    console = console or stdout()
    width = console.width
    cells = [[_text(cell) for cell in row] for row in rows]
    if title is not None:
        console.print(title if isinstance(title, Text) else Text(str(title), style="bold"))
    widths = _fitted_widths(columns, cells, width)
    if widths is not None:
        console.print(_table(columns, cells, widths))
        return "table"
    keep = [i for i, c in enumerate(columns) if not c.optional]
    if len(keep) < len(columns):
        narrow_columns = [columns[i] for i in keep]
        narrow_cells = [[row[i] for i in keep] for row in cells]
        widths = _fitted_widths(narrow_columns, narrow_cells, width)
        if widths is not None:
            console.print(_table(narrow_columns, narrow_cells, widths))
            if machine_hint:
                left_out = len(columns) - len(keep)
                hint(f"({left_out} of {len(columns)} columns left out to fit {width} characters: "
                     "--csv or --json show all)")
            return "narrow table"
    if not rows:
        console.print(Text("(no rows)"))
        return "fields"
    _print_records(console, columns, [list(row) for row in rows], key)
    if machine_hint:
        hint(f"({len(columns)} columns, too wide for {width}: one field per line; see --csv and --json)")
    return "fields"


class Fields:
    """Label/value lines (``poolwatch status``). ``add_row(label, value)`` like a rich Table: a ``str``
    value is our own text and may hold rich markup, foreign text must come as ``Text``. ``raw`` is the
    value for --csv/--json (default: the plain text shown)."""

    _UNSET = object()

    def __init__(self) -> None:
        self.rows: list[tuple[str, str | Text, Any]] = []

    def add_row(self, label: str, value: str | Text, raw: Any = _UNSET, *, style: str | None = None) -> None:
        if style:
            value = (value.copy() if isinstance(value, Text) else Text.from_markup(value))
            value.stylize(style)
        self.rows.append((label, value, raw))

    def print(self, console: Console | None = None) -> None:
        console = console or stdout()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")  # long values wrap between words, a long path folds
        for label, value, _ in self.rows:
            grid.add_row(Text(label), value if isinstance(value, Text) else Text.from_markup(value))
        console.print(grid)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, value, raw in self.rows:
            key = re.sub(r"\W+", "_", label.strip().lower()).strip("_")
            if raw is self._UNSET:
                raw = value.plain if isinstance(value, Text) else Text.from_markup(value).plain
            out[key] = raw
        return out

    def output(self, fmt: str) -> None:
        if fmt == "json":
            print_json(self.as_dict())
        elif fmt == "csv":
            print_csv(["field", "value"], list(self.as_dict().items()))
        else:
            self.print()
