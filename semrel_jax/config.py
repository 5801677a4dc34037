"""Config validation and the typed model config built from an ``ml_collections.ConfigDict``.

Everything a run needs is checked here, before any array is allocated or anything is compiled, so a
typo or an impossible value fails in a second with the offending key named.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import ml_collections

from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.ica import ICAConfig
from semrel_jax.method.vlm import VLMConfig
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.models.vit import ViTConfig

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{key}: {message}")


def _positive_int(c, key: str, allow_zero: bool = False) -> None:
    value = _get(c, key)
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    _check(ok, key, f"expected a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def _one_of(c, key: str, choices) -> None:
    value = _get(c, key)
    _check(value in choices, key, f"expected one of {tuple(choices)}, got {value!r}")


def _get(c, key: str) -> Any:
    node = c
    for part in key.split("."):
        node = node[part]
    return node


def parse_start(spec: str, steps_per_epoch: float) -> int:
    """ICA mask start: 'always' -> 0, 'never' -> -1, 'step:N' -> N, 'epoch:N' -> first step of epoch N."""
    if spec == "always":
        return 0
    if spec == "never":
        return -1
    match = re.fullmatch(r"(step|epoch):(\d+)", spec)
    if not match:
        raise ConfigError(f"config.model.ica.start: expected 'always', 'never', 'step:N' or 'epoch:N', got {spec!r}")
    n = int(match.group(2))
    return n if match.group(1) == "step" else int(round(n * steps_per_epoch))


def resolve_pretrained(c: ml_collections.ConfigDict) -> None:
    """Fills the shape keys of every part that names an ``hf_dir`` from that directory's config.json.

    The config then says what really runs: the run's saved config, ``inspect`` and the image
    preprocessing (``image_size``) all see the checkpoint's architecture.
    """
    from semrel_jax.convert import families, hf

    m = c.model
    if m.llm.get("hf_dir"):
        llm = _pretrained_llm(m)
        keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim", "rope_theta", "norm_eps", "tie_embeddings")
        keys += ("rope_scaling", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor")
        for key in keys + ("rope_original_max_position",):
            m.llm[key] = getattr(llm, key)
        m.llm.vocab_size = llm.vocab_size
    for name, e in m.encoders.items():
        if e.get("hf_dir"):
            try:
                vit = families.vision_config_from_hf(hf.read_config(e.hf_dir)).config
            except ValueError as err:
                raise ConfigError(f"config.model.encoders.{name}.hf_dir={e.hf_dir!r}: {err}") from None
            for key in ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim", "act"):
                e[key] = getattr(vit, key)
            # the family's HF image processor (data/preprocess.py reproduces it exactly)
            family = families.vision_config_from_hf(hf.read_config(e.hf_dir)).model_type
            e.normalization = {"clip": "clip", "siglip": "siglip", "siglip2": "siglip", "dinov2": "imagenet"}[family]
            e.resample = "bicubic"
            e.crop = family in ("clip", "dinov2")
            e.resize = int(vit.image_size * 256 / 224) if family == "dinov2" else 0


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first invalid value (after filling shapes from any ``hf_dir``)."""
    resolve_pretrained(c)
    from semrel_jax.data import scienceqa as scienceqa_data, sources, vqa_v2 as vqa_v2_data
    from semrel_jax.data import sort_of_clevr as sort_of_clevr_data, sort_of_clevr_captions

    _one_of(c, "data.name", sources.NAMES)
    _positive_int(c, "data.max_text_len")
    _positive_int(c, "data.num_workers", allow_zero=True)
    _one_of(c, "data.prompt_format", ("qa", "raw", "chat"))
    if c.data.name in ("sort_of_clevr", "sort_of_clevr_captions"):
        for key in ("data.train_images", "data.eval_images", "data.questions_per_image"):
            _positive_int(c, key)
        for key in ("data.train_split", "data.eval_split"):
            _one_of(c, key, ("",) + tuple(sort_of_clevr_data.SPLITS))
    elif c.data.name == "llava_json":  # its splits are files (train_file / eval_file), not names
        for key in ("data.train_split", "data.eval_split"):
            _check(not _get(c, key), key, "llava_json reads data.train_file / data.eval_file; leave the split names ''")
    mix = c.data.get("caption_mix", 0.0)
    _check(
        isinstance(mix, (int, float)) and not isinstance(mix, bool) and 0.0 <= mix < 1.0,
        "data.caption_mix",
        f"expected a fraction 0 <= caption_mix < 1, got {mix!r}",
    )
    _check(
        not (mix and c.data.name == "sort_of_clevr" and c.data.get("examples_per_image", 1) > 1),
        "data.caption_mix",
        "mixing in scene descriptions needs data.examples_per_image=1",
    )
    kinds = c.data.get("caption_kinds", ("objects",))
    _check(
        isinstance(kinds, (tuple, list)) and len(kinds) > 0 and len(set(kinds)) == len(kinds)
        and all(k in sort_of_clevr_captions.KINDS for k in kinds),
        "data.caption_kinds",
        f"expected distinct names from {sort_of_clevr_captions.KINDS}, got {kinds!r}",
    )
    _positive_int(c, "data.examples_per_image")
    group = c.data.examples_per_image
    if group > 1:
        _check(
            c.data.name == "sort_of_clevr" and not c.data.get("prepared_dir"),
            "data.examples_per_image",
            f"grouping examples by image is implemented for the generated sort_of_clevr source, not {c.data.name!r}",
        )
        _check(
            c.data.questions_per_image % group == 0,
            "data.examples_per_image",
            f"must divide data.questions_per_image={c.data.questions_per_image}, got {group}",
        )
        _check(
            c.train.batch_size % (group * c.train.grad_accum_steps) == 0,
            "data.examples_per_image",
            f"train.batch_size={c.train.batch_size} must be a multiple of examples_per_image x grad_accum_steps "
            f"({group} x {c.train.grad_accum_steps})",
        )
    if c.data.name == "sort_of_clevr_captions":
        _check(c.data.prompt_format != "qa", "data.prompt_format", "captions use 'raw' (or 'chat')")
    elif c.data.name != "sort_of_clevr":
        _check(c.data.prompt_format != "qa", "data.prompt_format", f"{c.data.name} formats its own prompts: use 'raw' (or 'chat')")
        _one_of(c, "data.on_bad_data", ("error", "skip"))
        needs = {"scienceqa": ("root",), "vqa_v2": ("root",), "coco_captions": ("train_file", "image_root"),
                 "llava_json": ("train_file", "image_root")}[c.data.name]
        for key in needs if not c.data.get("prepared_dir") else ():  # a prepared copy is read without them
            _check(bool(c.data[key]), f"data.{key}", f"required for data.name={c.data.name!r}")
        if c.data.name == "scienceqa":
            _one_of(c, "data.scienceqa_format", scienceqa_data.PROMPT_FORMATS)
        if c.data.name == "vqa_v2":
            _one_of(c, "data.vqa_prompt", vqa_v2_data.PROMPT_FORMATS)
    if c.data.get("prepared_dir"):
        from semrel_jax.data import prepared

        try:
            prepared.check(c)
        except prepared.PreparedDataError as e:
            raise ConfigError(f"config.data.prepared_dir: {e}") from None
    _check(
        c.data.prompt_format != "chat" or bool(c.data.tokenizer),
        "data.prompt_format",
        "'chat' uses the chat template of a model's own tokenizer: set data.tokenizer to its directory",
    )
    _one_of(c, "model.injection", ("ica", "prefix"))
    _one_of(c, "model.remat", ("none", "full", "dots", "dots_no_batch"))
    _positive_int(c, "model.num_memory_slots", allow_zero=True)
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim"):
        _positive_int(c, f"model.llm.{key}")
    _positive_int(c, "model.llm.vocab_size", allow_zero=True)
    _one_of(c, "model.llm.rope_scaling", ("none", "linear", "llama3"))
    _positive_int(c, "model.llm.lora_rank", allow_zero=True)
    for key in ("dtype", "param_dtype"):
        _one_of(c, f"model.llm.{key}", DTYPES)
    _check(len(c.model.encoders) > 0, "model.encoders", "at least one vision encoder is needed")
    for name, enc in c.model.encoders.items():
        for key in ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim"):
            _positive_int(c, f"model.encoders.{name}.{key}")
        taps = tuple(enc.taps)
        _check(
            len(taps) > 0 and all(isinstance(t, int) and 0 <= t <= enc.depth for t in taps),
            f"model.encoders.{name}.taps",
            f"expected hidden_states indices in 0..depth={enc.depth}, got {taps}",
        )
        _check(len(set(taps)) == len(taps), f"model.encoders.{name}.taps", f"duplicate taps in {taps}")
        pool, grid = enc.get("pool", 1), enc.image_size // enc.patch_size
        _check(
            isinstance(pool, int) and pool >= 1 and grid % pool == 0 and (pool == 1 or enc.get("drop_cls", True)),
            f"model.encoders.{name}.pool",
            f"expected a divisor of the {grid}x{grid} patch grid (and drop_cls=True when > 1), got {pool!r}",
        )
        relative = enc.get("relative_position_bias", False)
        _check(
            isinstance(relative, bool) and not (relative and enc.get("hf_dir")),
            f"model.encoders.{name}.relative_position_bias",
            f"expected True or False, and False for a converted tower (hf_dir: its architecture has none); got {relative!r}",
        )
    _one_of(c, "model.projector.fusion", ("sum", "mean"))
    _positive_int(c, "model.projector.hidden")
    _check(0.0 <= c.model.ica.delta < 1.0, "model.ica.delta", f"expected 0 <= delta < 1, got {c.model.ica.delta}")
    _check(0.0 < c.model.ica.lam <= 1.0, "model.ica.lam", f"expected 0 < lam <= 1, got {c.model.ica.lam}")
    _check(0.0 <= c.model.ica.dropout < 1.0, "model.ica.dropout", f"expected 0 <= dropout < 1, got {c.model.ica.dropout}")
    parse_start(c.model.ica.start, 1.0)
    for key in ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        _positive_int(c, f"train.{key}")
    _positive_int(c, "train.warmup_steps", allow_zero=True)
    _positive_int(c, "train.grad_accum_steps")
    _check(
        c.train.batch_size % c.train.grad_accum_steps == 0,
        "train.grad_accum_steps",
        f"must divide train.batch_size={c.train.batch_size}, got {c.train.grad_accum_steps}",
    )
    _check(c.train.learning_rate > 0, "train.learning_rate", f"must be > 0, got {c.train.learning_rate}")
    _check(c.train.warmup_steps < c.train.num_steps, "train.warmup_steps", "must be smaller than train.num_steps")
    _one_of(c, "train.nonfinite", ("stop", "skip"))
    _one_of(c, "train.frozen_dtype", DTYPES)
    for key in ("trainable", "frozen"):
        for pattern in _get(c, f"train.{key}"):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"config.train.{key}: bad regex {pattern!r}: {e}") from None
    for axis in ("data", "fsdp", "tensor"):
        value = c.mesh[axis]
        _check(isinstance(value, int) and (value == -1 or value > 0), f"mesh.{axis}", f"expected -1 or > 0, got {value!r}")
    _check(
        [c.mesh.data, c.mesh.fsdp, c.mesh.tensor].count(-1) <= 1, "mesh", "at most one axis may be -1 (fill)"
    )
    from semrel_jax.training import sharding

    for name, axis in c.mesh.get("rules", {}).items():
        _check(name in sharding.DEFAULT_RULES, f"mesh.rules.{name}", f"unknown logical axis; known: {tuple(sharding.DEFAULT_RULES)}")
        _check(axis in ("", "data", "fsdp", "tensor"), f"mesh.rules.{name}", f"expected '', 'data', 'fsdp' or 'tensor', got {axis!r}")
    validate_eval(c)


