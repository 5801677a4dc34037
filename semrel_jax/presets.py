"""Named model presets: the paper's release models, its baselines, and demo-size ablations.

``apply(config, name)`` fills the ``model`` section (and ``train.trainable`` / ``train.frozen`` /
``train.frozen_dtype``) of a config from ``configs/vqa.py`` and sets ``config.preset = name``; data,
optimizer and schedule are left as they are. Every key it sets must already exist in the config
(the schema of ``semrel_jax/config/defaults.py``), so a preset that falls out of date fails loudly instead of adding
keys nobody reads.

Release presets (pretrained LLaMA + CLIP ViT-L/14, PEFT; docs/method spec "PEFT recipe and sizes"):

  lsrm_7b    LLaMA-7B, CLIP-L/14 taps (13, 23) (HF hidden_states numbering; the release's blocks 12 and 22,
             0-based), SRProj d_h=64 with Λ, sum fusion, N_mem=320, ICA mask delta=0.3 lam=0.85 switched on
             at epoch 15. The release's function: adapter dropout 0.1, the modality embedding created but not
             added, its preprocessing (224x224 squash, bicubic, ImageNet mean/std); delta/lam really applied
             (model.ica.release_noop_mask=True: the release's no-op). Trainable: 3,883,264 parameters.
  lsrm_13b   the same on LLaMA-13B with N_mem=400. Trainable: 5,492,992.
  memvp_7b   MemVP: one level (tap 23), plain 2-layer projector d_h=128 (no Λ), no mask. Trainable: 3,879,040.
  llava_7b   LLaVA-1.5-like: Vicuna-7B v1.5 + CLIP-L/14-336 (576 tokens, tap 23 = HF ``hidden_states[-2]``
             without post-LN), visual tokens as an LLM prefix, no adapters, no modality embedding.
             Its projector is LLaVA-1.5's ``mlp2x`` shape, 1024 -> 4096 -> 4096 (an SRProj without Λ and
             d_h = d_llm); the one difference is the hidden activation, SiLU here and GELU in LLaVA.
             Trainable: the projector only, 20,979,712 parameters.

  Counting (d = LLM width): CLIP adapters 24·(1024·12 + 12·1024) = 589,824; SRProj per level
  1024·d_h + d_h (+ d_h for Λ) + d_h·d + d; modality embedding 2·d; P_k + P_v 2·N_mem·d.

Ablation presets (demo size: the demo's small LLM and ViT from random init, everything trainable, so they
train on Sort-of-CLEVR on a CPU; each adds one ingredient of LSRM to the previous one):

  ablation_memvp       one level (the last block), plain projector (no Λ), no mask     = MemVP
  ablation_multilevel  + the middle level (two taps, summed)
  ablation_srproj      + the learnable diagonal Λ                                       = SRProj
  ablation_lsrm        + the inheritance mask (delta=0.3, lam=0.85)                     = LSRM
  ablation_llava       ablation_memvp with the visual tokens as an LLM prefix instead of memory = LLaVA

Ensembles (the "multilevel encoder ensemble"): ``lsrm_7b_ensemble`` is lsrm_7b with SigLIP-so400m/14 and
DINOv2-L/14 next to CLIP-L/14 (``ENCODER_PRESETS``), each with its own taps, preprocessing, adapters and
SRProjs; their tokens are concatenated. Any preset name may end in encoder changes, ``+name`` to add one of
``ENCODER_PRESETS`` and ``-name`` to remove one (``configs/vqa.py:lsrm_7b+siglip``, ``:tiny+siglip-vit``), after
which every key of the added encoders is a normal override: ``--config.model.encoders.siglip.hf_dir=...``.

LLM shapes (``LLM_SHAPES``) are the published Hugging Face ``config.json`` values, Llama 3.2's llama3-type
RoPE scaling included. ``lsrm_<llm>`` (e.g. ``lsrm_llama3.2_1b``, ``lsrm_vicuna_7b``) is the lsrm_7b recipe
(N_mem 320) on any of them. With ``model.llm.hf_dir`` / ``model.encoders.clip.hf_dir`` set, the shapes
and weights come from those directories instead (``semrel_jax.convert``).
"""

