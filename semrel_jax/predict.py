"""Ask a trained model about one image, and see what it looked at.

    python -m semrel_jax.predict --checkpoint=/tmp/run --image=scene.png --question="what shape is the red object"
    python -m semrel_jax.predict --checkpoint=/tmp/run --image=scene.png --question="..." --explain=/tmp/why.png
    python -m semrel_jax.predict ... --explain=/tmp/why.png --blocks=0,-1 --num_beams=3

``--checkpoint`` is a training workdir (latest step, or ``--step``) or a ``semrel_jax.export`` directory. The answer
is generated as evaluation does (the checkpoint's ``eval`` section: greedy, sampling or beam search; the flags below
override it). ``--explain`` writes a figure: the image and, for every generated token, the ICA weights alpha and the
inherited mask M of each chosen block (``--blocks``; default: up to six spread over the decoder) over each encoder's
patch grid (the prefix preset: the attention over the image tokens). ``semrel_jax.evaluation.explain`` says which
position's weights belong to a token; ``semrel_jax.evaluation.predictor.Predictor`` is the same from Python.
"""

from __future__ import annotations

from absl import app, flags

from semrel_jax.errors import UserError

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir or a semrel_jax.export directory.")
_IMAGE = flags.DEFINE_string("image", None, "The image file (any format Pillow reads).")
_QUESTION = flags.DEFINE_string("question", None, "The question, as the training data phrased its questions.")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step of a training workdir (-1: the latest).")
_EXPLAIN = flags.DEFINE_string("explain", "", "Write the heatmap figure to this PNG file.")
_BLOCKS = flags.DEFINE_list("blocks", [], "Decoder blocks to draw, e.g. 0,-1 (default: up to six, spread evenly).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", None, "Override eval.num_beams (> 1: beam search).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Override eval.temperature (> 0: sampling).")
_TOP_P = flags.DEFINE_float("top_p", None, "Override eval.top_p.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None, "Override eval.max_new_tokens.")
flags.mark_flags_as_required(["checkpoint", "image", "question"])


def _override_eval(c) -> None:
    from semrel_jax import config as config_lib

    overrides = dict(num_beams=_NUM_BEAMS.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                     max_new_tokens=_MAX_NEW_TOKENS.value)
    c.eval.update({k: v for k, v in overrides.items() if v is not None})
    config_lib.validate_eval(c)


def main(argv):
    del argv
    from semrel_jax.data.images import UnreadableImage, read_image
    from semrel_jax.evaluation import explain_plot
    from semrel_jax.evaluation.predictor import Predictor

    try:
        image = read_image(_IMAGE.value)
    except UnreadableImage as e:
        raise UserError(f"--image={_IMAGE.value}: {e}") from None
    predictor = Predictor.load(_CHECKPOINT.value, _STEP.value if _STEP.value >= 0 else None)
    _override_eval(predictor.config)
    explanation = predictor.explain(image, _QUESTION.value)
    print(explanation.prediction)
    if _EXPLAIN.value:
        try:
            blocks = tuple(int(b) for b in _BLOCKS.value)
        except ValueError:
            raise UserError(f"--blocks={','.join(_BLOCKS.value)}: expected block numbers like 0,-1") from None
        print(f"heatmaps: {explain_plot.save_figure(explanation, _EXPLAIN.value, blocks)}")


if __name__ == "__main__":
    app.run(main)