def validate_eval(c: ml_collections.ConfigDict) -> None:
    """The ``eval`` section alone (``validate`` runs it; evaluating a checkpoint with another eval section too)."""
    _positive_int(c, "eval.batch_size")
    _positive_int(c, "eval.num_examples", allow_zero=True)
    _positive_int(c, "eval.max_new_tokens")
    _check(float(c.eval.temperature) >= 0.0, "eval.temperature", f"must be >= 0, got {c.eval.temperature}")
    _check(0.0 < float(c.eval.top_p) <= 1.0, "eval.top_p", f"expected 0 < top_p <= 1, got {c.eval.top_p}")
    # .get: configs saved before beam search existed have neither key (defaults: 1 beam, penalty 1.0).
    num_beams = c.eval.get("num_beams", 1)
    ok = isinstance(num_beams, int) and not isinstance(num_beams, bool) and num_beams > 0
    _check(ok, "eval.num_beams", f"expected a positive integer (1: greedy / sampling), got {num_beams!r}")
    _check(
        num_beams == 1 or float(c.eval.temperature) == 0.0,
        "eval.num_beams",
        f"beam search ({num_beams} beams) is deterministic and cannot sample: set eval.temperature=0 "
        f"(got {c.eval.temperature}) or eval.num_beams=1",
    )
    penalty = c.eval.get("length_penalty", 1.0)
    ok = isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and math.isfinite(penalty) and penalty >= 0
    # Finished beams keep competing on their raw log-prob: the final pick is exact for penalties >= 0 only.
    _check(ok, "eval.length_penalty", f"expected a finite number >= 0 (score = logprob / length**penalty), got {penalty!r}")


