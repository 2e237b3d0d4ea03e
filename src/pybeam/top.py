"""``pybeam top NODE``: observer's process tab in the terminal, drawn with rich.

A frame is built from one ``pybeam.observer:snapshot()`` taken on the node
over the distribution: node-level figures, its connections, and one row per
process, sorted by a column the user picks (``--sort``, or the keys ``<``
``>`` and ``r`` while it runs). ``activity`` is the reductions a process did
since the previous frame (a first frame has none: it sorts by reductions).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported when a frame is drawn: the pybeam command's other uses never load it
    from rich.console import Console, RenderableType

__all__ = ["SORT_KEYS", "Frame", "Keys", "console", "render"]


@dataclass(frozen=True)
class _Column:
    key: str  # the --sort name
    title: str
    numeric: bool


_COLUMNS = (
    _Column("pid", "PID", False),
    _Column("name", "NAME", False),
    _Column("call", "INITIAL CALL", False),
    _Column("status", "STATUS", False),
    _Column("msgs", "MSGS", True),
    _Column("memory", "MEMORY", True),
    _Column("links", "LINKS", True),
    _Column("monitors", "MONITORS", True),
    _Column("reds", "REDS", True),
    _Column("activity", "ACTIVITY", True),
)

#: The names ``--sort`` takes, in column order.
SORT_KEYS = tuple(c.key for c in _COLUMNS)


def _pid_order(pid: Any) -> tuple[int, ...]:
    return (getattr(pid, "id", 0), getattr(pid, "creation", 0))


def _value(row: dict[str, Any], key: str, activity: int | None) -> Any:
    if key == "pid":
        return _pid_order(row["pid"])
    if key == "name":
        return row.get("registered_name") or ""
    if key == "call":
        return row.get("initial_call") or ""
    if key == "status":
        return row.get("status") or ""
    if key == "msgs":
        return row.get("message_queue_len", 0)
    if key == "reds":
        return row.get("reductions", 0)
    if key == "activity":
        # No previous frame: the total is the best guess of what is busy.
        return row.get("reductions", 0) if activity is None else activity
    if key == "monitors":
        return row.get("monitors", 0) + row.get("monitored_by", 0)
    return row.get(key, 0)


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # not reached


def _ago(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f}s ago"


@dataclass
class Frame:
    """What one refresh shows, and what the next needs to compute activity."""

    snapshot: dict[str, Any]
    #: Reductions by pid at the previous frame (None for a first frame).
    previous: dict[Any, int] | None = None
    sort: str = "activity"
    reverse: bool = False
    interval: float | None = None
    limit: int | None = None
    reductions: dict[Any, int] = field(init=False)

    def __post_init__(self) -> None:
        self.reductions = {row["pid"]: row.get("reductions", 0) for row in self.snapshot["processes"]}

    def activity(self, row: dict[str, Any]) -> int | None:
        """Reductions since the previous frame (a new process: all of them)."""
        if self.previous is None:
            return None
        reductions: int = row.get("reductions", 0)
        return reductions - self.previous.get(row["pid"], 0)

    def rows(self) -> list[dict[str, Any]]:
        """The process rows in display order: numbers largest first, text A to Z
        (``reverse`` flips it), pid order breaking ties."""
        column = next(c for c in _COLUMNS if c.key == self.sort)
        rows = sorted(self.snapshot["processes"], key=lambda r: _pid_order(r["pid"]))
        rows.sort(
            key=lambda r: _value(r, self.sort, self.activity(r)), reverse=column.numeric != self.reverse
        )
        return rows if self.limit is None else rows[: self.limit]


def render(frame: Frame) -> RenderableType:
    """The frame as rich renderables: a header line, the connections, the processes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    node = frame.snapshot["node"]
    header = Text()
    header.append(f"node {node['node']}", style="bold")
    header.append(
        f"   processes {node['processes']}   registered {node['registered']}"
        f"   connections {len(node['connections'])}"
    )
    column = next(c for c in _COLUMNS if c.key == frame.sort)
    direction = "ascending" if column.numeric == frame.reverse else "descending"
    hint = f"sorted by {frame.sort} ({direction})"
    if frame.interval is not None:
        hint += f"   every {frame.interval:g}s   keys: < > sort column, r reverse, q quit"
    parts: list[RenderableType] = [header, Text(hint, style="dim")]

    if node["connections"]:
        conns = Table(box=None, header_style="bold", pad_edge=False)
        for title in ("CONNECTION", "HIDDEN", "BYTES OUT", "BYTES IN", "QUEUED", "LAST IN", "LAST OUT"):
            conns.add_column(title, no_wrap=True)
        for c in node["connections"]:
            conns.add_row(
                c["node"],
                "yes" if c["hidden"] else "no",
                _bytes(c.get("bytes_out")),
                _bytes(c.get("bytes_in")),
                _bytes(c.get("queued")),
                _ago(c.get("last_received")),
                _ago(c.get("last_sent")),
            )
        parts.append(conns)

    procs = Table(box=None, header_style="bold", pad_edge=False)
    for c in _COLUMNS:
        title = f"{c.title}{'*' if c.key == frame.sort else ''}"
        procs.add_column(title, justify="right" if c.numeric else "left", no_wrap=True, overflow="ellipsis")
    for row in frame.rows():
        activity = frame.activity(row)
        procs.add_row(
            repr(row["pid"]),
            row.get("registered_name") or "-",
            row.get("initial_call") or "-",
            row.get("status") or "-",
            str(row.get("message_queue_len", 0)),
            _bytes(row.get("memory")),
            str(row.get("links", 0)),
            f"{row.get('monitors', 0)}/{row.get('monitored_by', 0)}",
            str(row.get("reductions", 0)),
            "-" if activity is None else str(activity),
        )
    parts.append(procs)
    return Group(*parts)


def console() -> Console:
    """A console on stdout; off a terminal (a pipe, a file), wide enough that
    no column is cut (``$COLUMNS`` still wins)."""
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=250)


def next_sort(current: str, step: int) -> str:
    """The sort column ``step`` columns right (negative: left) of ``current``."""
    return SORT_KEYS[(SORT_KEYS.index(current) + step) % len(SORT_KEYS)]


class Keys:
    """Single key presses from a terminal's stdin, handed to ``on_key`` (from a
    daemon thread): the terminal is in cbreak mode while this is entered."""

    def __init__(self, on_key: Callable[[str], object]) -> None:
        self.on_key = on_key

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Read keys for the duration of the ``with`` block (nothing if stdin is no terminal)."""
        if not sys.stdin.isatty():
            yield
            return
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        threading.Thread(target=self._read, args=(fd,), name="pybeam-top-keys", daemon=True).start()
        try:
            yield
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def _read(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 16)
            except OSError:
                return
            if not data:
                return
            text = data.decode(errors="replace")
            # Arrow keys arrive as escape sequences: right and left change the sort column.
            text = text.replace("\x1b[C", ">").replace("\x1b[D", "<")
            for key in text:
                self.on_key(key)
