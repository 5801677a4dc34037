"""Is it perception or relational learning? Issue #19's sets answered from object tokens instead of pixels.

A diagnostic, not a recipe: each image of a ``relational_sets.py`` set (LLaVA JSON) is cut into its objects
without any label, by background subtraction: the background is the image's median colour, a pixel is
foreground where a channel differs from it by more than 0.25, and each 4-connected component of at least 4
pixels (the 8 largest) becomes one token:

  [mean colour minus background (3), centre x, y - 0.5 (2), box width, height (2), 9 x 9 mask thumbnail (81)]

(``--colour=palette`` appends a one-hot of the nearest ``relational_sets.PALETTE`` colour: an oracle colour
name, to separate learning colours from learning relations). A small transformer (pre-LN, ``--layers`` x 64
wide, 4 heads; no position for the object tokens) reads ``[CLS] question words [objects]`` and classifies the
answer from CLS: the perception problem removed, what is left is binding words to objects and the relations.

``--warmup_kinds`` / ``--warmup_examples`` / ``--warmup_steps``: a curriculum. The first ``warmup_steps``
steps draw only from the first ``warmup_examples`` training questions of those kinds; the rest from all.

    python experiments/relational_sets.py --out /tmp/relA30k --variant A --train 30000 --eval 100 --seed 0
    python experiments/object_token_probe.py --data=/tmp/relA30k --steps=8000 \
        --warmup_kinds=left_of,above,nearest,farthest --warmup_examples=6000 --warmup_steps=3000

Prints the evaluation accuracy per kind every ``--eval_every`` steps, and at the end one JSON line with the
final accuracies and each kind's majority baseline (the training split's most frequent answer of that kind).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from PIL import Image
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relational_sets  # noqa: E402  (the palette, for --colour=palette)

MAX_OBJECTS = 8
THUMB = 9  # mask thumbnail side
FOREGROUND = 0.25  # largest channel difference from the background colour, in [0, 1]
MIN_PIXELS = 4
WIDTH, HEADS = 64, 4


def object_tokens(path: str, palette: bool) -> tuple[np.ndarray, np.ndarray]:
    """``tokens [MAX_OBJECTS, F]`` and ``valid [MAX_OBJECTS]`` of one image (largest components first)."""
    try:
        image = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    except (OSError, ValueError) as e:  # missing, truncated or not an image
        raise app.UsageError(f"cannot read image {path}: {e}") from None
    size = image.shape[0]
    background = np.median(image.reshape(-1, 3), 0)
    labels, count = ndimage.label(np.abs(image - background).max(-1) > FOREGROUND)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    colours = np.asarray(list(relational_sets.PALETTE.values()), np.float32) / 255
    width = 3 + 4 + THUMB * THUMB + (len(colours) if palette else 0)
    tokens = np.zeros((MAX_OBJECTS, width), np.float32)
    valid = np.zeros(MAX_OBJECTS, bool)
    boxes = ndimage.find_objects(labels)
    for slot, index in enumerate(np.argsort(-areas, kind="stable")[:MAX_OBJECTS]):
        mask = labels == index + 1
        if areas[index] < MIN_PIXELS:
            continue
        ys, xs = np.nonzero(mask)
        crop = mask[boxes[index]].astype(np.uint8) * 255
        thumb = np.asarray(Image.fromarray(crop).resize((THUMB, THUMB), Image.BILINEAR), np.float32) / 255
        mean = image[mask].mean(0)
        tokens[slot, :3] = mean - background
        tokens[slot, 3:7] = [xs.mean() / size - 0.5, ys.mean() / size - 0.5, crop.shape[1] / size, crop.shape[0] / size]
        tokens[slot, 7:7 + THUMB * THUMB] = thumb.ravel()
        if palette:
            tokens[slot, 7 + THUMB * THUMB + np.argmin(((colours - mean) ** 2).sum(1))] = 1.0
        valid[slot] = True
    return tokens, valid


def words(question: str) -> list[str]:
    return question.replace("<image>", " ").lower().replace("?", " ?").split()


def load(directory: str, split: str, palette: bool) -> dict:
    path = os.path.join(directory, f"{split}.json")
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise app.UsageError(f"cannot read {path} (a relational_sets.py output directory?): {e}") from None
    cache = {}
    for r in records:
        if r["image"] not in cache:
            cache[r["image"]] = object_tokens(os.path.join(directory, r["image"]), palette)
    return {
        "tokens": np.stack([cache[r["image"]][0] for r in records]),
        "valid": np.stack([cache[r["image"]][1] for r in records]),
        "question": [words(r["conversations"][0]["value"]) for r in records],
        "answer": [r["conversations"][1]["value"].strip().lower() for r in records],
        "kind": np.asarray([r.get("kind", "all") for r in records]),
    }


def select_kinds(split: dict, kinds: list[str]) -> dict:
    """The questions of ``split`` whose kind is one of ``kinds``."""
    keep = np.nonzero(np.isin(split["kind"], kinds))[0]
    return {k: [v[i] for i in keep] if isinstance(v, list) else v[keep] for k, v in split.items()}


def encode(split: dict, vocab: dict, answers: dict, length: int) -> dict:
    ids = np.zeros((len(split["question"]), length), np.int32)  # 0: padding
    for i, q in enumerate(split["question"]):
        ids[i, :len(q)] = [vocab.get(w, 1) for w in q[:length]]  # 1: unknown word
    return dict(split, ids=ids, label=np.asarray([answers.get(a, -1) for a in split["answer"]]))


def init_params(key, num_words: int, feature_dim: int, length: int, num_answers: int, layers: int) -> dict:
    keys = iter(jax.random.split(key, 8 + 4 * layers))

    def dense(n_in, n_out, scale=1.0):
        return jax.random.normal(next(keys), (n_in, n_out)) * scale / np.sqrt(n_in)

    return {
        "word": jax.random.normal(next(keys), (num_words, WIDTH)) * 0.1,
        "position": jax.random.normal(next(keys), (length + 1, WIDTH)) * 0.1,
        "kind": jax.random.normal(next(keys), (2, WIDTH)) * 0.1,  # text / object
        "object_in": dense(feature_dim, WIDTH), "object_bias": jnp.zeros(WIDTH), "object_out": dense(WIDTH, WIDTH),
        "answer": dense(WIDTH, num_answers),
        "blocks": [{"qkv": dense(WIDTH, 3 * WIDTH), "out": dense(WIDTH, WIDTH, 0.5), "up": dense(WIDTH, 3 * WIDTH),
                    "down": dense(3 * WIDTH, WIDTH, 0.5), "ln1": jnp.ones(WIDTH), "ln2": jnp.ones(WIDTH)}
                   for _ in range(layers)],
    }


def layer_norm(x, gain):
    x = x - x.mean(-1, keepdims=True)
    return gain * x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def logits_fn(params, tokens, valid, ids):
    """``tokens [B, K, F]``, ``valid [B, K]``, ``ids [B, L]`` -> answer logits ``[B, A]``."""
    batch = ids.shape[0]
    text_ids = jnp.concatenate([jnp.zeros((batch, 1), ids.dtype), ids], 1)  # CLS shares padding's row
    text = params["word"][text_ids] + params["position"][None] + params["kind"][0]
    objects = jax.nn.gelu(tokens @ params["object_in"] + params["object_bias"]) @ params["object_out"]
    x = jnp.concatenate([text, objects + params["kind"][1]], 1)
    keep = jnp.concatenate([jnp.ones((batch, 1), bool), ids > 0, valid], 1)
    for block in params["blocks"]:
        q, k, v = jnp.split((layer_norm(x, block["ln1"]) @ block["qkv"]).reshape(batch, x.shape[1], 3, HEADS, -1), 3, 2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q[:, :, 0], k[:, :, 0]) / np.sqrt(WIDTH // HEADS)
        weights = jax.nn.softmax(jnp.where(keep[:, None, None], scores, -1e9), -1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", weights, v[:, :, 0]).reshape(x.shape) @ block["out"]
        x = x + jax.nn.gelu(layer_norm(x, block["ln2"]) @ block["up"]) @ block["down"]
    return x[:, 0] @ params["answer"]


def main(argv):
    del argv
    f = flags.FLAGS
    started = time.time()
    train = load(f.data, "train", f.colour == "palette")
    evaluation = load(f.data, "eval", f.colour == "palette")
    if f.kinds:  # train and evaluate on these kinds only
        train, evaluation = select_kinds(train, f.kinds), select_kinds(evaluation, f.kinds)
    if not len(train["kind"]) or not len(evaluation["kind"]):
        raise app.UsageError(f"--kinds={','.join(f.kinds)} leaves no training or evaluation questions")
    print(f"object tokens: {train['valid'].sum(1).mean():.2f} per training image "
          f"({time.time() - started:.0f} s to extract)", flush=True)
    vocab = {w: i + 2 for i, w in enumerate(sorted({w for q in train["question"] for w in q}))}
    answers = {a: i for i, a in enumerate(sorted(set(train["answer"])))}
    length = max(len(q) for q in train["question"] + evaluation["question"])
    train, evaluation = (encode(s, vocab, answers, length) for s in (train, evaluation))
    kinds = sorted({str(k) for k in evaluation["kind"]})
    majority = {}
    for kind in kinds:
        values, counts = np.unique(np.asarray(train["answer"])[train["kind"] == kind], return_counts=True)
        majority[kind] = float(np.mean(np.asarray(evaluation["answer"])[evaluation["kind"] == kind] == values[counts.argmax()]))

    warmup = np.nonzero(np.isin(train["kind"], f.warmup_kinds or kinds))[0][:f.warmup_examples]
    if f.warmup_steps and not len(warmup):
        raise app.UsageError("--warmup_steps > 0 needs --warmup_examples > 0 and --warmup_kinds present in the data")
    params = init_params(jax.random.PRNGKey(f.seed), len(vocab) + 2, train["tokens"].shape[-1], length,
                         len(answers), f.layers)
    optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, f.learning_rate, 200, f.steps), weight_decay=0.01)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, tokens, valid, ids, label):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, tokens, valid, ids), label).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda p, t, v, i: logits_fn(p, t, v, i).argmax(-1))
    rng = np.random.default_rng(f.seed)
    train_seconds = 0.0
    for i in range(f.steps):
        if i < f.warmup_steps:
            index = warmup[rng.integers(0, len(warmup), f.batch_size)]
        else:
            index = rng.integers(0, len(train["ids"]), f.batch_size)
        tick = time.time()
        params, opt_state, loss = step(params, opt_state, *(train[k][index] for k in ("tokens", "valid", "ids", "label")))
        loss = float(loss)
        train_seconds += time.time() - tick
        if (i + 1) % f.eval_every == 0 or i + 1 == f.steps:
            correct = np.asarray(predict(params, *(evaluation[k] for k in ("tokens", "valid", "ids")))) == evaluation["label"]
            per_kind = {k: round(float(correct[evaluation["kind"] == k].mean()), 3) for k in kinds}
            print(f"step {i + 1} loss {loss:.3f} all {correct.mean():.3f} {per_kind} train {train_seconds:.0f} s", flush=True)
    print(json.dumps({"data": f.data, "seed": f.seed, "steps": f.steps, "kinds": f.kinds, "warmup": [f.warmup_kinds, f.warmup_examples, f.warmup_steps],
                      "colour": f.colour, "all": round(float(correct.mean()), 3), "per_kind": per_kind,
                      "majority": {k: round(v, 3) for k, v in majority.items()}, "train_seconds": round(train_seconds)}))


def _define_flags():
    flags.DEFINE_string("data", None, "A relational_sets.py output directory (train.json, eval.json, images/).", required=True)
    flags.DEFINE_integer("steps", 8000, "Training steps.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate (200 warmup steps, cosine decay).")
    flags.DEFINE_integer("layers", 3, "Transformer blocks.")
    flags.DEFINE_integer("seed", 0, "Initialisation and sampling seed.")
    flags.DEFINE_enum("colour", "mean", ["mean", "palette"], "Object colour: its mean RGB only, or + an oracle palette one-hot.")
    flags.DEFINE_list("kinds", [], "Train and evaluate on these question kinds only (empty: all).")
    flags.DEFINE_list("warmup_kinds", [], "Curriculum: the kinds the first --warmup_steps steps draw from (empty: all).")
    flags.DEFINE_integer("warmup_examples", 0, "Curriculum: only the first N training questions of those kinds.")
    flags.DEFINE_integer("warmup_steps", 0, "Curriculum: its length in steps (0: none).")
    flags.DEFINE_integer("eval_every", 1000, "Evaluate every N steps.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
