"""The errors a user can cause, one class per kind, and the small checks that raise them.

Every entry point turns these into one clear line and a distinct exit code; anything else is a bug and
keeps its traceback. This module imports nothing of the package, so every layer can raise them.
"""

from __future__ import annotations

from typing import Any


class UserError(ValueError):
    """Base of the errors caused by what the user gave us (config, data, paths, checkpoints)."""

    exit_code = 1


class ConfigError(UserError):
    """A config value that cannot work; the message names the key (``config.<section>.<key>``)."""

    exit_code = 2


def get(c, key: str) -> Any:
    """``c['a']['b']`` for ``key='a.b'``."""
    node = c
    for part in key.split("."):
        node = node[part]
    return node


def check(condition: bool, key: str, message: str) -> None:
    """Raises ``ConfigError('config.<key>: <message>')`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"config.{key}: {message}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(c, key: str, allow_zero: bool = False) -> None:
    value = get(c, key)
    ok = is_int(value) and (value >= 0 if allow_zero else value > 0)
    check(ok, key, f"expected a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def one_of(c, key: str, choices) -> None:
    value = get(c, key)
    check(value in choices, key, f"expected one of {tuple(choices)}, got {value!r}")


def boolean(c, key: str) -> None:
    value = get(c, key)
    check(isinstance(value, bool), key, f"expected True or False, got {value!r}")