def model_config(c: ml_collections.ConfigDict, vocab_size: int) -> VLMConfig:
    """The typed model config; ``vocab_size`` comes from the tokenizer unless the config fixes it."""
    try:
        return _model_config(c, vocab_size)
    except ConfigError:
        raise
    except ValueError as e:  # the typed configs' own consistency checks
        raise ConfigError(f"config.model: {e}") from None


def _pretrained_llm(m: ml_collections.ConfigDict) -> LlamaConfig:
    from semrel_jax.convert import families, hf

    try:
        llm = families.llm_config_from_hf(hf.read_config(m.llm.hf_dir), dtype=m.llm.dtype, param_dtype=m.llm.param_dtype)
        lora = dict(lora_rank=m.llm.lora_rank, lora_alpha=m.llm.lora_alpha, lora_targets=tuple(m.llm.lora_targets))
        lora["remat"] = m.remat
        return dataclasses.replace(llm, **lora)
    except ValueError as e:
        raise ConfigError(f"config.model.llm.hf_dir={m.llm.hf_dir!r}: {e}") from None


def _pretrained_vit(name: str, e: ml_collections.ConfigDict, m: ml_collections.ConfigDict) -> ViTConfig:
    from semrel_jax.convert import families, hf

    try:
        family = families.vision_config_from_hf(hf.read_config(e.hf_dir), dtype=m.llm.dtype, param_dtype=m.llm.param_dtype)
    except ValueError as err:
        raise ConfigError(f"config.model.encoders.{name}.hf_dir={e.hf_dir!r}: {err}") from None
    bad = [t for t in e.taps if t > family.config.depth]
    if bad:
        raise ConfigError(f"config.model.encoders.{name}.taps: {bad} beyond the {family.config.depth} blocks of {e.hf_dir}")
    # The architecture is the checkpoint's; the adapters are ours.
    return dataclasses.replace(family.config, adapter_dim=e.adapter_dim, adapter_scale=e.adapter_scale, remat=m.remat)


