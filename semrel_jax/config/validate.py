"""Config validation: pure (no file reads, no rewriting), before anything is allocated or compiled.

``validate(c)`` checks a resolved config (``semrel_jax.config.resolve`` first) and raises ``ConfigError``
naming the first offending key. Dataset-specific keys are checked by their dataset
(``semrel_jax.data.registry.validate``).
"""

from __future__ import annotations

import math
import re

import ml_collections

from semrel_jax.config.defaults import DTYPES
from semrel_jax.errors import ConfigError, boolean, check, get, is_int, one_of, positive_int
from semrel_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from semrel_jax.models.attention import PLATFORM_OF as ATTENTION_PLATFORM


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


def validate(c: ml_collections.ConfigDict) -> None:
    _validate_data(c)
    _validate_model(c)
    _validate_train(c)
    _validate_mesh(c)
    validate_eval(c)


def _validate_data(c) -> None:
    from semrel_jax.data import registry

    positive_int(c, "data.max_text_len")
    positive_int(c, "data.num_workers", allow_zero=True)
    positive_int(c, "data.object_token_cache", allow_zero=True)
    positive_int(c, "data.image_cache_mb", allow_zero=True)
    towers = [name for name, enc in c.model.encoders.items() if enc.tokens == "objects"]
    check(not (towers and c.data.object_token_cache and c.data.num_workers), "data.object_token_cache",
          f"tokenizes {towers}'s images with JAX in the pipeline, which worker processes must not start; "
          "set data.num_workers=0 (the prefetch threads) or data.object_token_cache=0")
    positive_int(c, "data.prefetch")
    one_of(c, "data.on_bad_data", ("error", "skip"))
    check(
        c.data.prompt_format != "chat" or bool(c.data.tokenizer),
        "data.prompt_format",
        "'chat' uses the chat template of a model's own tokenizer: set data.tokenizer to its directory",
    )
    one_of(c, "data.prompt_format", ("qa", "raw", "chat"))
    registry.validate(c)  # data.name, its prompt formats, examples_per_image, the dataset's own keys
    _validate_curriculum(c)


def _validate_curriculum(c) -> None:
    from semrel_jax.data import curriculum

    stages = c.data.curriculum
    check(isinstance(stages, (tuple, list)) and all(isinstance(s, str) for s in stages), "data.curriculum",
          f"expected a tuple of 'kind[+kind]:examples:steps[:loss]' strings, got {stages!r}")
    if not stages:
        return
    try:
        steps = sum(curriculum.parse(s).steps for s in stages)
    except ValueError as e:
        raise ConfigError(f"config.data.curriculum: {e}") from None
    check(c.data.examples_per_image == 1 and not ("caption_mix" in c.data and c.data.caption_mix), "data.curriculum",
          "draws single examples from the training split: set data.examples_per_image=1 and no data.caption_mix")
    check(c.train.epochs > 0 or steps < c.train.num_steps, "data.curriculum",
          f"its stages take (at most) {steps} steps, not fewer than train.num_steps={c.train.num_steps}")


