"""Progress: rich bars with ETA and live loss on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class Task:
    """One progress task; ``update(advance, **fields)`` shows e.g. the live loss."""

    def __init__(self, reporter: "Reporter", description: str, total: int):
        self.reporter, self.description, self.total = reporter, description, total
        self.done = 0
        self.fields: dict[str, float | str] = {}
        self._start = time.perf_counter()
        self._last_print = 0.0
        self._rich_id = None

    def _fmt(self) -> str:
        return "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()
        )

    def update(self, advance: int = 1, **fields: float | str) -> None:
        self.done += advance
        self.fields.update(fields)
        r = self.reporter
        if r.quiet:
            return
        if r.progress is not None and self._rich_id is not None:
            r.progress.update(self._rich_id, advance=advance, info=self._fmt())
            return
        now = time.perf_counter()
        if now - self._last_print >= r.interval or self.done >= self.total:
            self._last_print = now
            elapsed = now - self._start
            eta = elapsed / max(self.done, 1) * (self.total - self.done)
            r.console.print(
                f"{self.description}: {self.done}/{self.total}  {elapsed:.0f}s elapsed, "
                f"eta {eta:.0f}s  {self._fmt()}".rstrip(),
                highlight=False, soft_wrap=True,
            )


class Reporter:
    """Routes human output: ``console`` for messages, ``task()`` for progress.

    With ``--json`` everything human goes to stderr so stdout holds only the result.
    """

    def __init__(self, console: Console, quiet: bool = False, interval: float = 10.0):
        self.console = console
        self.quiet = quiet
        self.interval = interval
        self.progress: Progress | None = None

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Task]:
        task = Task(self, description, total)
        if self.quiet or not self.console.is_terminal:
            yield task
            return
        if self.progress is not None:  # nested: a second bar in the live display
            task._rich_id = self.progress.add_task(description, total=total, info="")
            try:
                yield task
            finally:
                self.progress.remove_task(task._rich_id)
            return
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=False,
        ) as progress:
            self.progress = progress
            task._rich_id = progress.add_task(description, total=total, info="")
            try:
                yield task
            finally:
                self.progress = None
