"""Argument types shared by the ``dvl-dask`` subcommands (``cli`` and ``_influence_cli`` import it, not each other)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["json_object"]


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object given on the command line (e.g. ``--storage-options``)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value