def _validate_model(c) -> None:
    one_of(c, "model.method", ("lsrm", "semvlp"))
    if c.model.method == "semvlp":
        _validate_semvlp(c)
    one_of(c, "model.injection", ("ica", "prefix"))
    one_of(c, "model.remat", ("none", "full", "dots", "dots_no_batch"))
    one_of(c, "model.attention", ATTENTION_IMPLEMENTATIONS)
    one_of(c, "model.prompt_attention", ("causal", "bidirectional"))
    check(c.model.prompt_attention == "causal" or c.model.attention != "splash", "model.prompt_attention",
          "'bidirectional' needs model.attention 'xla' or 'cudnn' (the splash kernel's mask is causal only)")
    boolean(c, "model.prefix_distance_bias")
    if c.model.prefix_distance_bias:
        check(c.model.injection == "prefix", "model.prefix_distance_bias",
              "biases the attention between the image tokens of a prefix injection; set model.injection='prefix'")
        check(c.model.attention != "splash", "model.prefix_distance_bias",
              "needs model.attention 'xla' or 'cudnn' (the splash kernel takes no attention bias)")
    slope = c.model.prefix_distance_bias_init
    check(isinstance(slope, (int, float)) and not isinstance(slope, bool) and slope >= 0
          and (slope == 0 or c.model.prefix_distance_bias), "model.prefix_distance_bias_init",
          f"expected a number >= 0, and 0 unless model.prefix_distance_bias=True (it initialises that bias); got {slope!r}")
    boolean(c, "model.prefix_distance_bias_self")
    check(not c.model.prefix_distance_bias_self or c.model.prefix_distance_bias, "model.prefix_distance_bias_self",
          "is a feature of model.prefix_distance_bias; set model.prefix_distance_bias=True")
    boolean(c, "model.scan_layers")
    positive_int(c, "model.num_memory_slots", allow_zero=True)
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim"):
        positive_int(c, f"model.llm.{key}")
    positive_int(c, "model.llm.vocab_size", allow_zero=True)
    one_of(c, "model.llm.rope_scaling", ("none", "linear", "llama3"))
    positive_int(c, "model.llm.lora_rank", allow_zero=True)
    for key in ("dtype", "param_dtype"):
        one_of(c, f"model.llm.{key}", DTYPES)
    check(len(c.model.encoders) > 0, "model.encoders", "at least one vision encoder is needed")
    for name, enc in c.model.encoders.items():
        _validate_encoder(c, name, enc)
    one_of(c, "model.projector.fusion", ("sum", "mean"))
    positive_int(c, "model.projector.hidden")
    ica = c.model.ica
    check(0.0 <= ica.delta < 1.0, "model.ica.delta", f"expected 0 <= delta < 1, got {ica.delta}")
    check(0.0 < ica.lam <= 1.0, "model.ica.lam", f"expected 0 < lam <= 1, got {ica.lam}")
    check(0.0 <= ica.dropout < 1.0, "model.ica.dropout", f"expected 0 <= dropout < 1, got {ica.dropout}")
    parse_start(ica.start, 1.0)
    one_of(c, "model.ica.read", ("silu", "softmax"))
    for key in ("modality_embedding", "add_modality_embedding"):
        check(isinstance(c.model[key], bool), f"model.{key}", f"expected True or False, got {c.model[key]!r}")
    check(isinstance(ica.release_noop_mask, bool), "model.ica.release_noop_mask",
          f"expected True or False, got {ica.release_noop_mask!r}")


