"""Config presets, validation and command-line overrides fail early with the key named."""

import functools
import os
import subprocess
import sys

import pytest

from semrel_jax import config as config_lib

import vqa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_presets_validate_and_unknown_preset_fails():
    for preset in vqa.PRESETS:
        config_lib.validate(vqa.get_config(preset))
    assert vqa.get_config().preset == vqa.DEFAULT == "objects_lsrm"
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        vqa.get_config("huge")


@pytest.mark.parametrize(
    "override, message",
    [("--config.train.bogus=1", "error: --config.train.bogus: the config has no key 'bogus'"), ("--config.train.num_steps=abc", "num_steps")],
)
def test_command_line_rejects_unknown_keys_and_bad_types(tmp_path, override, message):
    cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny", f"--workdir={tmp_path}", override]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.batch_size", 0, "train.batch_size: expected a positive integer"),
        ("model.injection", "concat", "model.injection: expected one of"),
        ("model.ica.delta", 1.5, "model.ica.delta"),
        ("model.ica.start", "later", "model.ica.start"),
        ("train.trainable", ("[unclosed",), "bad regex"),
        ("mesh.fsdp", 0, "mesh.fsdp"),
        ("train.warmup_steps", 10, "smaller than train.num_steps"),
        ("model.encoders.vit.taps", (1, 9), "model.encoders.vit.taps"),
        ("data.eval_split", "val", "data.eval_split: expected one of"),  # was silently ignored by sort_of_clevr
        ("data.caption_kinds", ("objects", "shapes"), "data.caption_kinds"),
    ],
)
def test_invalid_values_name_the_key(tiny_config, key, value, message):
    node = tiny_config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
        config_lib.validate(tiny_config)


def test_model_config_inconsistencies_are_config_errors(tiny_config):
    tiny_config.model.encoders.vit.patch_size = 7
    with pytest.raises(config_lib.ConfigError, match="not a multiple of patch_size"):
        config_lib.model_config(tiny_config, vocab_size=50)
    tiny_config.model.encoders.vit.patch_size = 15
    tiny_config.model.num_memory_slots = 3
    with pytest.raises(config_lib.ConfigError, match="num_memory_slots=3"):
        config_lib.model_config(tiny_config, vocab_size=50)


@pytest.mark.parametrize("key", ["relative_position_bias", "distance_bias"])
def test_position_biases_reach_the_tower_and_not_a_converted_one(tiny_config, tmp_path, key):
    import transformers
    assert not getattr(config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0].vit, key)
    tiny_config.model.encoders.vit[key] = True
    assert getattr(config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0].vit, key)
    config_lib.validate(tiny_config)
    # a converted CLIP tower (only its config.json is read here) has no such bias
    transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=4).save_pretrained(tmp_path)
    tiny_config.model.encoders.vit.hf_dir = str(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=key):
        config_lib.validate(tiny_config)
    tiny_config.model.encoders.vit[key] = False
    config_lib.validate(tiny_config)


def test_layer_scale_reaches_a_from_scratch_tower_and_not_a_converted_one(tiny_config, tmp_path):
    import transformers
    vit = config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0].vit
    assert not vit.layer_scale  # None: the family's blocks ('vit': no LayerScale)
    tiny_config.model.encoders.vit.layer_scale_init = 0.0
    config_lib.validate(tiny_config)
    vit = config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0].vit
    assert vit.layer_scale and vit.layer_scale_init == 0.0
    tiny_config.model.encoders.vit.layer_scale_init = -0.5
    with pytest.raises(config_lib.ConfigError, match="layer_scale_init"):
        config_lib.validate(tiny_config)
    tiny_config.model.encoders.vit.layer_scale_init = 0.0
    transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=4).save_pretrained(tmp_path)
    tiny_config.model.encoders.vit.hf_dir = str(tmp_path)
    with pytest.raises(config_lib.ConfigError, match="layer_scale_init.*converted tower"):
        config_lib.validate(tiny_config)


