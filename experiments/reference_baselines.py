"""What a known-good architecture learns from Sort-of-CLEVR question-answer pairs alone, at our budgets.

Calibration for issue #19's Sort-of-CLEVR goals (>= 0.95 relational in <= 30 CPU-minutes from random init):
Santoro et al.'s two Sort-of-CLEVR models, written here in plain JAX and trained on the same built-in data
(`semrel_jax.data.sort_of_clevr`, the demo's 10,000 training images x 20 questions), with the paper's
question encoding (no words to learn: a one-hot of the colour and of the question kind) and a
classifier over the answers:

  cnn_mlp  4 conv layers (24 channels, 3x3, stride 2, ReLU) -> 5x5x24 features, concatenated with the question
           -> MLP 256-256 -> answer
  rn       the same CNN; every pair of its 25 cells (with their coordinates) and the question -> g (4 x 256,
           ReLU), averaged -> f (256-256) -> answer (the Relation Network)

    python experiments/reference_baselines.py --model=rn --examples=128000,512000 --batch_size=64

Prints test accuracy (non-relational / relational / per kind, 2,000 questions) at each example count and the
training wall time so far. No dropout or batch norm (the paper has BN; they matter little at this size).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from semrel_jax.data import sort_of_clevr as soc

_MODEL = flags.DEFINE_enum("model", "cnn_mlp", ["cnn_mlp", "rn"], "Which reference model.")
_EXAMPLES = flags.DEFINE_list("examples", ["128000"], "Evaluate after this many training examples (ascending).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 2.5e-4, "Adam learning rate (the paper: 2.5e-4).")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation and shuffling seed.")
_TRAIN_IMAGES = flags.DEFINE_integer("train_images", 10_000, "Training images (x 20 questions).")
_EVAL = flags.DEFINE_integer("eval_examples", 2000, "Test questions.")

KINDS = soc.NON_RELATIONAL_KINDS + soc.RELATIONAL_KINDS
ANSWERS = sorted({a for answers in soc.answer_space().values() for a in answers})


def encode(source: soc.SortOfClevr, limit: int | None = None):
    """Images ``[N_img, 75, 75, 3]`` uint8, and per question: image index, question one-hot [11], answer, kind."""
    images, image_of, questions, answers, kinds = [], [], [], [], []
    for i in range(source.num_images):
        if limit is not None and len(answers) >= limit:
            break
        scene = source.scene(i)
        images.append(soc.render(scene))
        for q in source.questions(i):
            code = np.zeros(len(soc.COLORS) + len(KINDS), np.float32)
            code[soc.COLORS.index(q.color)] = 1.0
            code[len(soc.COLORS) + KINDS.index(q.kind)] = 1.0
            image_of.append(len(images) - 1)
            questions.append(code)
            answers.append(ANSWERS.index(q.answer))
            kinds.append(KINDS.index(q.kind))
    arrays = (np.stack(images), np.array(image_of), np.stack(questions), np.array(answers), np.array(kinds))
    if limit is not None:
        arrays = arrays[:1] + tuple(a[:limit] for a in arrays[1:])
    return arrays


def init_params(key, model: str):
    keys = iter(jax.random.split(key, 16))

    def dense(n_in, n_out):
        return {"w": jax.random.normal(next(keys), (n_in, n_out)) * np.sqrt(2.0 / n_in), "b": jnp.zeros(n_out)}

    conv = [{"w": jax.random.normal(next(keys), (3, 3, c_in, 24)) * np.sqrt(2.0 / (9 * c_in)), "b": jnp.zeros(24)}
            for c_in in (3, 24, 24, 24)]
    question = len(soc.COLORS) + len(KINDS)
    if model == "cnn_mlp":
        head = [dense(25 * 24 + question, 256), dense(256, 256), dense(256, len(ANSWERS))]
        return {"conv": conv, "head": head}
    g = [dense(2 * 26 + question, 256), dense(256, 256), dense(256, 256), dense(256, 256)]
    f = [dense(256, 256), dense(256, 256), dense(256, len(ANSWERS))]
    return {"conv": conv, "g": g, "f": f}


def mlp(layers, x):
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def logits_fn(params, images, questions):
    """images ``[B, 75, 75, 3]`` float in [0, 1], questions ``[B, 11]`` -> answer logits ``[B, A]``."""
    x = images
    for layer in params["conv"]:
        x = jax.lax.conv_general_dilated(x, layer["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.relu(x + layer["b"])
    batch, height, width, _ = x.shape  # [B, 5, 5, 24]
    if "head" in params:
        return mlp(params["head"], jnp.concatenate([x.reshape(batch, -1), questions], -1))
    rows, cols = jnp.meshgrid(jnp.linspace(-1, 1, height), jnp.linspace(-1, 1, width), indexing="ij")
    cells = jnp.concatenate([x, jnp.broadcast_to(jnp.stack([rows, cols], -1), (batch, height, width, 2))], -1)
    cells = cells.reshape(batch, height * width, -1)  # [B, 25, 26]
    n = cells.shape[1]
    pairs = jnp.concatenate([
        jnp.broadcast_to(cells[:, :, None], (batch, n, n, cells.shape[-1])),
        jnp.broadcast_to(cells[:, None, :], (batch, n, n, cells.shape[-1])),
        jnp.broadcast_to(questions[:, None, None], (batch, n, n, questions.shape[-1])),
    ], -1)
    # g's last layer ReLU'd as in the paper; averaged over the 625 pairs where the paper sums (the same up to a
    # factor f's first layer absorbs; a sum starts with logits ~600x too large at this initialisation)
    relations = jax.nn.relu(mlp(params["g"], pairs)).mean((1, 2))
    return mlp(params["f"], relations)


def main(argv):
    del argv
    try:
        budgets = sorted(int(e) for e in _EXAMPLES.value)
    except ValueError:
        raise app.UsageError(f"--examples: expected integers, got {_EXAMPLES.value}") from None
    train = encode(soc.SortOfClevr("train", _TRAIN_IMAGES.value, seed=0))
    test = encode(soc.SortOfClevr("test", _EVAL.value // 20 + 1, seed=0), limit=_EVAL.value)
    params = init_params(jax.random.PRNGKey(_SEED.value), _MODEL.value)
    optimizer = optax.adam(_LR.value)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, questions, answers):
        def loss_fn(p):
            logits = logits_fn(p, images.astype(jnp.float32) / 255.0, questions)
            return optax.softmax_cross_entropy_with_integer_labels(logits, answers).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda p, images, questions: jnp.argmax(logits_fn(p, images / 255.0, questions), -1))
    rng = np.random.default_rng(_SEED.value)
    order, seen, trained_seconds = rng.permutation(len(train[3])), 0, 0.0
    print(f"{_MODEL.value}: {sum(x.size for x in jax.tree.leaves(params)):,} params, {len(train[3]):,} training "
          f"questions, batch {_BATCH.value}, lr {_LR.value}; {jax.devices()[0].device_kind}")
    for budget in budgets:
        start = time.time()
        while seen < budget:
            if len(order) < _BATCH.value:
                order = rng.permutation(len(train[3]))
            index, order = order[: _BATCH.value], order[_BATCH.value:]
            params, opt_state, loss = step(params, opt_state, train[0][train[1][index]], train[2][index], train[3][index])
            seen += _BATCH.value
        jax.block_until_ready(params)
        trained_seconds += time.time() - start
        predictions = np.concatenate([
            np.asarray(predict(params, test[0][test[1][i:i + 500]].astype(np.float32), test[2][i:i + 500]))
            for i in range(0, len(test[3]), 500)
        ])
        correct = predictions == test[3]
        by_kind = {k: correct[test[4] == i].mean() for i, k in enumerate(KINDS)}
        non_rel = correct[np.isin(test[4], [KINDS.index(k) for k in soc.NON_RELATIONAL_KINDS])].mean()
        rel = correct[np.isin(test[4], [KINDS.index(k) for k in soc.RELATIONAL_KINDS])].mean()
        print(f"{seen:>9,} examples ({trained_seconds:6.0f} s training, last loss {float(loss):.3f}): "
              f"non-relational {non_rel:.3f} relational {rel:.3f} | "
              + " ".join(f"{k} {v:.3f}" for k, v in by_kind.items()), flush=True)


if __name__ == "__main__":
    app.run(main)
