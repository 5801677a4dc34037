"""model.ica.read: the paper's SiLU memory read and the softmax option, against NumPy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from semrel_jax.method import ica


@pytest.mark.parametrize("read", ["silu", "softmax"])
def test_memory_read_matches_numpy(read):
    rng = np.random.default_rng(0)
    query, keys, values = (rng.normal(size=s).astype(np.float32) for s in ((2, 3, 8), (2, 5, 8), (2, 5, 8)))
    memory = ica.Memory(jnp.asarray(keys), jnp.asarray(values), jnp.asarray(False))
    config = ica.ICAConfig(scale=0.5, delta=0.0, lam=1.0, dropout=0.0, read=read)
    out, _ = ica.inheritable_cross_attention(jnp.asarray(query), memory, jnp.ones((2, 3, 5)), config)
    scores = np.einsum("btd,bnd->btn", query, keys)
    if read == "silu":
        alpha = scores / (1 + np.exp(-scores))
    else:
        alpha = np.exp(scores / np.sqrt(8) - (scores / np.sqrt(8)).max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), 0.5 * np.einsum("btn,bnd->btd", alpha, values), rtol=1e-5, atol=1e-6)