def test_attend_others_and_the_distance_bias_options_reach_a_from_scratch_tower_and_not_a_converted_one(tiny_config, tmp_path):
    import transformers
    tiny_config.model.encoders.vit.attend = "others"
    config_lib.validate(tiny_config)
    assert config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0].vit.attend == "others"
    tiny_config.model.encoders.vit.distance_bias_scale = 10.0  # without distance_bias: it would scale nothing
    with pytest.raises(config_lib.ConfigError, match="distance_bias_scale"):
        config_lib.validate(tiny_config)
    tiny_config.model.encoders.vit.distance_bias = True
    config_lib.validate(tiny_config)
    assert config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0].vit.distance_bias_scale == 10.0
    tiny_config.model.encoders.vit.distance_bias_init = 8.0
    config_lib.validate(tiny_config)
    assert config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0].vit.distance_bias_init == 8.0
    tiny_config.model.encoders.vit.distance_bias_scale = 1.0
    tiny_config.model.encoders.vit.distance_bias = False  # without it there is no bias to initialise
    with pytest.raises(config_lib.ConfigError, match="distance_bias_init"):
        config_lib.validate(tiny_config)
    tiny_config.model.encoders.vit.distance_bias_init = 0.0
    tiny_config.model.encoders.vit.attend = "self"
    with pytest.raises(config_lib.ConfigError, match="attend.*'all' or 'others'"):
        config_lib.validate(tiny_config)
    tiny_config.model.encoders.vit.attend = "others"
    transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=4).save_pretrained(tmp_path)
    tiny_config.model.encoders.vit.hf_dir = str(tmp_path)
    with pytest.raises(config_lib.ConfigError, match="attend.*converted tower"):
        config_lib.validate(tiny_config)


def test_object_tokens_reach_the_tower_and_refuse_what_needs_a_patch_grid(tiny_config):
    tiny_config.model.encoders.vit.update(tokens="objects", max_objects=6, image_size=50)  # no patch multiple needed
    config_lib.validate(tiny_config)
    spec = config_lib.model_config(tiny_config, vocab_size=50).vision.encoders[0]
    assert (spec.vit.tokens, spec.vit.max_objects, spec.num_tokens) == ("objects", 6, 6)  # the class token dropped
    for key, value, complaint in [
        ("model.encoders.vit.pool", 2, "no patch grid to pool"),
        ("model.encoders.vit.relative_position_bias", True, "indexes a patch grid"),
        ("model.encoders.vit.normalization", "clip", "'unit' or 'background'"),
        ("model.encoders.vit.hf_dir", "/some/clip", "from-scratch tower"),
        ("train.reconstruction_weight", 1.0, "decodes patch-grid slots"),
        ("model.encoders.vit.tokens", "pixels", "tokens"),
    ]:
        changed = tiny_config.copy_and_resolve_references()
        section, _, leaf = key.rpartition(".")
        target = functools.reduce(lambda node, part: node[part], section.split("."), changed)
        target[leaf] = value
        with pytest.raises(config_lib.ConfigError, match=complaint):
            config_lib.validate(changed)


@pytest.mark.parametrize("stages, complaint", [
    (("left_of:3000",), r"expected 'kind\[\+kind...\]:examples:steps\[:loss\]'"),
    (("left_of:0:5",), "examples, steps >= 1"),
    (("left_of:10:4:0",), "and loss > 0, got 'left_of:10:4:0'"),
    (("left_of:10:4:low",), "and loss > 0, got 'left_of:10:4:low'"),
    (("left_of:10:4", "above:10:4"), r"take \(at most\) 8 steps, not fewer than train.num_steps=6"),
])
def test_curriculum_is_checked_before_training(tiny_config, stages, complaint):
    tiny_config.data.curriculum = ("shape:10:2",)
    config_lib.validate(tiny_config)
    tiny_config.data.curriculum = stages
    with pytest.raises(config_lib.ConfigError, match=complaint):
        config_lib.validate(tiny_config)


def test_mask_start_parsing():
    assert config_lib.parse_start("always", 10.0) == 0
    assert config_lib.parse_start("never", 10.0) == -1
    assert config_lib.parse_start("step:7", 10.0) == 7
    assert config_lib.parse_start("epoch:15", 12.5) == 188