def _validate_encoder(c, name: str, enc) -> None:
    from semrel_jax.data.preprocess import NORMALIZATION, RESAMPLE

    from semrel_jax.models.vit import FAMILY_LAYOUTS

    where = f"model.encoders.{name}"
    one_of(c, f"{where}.family", tuple(FAMILY_LAYOUTS))
    for key in ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim"):
        positive_int(c, f"{where}.{key}")
    taps = tuple(enc.taps)
    check(
        len(taps) > 0 and all(is_int(t) and 0 <= t <= enc.depth for t in taps),
        f"{where}.taps",
        f"expected hidden_states indices in 0..depth={enc.depth}, got {taps}",
    )
    check(len(set(taps)) == len(taps), f"{where}.taps", f"duplicate taps in {taps}")
    check(0.0 <= enc.adapter_dropout < 1.0, f"{where}.adapter_dropout", f"expected 0 <= rate < 1, got {enc.adapter_dropout}")
    one_of(c, f"{where}.tokens", ("patches", "objects"))
    positive_int(c, f"{where}.max_objects")
    if enc.tokens == "objects":
        check(not enc.hf_dir, f"{where}.tokens", "object tokens need a from-scratch tower; a converted one reads patches")
        check(enc.pool == 1, f"{where}.pool", "object tokens have no patch grid to pool; set 1")
        check(not enc.relative_position_bias, f"{where}.relative_position_bias",
              "indexes a patch grid, which object tokens have not (distance_bias uses the objects' centres)")
        check(enc.normalization in (None, "unit", "background"), f"{where}.normalization",
              f"object tokens threshold pixel differences in [0, 1]: 'unit' or 'background', got {enc.normalization!r}")
        check(not c.train.reconstruction_weight, "train.reconstruction_weight",
              f"decodes patch-grid slots; {where} has object tokens (set 0)")
    else:
        grid = enc.image_size // enc.patch_size
        check(
            is_int(enc.pool) and enc.pool >= 1 and grid % enc.pool == 0 and (enc.pool == 1 or enc.drop_cls),
            f"{where}.pool",
            f"expected a divisor of the {grid}x{grid} patch grid (and drop_cls=True when > 1), got {enc.pool!r}",
        )
    for key in ("relative_position_bias", "distance_bias"):
        value = enc[key]
        check(
            isinstance(value, bool) and not (value and enc.hf_dir),
            f"{where}.{key}",
            f"expected True or False, and False for a converted tower (hf_dir: its architecture has none); got {value!r}",
        )
    scale = enc.distance_bias_scale
    check(isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0
          and (scale == 1 or enc.distance_bias), f"{where}.distance_bias_scale",
          f"expected a number > 0, and 1 unless distance_bias=True (it scales that bias); got {scale!r}")
    slope = enc.distance_bias_init
    check(isinstance(slope, (int, float)) and not isinstance(slope, bool) and slope >= 0
          and (slope == 0 or enc.distance_bias), f"{where}.distance_bias_init",
          f"expected a number >= 0, and 0 unless distance_bias=True (it initialises that bias); got {slope!r}")
    check(enc.attend in ("all", "others") and (enc.attend == "all" or not enc.hf_dir), f"{where}.attend",
          f"expected 'all' or 'others', and 'all' for a converted tower (hf_dir: its blocks attend to all); got {enc.attend!r}")
    scale = enc.layer_scale_init
    check(scale is None or (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale >= 0 and not enc.hf_dir),
          f"{where}.layer_scale_init", f"expected None or a number >= 0, and None for a converted tower (hf_dir: its "
          f"checkpoint fixes its blocks); got {scale!r}")
    # None: unset, filled by semrel_jax.config.resolve
    for key, choices in (("normalization", tuple(NORMALIZATION)), ("resample", tuple(RESAMPLE)), ("crop", (True, False))):
        check(enc[key] is None or enc[key] in choices, f"{where}.{key}", f"expected one of {choices}, got {enc[key]!r}")
    check(enc.resize is None or (is_int(enc.resize) and enc.resize >= 0), f"{where}.resize",
          f"expected an integer >= 0, got {enc.resize!r}")


def _validate_semvlp(c) -> None:
    from semrel_jax.method.semvlp import objectives, schedule

    for key in ("dim", "n_layers", "n_heads", "mlp_dim", "max_positions"):
        positive_int(c, f"model.semvlp.text.{key}")
    text = c.model.semvlp.text
    n_layers = text.n_layers
    check(text.dim % text.n_heads == 0, "model.semvlp.text.dim", f"{text.dim} is not divisible by n_heads={text.n_heads}")
    positive_int(c, "model.semvlp.cross_layers")
    check(
        bool(text.hf_dir) or c.model.semvlp.cross_layers <= n_layers, "model.semvlp.cross_layers",
        f"{c.model.semvlp.cross_layers} exceeds the BERT's {n_layers} layers",
    )
    schedule.parse_pattern(c.model.semvlp.schedule, "model.semvlp.schedule")
    one_of(c, "model.semvlp.eval_mode", ("single", "two"))
    one_of(c, "model.semvlp.visual", ("regions", "patches"))
    one_of(c, "model.semvlp.task", ("pretrain", "nlvr2"))
    one_of(c, "model.semvlp.pool", ("mean", "cls"))
    boolean(c, "model.semvlp.cross")
    boolean(c, "model.semvlp.text.pretrained")
    unknown = sorted(set(c.model.semvlp.weights) - set(objectives.LOSSES))
    check(not unknown, "model.semvlp.weights", f"unknown objectives {unknown}; known: {objectives.LOSSES}")
    for name, weight in c.model.semvlp.weights.items():
        check(isinstance(weight, (int, float)) and weight >= 0, f"model.semvlp.weights.{name}", f"expected >= 0, got {weight!r}")
    for key in ("text_mask_rate", "visual_mask_rate", "question_rate", "negative_rate"):
        value = c.model.semvlp[key]
        check(isinstance(value, (int, float)) and 0 <= value <= 1, f"model.semvlp.{key}", f"expected 0..1, got {value!r}")
    positive_int(c, "model.semvlp.eval_images")
    s = c.model.semvlp
    one_of(c, "model.semvlp.data", ("scenes", "records"))
    check(isinstance(s.region_features, str), "model.semvlp.region_features",
          f"expected a path, got {s.region_features!r}")
    positive_int(c, "model.semvlp.num_answers")
    check(s.data == "records" or not s.region_features, "model.semvlp.region_features",
          "only read with model.semvlp.data=records (the built-in scenes make their own regions)")
    if s.data == "records":
        from semrel_jax.data import semvlp_records

        kind = semvlp_records.rows_kind(c.data.name)
        check(bool(kind), "data.name",
              f"model.semvlp.data=records reads one of {semvlp_records.readable()}, got {c.data.name!r}")
        check((kind == "pairs") == (s.task == "nlvr2"), "model.semvlp.task",
              f"{c.data.name} rows need task={'nlvr2' if kind == 'pairs' else 'pretrain'}, got {s.task!r}")
        want = "regions" if s.region_features else "patches"
        check(s.visual == want, "model.semvlp.visual",
              f"records {'with' if s.region_features else 'without'} model.semvlp.region_features use {want!r}, "
              f"got {s.visual!r}")
    check(
        c.model.encoders.vit.image_size % c.model.encoders.vit.patch_size == 0, "model.encoders.vit.patch_size",
        "must divide image_size (SemVLP's visual tokens are the patches)",
    )


