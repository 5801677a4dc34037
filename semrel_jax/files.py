"""Reading the files users hand us (dataset JSON, HF config.json, export metadata), naming them when they fail.

``read_json(path, what)`` is ``json.load`` that says which file, what it was expected to be and where it
broke: a missing file is a :class:`errors.MissingFileError` (exit code 4), a file that is not valid JSON a
:class:`errors.DataError` (exit code 3) with its line and column.
"""

from __future__ import annotations

import json
import os
from typing import Any

from semrel_jax import errors


def require_file(path: str, what: str) -> str:
    """``path``, or MissingFileError naming ``what`` was expected there."""
    if not os.path.isfile(path):
        kind = "is a directory, not a file" if os.path.isdir(path) else "not found"
        raise errors.MissingFileError(f"{what} {kind} at {path!r}.")
    return path


def read_json(path: str, what: str, error: type[errors.UserError] = errors.DataError) -> Any:
    """The parsed JSON of ``path`` (``what`` names it in errors: "LLaVA instruction file", ...)."""
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise error(
            f"{path}: the {what} is not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}); "
            "the file is truncated or damaged: copy or download it again."
        ) from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: the {what} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