def test_sort_of_clevr_eval_split_train_reads_the_training_images(tiny_config):
    from semrel_jax.data import registry

    train, evaluation = registry.build_sources(tiny_config)
    assert evaluation.split == "test"
    tiny_config.data.eval_split = "train"
    config_lib.validate(tiny_config)
    _, on_train = registry.build_sources(tiny_config)
    assert len(on_train) == tiny_config.data.eval_images * tiny_config.data.questions_per_image
    for i in (0, len(on_train) - 1):
        a, b = on_train[i], train[i]
        assert (a["question"], a["answer"]) == (b["question"], b["answer"])
        assert (a["image"] == b["image"]).all()
    assert registry.record_settings(tiny_config)["eval_split"] == "train"



def test_validation_is_pure_and_resolve_is_the_explicit_step(tiny_config, tmp_path):
    import json

    import transformers

    tiny_config.model.encoders.vit.hf_dir = str(tmp_path / "missing")
    before = tiny_config.to_json_best_effort()
    config_lib.validate(tiny_config)  # reads no file, changes nothing
    assert tiny_config.to_json_best_effort() == before
    with pytest.raises(config_lib.ConfigError, match=r"config.model.encoders.vit.hf_dir=.*missing"):
        config_lib.resolve(tiny_config)

    transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=4).save_pretrained(tmp_path / "clip")
    tiny_config.model.encoders.vit.hf_dir = str(tmp_path / "clip")
    tiny_config.model.encoders.vit.normalization = "imagenet"  # set by the user: kept
    filled = config_lib.prepare(tiny_config)
    vit = tiny_config.model.encoders.vit
    assert (vit.image_size, vit.width, vit.depth, vit.normalization, vit.crop) == (32, 48, 3, "imagenet", True)
    assert any(line.startswith("config.model.encoders.vit: ") and "width=48 (was 32)" in line for line in filled)
    assert "config.model.encoders.vit: resample='bicubic', crop=True, resize=0 from clip's image processor" in filled
    assert not any("normalization" in line for line in filled)
    assert config_lib.resolve(tiny_config) == []  # resolving a resolved config fills nothing
    assert json.loads(tiny_config.to_json_best_effort())["model"]["encoders"]["vit"]["normalization"] == "imagenet"


def test_from_scratch_towers_resolve_to_the_documented_preprocessing(tiny_config):
    filled = config_lib.prepare(tiny_config)
    vit = tiny_config.model.encoders.vit
    assert (vit.normalization, vit.resample, vit.crop, vit.resize) == ("unit", "bicubic", True, 0)
    assert filled == ["config.model.encoders.vit: normalization='unit', resample='bicubic', crop=True, resize=0 "
                      "from the from-scratch default"]


def test_every_preset_uses_only_schema_keys_and_defaults_agree_with_the_typed_configs():
    import dataclasses

    from semrel_jax.config import defaults
    from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
    from semrel_jax.method.ica import ICAConfig
    from semrel_jax.method.vlm import VLMConfig
    from semrel_jax.models.llama import LlamaConfig
    from semrel_jax.models.vit import ViTConfig

    schema = defaults.schema_keys(config_lib.base_config())
    for preset in vqa.PRESETS:
        keys = {k for k in defaults.schema_keys(vqa.get_config(preset)) if not k.startswith("model.encoders.")}
        assert keys <= schema, (preset, keys - schema)
    base = config_lib.base_config().model
    names = {"projector_hidden": "hidden"}  # EnsembleConfig's name for projector.hidden
    checked = 0
    for typed, section in ((LlamaConfig, base.llm), (ViTConfig, defaults.encoder_defaults()),
                           (EncoderSpec, defaults.encoder_defaults()), (ICAConfig, base.ica),
                           (EnsembleConfig, base.projector), (VLMConfig, base)):
        for field in dataclasses.fields(typed):
            key = names.get(field.name, field.name)
            if key in section and field.default is not dataclasses.MISSING and not dataclasses.is_dataclass(field.default):
                value = section[key]
                assert field.default == (tuple(value) if isinstance(value, (list, tuple)) else value), (typed, key)
                checked += 1
    assert checked >= 25


