"""Shared by the auxiliary-objective tests: a few train steps of the tiny model on one batch of relational scenes."""

import jax
import vqa  # configs/ is on sys.path (conftest)

from semrel_jax import recipe
from semrel_jax.data import pipeline
from semrel_jax.training import train_step as ts
from test_relational_sets import relational_sets  # experiments/relational_sets.py, loaded by path


def run_steps(tmp_path, steps: int, accumulation: int = 1, **weights) -> list[dict[str, float]]:
    """Each step's metrics: ``steps`` steps of the tiny model on one batch of 8 scenes of relational set A (each
    shows 5 of 8 colours, so its questions' colour words can tell it from the others), no dropout anywhere;
    ``weights``: train keys such as ``alignment_weight=0.5``."""
    c = vqa.get_config("tiny")
    c.data.update(name="llava_json", prompt_format="raw", **relational_sets.write_set(str(tmp_path / "set"), "A", 8, 1, 0))
    c.model.encoders.vit.normalization = "background"
    c.model.ica.dropout = 0.0
    c.train.update(learning_rate=3e-3, num_steps=max(steps, 10), grad_accum_steps=accumulation, **weights)
    run = recipe.build(c, str(tmp_path / "run"), recipe.single_device_mesh())
    kinds = len(relational_sets.KINDS)  # consecutive examples ask about one scene
    batch = ts.device_batch(pipeline.stack([run.featurizer.train(run.data.train[i * kinds]) for i in range(8)]))
    seen = []
    with jax.set_mesh(run.mesh):
        state, step = run.train.state, run.step_fn(0, donate=False)
        for _ in range(steps):
            state, metrics = step(state, run.train.frozen, batch)
            seen.append({k: float(v) for k, v in metrics.items()})
    return seen