def _validate_train(c) -> None:
    t = c.train
    for key in ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        positive_int(c, f"train.{key}")
    positive_int(c, "train.warmup_steps", allow_zero=True)
    for key in ("eval_every", "eval_examples", "eval_samples"):
        positive_int(c, f"train.{key}", allow_zero=True)
    positive_int(c, "train.keep_every", allow_zero=True)
    positive_int(c, "train.grad_accum_steps")
    positive_int(c, "train.loss_chunk", allow_zero=True)
    for key in ("force_restart", "checkpoint_frozen"):
        check(isinstance(t[key], bool), f"train.{key}", f"expected True or False, got {t[key]!r}")
    check(
        t.batch_size % t.grad_accum_steps == 0,
        "train.grad_accum_steps",
        f"must divide train.batch_size={t.batch_size}, got {t.grad_accum_steps}",
    )
    check(t.learning_rate > 0, "train.learning_rate", f"must be > 0, got {t.learning_rate}")
    check(_number(t.decay_fraction) and 0 < t.decay_fraction <= 1, "train.decay_fraction",
          f"expected a fraction in (0, 1] of the steps after warm-up, got {t.decay_fraction!r}")
    check(t.grad_clip >= 0, "train.grad_clip", f"expected a global norm > 0, or 0 for no clipping; got {t.grad_clip}")
    check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    for key in ("b1", "b2"):
        check(0.0 <= t[key] < 1.0, f"train.{key}", f"expected 0 <= {key} < 1, got {t[key]}")
    for key in ("epochs", "warmup_epochs", "base_learning_rate"):
        check(_number(t[key]) and t[key] >= 0, f"train.{key}", f"expected a number >= 0, got {t[key]!r}")
    if t.epochs > 0:  # num_steps / warmup_steps are derived from these once the data is built
        check(t.warmup_epochs < t.epochs, "train.warmup_epochs", f"must be smaller than train.epochs={t.epochs}")
    else:
        check(t.warmup_epochs == 0, "train.warmup_epochs", "counts in epochs: set train.epochs too (or use train.warmup_steps)")
        check(t.warmup_steps < t.num_steps, "train.warmup_steps", "must be smaller than train.num_steps")
    for key in ("alignment_weight", "reconstruction_weight"):
        check(_number(t[key]) and t[key] >= 0, f"train.{key}", f"expected a number >= 0, got {t[key]!r}")
    if t.alignment_weight:
        check(c.model.method == "lsrm" and c.model.injection == "ica", "train.alignment_weight",
              "scores ICA's memory keys, which only model.method='lsrm' with model.injection='ica' has "
              f"(got {c.model.method!r} / {c.model.injection!r}); set 0")
    if t.reconstruction_weight:
        check(c.model.method == "lsrm", "train.reconstruction_weight",
              f"decodes the VLM's visual tokens; model.method={c.model.method!r} has none (set 0)")
    one_of(c, "train.nonfinite", ("stop", "skip"))
    positive_int(c, "train.xla_cpu_cores", allow_zero=True)
    one_of(c, "train.frozen_dtype", DTYPES)
    for key in ("trainable", "frozen"):
        for pattern in get(c, f"train.{key}"):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"config.train.{key}: bad regex {pattern!r}: {e}") from None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_mesh(c) -> None:
    from semrel_jax.models import partitioning

    for axis in ("data", "fsdp", "tensor"):
        value = c.mesh[axis]
        check(is_int(value) and (value == -1 or value > 0), f"mesh.{axis}", f"expected -1 or > 0, got {value!r}")
    check([c.mesh.data, c.mesh.fsdp, c.mesh.tensor].count(-1) <= 1, "mesh", "at most one axis may be -1 (fill)")
    for name in c.mesh.rules:
        check(name in partitioning.DEFAULT_RULES, f"mesh.rules.{name}",
              f"unknown logical axis; known: {tuple(partitioning.DEFAULT_RULES)}")
    try:
        partitioning.resolve_rules(c.mesh.rules)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None


