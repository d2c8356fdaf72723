"""pyDVL's names on dvl_dask: change ``from pydvl...`` to ``from dvl_dask.compat.pydvl...``.

- :mod:`dvl_dask.compat.pydvl.valuation` mirrors ``pydvl.valuation`` (pyDVL 0.10's class-based API);
- :mod:`dvl_dask.compat.pydvl.utils` and :mod:`dvl_dask.compat.pydvl.value` mirror the older
  ``pydvl.utils`` / ``pydvl.value`` names (``Utility``, ``compute_shapley_values``, ``ParallelConfig``).

Every computation runs as dvl_dask's lazy graphs on the active Dask scheduler
or ``distributed.Client``. What is not supported raises
:class:`~dvl_dask.errors.CompatNotSupportedError` (a ``NotImplementedError``)
naming the dvl_dask way.
"""
