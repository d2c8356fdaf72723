"""Assert that code does not trigger Dask computations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask

__all__ = ["raise_if_dask_computes"]


class _CountingScheduler:
    def __init__(self, max_computes: int) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many dask computations were triggered: {self.total_computes} > {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[_CountingScheduler]:
    """Within the block, raise if Dask computes more than ``max_computes`` times.

    Examples
    --------
    >>> import dask.array as da
    >>> with raise_if_dask_computes():
    ...     y = da.ones(3) + 1  # building a graph is fine
    """
    from ..validation import check_positive_int

    scheduler = _CountingScheduler(check_positive_int(max_computes, "max_computes", "raise_if_dask_computes",
                                                      allow_zero=True))
    with dask.config.set(scheduler=scheduler):
        yield scheduler
