"""How well does a checkpoint fit the Sort-of-CLEVR relations description, answer slot by answer slot?

    python experiments/relations_fit.py --workdir=/tmp/run                # latest checkpoint, 400 images per split
    python experiments/relations_fit.py --workdir=/tmp/run --step=5000 --images=1000

For runs trained with ``data.caption_kinds`` containing ``relations``: each row states, per object in colour
order, the shape of its closest and furthest other object and how many others share its shape
(``semrel_jax/data/sort_of_clevr_captions.py``). Teacher-forced (every earlier word of the row given), the
model's next-word accuracy is reported per slot (colour / closest / furthest / count), on training images and
on held-out ones. Low accuracy on the *training* images means the model cannot fit that relation (capacity or
steps), not that it fails to generalise.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the latest).")
_IMAGES = flags.DEFINE_integer("images", 400, "Images per split (a multiple of --batch_size).")
_BATCH = flags.DEFINE_integer("batch_size", 100, "Rows per forward pass.")
flags.mark_flags_as_required(["workdir"])

SLOTS = ("colour", "closest", "furthest", "count")
MODEL_INPUTS = ("images", "has_image", "tokens", "valid")


def main(argv):
    del argv
    import jax
    from flax import nnx

    from semrel_jax import export
    from semrel_jax.data import sort_of_clevr
    from semrel_jax.data.sort_of_clevr_captions import SortOfClevrCaptions
    from semrel_jax import recipe

    if _IMAGES.value % _BATCH.value:
        raise ValueError("--images must be a multiple of --batch_size")
    model, c, tokenizer, step = export.restore_model(_WORKDIR.value, None if _STEP.value < 0 else _STEP.value)
    featurizer = recipe.build_featurizer(c, tokenizer)
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, batch):
        logits = nnx.merge(graphdef, state)(*(batch[k] for k in MODEL_INPUTS), mask_enabled=True, dropout_key=None)
        return logits.argmax(-1)

    words = 4 * sort_of_clevr.NUM_OBJECTS
    print(f"{_WORKDIR.value} step {step}: teacher-forced accuracy per slot of the relations description")
    print("| images | " + " | ".join(SLOTS) + " |")
    print("| --- |" + " --- |" * len(SLOTS))
    for split in ("train", "test"):
        source = SortOfClevrCaptions(split, _IMAGES.value, c.seed, c.data.object_size, kinds=("relations",))
        hits, rows = np.zeros(len(SLOTS)), 0
        for start in range(0, _IMAGES.value, _BATCH.value):
            features = [featurizer.train(source[i]) for i in range(start, start + _BATCH.value)]
            batch = jax.tree.map(lambda *xs: np.stack(xs), *[{k: f[k] for k in MODEL_INPUTS + ("targets", "loss_mask")}
                                                             for f in features])
            predicted = np.asarray(predict(state, {k: batch[k] for k in MODEL_INPUTS}))
            for r in range(_BATCH.value):
                positions = np.flatnonzero(batch["loss_mask"][r])[:words]  # the words, not the EOS
                right = predicted[r, positions] == batch["targets"][r, positions]
                hits += right.reshape(sort_of_clevr.NUM_OBJECTS, len(SLOTS)).sum(0)
                rows += sort_of_clevr.NUM_OBJECTS
        label = "training" if split == "train" else "held-out"
        print(f"| {label} | " + " | ".join(f"{h / rows:.3f}" for h in hits) + " |")


if __name__ == "__main__":
    app.run(main)
