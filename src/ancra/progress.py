"""A dependency-free progress bar: one updating line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time


def format_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """``Progress(total, desc)``; call ``update(n_done, **fields)``, then ``close()``.

    On a terminal the line is redrawn at most 10 times a second; when stderr is not a terminal
    (logs, CI) a plain line is printed every ``log_every_s`` seconds and at the end."""

    def __init__(self, total: int, desc: str = "", stream=None, log_every_s: float = 30.0, enabled: bool = True):
        self.total, self.desc = total, desc
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = enabled
        self.start = self.last = time.perf_counter()
        self.log_every_s = log_every_s
        self.done = 0
        self.fields: dict = {}

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        extras = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.fields.items())
        return (
            f"{self.desc} [{bar}] {self.done}/{self.total} {format_seconds(elapsed)}<{format_seconds(eta)} "
            f"{rate:.2f}it/s {extras}"
        ).rstrip()

    def update(self, done: int, **fields) -> None:
        self.done, self.fields = done, {**self.fields, **fields}
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty and (now - self.last > 0.1 or done == self.total):
            self.stream.write("\r\033[K" + self._line())
            self.stream.flush()
            self.last = now
        elif not self.tty and now - self.last > self.log_every_s:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.enabled:
            self.stream.write(("\r\033[K" if self.tty else "") + self._line() + "\n")
            self.stream.flush()
