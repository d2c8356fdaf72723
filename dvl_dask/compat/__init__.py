"""Compatibility layers: other libraries' APIs running on dvl_dask.

``dvl_dask.compat.pydvl`` mirrors pyDVL's public names so that pyDVL scripts
run after changing their imports. Nothing in dvl_dask imports this package
(an import-linter contract checks it); it sits above the public API.
"""
