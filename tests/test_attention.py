"""``model.attention``: the fused kernels agree with XLA's attention (splash in Pallas interpret mode on CPU),
and the config refuses a kernel the backend cannot run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax import recipe
from semrel_jax.config import ConfigError, base_config
from semrel_jax.models import attention
from semrel_jax.models.llama import Llama, LlamaConfig

B, T, HEADS, KV_HEADS, HD = 2, 20, 4, 2, 16
# row 0 right-padded, row 1 left-padded (training batches and generation prompts respectively)
VALID = jnp.array([[True] * 15 + [False] * 5, [False] * 4 + [True] * 16])


def _qkv(seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, T, HEADS, HD)), jax.random.normal(kk, (B, T, KV_HEADS, HD)),
            jax.random.normal(kv, (B, T, KV_HEADS, HD)))


def _mask(window=None):
    return attention.Mask(jnp.broadcast_to(jnp.arange(T), (B, T)), VALID, window)


def _on_real_queries(x):
    return np.where(np.asarray(VALID)[:, :, None, None], np.asarray(x), 0.0)


@pytest.mark.parametrize("window", [None, 6])
def test_splash_equals_xla_on_real_tokens(window):
    q, k, v = _qkv()
    reference = attention.attend(q, k, v, _mask(window), "xla")
    with attention.interpret_kernels():
        fused = attention.attend(q, k, v, _mask(window), "splash")
    assert fused.shape == (B, T, HEADS, HD)
    np.testing.assert_allclose(_on_real_queries(fused), _on_real_queries(reference), atol=2e-5)
    # the reference is not trivially reproduced: a window changes it
    if window:
        other = attention.attend(q, k, v, _mask(None), "xla")
        assert np.abs(_on_real_queries(other) - _on_real_queries(reference)).max() > 1e-2


@pytest.mark.slow
def test_splash_gradients_equal_xla():
    def loss(impl):
        return lambda q, k, v: (attention.attend(q, k, v, _mask(), impl) * VALID[:, :, None, None]).sum()

    q, k, v = _qkv(1)
    reference = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    with attention.interpret_kernels():
        fused = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(fused, reference):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


@pytest.mark.slow
def test_llama_with_splash_matches_xla_logits():
    config = LlamaConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64)
    tokens = jax.random.randint(jax.random.key(2), (B, T), 0, 50)
    reference, _ = Llama(config, rngs=nnx.Rngs(params=0))(tokens, valid=VALID)
    fused_model = Llama(dataclasses.replace(config, attention="splash"), rngs=nnx.Rngs(params=0))  # same weights
    with attention.interpret_kernels():
        fused, _ = fused_model(tokens, valid=VALID)
    np.testing.assert_allclose(np.where(VALID[..., None], fused, 0), np.where(VALID[..., None], reference, 0), atol=1e-4)


def test_config_names_the_allowed_implementations():
    c = base_config()
    c.model.attention = "flash"
    with pytest.raises(ConfigError, match=r"model\.attention.*xla.*cudnn.*splash"):
        recipe.prepare_config(c)


@pytest.mark.parametrize("implementation", ["cudnn", "splash"])
def test_fused_kernel_refused_on_a_backend_that_cannot_run_it(implementation):
    c = base_config()
    c.model.attention = implementation
    recipe.prepare_config(c)
    with pytest.raises(ConfigError, match=r"model\.attention.*needs a (gpu|tpu) backend.*cpu"):
        recipe.create_mesh(c, jax.devices()[:1])
