"""A one-line progress display for run_until_converged.

Written here rather than taken from tqdm: the loop knows neither the number
of blocks nor the number of evaluations in advance (the stopping criterion
decides), so what it shows is the criterion's completion, which a plain line
conveys best, and this keeps tqdm out of the dependencies.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLine"]


class ProgressLine:
    """Rewrites one status line on a terminal, or prints throttled lines elsewhere."""

    def __init__(self, label: str, *, enabled: bool, interval: float, stream: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.interval = interval
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, *, blocks: int, evaluations: int, completion: float, elapsed: float, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        bar_width = 20
        filled = round(max(0.0, min(1.0, completion)) * bar_width)
        line = (
            f"{self.label} [{'#' * filled}{'.' * (bar_width - filled)}] {completion:6.1%} | "
            f"{blocks} blocks | {evaluations:,} evaluations | {elapsed:.1f} s"
        )
        if self._tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
