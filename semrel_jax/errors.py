"""The errors a user can cause, one class per kind, and the small checks that raise them.

Every entry point (``semrel_jax.cli``) turns these into one clear line and a distinct exit code; anything
else is a bug and keeps its traceback. This module imports nothing of the package, so every layer can
raise them. The exit codes (also in README, "When something goes wrong"):

  1  UserError        anything else the user can fix (e.g. a non-finite loss under train.nonfinite='stop')
  2  ConfigError      a config value or command-line flag (unknown key, wrong type, unknown preset)
  3  DataError        a dataset file or record (bad JSON, corrupt image, image path outside its root)
  4  PathError        a path that does not exist, is not a directory, or cannot be read or written
  5  CheckpointError  a checkpoint or model directory that cannot be used (corrupt, written by another config)
  6  DiskError        the disk or filesystem failed (full, read-only, I/O error, gone)
"""

from __future__ import annotations

from typing import Any


class UserError(ValueError):
    """Base of the errors caused by what the user gave us (config, data, paths, checkpoints)."""

    exit_code = 1


class ConfigError(UserError):
    """A config value that cannot work; the message names the key (``config.<section>.<key>``)."""

    exit_code = 2


class DataError(UserError):
    """A dataset file or record that cannot be read; the message names the file (and record)."""

    exit_code = 3


class PathError(UserError):
    """A path that does not exist, has the wrong kind, or lacks permissions; the message names it."""

    exit_code = 4


class MissingFileError(PathError, FileNotFoundError):
    """A file the user named (or a dataset needs) is absent; also a ``FileNotFoundError`` for callers."""


class CheckpointError(UserError):
    """A checkpoint or model directory that cannot be used as asked; the message names it."""

    exit_code = 5


class DiskError(UserError):
    """The filesystem failed under us (full, read-only, I/O error, unmounted); the message names the path."""

    exit_code = 6


# errno -> (class, what it means for the user); errors outside this table are not the user's (kept as bugs)
_DISK_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EIO", "ESTALE", "ENODEV", "ENXIO", "ENOTCONN", "EFBIG")
_PATH_ERRNOS = ("ENOENT", "ENOTDIR", "EISDIR", "EACCES", "EPERM", "EEXIST", "ENAMETOOLONG", "ELOOP")


def errno_class(code: int | None) -> type[UserError] | None:
    """:class:`DiskError` or :class:`PathError` for an errno the user must fix; None for the others."""
    import errno as errno_lib

    name = errno_lib.errorcode.get(code if code is not None else -1, "")
    return DiskError if name in _DISK_ERRNOS else PathError if name in _PATH_ERRNOS else None


def os_error_code(e: BaseException) -> int | None:
    """The errno behind ``e`` or its chain: an OSError's, or the ``[os_error_code='28']`` tensorstore (Orbax's
    array writer) puts in the text of the ValueError it raises."""
    import re

    while e is not None:
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        found = re.search(r"os_error_code='?(\d+)", str(e))
        if found:
            return int(found.group(1))
        e = e.__cause__ or e.__context__
    return None


def from_os_error(e: OSError, doing: str = "") -> UserError | None:
    """The :class:`DiskError` / :class:`PathError` an ``OSError`` means for the user, or None (a bug).

    ``doing`` says what was being done ("saving checkpoint step 40"); the message names the path.
    """
    cls = errno_class(e.errno)
    if cls is None:
        return None
    path = e.filename if e.filename is not None else "?"
    where = f"{path}" + (f" -> {e.filename2}" if e.filename2 else "")
    return cls(f"{where}: {e.strerror or e}" + (f" (while {doing})" if doing else ""))


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
