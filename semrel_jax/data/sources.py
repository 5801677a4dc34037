"""Deprecated: the old names of ``semrel_jax.data.registry``, kept only until ``training/train.py``,
``config.py``, ``inspect.py`` and ``benchmarks/relational_margins.py`` call the registry. Delete then."""

from __future__ import annotations

from semrel_jax.data import registry

NAMES = registry.names()
build_sources = registry.build_sources
build_mix_source = registry.mix_source
record_settings = registry.record_settings
vocabulary = registry.vocabulary
