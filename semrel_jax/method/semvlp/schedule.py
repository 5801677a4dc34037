"""The iterative schedule: which mode (single- or two-stream) a training step runs.

A pattern such as ``"s,t"`` (one single-stream step, then one two-stream step) or ``"s,s,t"`` repeats
forever. The mode of step ``n`` is ``pattern[n % len(pattern)]``: a pure function of the step number, so
a run resumed from any checkpoint continues exactly mid-pattern, with nothing else to save.
"""

from __future__ import annotations

from semrel_jax import errors

_LETTERS = {"s": "single", "t": "two"}


def parse_pattern(pattern: str, key: str = "semvlp.schedule") -> tuple[str, ...]:
    """``"s,s,t"`` -> ``("single", "single", "two")``; raises ConfigError naming ``key`` otherwise."""
    letters = [p.strip() for p in pattern.split(",")]
    bad = [p for p in letters if p not in _LETTERS]
    errors.check(
        not bad and bool(letters), key,
        f"{pattern!r} is not a mode pattern: comma-separated 's' (single-stream) / 't' (two-stream), e.g. 's,t'.",
    )
    return tuple(_LETTERS[p] for p in letters)


def mode_at(step: int, pattern: tuple[str, ...]) -> str:
    """The mode of training step ``step`` (0-based)."""
    return pattern[step % len(pattern)]
