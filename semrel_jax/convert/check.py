"""Numerical parity with the transformers PyTorch models, on the same inputs.

Used by ``python -m semrel_jax.convert --hf_dir=DIR --check`` and by the tests. Needs ``torch``
(not a runtime dependency of training; install the CPU wheel to run checks).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from semrel_jax.convert import hf

# the reference model loads safetensors only (a pickled *.bin would run code) and never a directory's own code
_SAFE = dict(use_safetensors=True, trust_remote_code=False, local_files_only=True)


def _torch():
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            "--check runs the transformers PyTorch model as the reference and needs torch: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu"
        ) from None
    return torch


def check_llm(hf_dir: str, *, dtype: str = "float32", batch: int = 2, seq_len: int = 16, seed: int = 0) -> dict:
    """Max |logit difference| between our model (params and compute in ``dtype``) and transformers in fp32."""
    torch = _torch()
    import transformers

    ours = hf.load_llm(hf_dir, dtype=dtype, param_dtype=dtype)
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, **_SAFE, dtype=torch.float32).eval()
    tokens = np.random.default_rng(seed).integers(0, ours.config.vocab_size, (batch, seq_len))
    with torch.no_grad():
        expected = ref(torch.from_numpy(tokens)).logits.numpy()
    got, _ = ours(jnp.asarray(tokens), valid=jnp.ones(tokens.shape, bool))
    got = np.asarray(got, np.float32)
    return {
        "max_abs_diff": float(np.max(np.abs(got - expected))),
        "max_abs_logit": float(np.max(np.abs(expected))),
        "argmax_agreement": float(np.mean(got.argmax(-1) == expected.argmax(-1))),
    }


def check_vision(hf_dir: str, *, dtype: str = "float32", batch: int = 2, seed: int = 0) -> dict:
    """Max |difference| over every ``hidden_states[i]`` between our tower and transformers in fp32."""
    torch = _torch()
    import transformers

    ours, family = hf.load_vision(hf_dir, dtype=dtype, param_dtype=dtype)
    c = family.config
    classes = {
        "clip": transformers.CLIPVisionModel,
        "siglip": transformers.SiglipVisionModel,
        "siglip2": transformers.Siglip2VisionModel,
        "dinov2": transformers.Dinov2Model,
    }
    ref = classes[family.model_type].from_pretrained(hf_dir, **_SAFE, dtype=torch.float32).eval()
    pixels = np.random.default_rng(seed).standard_normal((batch, c.channels, c.image_size, c.image_size))
    pixels = pixels.astype(np.float32)
    inputs = {"pixel_values": torch.from_numpy(pixels)}
    if family.model_type == "siglip2":  # NaFlex inputs: (p, p, C)-flattened patches, all valid, native grid
        grid, p = c.image_size // c.patch_size, c.patch_size
        patches = pixels.reshape(batch, c.channels, grid, p, grid, p).transpose(0, 2, 4, 3, 5, 1)
        inputs = {
            "pixel_values": torch.from_numpy(np.ascontiguousarray(patches.reshape(batch, grid * grid, -1))),
            "pixel_attention_mask": torch.ones((batch, grid * grid), dtype=torch.long),
            "spatial_shapes": torch.tensor([[grid, grid]] * batch),
        }
    with torch.no_grad():
        expected = [h.numpy() for h in ref(**inputs, output_hidden_states=True).hidden_states]
    taps = tuple(range(c.depth + 1))
    got = ours(jnp.asarray(pixels.transpose(0, 2, 3, 1)), taps)
    diffs = [float(np.max(np.abs(np.asarray(g, np.float32) - e))) for g, e in zip(got, expected, strict=True)]
    return {
        "max_abs_diff": max(diffs),
        "per_layer_max_abs_diff": diffs,
        "max_abs_feature": float(max(np.max(np.abs(e)) for e in expected)),
    }


def check_bert(hf_dir: str, *, dtype: str = "float32", batch: int = 2, seq_len: int = 16, seed: int = 0) -> dict:
    """Max |difference| over every ``hidden_states[i]`` and the pooled output between our BERT and
    transformers' ``BertModel`` in fp32, on random tokens with right padding and both token types."""
    torch = _torch()
    import transformers

    ours = hf.load_bert(hf_dir, dtype=dtype, param_dtype=dtype)
    ref = transformers.BertModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, ours.config.vocab_size, (batch, seq_len))
    valid = np.arange(seq_len)[None, :] < rng.integers(seq_len // 2, seq_len + 1, (batch, 1))
    token_types = (np.arange(seq_len)[None, :] >= seq_len // 2).astype(np.int64).repeat(batch, 0)
    with torch.no_grad():
        out = ref(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(valid.astype(np.int64)),
            token_type_ids=torch.from_numpy(token_types),
            output_hidden_states=True,
        )
    got = ours(jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(token_types))
    # padding positions carry no meaning (and HF computes them differently): compare the valid tokens
    diffs = [
        float(np.max(np.abs(np.asarray(g, np.float32) - e.numpy())[valid]))
        for g, e in zip(got, out.hidden_states, strict=True)
    ]
    pooled = np.asarray(ours.pool(got[-1]), np.float32)
    return {
        "max_abs_diff": max(diffs),
        "per_layer_max_abs_diff": diffs,
        "pooled_max_abs_diff": float(np.max(np.abs(pooled - out.pooler_output.numpy()))),
        "max_abs_feature": float(max(np.max(np.abs(e.numpy())) for e in out.hidden_states)),
    }


def check(hf_dir: str, *, dtype: str = "float32") -> dict:
    cfg = hf.read_config(hf_dir)
    if hf.is_llm(cfg):
        return check_llm(hf_dir, dtype=dtype)
    if hf.is_bert(cfg):
        return check_bert(hf_dir, dtype=dtype)
    return check_vision(hf_dir, dtype=dtype)
