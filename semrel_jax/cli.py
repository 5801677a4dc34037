"""The one console of every command: absl flags, a quiet log, and the error surface (``semrel_jax.errors``).

Every ``python -m semrel_jax.<command>`` ends with ``cli.run(main)``:

* it restarts once with glibc's huge-page tunable for large host buffers (``semrel_jax/huge_pages.py``: 18-26 %
  less CPU time per step on CPU; ``GLIBC_TUNABLES=`` opts out);
* flags are absl's, so both ``--flag=value`` and ``--flag value`` work (``--config.a.b value`` too);
* a flag or config-file mistake (unknown key, with ml_collections' "did you mean" intact; a value of the
  wrong type; an unknown preset; a missing config file) is one line and exit code 2;
* while ``main`` runs, the console shows only the command's own output: absl/Orbax INFO, JAX backend
  notices and transformers warnings are off unless ``--verbosity`` (absl's flag) is given; warnings that
  concern the run (skipped records, resumed checkpoints) still show;
* a :class:`semrel_jax.errors.UserError` (found anywhere in the exception's chain, so one raised in a grain
  worker process counts too) or an ``OSError`` that means a bad path or a failing disk is printed as
  ``error: <message>`` and exits with its class's code (the table in ``semrel_jax/errors.py``); with
  ``--verbosity`` the traceback comes first. Anything else is a bug and keeps its full traceback.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags, logging

from semrel_jax import errors, huge_pages

FLAGS = flags.FLAGS
INTERRUPTED_EXIT_CODE = 130  # the shell's code for Ctrl-C
# Python loggers whose INFO/WARNING lines are about the machine, not the run (shown with --verbosity)
_NOISY_LOGGERS = ("jax._src.xla_bridge", "jax._src.compiler", "orbax", "transformers", "tensorstore")


def run(main: Callable[[list[str]], Any]) -> NoReturn:
    """Runs ``main(argv)`` as a command (see the module docstring); never returns."""
    huge_pages.reexec_with_huge_pages()  # first: glibc reads its tunables when the process starts
    if not any(arg.startswith(("--verbosity", "-v")) for arg in sys.argv[1:]):
        quiet_environment()  # before the config file (which imports JAX) is loaded
    app.run(lambda argv: call(main, argv), flags_parser=parse_flags)
    raise AssertionError("app.run returned")  # pragma: no cover - app.run always exits


def call(main: Callable[[list[str]], Any], argv: list[str]) -> int:
    """``main(argv)`` behind the error surface, after flags are parsed; returns the exit code."""
    verbose = _verbose()
    quiet_console(verbose)
    try:
        main(argv)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except app.UsageError as e:
        return report(errors.ConfigError(f"{e} (see --helpshort)"), e, verbose)
    except Exception as e:  # noqa: BLE001 - sorted into the user's errors and bugs below
        user = user_error(e)
        if user is None:
            raise  # a bug: the traceback is the report
        return report(user, e, verbose)


def report(user: errors.UserError, raised: BaseException, verbose: bool) -> int:
    """Prints ``error: <message>`` (after the traceback when verbose); returns the exit code."""
    _close_progress_bars()
    if verbose:
        traceback.print_exception(raised)
    sys.stderr.flush()
    print(f"error: {user}", file=sys.stderr)
    return user.exit_code


def _close_progress_bars() -> None:
    """Ends an open tqdm bar's line, so the error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def user_error(e: BaseException) -> errors.UserError | None:
    """The user's error behind ``e``: a UserError in its chain, else an OSError that names a path."""
    chain = _chain(e)  # grain re-raises a worker's error with the original as cause or context
    for link in chain:
        if isinstance(link, errors.UserError):
            return link
    config_file = config_file_error(e, sys.argv)  # ml_collections reports a missing file when the config is read
    if config_file is not None:
        return config_file
    for link in chain:
        if isinstance(link, OSError):
            return errors.from_os_error(link)
    cls = errors.errno_class(errors.os_error_code(e))  # tensorstore's errors carry the errno in their text
    return cls(_one_line(e)) if cls is not None else None


# ------------------------------------------------------------------------------------------------ flags


