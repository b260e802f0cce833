"""Where the command line writes: results on stdout, diagnostics and progress on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from ._exit import one_line
from ._render import dumps

PROG = "isa-mqtt"


class Console:
    """stdout for results (text, JSON or raw payload bytes), stderr for everything else."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def lines(self, lines: Iterable[str]) -> None:
        self.out.write("".join(f"{line}\n" for line in lines))

    def json(self, value: Any) -> None:
        """One result as indented JSON."""
        self.out.write(dumps(value) + "\n")

    def json_line(self, value: Any) -> None:
        """One item of a stream as a compact JSON line, flushed at once."""
        self.out.write(dumps(value, pretty=False) + "\n")
        self.out.flush()

    def raw(self, data: bytes) -> None:
        """Bytes exactly as given (payloads), flushed at once."""
        self.out.flush()
        self.out.buffer.write(data)
        self.out.buffer.flush()

    def error(self, message: str) -> None:
        self.err.write(f"{PROG}: error: {one_line(message)}\n")
        self.err.flush()

    def warning(self, message: str) -> None:
        self.err.write(f"{PROG}: warning: {one_line(message)}\n")
        self.err.flush()

    @property
    def interactive(self) -> bool:
        """True when stderr is a terminal (progress bars are drawn only then)."""
        return self.err.isatty()


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    BAR = 30

    def __init__(self, console: Console, total: int, what: str) -> None:
        self.console = console
        self.total = total
        self.what = what
        self.enabled = console.interactive and total > 0
        self._drawn = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1 and done < self.total:
            return
        self._drawn = now
        filled = self.BAR * done // self.total
        bar = "#" * filled + "." * (self.BAR - filled)
        self.console.err.write(f"\r[{bar}] {done}/{self.total} {self.what}")
        self.console.err.flush()

    def finish(self) -> None:
        """Erase the bar so the summary starts on a clean line."""
        if self.enabled:
            self.console.err.write("\r\x1b[K")
            self.console.err.flush()
