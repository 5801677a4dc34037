"""A toy vision-language model and inputs shared by the model-level tests (test_models, test_intermediates)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.models.vit import ViTConfig

LLM = LlamaConfig(vocab_size=40, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, mlp_dim=48)


def vit_config(**overrides) -> ViTConfig:
    """A 20x20 image in 5x5 patches: 16 patch tokens + CLS."""
    return ViTConfig(**dict(dict(image_size=20, patch_size=5, width=24, depth=3, heads=3, mlp_dim=32), **overrides))


def vlm(vit: ViTConfig, taps: tuple[int, ...], injection: str = "ica", slots: int = 20, **ica_kw) -> VisionLanguageModel:
    """One ViT encoder tapped at ``taps`` into ``LLM``; ``ica_kw`` override the ICA config (scale 1.0)."""
    ens = EnsembleConfig(encoders=(EncoderSpec("vit", vit, taps),), out_dim=LLM.dim, projector_hidden=8, memory_scale=1.0)
    cfg = VLMConfig(llm=LLM, vision=ens, injection=injection, num_memory_slots=slots, ica=ica.ICAConfig(scale=1.0, **ica_kw))
    return VisionLanguageModel(cfg, rngs=nnx.Rngs(0))


def inputs(batch: int = 2, t: int = 6):
    """``(images {"vit": [B, 20, 20, 3]}, has_image [B], tokens [B, t], valid [B, t])``, seeded."""
    rng = np.random.default_rng(0)
    images = {"vit": jnp.asarray(rng.normal(size=(batch, 20, 20, 3)), jnp.float32)}
    tokens = jnp.asarray(rng.integers(4, 40, size=(batch, t)), jnp.int32)
    return images, jnp.ones((batch,), jnp.int32), tokens, jnp.ones((batch, t), bool)


def assert_decoding_matches_training(model, images, has_image, tokens, full, p: int):
    """Prefill of the first ``p`` tokens (left-padded by one slot, as generation batches are: the padding must not
    count), then two decode steps, give the teacher-forced logits ``full [B, T, vocab]``; returns the prefill's."""
    batch = tokens.shape[0]
    prompt = jnp.concatenate([jnp.full((batch, 1), 9, jnp.int32), tokens[:, :p]], 1)
    prompt_valid = jnp.concatenate([jnp.zeros((batch, 1), bool), jnp.ones((batch, p), bool)], 1)
    last, cache, memory = model.prefill(images, has_image, prompt, prompt_valid, max_new_tokens=3)
    np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, p - 1]), atol=2e-5, rtol=2e-5)
    for step in range(2):
        logits, cache = model.decode_step(tokens[:, p + step], cache, memory)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, p + step]), atol=2e-5, rtol=2e-5)
    return last
