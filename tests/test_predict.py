"""One tiny training run with evaluation every step, then: its logged evaluations and samples, the curves, the
predict path (answer as evaluation gives it, heatmaps holding the model's own alpha/M). The run's evaluations go
through ``evaluation.loop.evaluate(..., explain=N)``, the path of ``evaluate --explain=N``.

All slow (a training run and a CLI subprocess), sharing one run."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from semrel_jax import recipe
from semrel_jax.errors import UserError
from semrel_jax.evaluation.predictor import Predictor
from semrel_jax.training import train

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import vqa

    c = vqa.get_config("tiny")
    c.train.update(num_steps=2, warmup_steps=1, log_every=1, checkpoint_every=2, eval_every=1, eval_examples=4, eval_samples=1)
    c.eval.num_examples = 8
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(c, workdir)
    return workdir


def test_training_evaluates_every_eval_every_steps_and_logs_samples_and_curves(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    evals = [(r["step"], r["num_examples"]) for r in rows if r["split"] == "eval"]
    assert evals == [(1, 4.0), (2, 8.0)]  # the bounded subset during training, eval.num_examples at the end
    samples = [r for r in rows if r["split"] == "eval_samples"]
    assert [r["step"] for r in samples] == [1, 2]
    predictions = json.load(open(os.path.join(run_dir, "evals", "step_1", "predictions.json")))
    assert samples[0]["samples"][0]["prediction"] == predictions[0]["prediction"]
    assert samples[0]["samples"][0]["answer"] == predictions[0]["answer"]
    for path in ("evals/step_1/explain/example_0.png", "explain/example_0.png", "explain/index.html", "curves.png"):
        assert os.path.getsize(os.path.join(run_dir, path)) > 0, path
    events = [os.path.join(run_dir, "tensorboard", f) for f in os.listdir(os.path.join(run_dir, "tensorboard"))]
    logged = b"".join(open(path, "rb").read() for path in events)
    assert b"eval_samples/0" in logged and b"eval/accuracy" in logged  # the figure and the metrics in TensorBoard
    final = json.load(open(os.path.join(run_dir, "predictions.json")))
    assert final[3]["image"] == "sort_of_clevr:eval[3]"


def test_predict_answers_as_evaluation_does_and_explains_with_the_models_own_weights(run_dir):
    predictor = Predictor.load(run_dir)
    c = predictor.config
    data = recipe.build_data(c)
    example = data.eval[0]
    explanation = predictor.explain(example["image"], example["question"])
    logged = json.load(open(os.path.join(run_dir, "predictions.json")))[0]
    assert explanation.prediction == logged["prediction"]  # greedy decoding, as the run's own evaluation

    # the readouts are the model's alpha/M at the positions that chose each generated token
    features = predictor.featurizer.prompt(example)
    ids = explanation.token_ids
    tokens = np.concatenate([features["prompt"], ids[:-1]])[None]
    valid = np.concatenate([features["prompt_valid"], np.ones(len(ids) - 1, bool)])[None]
    images = {k: jnp.asarray(v[None]) for k, v in features["images"].items()}
    model = predictor.model()
    _, captured = model(images, jnp.asarray([features["has_image"]]), jnp.asarray(tokens), jnp.asarray(valid), capture=True)
    n = len(ids)
    np.testing.assert_allclose(explanation.readouts["alpha"], np.asarray(captured.alpha)[:, 0, -n:], atol=1e-6)
    np.testing.assert_allclose(explanation.readouts["mask"], np.asarray(captured.mask)[:, 0, -n:], atol=1e-6)
    assert explanation.readouts["alpha"].shape == (c.model.llm.n_layers, n, model.config.memory_slots)


def test_predict_command_prints_the_answer_and_writes_the_figure(run_dir, tmp_path):
    data = recipe.build_data(Predictor.load(run_dir).config)
    example = data.eval[1]
    Image.fromarray(example["image"]).save(tmp_path / "scene.png")
    figure = tmp_path / "why.png"
    cmd = [sys.executable, "-m", "semrel_jax.predict", f"--checkpoint={run_dir}", f"--image={tmp_path / 'scene.png'}",
           f"--question={example['question']}", f"--explain={figure}", "--blocks=-1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    logged = json.load(open(os.path.join(run_dir, "predictions.json")))[1]
    assert out.stdout.splitlines()[0] == logged["prediction"]
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_predict_refuses_a_word_outside_the_vocabulary(run_dir):
    predictor = Predictor.load(run_dir)
    with pytest.raises(UserError, match="question 'what is zyzzyva'"):
        predictor.explain(np.zeros((75, 75, 3), np.uint8), "what is zyzzyva")
