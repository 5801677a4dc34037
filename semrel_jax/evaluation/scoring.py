"""Deprecated: the old names of ``semrel_jax.data.registry.describe`` / ``score`` (each dataset's scorer is
its ``Dataset.score``), kept only until ``training/train.py`` calls the registry. Delete then."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from semrel_jax.data import registry

describe = registry.describe


def score(name: str, rows: Sequence[dict], train_source, eval_source) -> dict:
    c = ml_collections.ConfigDict({"data": {"name": name}})
    return registry.score(c, rows, train_source, eval_source)
