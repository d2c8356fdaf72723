"""The pyDVL scripts under scripts/ import ``pydvl``: they are run by test_pydvl_scripts.py, never imported."""

collect_ignore_glob = ["scripts/*.py"]
