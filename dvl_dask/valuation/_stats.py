"""Per-player sufficient statistics of Monte Carlo samples, mergeable in any grouping.

A :class:`PointStats` holds, for every player and every *stream* of samples,
the count, mean and sum of squared deviations (M2). Blocks of a graph return
one each; they merge exactly (Chan, Golub and LeVeque's parallel update), so a
tree reduction, a streaming loop and a resumed run all give the same numbers.
Most estimators have one stream (marginal contributions); MSR has two
(utilities of samples that contain a player, and of samples that do not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PointStats"]


@dataclass
class PointStats:
    """Count, mean and M2 of shape ``(n_streams, n_players)`` plus an evaluation counter."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    n_evaluations: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def zeros(cls, n_players: int, n_streams: int = 1) -> PointStats:
        shape = (n_streams, n_players)
        return cls(np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape))

    @classmethod
    def from_samples(cls, values: np.ndarray, mask: np.ndarray, n_evaluations: int) -> PointStats:
        """Statistics of ``values[s, i]`` over the samples ``s`` where ``mask[s, i]``.

        ``values`` and ``mask`` have shape ``(n_samples, n_players)`` or
        ``(n_streams, n_samples, n_players)``.
        """
        if values.ndim == 2:
            values, mask = values[None], mask[None]
        count = mask.sum(axis=1).astype(np.int64)
        total = np.where(mask, values, 0.0).sum(axis=1)
        safe = np.maximum(count, 1)
        mean = np.where(count > 0, total / safe, 0.0)
        dev = np.where(mask, values - mean[:, None, :], 0.0)
        m2 = (dev * dev).sum(axis=1)
        return cls(count, mean, m2, int(n_evaluations))

    def merge(self, other: PointStats) -> PointStats:
        """Exact merge of two independent sets of samples."""
        n = self.count + other.count
        safe = np.maximum(n, 1)
        delta = other.mean - self.mean
        mean = np.where(n > 0, self.mean + delta * (other.count / safe), 0.0)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / safe)
        return PointStats(n, mean, m2, self.n_evaluations + other.n_evaluations)

    def variance(self) -> np.ndarray:
        """Sample variance (ddof=1) per stream and player; 0 where count < 2."""
        return np.where(self.count > 1, self.m2 / np.maximum(self.count - 1, 1), 0.0)

    def stderr(self) -> np.ndarray:
        """Standard error of each stream's mean; inf where fewer than 2 samples."""
        err = np.sqrt(self.variance() / np.maximum(self.count, 1))
        return np.where(self.count > 1, err, np.inf)

    def to_array(self) -> np.ndarray:
        """Stack as ``(3, n_streams, n_players)`` float64 (for storage)."""
        return np.stack([self.count.astype(np.float64), self.mean, self.m2])

    @classmethod
    def from_array(cls, arr: np.ndarray, n_evaluations: int) -> PointStats:
        return cls(np.rint(arr[0]).astype(np.int64), arr[1].copy(), arr[2].copy(), int(n_evaluations))


def merge_all(stats: list[PointStats]) -> PointStats:
    """Merge a non-empty list pairwise (a balanced tree: better rounding than a chain)."""
    items = list(stats)
    while len(items) > 1:
        items = [items[i].merge(items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]
