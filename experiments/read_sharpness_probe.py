"""Where a trained model's memory read looks, on a generated relational set (experiments/relational_sets.py).

    python experiments/read_sharpness_probe.py WORKDIR [NUM_QUESTIONS]

For each evaluation question, at every text position and in every LLM block, ICA's read weights over the memory
slots (``Intermediates.alpha``, normalised per row): how peaked they are (the largest weight; 1 / N_mem is a
uniform read), split by the kind of word at that position (a colour word of the question, or any other token),
and at each colour word the share of the weight on the slots that hold that colour's object (the patches with at
least 10 % of their pixels in it) against the share those slots would get from a uniform read. A model that binds
the colour word to its object reads those slots at that word. Needs a run of ``model.encoders`` = one ``vit`` with
no pooling and no class token in the memory (the ``scratch`` preset's). Results: experiments/LOG.md.
"""

from __future__ import annotations

import collections
import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from semrel_jax import recipe
from semrel_jax.data import pipeline
from semrel_jax.evaluation.predictor import Predictor

_SETS = pathlib.Path(__file__).resolve().parent / "relational_sets.py"
_spec = importlib.util.spec_from_file_location("relational_sets", _SETS)
relational_sets = sys.modules["relational_sets"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relational_sets)


def object_slots(image: np.ndarray, colour: str, size: int, patch: int) -> np.ndarray:
    """``[grid²]`` bool: the patches of the ``size`` px model input with >= 10 % of their pixels in ``colour``."""
    mask = (image == np.asarray(relational_sets.PALETTE[colour], np.uint8)).all(-1).astype(np.uint8) * 255
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST)) > 0
    grid = size // patch
    return mask.reshape(grid, patch, grid, patch).mean((1, 3)).reshape(-1) >= 0.1


def main(workdir: str, num_questions: int = 120) -> None:
    predictor = Predictor.load(workdir)
    model, c = predictor.model(), predictor.config
    vit = c.model.encoders.vit
    evaluation = recipe.build_data(c).eval
    tokenizer = predictor.featurizer.tokenizer
    examples = [evaluation[i] for i in range(min(num_questions, len(evaluation)))]
    batch = jax.tree.map(jnp.asarray, pipeline.stack([predictor.featurizer.prompt(e) for e in examples]))
    _, readouts = model(batch["images"], batch["has_image"], batch["prompt"], batch["prompt_valid"], capture=True)
    alpha = np.asarray(readouts.alpha, np.float64)  # [L, B, T, N_mem]
    alpha = alpha / alpha.sum(-1, keepdims=True)
    blocks, _, _, slots = alpha.shape
    peak = collections.defaultdict(list)  # (block, 'colour word' | 'other') -> max weight per row
    on_object = collections.defaultdict(list)  # block -> (weight on the object's slots, uniform share)
    for b, example in enumerate(examples):
        words = tokenizer.convert_ids_to_tokens(np.asarray(batch["prompt"][b]).tolist())
        for t, (word, valid) in enumerate(zip(words, np.asarray(batch["prompt_valid"][b]))):
            if not valid:
                continue
            is_colour = word in relational_sets.PALETTE
            if is_colour:
                target = object_slots(example["image"], word, vit.image_size, vit.patch_size)
            for block in range(blocks):
                peak[block, "colour word" if is_colour else "other"].append(alpha[block, b, t].max())
                if is_colour and target.any():
                    on_object[block].append((alpha[block, b, t][target].sum(), target.mean()))
    print(f"{len(examples)} questions, {slots} memory slots (a uniform read puts {1 / slots:.3f} on each)")
    for block in range(blocks):
        colour, other = np.mean(peak[block, "colour word"]), np.mean(peak[block, "other"])
        weight, uniform = np.mean(on_object[block], axis=0)
        print(f"block {block}: largest weight at colour words {colour:.3f}, at other tokens {other:.3f}; "
              f"at a colour word, weight on that object's slots {weight:.3f} (uniform read: {uniform:.3f})")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