from __future__ import annotations

import re

import ml_collections

from semrel_jax.config import defaults as config_defaults

# --------------------------------------------------------------------------------------------- shapes

# Llama 3.2's config.json rope_scaling block (rope_type llama3)
_LLAMA32_ROPE = dict(rope_scaling="llama3", rope_scaling_factor=32.0, rope_low_freq_factor=1.0,
                     rope_high_freq_factor=4.0, rope_original_max_position=8192)

LLM_SHAPES: dict[str, dict] = {
    # LLaMA-1 (huggyllama/llama-7b, -13b)
    "llama_7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_dim=11008,
                     rope_theta=10_000.0, norm_eps=1e-6, tie_embeddings=False),
    "llama_13b": dict(vocab_size=32000, dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, mlp_dim=13824,
                      rope_theta=10_000.0, norm_eps=1e-6, tie_embeddings=False),
    # Llama 2 (meta-llama/Llama-2-7b-hf, -13b-hf): LLaMA-1 shapes, rms_norm_eps 1e-5
    "llama2_7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_dim=11008,
                      rope_theta=10_000.0, norm_eps=1e-5, tie_embeddings=False),
    "llama2_13b": dict(vocab_size=32000, dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, mlp_dim=13824,
                       rope_theta=10_000.0, norm_eps=1e-5, tie_embeddings=False),
    # lmsys/vicuna-7b-v1.5 (LLaVA-1.5's LLM): a Llama-2-7B fine-tune, so rms_norm_eps 1e-5
    # (the LLaMA-1-based v1.1/v1.3 use 1e-6; the shapes and parameter count are the same).
    "vicuna_7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_dim=11008,
                      rope_theta=10_000.0, norm_eps=1e-5, tie_embeddings=False),
    # meta-llama/Meta-Llama-3-8B
    "llama3_8b": dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, mlp_dim=14336,
                      rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False),
    # meta-llama/Llama-3.2-1B, -3B (head_dim 64 and 128 = dim // n_heads; tied embeddings)
    "llama3.2_1b": dict(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, mlp_dim=8192,
                        rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=True, **_LLAMA32_ROPE),
    "llama3.2_3b": dict(vocab_size=128256, dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, mlp_dim=8192,
                        rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=True, **_LLAMA32_ROPE),
}

# openai/clip-vit-large-patch14 as the LSRM release runs it (clip/model.py forward_ll_half, util/datasets.py):
# layer_norm_eps 1e-5 is ViTConfig's fixed norm_eps.
CLIP_L14 = dict(
    image_size=224,
    patch_size=14,
    width=1024,
    depth=24,
    heads=16,
    mlp_dim=4096,
    act="quick_gelu",
    family="clip",
    # HF hidden_states numbering: the release's intermediate map is the output of 0-based block 12
    # (`i == layers // 2` over resblocks[:-1]) = hidden_states[13]; its final map skips the last block = [23]
    taps=(13, 23),
    post_ln=True,  # ln_post on both maps
    drop_cls=True,
    adapter_dim=12,
    adapter_scale=0.1,
    adapter_dropout=0.1,  # lsrm/adapter.py: dropout 0.1 after the GELU
    # The release's transform: squash to 224x224 (bicubic), ToTensor, ImageNet mean/std, not CLIP's processor
    normalization="imagenet",
    resample="bicubic",
    crop=False,
    resize=0,
)
# openai/clip-vit-large-patch14-336 as LLaVA-1.5 runs it: CLIP's own image processor (resize, centre crop)
CLIP_L14_336 = dict(
    CLIP_L14, image_size=336, taps=(23,), adapter_dim=0, adapter_dropout=0.0, normalization="clip", crop=True
)