def _model_config(c: ml_collections.ConfigDict, vocab_size: int) -> VLMConfig:
    m = c.model
    llm = _pretrained_llm(m) if m.llm.get("hf_dir") else LlamaConfig(
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
        lora_rank=m.llm.lora_rank,
        lora_alpha=m.llm.lora_alpha,
        lora_targets=tuple(m.llm.lora_targets),
        remat=m.remat,
        dtype=m.llm.dtype,
        param_dtype=m.llm.param_dtype,
    )
    if llm.vocab_size < vocab_size:
        raise ConfigError(f"config.model.llm.vocab_size={llm.vocab_size} is smaller than the tokenizer's {vocab_size}.")
    encoders = []
    for name, e in m.encoders.items():
        vit = ViTConfig(
            image_size=e.image_size,
            patch_size=e.patch_size,
            width=e.width,
            depth=e.depth,
            heads=e.heads,
            mlp_dim=e.mlp_dim,
            act=e.act,
            posemb=e.posemb,
            relative_position_bias=e.get("relative_position_bias", False),
            adapter_dim=e.adapter_dim,
            adapter_scale=e.adapter_scale,
            remat=m.remat,
            dtype=m.llm.dtype,
            param_dtype=m.llm.param_dtype,
        )
        if e.get("hf_dir"):
            vit = _pretrained_vit(name, e, m)
        encoders.append(
            EncoderSpec(name=name, vit=vit, taps=tuple(e.taps), post_ln=e.post_ln, drop_cls=e.drop_cls, pool=e.get("pool", 1))
        )
    vision = EnsembleConfig(
        encoders=tuple(encoders),
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
        ica=ICAConfig(scale=m.ica.scale, delta=m.ica.delta, lam=m.ica.lam, dropout=m.ica.dropout),
        modality_embedding=m.modality_embedding,
        slot_key_init_std=m.slot_key_init_std,
        slot_value_init_std=m.slot_value_init_std,
    )
