"""Progress displays of long operations, all drawn by ``tqdm.auto``.

One display for every long operation of dvl_dask: the blocks of
:func:`~dvl_dask.valuation.run_until_converged` (the stopping criterion's
completion), the blocks of a sequential chunk map, and the tasks of a graph
computed on a local dask scheduler (:class:`GraphProgress`). ``tqdm.auto``
updates one widget in Jupyter (one line rewritten in place where ipywidgets is
missing) and one line in a terminal.

Whether a display is shown is decided by :func:`progress_enabled`: an explicit
``progress=True``/``False`` argument wins; ``None`` reads the
``dvl_dask.progress.enabled`` option, whose default ``"auto"`` shows progress
in a terminal or a Jupyter kernel and stays silent when output is redirected
(a file, a pipe, a CI log).
"""

from __future__ import annotations

import sys
import warnings
from types import TracebackType
from typing import Any

from dask.callbacks import Callback

from . import config
from .errors import InvalidParameterError

__all__ = ["GraphProgress", "progress_bar", "progress_enabled"]

_TRUE = ("true", "1", "yes", "on", "always")
_FALSE = ("false", "0", "no", "off", "never")


def _in_jupyter_kernel() -> bool:
    """Whether this process is a Jupyter kernel (whose output streams are not TTYs but update in place)."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to show progress: ``progress`` if given, else the ``dvl_dask.progress.enabled`` option.

    The option is ``"auto"`` (default: shown on a terminal or in a Jupyter
    kernel, silent when ``sys.stderr`` is redirected), ``True`` or ``False``.

    Raises
    ------
    InvalidParameterError
        If the option is none of these.
    """
    if progress is not None:
        return bool(progress)
    value = config.get(config.PROGRESS_ENABLED)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text != "auto":
        raise InvalidParameterError(
            f"dask config option {config.PROGRESS_ENABLED!r} must be 'auto', true or false. Got {value!r}."
        )
    return _in_jupyter_kernel() or bool(getattr(sys.stderr, "isatty", lambda: False)())


class _NoProgress:
    """The display of a disabled progress bar: every method does nothing."""

    n: float = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tqdm_class() -> Any:
    # tqdm.auto warns when a kernel lacks ipywidgets (it then draws text, which
    # Jupyter rewrites in place) and that notebook mode is "experimental":
    # neither is the user's concern.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(IProgress|notebook mode).*")
        from tqdm.auto import tqdm
    return tqdm


def progress_bar(
    total: float | None, desc: str, *, progress: bool | None = None, unit: str = "block", **options: Any
) -> Any:
    """A ``tqdm.auto`` progress bar, or a silent stand-in when progress is disabled.

    Parameters
    ----------
    total : float or None
        Expected number of units (None: unknown, a counter is shown).
    desc : str
        Text before the bar.
    progress : bool, optional
        Show it (True), never (False), or as :func:`progress_enabled` decides (None).
    unit : str
        Name of one unit.
    **options
        Further ``tqdm`` options (``bar_format``, ...).

    Returns
    -------
    tqdm or silent stand-in
        Use ``update``, ``set_postfix_str`` and ``close`` (or a ``with`` block).
    """
    if not progress_enabled(progress):
        return _NoProgress()
    tqdm = _tqdm_class()
    return tqdm(
        total=total, desc=desc, unit=unit, mininterval=float(config.get(config.PROGRESS_INTERVAL)),
        file=sys.stderr, dynamic_ncols=True, **options,
    )


class GraphProgress(Callback):
    """Show the tasks of a graph computed on a local dask scheduler (threads, processes, sync) on one bar.

    A :class:`dask.callbacks.Callback`: use it as a context manager around
    ``compute``. On a ``distributed`` cluster use ``distributed.progress``
    (or the dashboard) instead; local scheduler callbacks do not run there.

    Parameters
    ----------
    desc : str
        Text before the bar.
    progress : bool, optional
        Show it (True), never (False), or as :func:`progress_enabled` decides (None).

    Examples
    --------
    >>> import dask.array as da
    >>> with GraphProgress("sum", progress=False):
    ...     int(da.ones(10, chunks=5).sum().compute())
    10
    """

    def __init__(self, desc: str = "compute", *, progress: bool | None = None) -> None:
        super().__init__()
        self.desc = desc
        self.enabled = progress_enabled(progress)
        self._bar: Any = _NoProgress()

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = progress_bar(total, self.desc, progress=self.enabled, unit="task")

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self._bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        self._bar.close()
        self._bar = _NoProgress()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.close()
        super().__exit__(exc_type, exc, tb)
