"""Per-family tables: a Hugging Face ``config.json`` -> our typed config, and our parameter paths <-> HF tensor names.

Each table row is ``(our path, hf name, transform)``. Transforms are named so the same row serves import
and export (``transforms.to_ours`` / ``transforms.to_hf``). Every row is checked by the parity tests in
``tests/test_convert.py``, which compare our logits/hidden states with the transformers PyTorch models.
"""

from __future__ import annotations

import dataclasses
import math

from semrel_jax.convert.safetensors_io import CheckpointError
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.models.vit import FAMILY_LAYOUTS, ViTConfig

Path = tuple[str | int, ...]
Row = tuple[Path, str, str]

LLM_TYPES = ("llama", "mistral", "qwen2", "qwen3")
VISION_TYPES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model", "dinov2")

_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def hf_value(cfg: dict, key: str, default=None, *, required: bool = False):
    """``cfg[key]`` of a HF ``config.json`` (None counts as absent), else ``default``, or an error when required."""
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if required:
        raise CheckpointError(f"config.json has no {key!r} (model_type {cfg.get('model_type')!r}).")
    return default


# ---------------------------------------------------------------------------------------------- LLMs


def llm_config_from_hf(cfg: dict, *, dtype: str = "float32", param_dtype: str = "float32") -> LlamaConfig:
    """Our LlamaConfig for a HF LLaMA-1/2/3.x, Vicuna, Mistral, Qwen2/2.5 or Qwen3 ``config.json``."""
    model_type = cfg.get("model_type")
    if model_type not in LLM_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is not a supported LLM family; supported: {LLM_TYPES}.")
    if hf_value(cfg, "hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act {cfg['hidden_act']!r} is not supported (the Llama family uses silu).")
    if hf_value(cfg, "mlp_bias", False):
        raise CheckpointError("mlp_bias=True is not supported.")
    rope = hf_value(cfg, "rope_scaling") or hf_value(cfg, "rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"rope scaling type {rope_type!r} is not supported (default, linear, llama3).")
    theta = rope.get("rope_theta", hf_value(cfg, "rope_theta", 10_000.0))
    sliding_window = None
    if model_type == "mistral":
        sliding_window = hf_value(cfg, "sliding_window")
    elif model_type in ("qwen2", "qwen3") and hf_value(cfg, "use_sliding_window", False):
        raise CheckpointError("Qwen use_sliding_window=True (per-layer windows) is not supported.")
    n_heads = hf_value(cfg, "num_attention_heads", required=True)
    return LlamaConfig(
        vocab_size=hf_value(cfg, "vocab_size", required=True),
        dim=hf_value(cfg, "hidden_size", required=True),
        n_layers=hf_value(cfg, "num_hidden_layers", required=True),
        n_heads=n_heads,
        n_kv_heads=hf_value(cfg, "num_key_value_heads", n_heads),
        mlp_dim=hf_value(cfg, "intermediate_size", required=True),
        head_dim=hf_value(cfg, "head_dim"),
        rope_theta=float(theta),
        norm_eps=float(hf_value(cfg, "rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf_value(cfg, "tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; LLaMA and Qwen3's attention_bias covers q/k/v and o alike.
        attention_bias=model_type == "qwen2" or bool(hf_value(cfg, "attention_bias", False)),
        o_proj_bias=model_type in ("llama", "qwen3") and bool(hf_value(cfg, "attention_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_window=sliding_window,
        rope_scaling={"default": "none"}.get(rope_type, rope_type),
        rope_scaling_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_position=int(rope.get("original_max_position_embeddings", 8192)),
        dtype=dtype,
        param_dtype=param_dtype,
    )


def llm_rows(c: LlamaConfig) -> list[Row]:
    rows: list[Row] = [(("embed_tokens", "embedding"), "model.embed_tokens.weight", "identity")]
    for i in range(c.n_layers):
        hf = f"model.layers.{i}."
        ours: Path = ("layers", i)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            rows.append((ours + ("self_attn", proj, "kernel"), f"{hf}self_attn.{proj}.weight", "linear"))
            if (c.attention_bias and proj != "o_proj") or (c.o_proj_bias and proj == "o_proj"):
                rows.append((ours + ("self_attn", proj, "bias"), f"{hf}self_attn.{proj}.bias", "identity"))
        if c.qk_norm:
            for norm in ("q_norm", "k_norm"):
                rows.append((ours + ("self_attn", norm, "weight"), f"{hf}self_attn.{norm}.weight", "identity"))
        for proj in ("gate_proj", "up_proj", "down_proj"):
            rows.append((ours + ("mlp", proj, "kernel"), f"{hf}mlp.{proj}.weight", "linear"))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            rows.append((ours + (norm, "weight"), f"{hf}{norm}.weight", "identity"))
    rows.append((("norm", "weight"), "model.norm.weight", "identity"))
    if not c.tie_embeddings:
        rows.append((("lm_head", "kernel"), "lm_head.weight", "linear"))
    return rows


# rotary caches some older exports carry; they are derived, never loaded
LLM_IGNORED = (r".*rotary_emb\.inv_freq$",)


# -------------------------------------------------------------------------------------- vision towers


@dataclasses.dataclass(frozen=True)
class VisionFamily:
    model_type: str  # clip | siglip | dinov2 (the tower's family)
    prefix: str  # prepended to every HF tensor name in the checkpoint
    config: ViTConfig
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


def vision_config_from_hf(cfg: dict, *, dtype: str = "float32", param_dtype: str = "float32") -> VisionFamily:
    """Our ViTConfig for a HF CLIP / SigLIP(2, fixed resolution) / DINOv2 ``config.json``.

    CLIP and SigLIP directories may hold the full two-tower model (``model_type`` clip / siglip, the
    vision part under ``vision_config``) or the vision tower alone; both load.
    """
    model_type = cfg.get("model_type")
    if model_type not in VISION_TYPES:
        raise CheckpointError(f"model_type {model_type!r} is not a supported vision encoder; supported: {VISION_TYPES}.")
    family = model_type.replace("_vision_model", "")
    vc = cfg.get("vision_config", cfg) if family in ("clip", "siglip", "siglip2") else cfg
    act = hf_value(vc, "hidden_act", "quick_gelu" if family == "clip" else "gelu")
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"vision hidden_act {act!r} is not supported; supported: {sorted(_ACTIVATIONS)}.")
    if family == "dinov2" and hf_value(vc, "use_swiglu_ffn", False):
        raise CheckpointError("DINOv2 with a SwiGLU FFN (giant) is not supported.")
    width = hf_value(vc, "hidden_size", required=True)
    if family == "siglip2":
        # NaFlex: a square grid of num_patches position embeddings; we run at that native grid
        grid = math.isqrt(hf_value(vc, "num_patches", required=True))
        if grid * grid != vc["num_patches"]:
            raise CheckpointError(f"SigLIP2 num_patches={vc['num_patches']} is not a square grid.")
        image_size = grid * hf_value(vc, "patch_size", required=True)
    else:
        image_size = hf_value(vc, "image_size", required=True)
    common = dict(
        image_size=image_size,
        patch_size=hf_value(vc, "patch_size", required=True),
        width=width,
        depth=hf_value(vc, "num_hidden_layers", required=True),
        heads=hf_value(vc, "num_attention_heads", required=True),
        # DINOv2 sizes its MLP by mlp_ratio (its config has no intermediate_size)
        mlp_dim=int(width * vc["mlp_ratio"]) if family == "dinov2" else hf_value(vc, "intermediate_size", required=True),
        channels=hf_value(vc, "num_channels", 3),
        act=_ACTIVATIONS[act],
        dtype=dtype,
        param_dtype=param_dtype,
    )
    layout = dict(FAMILY_LAYOUTS[family], norm_eps=float(hf_value(vc, "layer_norm_eps", FAMILY_LAYOUTS[family]["norm_eps"])))
    vit = ViTConfig(**common, **layout)
    if family == "clip":
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    elif family in ("siglip", "siglip2"):
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    else:
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    # the loader also finds the "vision_model." / "dinov2." of two-tower and wrapped checkpoints
    return VisionFamily(family, "", vit, mean, std)


def vision_rows(f: VisionFamily) -> list[Row]:
    c = f.config
    p = f.prefix
    if f.model_type in ("clip", "siglip", "siglip2"):
        # SigLIP2's patch embedding is a Linear over (p, p, C)-flattened patches, the others a Conv2d
        patch = "linear_patch_ppc" if f.model_type == "siglip2" else "conv_patch"
        rows: list[Row] = [(("patch_embedding", "kernel"), f"{p}embeddings.patch_embedding.weight", patch)]
        if c.patch_bias:
            rows.append((("patch_embedding", "bias"), f"{p}embeddings.patch_embedding.bias", "identity"))
        if c.class_token:
            rows.append((("class_embedding",), f"{p}embeddings.class_embedding", "identity"))
        rows.append((("position_embedding",), f"{p}embeddings.position_embedding.weight", "identity"))
        if c.pre_ln:
            rows += [(("pre_layrnorm", "scale"), f"{p}pre_layrnorm.weight", "identity")]
            rows += [(("pre_layrnorm", "bias"), f"{p}pre_layrnorm.bias", "identity")]
        for i in range(c.depth):
            hf = f"{p}encoder.layers.{i}."
            ours: Path = ("layers", i)
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                rows.append((ours + (proj, "kernel"), f"{hf}self_attn.{proj}.weight", "linear"))
                rows.append((ours + (proj, "bias"), f"{hf}self_attn.{proj}.bias", "identity"))
            for fc in ("fc1", "fc2"):
                rows.append((ours + (fc, "kernel"), f"{hf}mlp.{fc}.weight", "linear"))
                rows.append((ours + (fc, "bias"), f"{hf}mlp.{fc}.bias", "identity"))
            for norm in ("layer_norm1", "layer_norm2"):
                rows.append((ours + (norm, "scale"), f"{hf}{norm}.weight", "identity"))
                rows.append((ours + (norm, "bias"), f"{hf}{norm}.bias", "identity"))
        rows.append((("post_layernorm", "scale"), f"{p}post_layernorm.weight", "identity"))
        rows.append((("post_layernorm", "bias"), f"{p}post_layernorm.bias", "identity"))
        return rows
    # DINOv2
    rows = [
        (("patch_embedding", "kernel"), f"{p}embeddings.patch_embeddings.projection.weight", "conv_patch"),
        (("patch_embedding", "bias"), f"{p}embeddings.patch_embeddings.projection.bias", "identity"),
        (("class_embedding",), f"{p}embeddings.cls_token", "squeeze"),
        (("position_embedding",), f"{p}embeddings.position_embeddings", "squeeze"),
    ]
    names = {"q_proj": "attention.attention.query", "k_proj": "attention.attention.key"}
    names |= {"v_proj": "attention.attention.value", "out_proj": "attention.output.dense"}
    names |= {"fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for i in range(c.depth):
        hf = f"{p}encoder.layer.{i}."
        ours = ("layers", i)
        for mine, theirs in names.items():
            rows.append((ours + (mine, "kernel"), f"{hf}{theirs}.weight", "linear"))
            rows.append((ours + (mine, "bias"), f"{hf}{theirs}.bias", "identity"))
        for mine, theirs in (("layer_norm1", "norm1"), ("layer_norm2", "norm2")):
            rows.append((ours + (mine, "scale"), f"{hf}{theirs}.weight", "identity"))
            rows.append((ours + (mine, "bias"), f"{hf}{theirs}.bias", "identity"))
        rows.append((ours + ("layer_scale1",), f"{hf}layer_scale1.lambda1", "identity"))
        rows.append((ours + ("layer_scale2",), f"{hf}layer_scale2.lambda1", "identity"))
    rows.append((("post_layernorm", "scale"), f"{p}layernorm.weight", "identity"))
    rows.append((("post_layernorm", "bias"), f"{p}layernorm.bias", "identity"))
    return rows


# the other tower of two-tower checkpoints, SigLIP's attention-pooling head, DINOv2's mask token
VISION_IGNORED = (
    r"^text_model\..*",
    r"^text_projection\..*",
    r"^visual_projection\..*",
    r"^logit_(scale|bias)$",
    r"^(vision_model\.)?head\..*",
    r".*embeddings\.mask_token$",
    r".*embeddings\.position_ids$",
    r"^(classifier|pooler)\..*",
)