# Pretrained towers an ensemble adds next to (or instead of) CLIP, each with the release's recipe per tower
# (adapters 12 wide with dropout 0.1, post-LN, its own SRProj per level) and the release's level rule for a
# depth-L tower: the intermediate map hidden_states[L // 2 + 1] and the final one hidden_states[L - 1].
# Preprocessing is left unset: config.resolve fills each family's own image processor at the resolved size.
_TOWER_RECIPE = dict(post_ln=True, drop_cls=True, adapter_dim=12, adapter_scale=0.1, adapter_dropout=0.1)
# google/siglip-so400m-patch14-224: no class token, 16x16 = 256 tokens
SIGLIP_SO400M_14_224 = dict(
    _TOWER_RECIPE, family="siglip", image_size=224, patch_size=14, width=1152, depth=27, heads=16, mlp_dim=4304,
    act="gelu_tanh", taps=(14, 26),
)
# facebook/dinov2-large at its checkpoint's 518 px (no position-embedding interpolation): 37x37 = 1,369 tokens
DINOV2_L14 = dict(
    _TOWER_RECIPE, family="dinov2", image_size=518, patch_size=14, width=1024, depth=24, heads=16, mlp_dim=4096,
    act="gelu", taps=(13, 23),
)
ENCODER_PRESETS: dict[str, dict] = {"clip": dict(CLIP_L14, family="clip"), "siglip": SIGLIP_SO400M_14_224,
                                    "dinov2": DINOV2_L14}

# Parameter-path regexes (see semrel_jax.training.partition) of the release's PEFT recipe.
PEFT_TRAINABLE = (
    r"^memory_(key|value)_embedding$",  # P_k, P_v
    r"^vision/projectors/",  # the SRProjs
    r"^modality_embedding$",
    r"^vision/encoders/[^/]+/layers/\d+/adapter/",  # CLIP bottleneck adapters
)
PROJECTOR_ONLY = (r"^vision/projectors/",)

RELEASE_PRESETS = ("lsrm_7b", "lsrm_13b", "memvp_7b", "llava_7b")
ENSEMBLE_PRESETS = ("lsrm_7b_ensemble",)  # = lsrm_7b+siglip+dinov2
ABLATION_PRESETS = ("ablation_memvp", "ablation_multilevel", "ablation_srproj", "ablation_lsrm", "ablation_llava")
LSRM_ON_LLM_PRESETS = tuple(f"lsrm_{name}" for name in LLM_SHAPES)
MODEL_PRESETS: tuple[str, ...] = RELEASE_PRESETS + ENSEMBLE_PRESETS + ABLATION_PRESETS + LSRM_ON_LLM_PRESETS


# -------------------------------------------------------------------------------------------- helpers


def llm_shape(name: str) -> dict:
    """The ``model.llm`` shape fields of a named LLM (a copy)."""
    if name not in LLM_SHAPES:
        raise ValueError(f"Unknown LLM {name!r}; choose one of {tuple(LLM_SHAPES)}.")
    return dict(LLM_SHAPES[name])


def _set(node: ml_collections.ConfigDict, where: str, **values) -> None:
    """Assigns existing keys only: a key the config schema lacks is a bug in this file."""
    unknown = sorted(k for k in values if k not in node)
    if unknown:
        raise KeyError(f"Preset sets {where}.{unknown} which the config schema (semrel_jax/config/defaults.py) does not define; update semrel_jax/presets.py.")
    for key, value in values.items():
        node[key] = value


def _encoder(name: str, fields: dict) -> ml_collections.ConfigDict:
    """One ``model.encoders.<name>`` section: the schema's defaults plus ``fields``."""
    encoder = ml_collections.ConfigDict(config_defaults.encoder_defaults())
    _set(encoder, f"model.encoders.{name}", **fields)
    return encoder


def _single_encoder(c: ml_collections.ConfigDict, name: str, fields: dict) -> None:
    """Replaces ``model.encoders`` by the single encoder ``name``."""
    c.model.encoders = ml_collections.ConfigDict({name: _encoder(name, fields)})


