"""Configs: the schema and its defaults, the explicit resolve step, pure validation, the typed model config.

    c = configs/vqa.py's get_config(...)      # defaults.base_config() + a preset + command-line overrides
    filled = config.prepare(c)                # resolve (hf_dir, unset preprocessing) + validate; what it filled
    vlm = config.model_config(c, vocab_size)  # the typed VLMConfig the model is built from
"""

from semrel_jax.config.defaults import DTYPES, base_config, encoder_defaults, from_saved
from semrel_jax.config.model import model_config
from semrel_jax.config.resolve import resolve
from semrel_jax.config.validate import (
    check_attention_runs_on, check_batch_fits_mesh, parse_start, validate, validate_eval,
)
from semrel_jax.errors import ConfigError


def prepare(c) -> list[str]:
    """``resolve`` then ``validate``; returns the lines ``resolve`` filled (callers log them)."""
    filled = resolve(c)
    validate(c)
    return filled


__all__ = [
    "DTYPES", "ConfigError", "base_config", "check_attention_runs_on", "check_batch_fits_mesh", "encoder_defaults",
    "from_saved", "model_config", "parse_start", "prepare", "resolve", "validate", "validate_eval",
]
