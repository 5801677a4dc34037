"""A SemVLP run killed mid-pattern resumes exactly: through the CLI's entry point, from its Orbax checkpoint."""

import os
import shutil

import jax
import numpy as np
import pytest

from semrel_jax.training import checkpoint


def _params(workdir, step):
    saved = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=10)
    try:
        return jax.tree_util.tree_flatten_with_path(saved.restore_raw(step)["params"])[0]
    finally:
        saved.close()


@pytest.mark.slow  # two tiny runs with evaluation (~1-2 min on the shared 2-core box)
def test_a_run_killed_mid_pattern_resumes_exactly(tmp_path):
    import pretrain  # configs/pretrain.py (configs/ is on the path: tests/conftest.py)

    from semrel_jax.training import train

    def config():
        c = pretrain.get_config("tiny")
        c.model.semvlp.schedule = "s,s,t"
        c.train.update(num_steps=5, checkpoint_every=1, keep_checkpoints=10, log_every=1)
        return c

    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train.train_and_evaluate(config(), straight)
    # the kill: after step 2's checkpoint, mid-pattern (step 2 is the pattern's 't'; steps 3-4 'single', 'single')
    shutil.copytree(straight, killed)
    for step in (3, 4, 5):
        shutil.rmtree(os.path.join(killed, "checkpoints", str(step)))
    os.remove(os.path.join(killed, "results.json"))
    train.train_and_evaluate(config(), killed)
    for (path, a), (_, b) in zip(_params(straight, 5), _params(killed, 5), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
