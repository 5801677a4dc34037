"""A loaded checkpoint that answers questions about single images as evaluation does, and explains its answers
(``python -m semrel_jax.predict`` is its command line).

    predictor = Predictor.load("/tmp/run")
    explanation = predictor.explain(image, "what shape is the red object")   # image: uint8 [H, W, 3]
    explanation.prediction, explanation.readouts["alpha"]                     # the answer, [L, n_tokens, N_mem]
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from semrel_jax import recipe
from semrel_jax.config import model as model_config
from semrel_jax.data import pipeline
from semrel_jax.errors import UserError
from semrel_jax.evaluation import explain as explain_lib
from semrel_jax.evaluation import generate
from semrel_jax.evaluation import loop as eval_loop
from semrel_jax.method.vlm import slot_layout


def load_model(checkpoint: str, step: int | None = None):
    """``(model, config, tokenizer)`` of a training workdir's checkpoint or of an export directory."""
    from semrel_jax import export  # export -> recipe -> ... imports the training stack: only when loading

    if not os.path.isdir(checkpoint):
        raise UserError(f"--checkpoint={checkpoint}: no such directory (a training workdir or an export directory)")
    if os.path.exists(os.path.join(checkpoint, "export.json")):
        exported = export.load_exported(checkpoint)
        return exported.model, exported.config, exported.tokenizer
    try:
        model, c, tokenizer, _ = export.restore_model(checkpoint, step)
    except FileNotFoundError as e:
        raise UserError(f"--checkpoint={checkpoint}: {e} Train into it first, or point at an export directory.") from None
    return model, c, tokenizer


class Predictor:
    """A loaded model that answers questions about images as evaluation does, and explains its answers."""

    def __init__(self, model, config, tokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.graphdef, state = nnx.split(model)
        self.states = (state,)
        self.featurizer = recipe.build_featurizer(config, tokenizer)
        self.layout = slot_layout(model_config.model_config(config, len(tokenizer)).vision)

    @classmethod
    def load(cls, checkpoint: str, step: int | None = None) -> "Predictor":
        return cls(*load_model(checkpoint, step))

    def model(self):
        """The ``VisionLanguageModel`` (e.g. for a ``capture=True`` pass of your own)."""
        return nnx.merge(self.graphdef, *self.states)

    def explain(self, image: np.ndarray, question: str):
        """The answer to ``question`` about ``image`` (uint8 ``[H, W, 3]``) as an ``Explanation`` (its
        ``prediction`` is the answer text; its readouts the per-block weights of every generated token)."""
        example = {"image": np.asarray(image), "question": question, "answer": None, "index": 0}
        try:
            inputs = pipeline.stack([self.featurizer.prompt(example)])
        except ValueError as e:  # a word the closed vocabulary lacks, or a prompt over data.max_text_len
            raise UserError(f"question {question!r}: {e}") from None
        inputs = {k: inputs[k] for k in ("images", "has_image", "prompt", "prompt_valid")}
        eos = self.tokenizer.eos_token_id
        ids = np.asarray(eval_loop.generate_ids(self.config, self.graphdef, self.states, inputs, eos))
        (explanation,) = explain_lib.explain_batch(
            self.graphdef, self.states, inputs, ids, self.tokenizer, self.layout, [example]
        )
        stops = tuple(self.config.eval.stop_strings)
        explanation.prediction = generate.decode_texts(self.tokenizer, ids, stops)[0]
        return explanation
