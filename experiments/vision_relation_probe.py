"""Can the demo's vision tower learn "closest" / "furthest" at all, when told every object's answer directly?

    python experiments/vision_relation_probe.py                             # the demo ViT (depth 2, width 64)
    python experiments/vision_relation_probe.py --depth=3 --steps=12000
    python experiments/vision_relation_probe.py --memory_from=/tmp/relational    # a trained VLM's memory, frozen

The LLM side is taken out: our ViT (``semrel_jax.models.vit``, the demo's patch 15 on 75 px, unit
normalisation) encodes a Sort-of-CLEVR image; one learned query per colour pools its output tokens with
softmax attention (the first-order lookup that the non-relational questions show is easy); a residual MLP and a
linear head then predict, for every colour, the object's own shape, the shape of its closest and of its
furthest other object. 18 supervised answers per image, batch 32, Adam with cosine decay, the same training
images as the VQA task. Prints held-out accuracy per target over training, and the "most common other shape"
cue's accuracy for comparison. If "closest" stays near the cue here too, the limit is the vision tower's
features (patch-15 fragments of objects, 64 wide), not the memory read of the LLM.

``--memory_from=<workdir>``: instead of training a tower, take a trained VLM's visual memory (its encoder
ensemble's output X_v, ``[B, N_mem, d_llm]``, what ICA reads), frozen, and train only the readout on it: does
the memory the LLM reads hold the answer, for a softmax read?
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

_STEPS = flags.DEFINE_integer("steps", 8000, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_TRAIN = flags.DEFINE_integer("train_images", 10000, "Training images (the VQA task's train split).")
_TEST = flags.DEFINE_integer("test_images", 2000, "Held-out images (its test split).")
_DEPTH = flags.DEFINE_integer("depth", 2, "ViT blocks.")
_WIDTH = flags.DEFINE_integer("width", 64, "ViT width.")
_HEADS = flags.DEFINE_integer("heads", 4, "ViT heads.")
_PATCH = flags.DEFINE_integer("patch_size", 15, "ViT patch size (75 px images).")
_RELATIVE = flags.DEFINE_bool("relative_position_bias", False, "ViT: learned relative position bias per head.")
_DISTANCE = flags.DEFINE_bool("distance_bias", False, "ViT: learned per-head bias linear in the patch offset and distance.")
_POSEMB = flags.DEFINE_enum("posemb", "learned", ["learned", "sincos2d"], "ViT position embedding.")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.")
_MEMORY_FROM = flags.DEFINE_string("memory_from", "", "Training workdir: probe its frozen visual memory instead.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 2000, "Steps between held-out evaluations.")

TARGETS = ("shape", "closest", "furthest")


def make_data(split: str, num_images: int):
    """Images ``[N, 75, 75, 3]`` uint8, answers ``[N, 6, 3]`` (shape ids), cue ``[N, 6]``."""
    from semrel_jax.data import sort_of_clevr as soc

    source = soc.SortOfClevr(split, num_images)
    images, answers, cues = [], [], []
    for i in range(num_images):
        scene = source.scene(i)
        images.append(soc.render(scene))
        shape_ids = np.array([soc.SHAPES.index(s) for s in scene.shapes])
        rows, cue = [], []
        for c, color in enumerate(soc.COLORS):
            rows.append([soc.SHAPES.index(soc.answer(scene, kind, color)) for kind in TARGETS])
            cue.append(int(np.bincount(np.delete(shape_ids, c), minlength=2).argmax()))
        answers.append(rows)
        cues.append(cue)
    return np.stack(images), np.asarray(answers, np.int32), np.asarray(cues, np.int32)


class Readout(nnx.Module):
    """One learned softmax query per colour over tokens ``[B, N, d]``, a residual MLP, a linear head."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.queries = nnx.Param(jax.random.normal(rngs.params(), (6, width)) * 0.02)
        self.key = nnx.Linear(width, width, rngs=rngs)
        self.value = nnx.Linear(width, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)
        self.head = nnx.Linear(width, 2 * len(TARGETS), rngs=rngs)

    def __call__(self, tokens):
        scores = jnp.einsum("cd,bnd->bcn", self.queries[...], self.key(tokens)) / np.sqrt(tokens.shape[-1])
        pooled = jnp.einsum("bcn,bnd->bcd", jax.nn.softmax(scores, -1), self.value(tokens))  # [B, 6, d]
        h = pooled + self.down(jax.nn.gelu(self.up(self.norm(pooled))))
        return self.head(h).reshape(*h.shape[:2], len(TARGETS), 2)  # [B, 6, 3, 2]


