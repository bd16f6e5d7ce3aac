"""Progress of a long command: a rich bar on a terminal, a plain log line now and then otherwise.

`prepare` on the paper's 12M pairs runs for half an hour and `evaluate` at beam 12 for minutes;
a user watching either should see how far it is and how fast it goes. Logs and pipes get one
line every `every_s` seconds (and one at the end) instead of a bar's control characters.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("dist_s2s.progress")


class Progress:
    """`with Progress("translate", total=1000, unit="sentences") as bar: bar.advance(64)`.

    `rate_unit` names what the rate counts when it is not the unit of progress (prepare's tasks
    are chunks and shards, its rate is pairs/s): pass `work=` to `advance` then."""

    def __init__(self, description: str, total: int, *, unit: str, done: int = 0, show: bool = True,
                 log_lines: bool = True, every_s: float = 10.0, rate_unit: str | None = None):
        self.description, self.total, self.unit, self.done = description, total, unit, done
        self.show, self.log_lines, self.every_s = show, log_lines, every_s
        self.rate_unit, self.work = rate_unit or unit, 0
        self.bar = None
        self.started = self.last_line = time.perf_counter()
        self.start_done = done

    def __enter__(self) -> Progress:
        if self.show and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                    transient=True, console=Console(stderr=True), redirect_stderr=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, completed=self.done, rate="")
        return self

    def rate(self) -> float:
        counted = self.work if self.rate_unit != self.unit else self.done - self.start_done
        return counted / max(time.perf_counter() - self.started, 1e-9)

    def advance(self, count: int = 1, *, work: int = 0) -> None:
        self.done += count
        self.work += work
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=f"{self.rate():,.1f} {self.rate_unit}/s")
        elif self.show and self.log_lines and time.perf_counter() - self.last_line >= self.every_s:
            self._line()

    def _line(self) -> None:
        self.last_line = time.perf_counter()
        log.info("%s: %s of %s %s done (%.1f %s/s)", self.description, f"{self.done:,}", f"{self.total:,}", self.unit,
                 self.rate(), self.rate_unit)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.show and self.log_lines and exc[0] is None and self.done > self.start_done:
            self._line()