def parse_flags(argv: list[str], flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """absl parsing; a flag or config-file mistake exits with one line and ConfigError's code (2)."""
    try:
        rest = flag_values(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, OSError) as e:
        message = flag_error_message(e, argv)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(errors.ConfigError.exit_code)
    joined = joined_overrides(argv, flag_values)
    if joined:
        print(f"error: {', '.join(joined)} given more than once: give a tuple key once (ml_collections joins its "
              f"values, --config.k=(0,) --config.k=(1,) making (0, 1), where a scalar key keeps the last)",
              file=sys.stderr)
        sys.exit(errors.ConfigError.exit_code)
    return rest


def flag_error_message(e: BaseException, argv: list[str]) -> str | None:
    """One line for a parsing error of absl / ml_collections (None: not a flag mistake)."""
    chain = _chain(e)
    hint = next((c for c in chain if isinstance(c, KeyError) and "Did you mean" in _text(c)), None)
    if hint is not None or (isinstance(chain[-1], (KeyError, AttributeError)) and not isinstance(e, flags.Error)):
        # ml_collections: KeyError("'num_stepz'\nDid you mean \"num_steps\" ...?"), re-raised as AttributeError
        key, _, did_you_mean = _text(hint or chain[-1]).partition("\n")
        key = key.strip("'\"")
        culprit = next((a for a in argv if a.startswith("--config.") and a[2:].split("=")[0].endswith(f".{key}")), None)
        where = culprit.split("=")[0] if culprit else f"config key {key!r}"
        return f"{where}: the config has no key {key!r}. {did_you_mean.strip() or 'See the config file for its keys.'}"
    config_file = config_file_error(e, argv)
    if config_file is not None:
        return str(config_file)
    if isinstance(e, flags.Error):
        text = _one_line(e).removeprefix("flag ")
        if "Error whilst parsing config file" in text and chain[-1] is not e:  # the config file's get_config raised
            return f"{text.split(':', 1)[0]}: {_one_line(chain[-1])}"
        if "invalid literal" in text or "could not convert" in text:
            return f"{text}; give a value of the key's type"
        if isinstance(e, flags.UnrecognizedFlagError) and text.startswith("Unknown command line flag 'config.") \
                and flag_value(argv, "config") is None:
            return f"{text}: --config.<key> overrides need a config file, e.g. --config=configs/vqa.py:tiny"
        return f"{text} (see --helpshort)"
    return None


def config_file_error(e: BaseException, argv: list[str]) -> errors.ConfigError | None:
    """ml_collections' OSError for a config file that cannot be loaded, as one line (None: not that)."""
    for link in _chain(e):
        if isinstance(link, OSError) and "Failed loading config file" in str(link):
            flag = _config_flag(argv)
            reason = str(link).strip().splitlines()[-1].strip()
            return errors.ConfigError(f"{flag}: cannot load the config file ({reason})")
    return None


def joined_overrides(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
    """The ``--config.<key>`` overrides of a tuple or list key that ``argv`` gives more than once (either form),
    sorted: ml_collections joins such values rather than keeping the last, as it (and absl) does for a scalar."""
    flags_ = [arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]
    config = flag_values["config"].value if "config" in flag_values else None
    joined = []
    for flag in sorted({f for f in flags_ if flags_.count(f) > 1}):
        value = config
        for part in flag.removeprefix("--config.").split("."):
            value = getattr(value, part, None)
        if isinstance(value, (tuple, list)):
            joined.append(flag)
    return joined


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``argv`` (the last wins, as in absl), before parsing."""
    for i in range(len(argv) - 1, 0, -1):
        if argv[i].startswith(f"--{name}="):
            return argv[i].split("=", 1)[1]
        if argv[i] == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _config_flag(argv: list[str]) -> str:
    value = flag_value(argv, "config")
    return "--config" if value is None else f"--config={value}"


def _chain(e: BaseException) -> list[BaseException]:
    """``e``, its cause (or context), that one's cause, ...: outermost first."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _text(e: BaseException) -> str:
    return e.args[0] if e.args and isinstance(e.args[0], str) else str(e)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# ---------------------------------------------------------------------------------------------- console


def quiet_environment() -> None:
    """The environment switches of the C++ runtimes' and transformers' own logging (read when they load)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # XLA's C++ log lines ("Very slow compile?" alarms, ...)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class _LibraryRecords(std_logging.Filter):
    """Drops what Orbax logs through absl (its own tracebacks of a failed save, ...): the error surface reports
    the failure once, as the user's error."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return f"{os.sep}orbax{os.sep}" not in record.pathname


def _verbose() -> bool:
    """Whether the user asked for the library logs (absl's ``--verbosity`` / ``-v`` flag)."""
    return "verbosity" in FLAGS and FLAGS["verbosity"].present


def quiet_console(verbose: bool = False) -> None:
    """Only the command's own output: library INFO and machine notices off (all on when ``verbose``)."""
    if verbose:
        return
    quiet_environment()
    logging.set_verbosity(logging.WARNING)
    absl_logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _LibraryRecords) for f in absl_logger.filters):
        absl_logger.addFilter(_LibraryRecords())
    for name in _NOISY_LOGGERS:
        std_logging.getLogger(name).setLevel(std_logging.ERROR)
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()
