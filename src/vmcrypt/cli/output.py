"""Output for people (Rich) and for scripts (``--json``), and progress bars for long jobs."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

__all__ = ["err", "out", "print_json", "print_record", "progress_bar"]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """One JSON document on stdout, nothing else: safe to pipe into jq."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def print_record(title: str, rows: dict[str, Any]) -> None:
    """A two-column table for people."""
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(escape(key), "—" if value is None else escape(str(value)))
    out.print(table)


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool) -> Iterator[Any]:
    """Yield a ``(done, total)`` callback that drives a Rich bar with rate and ETA."""
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    bar.start()
    try:
        yield update
    except BaseException:
        # The error gets one line of its own: erase the bar instead of leaving a
        # half-drawn one (and, off a terminal, Progress.stop's blank line) above it.
        bar.live.transient = True
        bar.live.stop()
        raise
    bar.stop()
