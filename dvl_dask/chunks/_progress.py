"""A dependency-free text progress line over the blocks of a sequential map."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["BlockProgress"]


class BlockProgress:
    """Rewrites one line on a terminal (or prints throttled lines elsewhere): blocks done, rate, ETA.

    Parameters
    ----------
    total : int or None
        Number of blocks, if known.
    label : str
        Text at the start of the line.
    enabled : bool
        False makes every method a no-op.
    interval : float
        Minimum seconds between two lines.
    stream : text stream, optional
        Default ``sys.stderr``.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = BlockProgress(2, "influences", enabled=True, interval=0.0, stream=out)
    >>> bar.update(); bar.update(); bar.close()
    >>> "2/2 blocks" in out.getvalue()
    True
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        *,
        enabled: bool = True,
        interval: float = 0.5,
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = time.monotonic()
        self._last = -float("inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        final = self.total is not None and self.done >= self.total
        if not final and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            width = 20
            frac = min(1.0, self.done / self.total)
            filled = round(frac * width)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            line = (
                f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} blocks | "
                f"{rate:.2f} blocks/s | {elapsed:.1f} s, ETA {eta:.0f} s"
            )
        else:
            line = f"{self.label}: {self.done} blocks | {rate:.2f} blocks/s | {elapsed:.1f} s"
        self.stream.write(("\r" + line) if self._tty else (line + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