def check_attention_runs_on(c, platform: str) -> None:
    """``model.attention``'s fused kernels run on one platform each (cuDNN: GPU, splash: TPU)."""
    needed = ATTENTION_PLATFORM.get(c.model.attention)
    check(needed in (None, platform), "model.attention",
          f"{c.model.attention!r} needs a {needed} backend, but the mesh is on {platform}; use 'xla' (runs anywhere)")


def check_batch_fits_mesh(c, mesh_shape: dict[str, int]) -> None:
    """The batch's leading (sharded) dimension must split evenly over the data x fsdp shards."""
    shards = mesh_shape["data"] * mesh_shape["fsdp"]
    rows = c.train.batch_size // c.data.examples_per_image
    check(
        rows % shards == 0,
        "train.batch_size",
        f"{c.train.batch_size} examples are {rows} rows of the batch (images, with data.examples_per_image="
        f"{c.data.examples_per_image}), not divisible by the {shards} data x fsdp shards of the mesh",
    )


def validate_eval(c: ml_collections.ConfigDict) -> None:
    """The ``eval`` section alone (``validate`` runs it; evaluating a checkpoint with another eval section too)."""
    positive_int(c, "eval.batch_size")
    positive_int(c, "eval.num_examples", allow_zero=True)
    positive_int(c, "eval.max_new_tokens")
    check(isinstance(c.eval.answer_prefix, str), "eval.answer_prefix", f"expected a string, got {c.eval.answer_prefix!r}")
    check(float(c.eval.temperature) >= 0.0, "eval.temperature", f"must be >= 0, got {c.eval.temperature}")
    check(0.0 < float(c.eval.top_p) <= 1.0, "eval.top_p", f"expected 0 < top_p <= 1, got {c.eval.top_p}")
    num_beams = c.eval.num_beams
    check(is_int(num_beams) and num_beams > 0, "eval.num_beams", f"expected a positive integer (1: greedy / sampling), got {num_beams!r}")
    check(
        num_beams == 1 or float(c.eval.temperature) == 0.0,
        "eval.num_beams",
        f"beam search ({num_beams} beams) is deterministic and cannot sample: set eval.temperature=0 "
        f"(got {c.eval.temperature}) or eval.num_beams=1",
    )
    penalty = c.eval.length_penalty
    ok = isinstance(penalty, (int, float)) and not isinstance(penalty, bool) and math.isfinite(penalty) and penalty >= 0
    # Finished beams keep competing on their raw log-prob: the final pick is exact for penalties >= 0 only.
    check(ok, "eval.length_penalty", f"expected a finite number >= 0 (score = logprob / length**penalty), got {penalty!r}")
