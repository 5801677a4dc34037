"""``model.scan_layers``: the LLM's blocks as one ``lax.scan`` (and the vision tower's as one scan per stretch
between taps) give the unrolled model's loss and gradients, with ICA's inherited mask carried from block to
block, and the parameter layout is unchanged."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.models.vit import ViTConfig

LLM = LlamaConfig(vocab_size=40, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, mlp_dim=48)
# adapters with dropout: the tower is differentiated through, each block draws its own dropout key
VIT = ViTConfig(image_size=20, patch_size=5, width=24, depth=3, heads=3, mlp_dim=32, adapter_dim=4, adapter_dropout=0.3)


def _model(scan_layers: bool, remat: str = "none") -> VisionLanguageModel:
    vit = dataclasses.replace(VIT, scan_layers=scan_layers, remat=remat)
    # taps 1 and 3: the tower scans one block, then a stretch of two
    ens = EnsembleConfig(encoders=(EncoderSpec("vit", vit, (1, 3)),), out_dim=LLM.dim, projector_hidden=8, memory_scale=1.0)
    llm = dataclasses.replace(LLM, scan_layers=scan_layers, remat=remat)
    # lam < 1 and delta > 0: the inherited mask changes from block to block, so carrying it matters
    cfg = VLMConfig(llm=llm, vision=ens, num_memory_slots=0, ica=ica.ICAConfig(scale=1.0, delta=0.5, lam=0.5, dropout=0.2))
    return VisionLanguageModel(cfg, rngs=nnx.Rngs(0))


def _loss_and_grads(model):
    rng = np.random.default_rng(0)
    images = {"vit": jnp.asarray(rng.normal(size=(2, 20, 20, 3)), jnp.float32)}
    tokens = jnp.asarray(rng.integers(4, 40, size=(2, 7)), jnp.int32)
    valid = jnp.asarray([[True] * 7, [True] * 5 + [False] * 2])

    def loss(model):
        logits = model(images, jnp.ones((2,), jnp.int32), tokens, valid, mask_enabled=True,
                       dropout_key=jax.random.key(3))
        return (jax.nn.log_softmax(logits)[..., 5] * valid).sum()

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)  # jitted: op-by-op dispatch is slow on CPU
    return float(value), nnx.to_flat_state(grads)


@functools.cache
def _unrolled():
    return _loss_and_grads(_model(False))


@pytest.mark.slow
def test_scanned_blocks_give_the_unrolled_loss_and_gradients():
    unrolled, scanned = _unrolled(), _loss_and_grads(_model(True))
    assert np.isclose(scanned[0], unrolled[0], rtol=1e-6)
    paths = [p for p, _ in unrolled[1]]
    assert [p for p, _ in scanned[1]] == paths  # per-block parameters: layers/0/..., layers/1/..., unchanged
    assert ("llm", "layers", 2, "mlp", "down_proj", "kernel") in paths
    assert ("vision", "encoders", "vit", "layers", 2, "adapter", "fc2", "kernel") in paths
    for (path, a), (_, b) in zip(unrolled[1], scanned[1]):
        np.testing.assert_allclose(np.asarray(b[...]), np.asarray(a[...]), atol=1e-5, err_msg=str(path))
    # the gradients are not trivially equal: every block's own weights get their own gradient
    g = dict(unrolled[1])
    assert not np.allclose(g[("llm", "layers", 0, "mlp", "up_proj", "kernel")][...],
                           g[("llm", "layers", 1, "mlp", "up_proj", "kernel")][...])


@pytest.mark.slow
def test_scanned_blocks_under_remat():
    unrolled, scanned = _unrolled(), _loss_and_grads(_model(True, remat="full"))
    assert np.isclose(scanned[0], unrolled[0], rtol=1e-6)
    for (_, a), (_, b) in zip(unrolled[1], scanned[1]):
        np.testing.assert_allclose(np.asarray(b[...]), np.asarray(a[...]), atol=1e-5)
