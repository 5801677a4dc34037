"""``model.attention='cudnn'`` on an NVIDIA GPU: cuDNN's fused attention agrees with XLA's on every real query,
forward and backward, with the masks the models use (causal + padding, grouped-query heads, a bidirectional
prefix, a sliding window, an additive bias), and a bf16 LLaMA gives the same logits with either kernel.

Skipped without a GPU (CI has none); run on a CUDA host with ``pytest tests/test_attention_gpu.py``.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax.models import attention
from semrel_jax.models.llama import Llama, LlamaConfig

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")

B, T, HEADS, KV_HEADS, HD = 2, 256, 8, 2, 64
# row 0 right-padded (training batches), row 1 left-padded (generation prompts)
VALID = jnp.array([[True] * 200 + [False] * 56, [False] * 40 + [True] * 216])
# bf16 inputs, softmax in fp32 by both kernels: the outputs differ by bf16 rounding of intermediate products
ATOL = 3e-2


def _qkv(seed=0, dtype=jnp.bfloat16):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    shapes = ((B, T, HEADS, HD), (B, T, KV_HEADS, HD), (B, T, KV_HEADS, HD))
    return tuple(jax.random.normal(key, shape).astype(dtype) for key, shape in zip((kq, kk, kv), shapes))


def _mask(window=None, prefix_end=None):
    return attention.Mask(jnp.broadcast_to(jnp.arange(T), (B, T)), VALID, window, prefix_end)


def _real(x):
    return np.where(np.asarray(VALID)[:, :, None, None], np.asarray(x, np.float32), 0.0)


MASKS = {
    "causal": dict(),
    "window": dict(window=32),
    "prefix": dict(prefix_end=jnp.array([64, 100])),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_cudnn_equals_xla_on_real_queries(name):
    q, k, v = _qkv()
    mask = _mask(**MASKS[name])
    reference = jax.jit(lambda q, k, v: attention.attend(q, k, v, mask, "xla"))(q, k, v)
    fused = jax.jit(lambda q, k, v: attention.attend(q, k, v, mask, "cudnn"))(q, k, v)
    assert fused.shape == (B, T, HEADS, HD) and fused.dtype == jnp.bfloat16
    np.testing.assert_allclose(_real(fused), _real(reference), atol=ATOL)
    assert np.abs(_real(reference)).max() > 0.1  # not two zero tensors


def test_cudnn_with_bias_equals_xla():
    q, k, v = _qkv(1)
    bias = jax.random.normal(jax.random.key(3), (B, HEADS, T, T)).astype(jnp.bfloat16)
    run = lambda impl: jax.jit(lambda q, k, v, b: attention.attend(q, k, v, _mask(), impl, b))(q, k, v, bias)  # noqa: E731
    np.testing.assert_allclose(_real(run("cudnn")), _real(run("xla")), atol=ATOL)


@pytest.mark.parametrize("name", ["causal", "prefix"])
def test_cudnn_gradients_equal_xla(name):
    mask = _mask(**MASKS[name])

    def loss(impl):
        def f(q, k, v):
            out = attention.attend(q, k, v, mask, impl).astype(jnp.float32)
            return (out * VALID[:, :, None, None] * jnp.cos(jnp.arange(HD))).sum()
        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))

    q, k, v = _qkv(2)
    for fused, reference in zip(loss("cudnn")(q, k, v), loss("xla")(q, k, v)):
        fused, reference = np.asarray(fused, np.float32), np.asarray(reference, np.float32)
        scale = np.abs(reference).max()
        assert scale > 0.1
        np.testing.assert_allclose(fused, reference, atol=0.03 * scale)


def test_bf16_llama_logits_with_cudnn_equal_xla():
    config = LlamaConfig(vocab_size=512, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=512, dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(4), (B, T), 0, 512)
    reference_model = Llama(config, rngs=nnx.Rngs(params=0))
    fused_model = Llama(dataclasses.replace(config, attention="cudnn"), rngs=nnx.Rngs(params=0))  # same weights
    forward = nnx.jit(lambda model, tokens: model(tokens, valid=VALID)[0])
    reference = np.asarray(forward(reference_model, tokens), np.float32)
    fused = np.asarray(forward(fused_model, tokens), np.float32)
    keep = np.asarray(VALID)[..., None]
    scale = np.abs(np.where(keep, reference, 0)).max()
    assert scale > 0.1
    np.testing.assert_allclose(np.where(keep, fused, 0), np.where(keep, reference, 0), atol=0.03 * scale)
    # same argmax on nearly every real position
    agree = (fused.argmax(-1) == reference.argmax(-1))[np.asarray(VALID)].mean()
    assert agree > 0.95, agree