def _release(
    c: ml_collections.ConfigDict,
    *,
    llm: str,
    vision: dict,
    injection: str,
    num_memory_slots: int,
    projector: dict,
    ica: dict,
    modality_embedding: bool,
    add_modality_embedding: bool,
    trainable: tuple[str, ...],
) -> None:
    _set(c.model, "model", injection=injection, num_memory_slots=num_memory_slots, modality_embedding=modality_embedding,
         add_modality_embedding=add_modality_embedding)
    # Big LLMs compute in bfloat16; parameters (and so the trainable ones) stay float32 and the
    # frozen ones are stored in train.frozen_dtype.
    _set(c.model.llm, "model.llm", **llm_shape(llm), dtype="bfloat16", param_dtype="float32")
    _single_encoder(c, "clip", vision)
    _set(c.model.projector, "model.projector", zero_init_output=False, **projector)
    _set(c.model.ica, "model.ica", **ica)
    # the release trains on the answers alone (no auxiliary objective of the from-scratch presets)
    _set(c.train, "train", trainable=tuple(trainable), frozen=(), frozen_dtype="bfloat16", reconstruction_weight=0.0,
         alignment_weight=0.0)


# delta/lam really applied (release_noop_mask=False): the release's setup drops them (a no-op mask), the
# paper's numbers used 0.3/0.85; set model.ica.release_noop_mask=True to run the release's function as published
_RELEASE_ICA = dict(scale=0.1, delta=0.3, lam=0.85, dropout=0.1, start="epoch:15", release_noop_mask=False)
_LSRM_PROJECTOR = dict(hidden=64, learnable_diagonal=True, fusion="sum", memory_scale=0.01)


def _lsrm(c, llm: str, num_memory_slots: int) -> None:
    _release(
        c,
        llm=llm,
        vision=CLIP_L14,
        injection="ica",
        num_memory_slots=num_memory_slots,
        projector=_LSRM_PROJECTOR,
        ica=_RELEASE_ICA,
        modality_embedding=True,  # created and counted (3,883,264) ...
        add_modality_embedding=False,  # ... but never used in the release's forward / generate
        trainable=PEFT_TRAINABLE,
    )


def _memvp_7b(c) -> None:
    _release(
        c,
        llm="llama_7b",
        vision=dict(CLIP_L14, taps=(23,)),
        injection="ica",
        num_memory_slots=320,
        projector=dict(_LSRM_PROJECTOR, hidden=128, learnable_diagonal=False),
        ica=dict(_RELEASE_ICA, delta=0.0, start="never"),  # MemVP has no inheritance mask
        modality_embedding=True,  # counted in 3,879,040; unused as in LSRM's release (MemVP's code)
        add_modality_embedding=False,
        trainable=PEFT_TRAINABLE,
    )


def _llava_7b(c) -> None:
    _release(
        c,
        llm="vicuna_7b",
        # LLaVA-1.5: CLIP-L/14-336, hidden_states[-2] (= 23) as is (no post-LN), CLS dropped, no adapters.
        vision=dict(CLIP_L14_336, post_ln=False),
        injection="prefix",
        num_memory_slots=0,
        projector=dict(hidden=4096, learnable_diagonal=False, fusion="sum", memory_scale=1.0),
        ica=dict(_RELEASE_ICA, delta=0.0, start="never"),  # unused with a prefix
        modality_embedding=False,
        add_modality_embedding=False,
        trainable=PROJECTOR_ONLY,
    )


