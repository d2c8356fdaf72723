"""Exceptions and warnings raised by dvl_dask.

Every exception derives from :class:`DvlDaskError` *and* from the builtin that
matches its meaning, so callers can catch either ``dvl_dask.errors.X`` or the
builtin they already handle (``except ValueError``)::

    DvlDaskError (Exception)
    ├── InvalidParameterError (ValueError)     a parameter has a bad value
    │   ├── UnknownScorerError                 scorer name sklearn does not know
    │   ├── TooManyPlayersError                exact method asked for too many points
    │   └── UnknownModeError                   influence mode not understood
    ├── InvalidDataError (ValueError)          arrays: shapes, NaN/inf, empty
    │   └── UnalignedChunksError               chunks of x and y disagree
    ├── InvalidModelError (TypeError)          model lacks fit/predict or is unusable
    ├── InvalidArgumentsError (TypeError)      arguments do not fit a signature (misspelt keyword...)
    ├── FrozenInstanceError (AttributeError)   assignment to an immutable value (Dataset, game...)
    ├── NotFittedError (RuntimeError)          an influence model used before fit()
    ├── CompatNotSupportedError (NotImplementedError)  a pyDVL name without a dvl_dask counterpart yet
    ├── SchemaError (ValueError)               a result does not follow the schema
    │   ├── NotAResultError                    the location holds no result of that kind
    │   └── ResultCorruptError                 a stored result's chunk is missing or damaged (names the block)
    ├── ResultExistsError (FileExistsError)    refusing to overwrite a stored result
    ├── CheckpointMismatchError (ValueError)   a checkpoint of another run/utility
    ├── TokenizationError (RuntimeError)       an object cannot be hashed deterministically
    ├── CacheError (RuntimeError)              a cache backend failed
    ├── ThreadSafetyViolationError (RuntimeError)  a non thread-safe model on threaded workers
    ├── UnusableUtilityError (ValueError)      no coalition can be fitted and scored
    ├── ScoreOutOfRangeError (ValueError)      a score outside its scorer's declared range
    ├── ResultNotFoundError (FileNotFoundError)  nothing stored at a result location
    ├── StoreAccessError (PermissionError)     a store cannot be written or read (permissions, credentials)
    ├── CheckpointCorruptError (ValueError)    a checkpoint fails verification (names block, recovery)
    ├── CheckpointInUseError (RuntimeError)    another writer holds a checkpoint's lease
    ├── NoWorkersError (RuntimeError)          a cluster had no workers for too long
    ├── ClusterConnectionError (ConnectionError)  a Dask scheduler cannot be reached
    ├── PyDVLNameError (ImportError)           a pyDVL name dvl_dask spells differently (points to the guide)
    └── MissingDependencyError (ModuleNotFoundError)  an optional dependency is not installed (names the extra)

    DvlDaskWarning (UserWarning)
    ├── UtilityFailureWarning                  a fit failed; default score used
    ├── CacheUnavailableWarning                cache backend down; running uncached
    ├── ConvergenceWarning                     an iterative solver did not converge
    └── BiasedEstimateWarning                  a stderr criterion judges a biased (truncated) estimator

Messages follow one shape: what was wrong, what we got, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BiasedEstimateWarning",
    "CacheError",
    "CacheUnavailableWarning",
    "CheckpointMismatchError",
    "ClusterConnectionError",
    "CompatNotSupportedError",
    "ConvergenceWarning",
    "DvlDaskError",
    "DvlDaskWarning",
    "FrozenInstanceError",
    "InvalidArgumentsError",
    "InvalidDataError",
    "InvalidModelError",
    "InvalidParameterError",
    "MissingDependencyError",
    "NotAResultError",
    "NotFittedError",
    "PyDVLNameError",
    "ResultExistsError",
    "ResultCorruptError",
    "ResultNotFoundError",
    "SchemaError",
    "ScoreOutOfRangeError",
    "StoreAccessError",
    "ThreadSafetyViolationError",
    "TokenizationError",
    "TooManyPlayersError",
    "UnalignedChunksError",
    "UnknownModeError",
    "UnknownScorerError",
    "UnusableUtilityError",
    "UtilityFailureWarning",
    "CheckpointCorruptError",
    "CheckpointInUseError",
    "NoWorkersError",
]


class DvlDaskError(Exception):
    """Base class of every exception raised by dvl_dask."""


class InvalidParameterError(DvlDaskError, ValueError):
    """A parameter has a value outside what the function accepts."""


class UnknownScorerError(InvalidParameterError):
    """A scorer was given by a name that scikit-learn does not know."""


class TooManyPlayersError(InvalidParameterError):
    """An exact method was asked to enumerate more subsets than allowed."""


class UnknownModeError(InvalidParameterError):
    """An influence mode is not one of :class:`InfluenceMode`."""


class InvalidDataError(DvlDaskError, ValueError):
    """Input arrays have the wrong shape, contain NaN/inf or are empty."""


class UnalignedChunksError(InvalidDataError):
    """Chunked inputs that must share chunks along the sample axis do not."""


class InvalidModelError(DvlDaskError, TypeError):
    """A model does not provide the methods a utility or influence model needs."""


class InvalidArgumentsError(DvlDaskError, TypeError):
    """The arguments of a call do not fit the function's signature: an unknown (misspelt) keyword, a missing one.

    The message names the public function and suggests the closest parameter name.
    """


class FrozenInstanceError(DvlDaskError, AttributeError):
    """An attribute of an immutable value was assigned after construction.

    Datasets, games, scorers, learned utilities and the identity of a Utility
    (model, data, scorer, default score) are fixed when built: their token was
    computed from them, so changing them would make caches and graph keys
    return stale values. Build a new object instead.
    """


class NotFittedError(DvlDaskError, RuntimeError):
    """A model was used before it was fitted."""


class CompatNotSupportedError(DvlDaskError, NotImplementedError):
    """A pyDVL name of ``dvl_dask.compat.pydvl`` has no dvl_dask counterpart yet; the message names the dvl_dask way."""


class SchemaError(DvlDaskError, ValueError):
    """A result object does not follow dvl_dask's result schema."""


