"""Can a SiLU memory read (ICA's α = SiLU(q·K)) pick the nearest object, given perfect object features?

    python experiments/memory_read_probe.py                               # 2 reads, width 64 (the demo LLM's)
    python experiments/memory_read_probe.py --reads=3 --dim=128           # more reads, wider

A probe of the hypothesis in experiments/LOG.md ("Distance comparison"), free of vision: the memory is the six objects'
exact features ([x, y] / image size, one-hot colour, one-hot shape; Sort-of-CLEVR scenes from
``semrel_jax.data.sort_of_clevr.generate_scene``), linearly embedded to keys and values. A query built from the
question (named colour + kind) reads it ``--reads`` times, each read followed by a residual MLP, as the LLM's
blocks do; a linear head answers the shape. The only difference between the two arms is the read's weights:

  silu     α = SiLU(q Kᵀ), no normalisation (ICA without its mask)
  ica      the same read through ``semrel_jax.method.ica.inheritable_cross_attention`` with the inheritance
           mask on (``--delta``, ``--lam``; carried from read to read as in the LLM's blocks)
  softmax  α = softmax(q Kᵀ / sqrt(d))      (ordinary attention)

    python experiments/memory_read_probe.py --arms=ica --delta=0.67 --lam=0    # mask keeps each row's top 2 of 6

Reports held-out accuracy per kind for each arm, and the accuracy of the "most common other shape" cue.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from semrel_jax.method import ica

_STEPS = flags.DEFINE_integer("steps", 20000, "Training steps per arm.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size.")
_SCENES = flags.DEFINE_integer("scenes", 100000, "Training scenes (held-out: a quarter of that, other seeds).")
_DIM = flags.DEFINE_integer("dim", 64, "Width.")
_READS = flags.DEFINE_integer("reads", 2, "Memory reads (blocks).")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
_ARMS = flags.DEFINE_list("arms", ["silu", "softmax"], "Reads to compare: silu | ica | softmax.")
_DELTA = flags.DEFINE_float("delta", 0.3, "ica arm: fraction of each row's slots treated as low-correlation.")
_LAM = flags.DEFINE_float("lam", 0.85, "ica arm: decay multiplied into the mask for those slots.")

KINDS = ("closest", "furthest")


def make_data(num_scenes: int, seed: int):
    """Objects ``[N, 6, 10]``, query ``[N, 2]`` (colour, kind), answer ``[N]`` (shape id), cue ``[N]``."""
    from semrel_jax.data import sort_of_clevr as soc

    rng = np.random.default_rng(seed)
    objects, queries, answers, cues = [], [], [], []
    for _ in range(num_scenes):
        scene = soc.generate_scene(rng)
        shape_ids = np.array([soc.SHAPES.index(s) for s in scene.shapes])
        feats = np.concatenate(
            [scene.centers / scene.image_size, np.eye(6), np.eye(len(soc.SHAPES))[shape_ids]], axis=1
        )
        color, kind = int(rng.integers(6)), int(rng.integers(len(KINDS)))
        d2 = ((scene.centers - scene.centers[color]) ** 2).sum(-1).astype(np.float64)
        d2[color] = np.inf if kind == 0 else -np.inf
        target = int(np.argmin(d2) if kind == 0 else np.argmax(d2))
        others = np.delete(shape_ids, color)
        objects.append(feats)
        queries.append((color, kind))
        answers.append(shape_ids[target])
        cues.append(int(np.bincount(others, minlength=2).argmax()))
    return (np.asarray(objects, np.float32), np.asarray(queries, np.int32), np.asarray(answers, np.int32),
            np.asarray(cues, np.int32))


def init(key, dim: int, reads: int):
    ks = iter(jax.random.split(key, 8 + 4 * reads))
    dense = lambda i, o: jax.random.normal(next(ks), (i, o)) / np.sqrt(i)  # noqa: E731
    params = {"color": jax.random.normal(next(ks), (6, dim)), "kind": jax.random.normal(next(ks), (2, dim)),
              "k": dense(10, dim), "v": dense(10, dim), "head": dense(dim, 2), "blocks": []}
    for _ in range(reads):
        params["blocks"].append({"q": dense(dim, dim), "o": dense(dim, dim), "up": dense(dim, 4 * dim),
                                 "down": dense(4 * dim, dim) * 0.1})
    return params


def forward(params, objects, queries, read: str):
    keys, values = objects @ params["k"], objects @ params["v"]  # [B, 6, d]
    h = params["color"][queries[:, 0]] + params["kind"][queries[:, 1]]  # [B, d]
    memory = ica.Memory(keys, values, jnp.asarray(True))
    config = ica.ICAConfig(scale=1.0, delta=_DELTA.value, lam=_LAM.value, dropout=0.0)
    mask = jnp.ones(keys.shape[:2])[:, None, :]  # [B, T=1, 6]
    for block in params["blocks"]:
        q = _norm(h) @ block["q"]
        if read == "ica":
            read_out, mask = ica.inheritable_cross_attention(q[:, None], memory, mask, config)
            h = h + read_out[:, 0] @ block["o"]
        else:
            scores = jnp.einsum("bd,bnd->bn", q, keys)
            alpha = jax.nn.silu(scores) if read == "silu" else jax.nn.softmax(scores / np.sqrt(q.shape[-1]), -1)
            h = h + jnp.einsum("bn,bnd->bd", alpha, values) @ block["o"]
        h = h + jax.nn.gelu(_norm(h) @ block["up"]) @ block["down"]
    return _norm(h) @ params["head"]


def _norm(x):
    return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def train_arm(read: str, data, held_out, steps: int, batch: int, dim: int, reads: int, lr: float):
    params = init(jax.random.PRNGKey(0), dim, reads)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))
    state = opt.init(params)

    @jax.jit
    def step(params, state, objects, queries, answers):
        def loss_fn(p):
            logits = forward(p, objects, queries, read)
            return optax.softmax_cross_entropy_with_integer_labels(logits, answers).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    objects, queries, answers, _ = data
    rng = np.random.default_rng(1)
    for _ in range(steps):
        idx = rng.integers(0, len(answers), batch)
        params, state, loss = step(params, state, objects[idx], queries[idx], answers[idx])
    obj, que, ans, _ = held_out
    pred = np.asarray(jnp.argmax(jax.jit(forward, static_argnums=3)(params, obj, que, read), -1))
    return float(loss), {k: float((pred == ans)[que[:, 1] == i].mean()) for i, k in enumerate(KINDS)}, pred


def main(argv):
    del argv
    t0 = time.time()
    data = make_data(_SCENES.value, seed=0)
    held_out = make_data(_SCENES.value // 4, seed=1)
    print(f"data: {time.time() - t0:.0f}s; {_SCENES.value} training / {_SCENES.value // 4} held-out scenes")
    _, que, ans, cue = held_out
    print("| read | held-out closest | held-out furthest | agrees with the cue | final train loss | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for read in _ARMS.value:
        t0 = time.time()
        loss, acc, pred = train_arm(read, data, held_out, _STEPS.value, _BATCH.value, _DIM.value, _READS.value,
                                    _LR.value)
        name = f"ica (delta {_DELTA.value}, lam {_LAM.value})" if read == "ica" else read
        print(f"| {name} | {acc['closest']:.3f} | {acc['furthest']:.3f} | {(pred == cue).mean():.3f} "
              f"| {loss:.4f} | {time.time() - t0:.0f} |")
    print(f"| cue: most common other shape | {(cue == ans)[que[:, 1] == 0].mean():.3f} "
          f"| {(cue == ans)[que[:, 1] == 1].mean():.3f} | 1.000 | | |")


if __name__ == "__main__":
    app.run(main)