def _ablation(c, *, levels: str, diagonal: bool, mask: bool, injection: str = "ica") -> None:
    """Demo-size ablation: only the method knobs change (taps, Λ, mask, injection).

    The levels are the base's deepest tap and the tap halfway to it: the demo's (2,) / (1, 2); ``:objects``'s
    (1,) / (0, 1), the objects as found in the pixels and after the block in which they read each other.
    """
    for name, enc in c.model.encoders.items():
        deepest = max(enc.taps)
        taps = (deepest,) if levels == "last" else (deepest // 2, deepest)
        _set(enc, f"model.encoders.{name}", taps=taps)
    _set(c.model, "model", injection=injection)
    if injection != "prefix":  # a bias between image tokens in the LLM's sequence: memory slots are not in it
        _set(c.model, "model", prefix_distance_bias=False, prefix_distance_bias_init=0.0, prefix_distance_bias_self=False)
    _set(c.model.projector, "model.projector", learnable_diagonal=diagonal)
    _set(c.model.ica, "model.ica", delta=0.3 if mask else 0.0, lam=0.85)


_APPLY = {
    "lsrm_7b": lambda c: _lsrm(c, "llama_7b", 320),
    "lsrm_13b": lambda c: _lsrm(c, "llama_13b", 400),
    "memvp_7b": _memvp_7b,
    "llava_7b": _llava_7b,
    "ablation_memvp": lambda c: _ablation(c, levels="last", diagonal=False, mask=False),
    "ablation_multilevel": lambda c: _ablation(c, levels="two", diagonal=False, mask=False),
    "ablation_srproj": lambda c: _ablation(c, levels="two", diagonal=True, mask=False),
    "ablation_lsrm": lambda c: _ablation(c, levels="two", diagonal=True, mask=True),
    "ablation_llava": lambda c: _ablation(c, levels="last", diagonal=False, mask=False, injection="prefix"),
}
_APPLY |= {f"lsrm_{name}": (lambda c, name=name: _lsrm(c, name, 320)) for name in LLM_SHAPES}
_APPLY = {k: _APPLY[k] for k in RELEASE_PRESETS} | {
    "lsrm_7b_ensemble": lambda c: (_lsrm(c, "llama_7b", 320), change_encoders(c, "+siglip+dinov2")),
} | {k: _APPLY[k] for k in ABLATION_PRESETS + LSRM_ON_LLM_PRESETS}
assert tuple(_APPLY) == MODEL_PRESETS


def split_encoder_changes(name: str) -> tuple[str, str]:
    """``'lsrm_7b+siglip-clip'`` -> ``('lsrm_7b', '+siglip-clip')``: a preset and its encoder changes."""
    cut = min((i for i, ch in enumerate(name) if ch in "+-"), default=len(name))
    return name[:cut], name[cut:]


def change_encoders(c: ml_collections.ConfigDict, changes: str) -> ml_collections.ConfigDict:
    """Adds (``+name``) or removes (``-name``) vision encoders, e.g. ``'+siglip+dinov2'`` or ``'+siglip-clip'``.

    An added encoder is ``ENCODER_PRESETS[name]`` (its own taps, preprocessing, adapters and, per level, SRProj);
    its ``hf_dir`` and any other key can then be overridden (``--config.model.encoders.siglip.hf_dir=...``).
    With more than one encoder the memory holds exactly the fused tokens (``num_memory_slots=0``): the
    release's zero padding to 320 slots is a one-encoder choice.
    """
    encoders = dict(c.model.encoders.items())
    for sign, name in re.findall(r"([+-])([^+-]*)", changes):
        if sign == "+" and name not in ENCODER_PRESETS:
            raise ValueError(f"Unknown encoder {name!r} in {changes!r}; encoders that can be added: {tuple(ENCODER_PRESETS)}.")
        if sign == "+" and name in encoders:
            raise ValueError(f"Encoder {name!r} is already in the config ({tuple(encoders)}).")
        if sign == "-" and name not in encoders:
            raise ValueError(f"Encoder {name!r} is not in the config ({tuple(encoders)}); cannot remove it.")
        if sign == "+":
            encoders[name] = _encoder(name, ENCODER_PRESETS[name])
        else:
            del encoders[name]
    if not encoders:
        raise ValueError(f"{changes!r} removes every vision encoder.")
    c.model.encoders = ml_collections.ConfigDict(encoders)
    if len(encoders) > 1:
        c.model.num_memory_slots = 0
    return c


def is_model_preset(name: str) -> bool:
    """``name`` is a model preset, optionally followed by encoder changes (``lsrm_7b+siglip``)."""
    return split_encoder_changes(name)[0] in _APPLY


def apply(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Applies the model preset ``name`` to ``config`` (in place) and returns it.

    Release presets set the whole model section (the result does not depend on the base model);
    ablation presets change only the method knobs of the base (configs/vqa.py:demo, or :objects through
    ``experiments/ablation.py --base=objects``).
    ``name`` may end in encoder changes (``change_encoders``): ``lsrm_7b+siglip+dinov2``.
    """
    preset, changes = split_encoder_changes(name)
    if preset not in _APPLY:
        raise ValueError(f"Unknown model preset {preset!r}; choose one of {MODEL_PRESETS}.")
    _APPLY[preset](config)
    change_encoders(config, changes)
    config.preset = name
    return config
