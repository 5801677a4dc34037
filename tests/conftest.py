"""Shared fixtures: a tokenizer trained offline, the tiny config, absl flags marked parsed for grain."""

import os
import sys

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

# grain's worker processes read absl flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from semrel_jax.data import prompts, sort_of_clevr, tokenizer as tokenizer_lib

    words = sort_of_clevr.vocabulary() + prompts.template_words()
    return tokenizer_lib.load_or_train(str(tmp_path_factory.mktemp("tok")), words)


@pytest.fixture
def tiny_config():
    import vqa

    return vqa.get_config("tiny")