# The session-31 command of experiments/LOG.md (session 26's with a third LLM block, the held rate, the objects
# and the question read both ways with a distance bias): `:scratch` plus the
# $STRIP and $OPT of docs/research.md section 8 and the rows' changes.
MEASURED_OVERRIDES = (
    "--config.train.reconstruction_weight=0", "--config.model.encoders.vit.tokens=objects",
    "--config.model.encoders.vit.distance_bias=True", "--config.model.injection=prefix",
    "--config.model.encoders.vit.taps=(1,)", "--config.model.projector.memory_scale=1.0",
    "--config.model.projector.learnable_diagonal=False", "--config.model.llm.n_kv_heads=4",
    "--config.model.modality_embedding=False", "--config.train.learning_rate=1e-3", "--config.train.b2=0.999",
    "--config.train.grad_clip=0", "--config.train.weight_decay=0.01", "--config.train.warmup_steps=200",
    "--config.train.batch_size=64", "--config.train.num_steps=14000", "--config.model.encoders.vit.posemb=sincos2d",
    "--config.model.encoders.vit.layer_scale_init=0", "--config.model.encoders.vit.attend=others",
    "--config.train.log_every=250", "--config.train.eval_every=2000", "--config.model.llm.n_layers=3",
    "--config.train.decay_fraction=0.25", "--config.model.prompt_attention=bidirectional",
    "--config.model.prefix_distance_bias=True",
)


def _parsed_config(spec: str, overrides) -> dict:
    """The config the command line `--config=configs/vqa.py:<spec> <overrides>` gives, parsed as main parses it."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["main", f"--config={os.path.join(ROOT, 'configs', 'vqa.py')}:{spec}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)  # declares the --config.* flags
    flag_values(argv)
    config = flag_values.config.to_dict()
    config.pop("preset")
    return config


def test_the_objects_preset_is_the_measured_command():
    """README's rows of that command stand for `:objects`: the same config, key by key."""
    assert _parsed_config("objects", ()) == _parsed_config("scratch", MEASURED_OVERRIDES)
    # and it is not trivially so: one override fewer differs
    assert _parsed_config("objects", ()) != _parsed_config("scratch", MEASURED_OVERRIDES[:-1])


# Session 35's Sort-of-CLEVR command (experiments/LOG.md, README "Results"): `:objects` with this curriculum
# (and, since session 37, 18,000 steps).
SORT_OF_CLEVR_CURRICULUM = ("--config.data.curriculum=('shape+horizontal:6000:5000',"
                            "'horizontal+vertical:6000:2500:0.05',"
                            "'horizontal+vertical+closest+furthest:10000:2500:0.05')")


def test_the_objects_lsrm_preset_is_the_measured_command():
    """README's objects_lsrm row stands for that preset: :objects with LSRM's knobs, as measured in session 38."""
    measured = ("--config.model.injection=ica", "--config.model.prefix_distance_bias=False",
                "--config.model.encoders.vit.taps=(0,1)", "--config.model.projector.learnable_diagonal=True",
                "--config.data.caption_mix=0.3", "--config.train.num_steps=2000")
    objects_lsrm = _parsed_config("objects_lsrm", ())
    assert objects_lsrm == _parsed_config("objects", measured)
    assert objects_lsrm["model"]["ica"]["delta"] == 0.3 and objects_lsrm["model"]["ica"]["start"] == "always"


def test_the_relational_preset_is_the_measured_sort_of_clevr_command():
    """README's Sort-of-CLEVR rows of that command stand for `:relational`: the same config, key by key."""
    relational = _parsed_config("relational", ())
    # since 2026-12-07 it pads to the longest question (rows before padded to 34: same forward, another numerical path)
    measured = (SORT_OF_CLEVR_CURRICULUM, "--config.train.num_steps=18000", "--config.data.max_text_len=19",
                "--config.model.prefix_distance_bias_init=2.0",  # since 2026-12-07 (session 42)
                "--config.model.prefix_distance_bias_self=True")  # since 2026-12-07 (session 43)
    assert relational == _parsed_config("objects", measured)
    assert relational["data"]["name"] == "sort_of_clevr" and relational["data"]["caption_mix"] == 0.0
    assert relational != _parsed_config("objects", ())