class ResultExistsError(DvlDaskError, FileExistsError):
    """Writing a result would overwrite an existing one without permission."""


class CheckpointMismatchError(DvlDaskError, ValueError):
    """A checkpoint belongs to another utility, method or parameter set."""


class TokenizationError(DvlDaskError, RuntimeError):
    """An object cannot be hashed deterministically, so it cannot key a cache."""


class CacheError(DvlDaskError, RuntimeError):
    """A cache backend failed in a way that cannot be recovered silently."""


class ThreadSafetyViolationError(DvlDaskError, RuntimeError):
    """A model that is not thread-safe would run on multi-threaded workers."""


class DvlDaskWarning(UserWarning):
    """Base class of warnings issued by dvl_dask."""


class UtilityFailureWarning(DvlDaskWarning):
    """Fitting or scoring a model failed and the default score was used."""


class CacheUnavailableWarning(DvlDaskWarning):
    """A cache backend is unreachable; computation continues uncached."""


class ConvergenceWarning(DvlDaskWarning):
    """An iterative solver stopped before reaching its tolerance."""


class BiasedEstimateWarning(DvlDaskWarning):
    """A stopping criterion based on standard errors judges a biased estimator (e.g. truncated permutations).

    The standard error measures only the sampling noise around the biased
    value, so the criterion can declare convergence far from the true value.
    """


class UnusableUtilityError(DvlDaskError, ValueError):
    """A utility cannot be evaluated at all: fitting and scoring fails even on every training point.

    Every coalition would get the default score, so every value would be
    meaningless (all zeros). Typical causes: features of the wrong shape or
    type, a model without ``predict``, a classifier on continuous targets, a
    scorer that does not fit the task or that returns NaN.
    """


class ScoreOutOfRangeError(DvlDaskError, ValueError):
    """A scorer returned a score outside the range declared for it (by the user or dvl_dask's table).

    Scores are never clipped into their range (a clipped score values a
    different game), and the range is a premise of default scores, variance
    floors and sample-size bounds, so a score outside it is an error: the
    declared range is wrong.
    """


class ResultNotFoundError(DvlDaskError, FileNotFoundError):
    """Nothing is stored at the location given to a reader of results."""


class NotAResultError(SchemaError):
    """The location holds something other than the kind of result asked for (a file, another tool's store...)."""


class ResultCorruptError(SchemaError):
    """A chunk of a stored result is missing, truncated or altered.

    The message names the block and how to compute it again.

    Attributes
    ----------
    block : tuple of int or None
        The block (chunk index along the stored axes) that failed verification.
    """

    def __init__(self, message: str, block: tuple[int, ...] | None = None) -> None:
        super().__init__(message)
        self.block = block


class StoreAccessError(DvlDaskError, PermissionError):
    """A store cannot be written or read: a read-only directory, missing or refused credentials."""


class CheckpointCorruptError(DvlDaskError, ValueError):
    """A checkpoint is damaged: a chunk, metadata file or commit record is missing or fails its checksum.

    Attributes
    ----------
    block : int or None
        The first block that cannot be trusted (``truncate_checkpoint(url, block)`` keeps those before it).
    """

    def __init__(self, message: str, block: int | None = None) -> None:
        super().__init__(message)
        self.block = block


class CheckpointInUseError(DvlDaskError, RuntimeError):
    """Another process holds the writer lease of a checkpoint (two writers would interleave blocks)."""


class NoWorkersError(DvlDaskError, RuntimeError):
    """A distributed cluster had no workers for longer than the configured timeout."""


class ClusterConnectionError(DvlDaskError, ConnectionError):
    """A Dask scheduler given by address or scheduler file cannot be reached."""


class PyDVLNameError(DvlDaskError, ImportError):
    """A name of pyDVL's API (``ModelUtility``, ``ShapleyValuation``...) that dvl_dask names otherwise.

    The message names dvl_dask's equivalent and the migration guide (``docs/migrating-from-pydvl.md``).
    """


class MissingDependencyError(DvlDaskError, ModuleNotFoundError):
    """An optional dependency (torch, matplotlib...) is not installed; the message names the extra to install."""
