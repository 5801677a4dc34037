"""The evaluation-during-training keys: one default each, checked by config validation naming the key."""

import pytest

from semrel_jax import config as config_lib
from semrel_jax.errors import ConfigError


def test_eval_during_training_is_off_by_default_and_bad_values_name_their_key(tiny_config):
    assert tiny_config.train.eval_every == 0  # evaluate only at the end
    config_lib.validate(tiny_config)
    for key in ("eval_every", "eval_examples", "eval_samples"):
        c = tiny_config.copy_and_resolve_references()
        c.train[key] = -1
        with pytest.raises(ConfigError, match=f"config.train.{key}: expected a non-negative integer"):
            config_lib.validate(c)
