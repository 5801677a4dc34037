"""The typed model config (``VLMConfig``) built from a resolved, validated config."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from semrel_jax.config.resolve import llm_family, vision_family
from semrel_jax.errors import ConfigError
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.ica import ICAConfig
from semrel_jax.method.vlm import VLMConfig
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.models.objects import pairwise_distance_features
from semrel_jax.models.vit import DISTANCE, DISTANCE_FEATURES, FAMILY_LAYOUTS, ViTConfig, distance_slopes

# the |d| feature of the image's diagonal, corner to corner: the farthest two objects can be
SELF_AS_FAR = float(pairwise_distance_features(np.array([[0.0, 0.0], [1.0, 1.0]]))[0, 1, DISTANCE])


def model_config(c: ml_collections.ConfigDict, vocab_size: int) -> VLMConfig:
    """The typed model config; ``vocab_size`` comes from the tokenizer unless the config fixes it."""
    try:
        return _model_config(c, vocab_size)
    except ConfigError:
        raise
    except ValueError as e:  # the typed configs' own consistency checks
        raise ConfigError(f"config.model: {e}") from None


def _llm_config(m: ml_collections.ConfigDict, vocab_size: int) -> LlamaConfig:
    ours = dict(
        lora_rank=m.llm.lora_rank, lora_alpha=m.llm.lora_alpha, lora_targets=tuple(m.llm.lora_targets), remat=m.remat,
        attention=m.attention, scan_layers=m.scan_layers,
        pair_bias_features=(DISTANCE_FEATURES + m.prefix_distance_bias_self) if m.prefix_distance_bias else 0,
    )
    if m.llm.hf_dir:  # the checkpoint's architecture (incl. what the config has no key for: biases, qk-norm, ...)
        llm = dataclasses.replace(llm_family(m.llm.hf_dir, m.llm.dtype, m.llm.param_dtype), **ours)
    else:
        llm = LlamaConfig(
            vocab_size=m.llm.vocab_size or vocab_size,
            dim=m.llm.dim,
            n_layers=m.llm.n_layers,
            n_heads=m.llm.n_heads,
            n_kv_heads=m.llm.n_kv_heads,
            mlp_dim=m.llm.mlp_dim,
            rope_theta=m.llm.rope_theta,
            rope_scaling=m.llm.rope_scaling,
            rope_scaling_factor=m.llm.rope_scaling_factor,
            rope_low_freq_factor=m.llm.rope_low_freq_factor,
            rope_high_freq_factor=m.llm.rope_high_freq_factor,
            rope_original_max_position=m.llm.rope_original_max_position,
            norm_eps=m.llm.norm_eps,
            tie_embeddings=m.llm.tie_embeddings,
            dtype=m.llm.dtype,
            param_dtype=m.llm.param_dtype,
            **ours,
        )
    if not m.prefix_distance_bias_init:
        return llm
    slopes = distance_slopes(m.prefix_distance_bias_init, llm.n_heads)  # [4, heads]
    if m.prefix_distance_bias_self:  # itself scored as if at the image's diagonal: below every other
        slopes = np.concatenate([slopes, -SELF_AS_FAR * np.abs(slopes[DISTANCE:DISTANCE + 1])])
    return dataclasses.replace(llm, pair_bias_init=tuple(map(tuple, slopes.tolist())))


def _vit_config(name: str, e: ml_collections.ConfigDict, m: ml_collections.ConfigDict) -> ViTConfig:
    ours = dict(adapter_dim=e.adapter_dim, adapter_scale=e.adapter_scale, adapter_dropout=e.adapter_dropout, remat=m.remat,
                scan_layers=m.scan_layers)
    if e.hf_dir:  # the architecture is the checkpoint's; the adapters are ours
        family = vision_family(name, e.hf_dir, m.llm.dtype, m.llm.param_dtype)
        bad = [t for t in e.taps if t > family.config.depth]
        if bad:
            raise ConfigError(f"config.model.encoders.{name}.taps: {bad} beyond the {family.config.depth} blocks of {e.hf_dir}")
        return dataclasses.replace(family.config, **ours)
    return ViTConfig(
        image_size=e.image_size,
        patch_size=e.patch_size,
        width=e.width,
        depth=e.depth,
        heads=e.heads,
        mlp_dim=e.mlp_dim,
        act=e.act,
        posemb=e.posemb,
        relative_position_bias=e.relative_position_bias,
        distance_bias=e.distance_bias,
        distance_bias_scale=float(e.distance_bias_scale),
        distance_bias_init=float(e.distance_bias_init),
        attend=e.attend,
        tokens=e.tokens,
        max_objects=e.max_objects,
        **_layout(e),
        dtype=m.llm.dtype,
        param_dtype=m.llm.param_dtype,
        **ours,
    )


def _layout(e: ml_collections.ConfigDict) -> dict:
    """The block layout of the named family (shapes of e.g. SigLIP without its hf_dir), with LayerScale where the
    config asks for it."""
    layout = dict(FAMILY_LAYOUTS[e.family])
    if e.layer_scale_init is not None:
        layout.update(layer_scale=True, layer_scale_init=float(e.layer_scale_init))
    return layout


def _model_config(c: ml_collections.ConfigDict, vocab_size: int) -> VLMConfig:
    m = c.model
    llm = _llm_config(m, vocab_size)
    if llm.vocab_size < vocab_size:
        raise ConfigError(f"config.model.llm.vocab_size={llm.vocab_size} is smaller than the tokenizer's {vocab_size}.")
    encoders = tuple(
        EncoderSpec(name=name, vit=_vit_config(name, e, m), taps=tuple(e.taps), post_ln=e.post_ln, drop_cls=e.drop_cls,
                    pool=e.pool)
        for name, e in m.encoders.items()
    )
    vision = EnsembleConfig(
        encoders=encoders,
        out_dim=llm.dim,
        projector_hidden=m.projector.hidden,
        learnable_diagonal=m.projector.learnable_diagonal,
        zero_init_output=m.projector.zero_init_output,
        fusion=m.projector.fusion,
        memory_scale=m.projector.memory_scale,
        dtype=m.llm.dtype,
        param_dtype=m.llm.param_dtype,
    )
    return VLMConfig(
        llm=llm,
        vision=vision,
        injection=m.injection,
        num_memory_slots=m.num_memory_slots,
        ica=_ica_config(m.ica),
        modality_embedding=m.modality_embedding,
        add_modality_embedding=m.add_modality_embedding,
        slot_key_init_std=m.slot_key_init_std,
        slot_value_init_std=m.slot_value_init_std,
        slot_decoder=c.train.reconstruction_weight > 0,
        prompt_attention=m.prompt_attention,
        prefix_distance_bias=m.prefix_distance_bias,
        prefix_distance_bias_self=m.prefix_distance_bias_self,
    )


def _ica_config(ica: ml_collections.ConfigDict) -> ICAConfig:
    """``release_noop_mask``: the published release never hands delta/lam to its blocks, so its blocks run with
    delta=0, lam=1 (every entry kept, the mask stays ones) whatever the run's arguments say."""
    delta, lam = (0.0, 1.0) if ica.release_noop_mask else (ica.delta, ica.lam)
    return ICAConfig(scale=ica.scale, delta=delta, lam=lam, dropout=ica.dropout, read=ica.read)
