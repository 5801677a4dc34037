"""Summarise a config's model without allocating it: parameter table, totals, trainable count.

    python -m semrel_jax.summary --config=configs/vqa.py:tiny
    python -m semrel_jax.summary --config=configs/vqa.py:lsrm_13b --max_lines=40
    python -m semrel_jax.summary --config=configs/vqa.py --config.model.projector.hidden=128

The model is built with ``nnx.eval_shape`` (shapes and dtypes only), so a 13B model is inspected in
seconds on any machine. The trainable/frozen split is the training one (``train.trainable`` /
``train.frozen``, ``semrel_jax.training.partition``); frozen parameters are listed in
``train.frozen_dtype``, the precision they are stored in during training. The output ends with the two
lines ``total_params: N`` and ``trainable_params: N``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from semrel_jax import config as config_lib, recipe
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig
from semrel_jax.models import abstract as abstract_init
from semrel_jax.models.llama import Llama, LlamaConfig
from semrel_jax.training import partition


def abstract_model(config: VLMConfig, seed: int = 0) -> VisionLanguageModel:
    """The model with ``jax.ShapeDtypeStruct`` in place of every array; nothing is allocated."""
    return abstract_init.eval_shape(lambda: VisionLanguageModel(config, rngs=nnx.Rngs(params=seed)))


def abstract_llm(config: LlamaConfig, seed: int = 0) -> Llama:
    """The LLM alone, abstractly (for parameter counts of the bare LLM)."""
    return abstract_init.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(params=seed)))


def split_params(model: nnx.Module, trainable=(".*",), frozen=()):
    """``(trainable_params, frozen_params)`` States, split exactly as training splits them."""
    _, train_state, frozen_state, _ = nnx.split(model, partition.trainable_filter(trainable, frozen), nnx.Param, ...)
    return train_state, frozen_state


def param_counts(model: nnx.Module, trainable=(".*",), frozen=()) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts."""
    train_state, frozen_state = split_params(model, trainable, frozen)
    n_train = partition.count_params(train_state)
    return n_train + partition.count_params(frozen_state), n_train


def _as_dtype(tree, dtype):
    dtype = jnp.dtype(dtype)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _nbytes(tree) -> int:
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _table(tree, max_lines: int | None) -> str:
    if not jax.tree.leaves(tree):
        return "(none)"
    from clu import parameter_overview

    return parameter_overview.get_parameter_overview(tree, include_stats=False, max_lines=max_lines)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def report(c: ml_collections.ConfigDict, vocab_size: int, max_lines: int | None = None) -> str:
    """The text the command prints for config ``c``."""
    recipe.prepare_config(c)
    model = abstract_model(config_lib.model_config(c, vocab_size), seed=c.seed)
    train_state, frozen_state = split_params(model, c.train.trainable, c.train.frozen)
    train_tree = nnx.to_pure_dict(train_state)
    frozen_tree = _as_dtype(nnx.to_pure_dict(frozen_state), c.train.frozen_dtype)
    n_train, n_frozen = partition.count_params(train_tree), partition.count_params(frozen_tree)
    groups: dict[str, list[int]] = {}  # module -> [params, trainable]
    for tree, trains in ((train_tree, True), (frozen_tree, False)):
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = [str(getattr(k, "key", k)) for k in path]
            entry = groups.setdefault("/".join(keys[:3] if keys[0] == "vision" else keys[:1]), [0, 0])
            entry[0] += int(x.size)
            entry[1] += int(x.size) if trains else 0
    lines = [
        f"preset: {c.preset}",
        f"Trainable parameters (train.trainable={tuple(c.train.trainable)}, train.frozen={tuple(c.train.frozen)}):",
        _table(train_tree, max_lines),
        f"Frozen parameters (stored as {c.train.frozen_dtype}):",
        _table(frozen_tree, max_lines),
        "",
        f"{'module':<40} {'params':>16} {'trainable':>14}",
    ]
    lines += [f"{g:<40} {n:>16,} {t:>14,}" for g, (n, t) in sorted(groups.items())]
    lines += [
        "",
        f"parameter memory: trainable {_bytes(_nbytes(train_tree))} + frozen {_bytes(_nbytes(frozen_tree))}",
        f"total_params: {n_train + n_frozen}",
        f"trainable_params: {n_train}",
    ]
    return "\n".join(lines)


def _main_cli():
    from absl import app, flags
    from ml_collections import config_flags

    from semrel_jax import cli

    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "Config file, optionally with a preset: configs/vqa.py:tiny.")
    flags.DEFINE_integer(
        "vocab_size", 0, "Tokenizer size; 0: model.llm.vocab_size when set, else the built-in dataset's tokenizer."
    )
    flags.DEFINE_integer("max_lines", None, "Rows per parameter table (default: all).")
    flags.mark_flags_as_required(["config"])

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        c = FLAGS.config
        vocab = FLAGS.vocab_size or (0 if c.model.llm.vocab_size > 0 else recipe.tokenizer_vocab_size(c))
        print(report(c, vocab, FLAGS.max_lines))

    cli.run(main)


if __name__ == "__main__":
    _main_cli()