class Probe(nnx.Module):
    """Our ViT, trained from scratch, under the readout."""

    def __init__(self, depth: int, width: int, heads: int, patch_size: int, posemb: str, *, rngs: nnx.Rngs):
        from semrel_jax.models import vit

        config = vit.ViTConfig(image_size=75, patch_size=patch_size, width=width, depth=depth, heads=heads,
                               mlp_dim=3 * width, act="gelu", class_token=False, posemb=posemb,
                               relative_position_bias=_RELATIVE.value, distance_bias=_DISTANCE.value)
        self.vit = vit.ViT(config, rngs=rngs)
        self.depth = depth
        self.readout = Readout(width, rngs=rngs)

    def __call__(self, images):
        tokens = self.vit(images.astype(jnp.float32) / 255.0, (self.depth,))[0]  # [B, N_patches, d]
        return self.readout(tokens)


def frozen_memory(workdir: str, train_x, test_x):
    """A trained VLM's visual memory X_v of both image sets ``[N, N_mem, d_llm]`` float32, and d_llm."""
    from semrel_jax import export

    model, c, _, step = export.restore_model(workdir)
    (name, encoder), = c.model.encoders.items()
    if encoder.normalization != "unit" or encoder.image_size != 75:
        raise ValueError(f"{workdir}: expected the demo's 75 px 'unit'-normalised images")
    vision = model.vision
    encode = jax.jit(lambda images: vision({name: images.astype(jnp.float32) / 255.0}))
    memory = [np.concatenate([np.asarray(encode(x[i : i + 500])) for i in range(0, len(x), 500)]) for x in (train_x, test_x)]
    print(f"memory of {workdir} step {step}: {memory[0].shape[1:]} per image, frozen")
    return memory[0], memory[1], memory[0].shape[-1]


def main(argv):
    del argv
    t0 = time.time()
    train_x, train_y, _ = make_data("train", _TRAIN.value)
    test_x, test_y, test_cue = make_data("test", _TEST.value)
    print(f"data: {time.time() - t0:.0f}s; ViT depth {_DEPTH.value}, width {_WIDTH.value}, patch {_PATCH.value}, "
          f"{_POSEMB.value} position embedding, relative bias {_RELATIVE.value}, distance bias {_DISTANCE.value}; {_STEPS.value} steps × {_BATCH.value}")
    if _MEMORY_FROM.value:
        train_x, test_x, width = frozen_memory(_MEMORY_FROM.value, train_x, test_x)
        model = Readout(width, rngs=nnx.Rngs(0))
    else:
        model = Probe(_DEPTH.value, _WIDTH.value, _HEADS.value, _PATCH.value, _POSEMB.value, rngs=nnx.Rngs(0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, _LR.value, min(100, _STEPS.value // 10), _STEPS.value)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.95, weight_decay=0.02))
    graphdef, params = nnx.split(model)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, x):
        return nnx.merge(graphdef, params)(x).argmax(-1)

    def held_out(params):
        pred = np.concatenate([np.asarray(predict(params, test_x[i : i + 500])) for i in range(0, len(test_x), 500)])
        return [float((pred[..., k] == test_y[..., k]).mean()) for k in range(len(TARGETS))]

    print("| step | loss | held-out shape | closest | furthest | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    t0 = time.time()
    for i in range(1, _STEPS.value + 1):
        idx = rng.integers(0, len(train_x), _BATCH.value)
        params, opt_state, loss = step(params, opt_state, train_x[idx], train_y[idx])
        if i % _EVAL_EVERY.value == 0 or i == _STEPS.value:
            acc = held_out(params)
            print(f"| {i} | {float(loss):.3f} | " + " | ".join(f"{a:.3f}" for a in acc) + f" | {time.time() - t0:.0f} |",
                  flush=True)
    cue = [(test_cue == test_y[..., k]).mean() for k in (1, 2)]
    print(f"cue (most common other shape): closest {cue[0]:.3f}, furthest {cue[1]:.3f}")


if __name__ == "__main__":
    app.run(main)
