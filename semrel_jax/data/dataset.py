"""What a dataset module declares about itself: one :class:`Dataset` spec (``DATASET``), listed once in
``semrel_jax.data.registry``. Everything that depends on ``data.name`` lives in the spec; no other module
names a dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from semrel_jax import errors
from semrel_jax.data.source import Source

Config = ml_collections.ConfigDict


def _no_checks(c: Config) -> None:
    del c


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The spec of one ``data.name``.

    name: the ``data.name`` that selects it.
    defaults: the dataset-specific ``config.data`` keys it owns, each with its one default (the base config
        holds the union of all datasets'; generic keys such as ``root`` or ``train_split`` are not here).
    build: ``c -> (train_source, eval_source)`` from the raw data (files are read here, never in validate).
    record_settings: ``c -> dict``: the config values that decide which records the two sources hold and
        what they contain (a prepared copy stores them and is only read under the same values); file
        locations are not among them, ``name`` is added by the registry.
    score: ``(rows, train_source, eval_source) -> report``: ``rows`` are the evaluated examples, ``{"index",
        "prediction"}`` plus ``eval_source.metadata(index)``; the report is a flat dict with ``accuracy*`` (or
        caption metric) keys and ``num_examples``.
    validate: ``c -> None``, pure (no file is read); raises ``semrel_jax.errors.ConfigError`` naming the key.
    prompt_formats: the ``data.prompt_format`` values it takes (real datasets format their own prompts:
        ``raw``, or the tokenizer's ``chat`` template; ``qa`` wraps only the built-in questions).
    splits: the ``(train, eval)`` split names used when ``data.train_split`` / ``data.eval_split`` are ''.
    mix: ``(name, c -> weight)``: the registered dataset whose raw training source (built from the same
        config) is mixed into this one's training, a ``weight`` fraction of the examples (0: no mixture);
        its ``validate`` then also runs. None: this dataset mixes nothing in.
    groups_by_image: whether ``data.examples_per_image > 1`` works (the sources implement ``image_groups``).
    semvlp_rows: what its records become under ``model.semvlp.data=records`` (``data/semvlp_records.py``):
        ``"captions"`` (ITM + MLM), ``"questions"`` (VQA over the training answers) or ``"pairs"`` (NLVR2);
        ``""``: SemVLP does not read it.
    """

    name: str
    defaults: Mapping[str, Any]
    build: Callable[[Config], tuple[Source, Source]]
    record_settings: Callable[[Config], dict]
    score: Callable[[Sequence[dict], Source, Source], dict]
    validate: Callable[[Config], None] = _no_checks
    prompt_formats: tuple[str, ...] = ("raw", "chat")
    splits: tuple[str, str] = ("train", "test")
    mix: tuple[str, Callable[[Config], float]] | None = None
    groups_by_image: bool = False
    semvlp_rows: str = ""

    def split_names(self, d: ml_collections.ConfigDict) -> tuple[str, str]:
        """The ``(train, eval)`` split names of ``config.data`` ``d``, defaults resolved."""
        return d.train_split or self.splits[0], d.eval_split or self.splits[1]

    def split_settings(self, d: ml_collections.ConfigDict, **extra) -> dict:
        """An on-disk reader's ``record_settings``: the bad-data policy and the two splits, plus ``extra``."""
        train, evaluation = self.split_names(d)
        return dict(on_bad_data=d.on_bad_data, train_split=train, eval_split=evaluation, **extra)

    def check_splits(self, d: ml_collections.ConfigDict, valid: Callable[[str], bool], expected: str) -> None:
        """Raises ConfigError naming ``data.train_split`` / ``data.eval_split`` (defaults resolved) when ``valid``
        refuses it: "<expected>, got '<split>'"."""
        for key, split in zip(("data.train_split", "data.eval_split"), self.split_names(d)):
            errors.check(valid(split), key, f"{expected}, got {split!r}")
