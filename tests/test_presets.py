"""Model presets: the paper's parameter counts, exactly, on abstractly built models (nothing allocated)."""

import functools
import os
import re
import subprocess
import sys

import jax
import pytest
from flax import nnx

from semrel_jax import config as config_lib
from semrel_jax import summary as summary_lib
from semrel_jax import presets
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.training import partition

import vqa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_VOCAB = 40  # any size works for presets that fix model.llm.vocab_size


def preset_config(name, base="demo"):
    return presets.apply(vqa.get_config(base), name)


@functools.cache
def preset_model(name):
    return abstract(preset_config(name))


def abstract(c, vocab_size=TOKENIZER_VOCAB):
    config_lib.validate(c)
    return summary_lib.abstract_model(config_lib.model_config(c, vocab_size))


def flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Spec "PEFT recipe and sizes": adapters 24·(1024·12+12·1024) + SRProj per level + 2·d + 2·N_mem·d.
@pytest.mark.parametrize(
    "name, trainable, llm_params",
    [
        ("lsrm_7b", 3_883_264, 6_738_415_616),
        ("lsrm_13b", 5_492_992, 13_015_864_320),
        ("memvp_7b", 3_879_040, 6_738_415_616),
        # LLaVA-1.5's mlp2x projector 1024->4096->4096 (with biases) is all that trains.
        ("llava_7b", 20_979_712, 6_738_415_616),
    ],
)
def test_release_presets_reproduce_the_papers_trainable_counts(name, trainable, llm_params):
    c = preset_config(name)
    model = preset_model(name)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx_state(model)))
    total, n_train = summary_lib.param_counts(model, c.train.trainable, c.train.frozen)
    assert n_train == trainable
    assert partition.count_params(nnx_state(model.llm)) == llm_params
    # The training code's own split agrees on the abstract model.
    _, train_state, frozen_state = partition.split_trainable(model, c.train.trainable, c.train.frozen)
    assert partition.count_params(train_state) == trainable
    assert partition.count_params(train_state) + partition.count_params(frozen_state) == total


@pytest.mark.parametrize("llm", list(presets.LLM_SHAPES))
def test_lsrm_on_every_llm_follows_the_recipe(llm):
    """lsrm_<llm>: the release recipe (N_mem 320) on each published LLM shape, counted without allocating."""
    name = f"lsrm_{llm}"
    c = preset_config(name)
    model = abstract(c)
    d = presets.LLM_SHAPES[llm]["dim"]
    srproj = 1024 * 64 + 64 + 64 + 64 * d + d  # fc1 (+bias), diagonal, fc2 (+bias)
    expected_trainable = 589_824 + 2 * srproj + 2 * d + 2 * 320 * d
    total, n_train = summary_lib.param_counts(model, c.train.trainable, c.train.frozen)
    assert n_train == expected_trainable
    llm_params = partition.count_params(nnx_state(model.llm))
    vision_frozen = total - n_train - llm_params
    assert vision_frozen == 303_179_776  # HF CLIPVisionModel, openai/clip-vit-large-patch14 (224 px)
    if llm == "llama_7b":
        assert n_train == 3_883_264


def nnx_state(module):
    return nnx.state(module, nnx.Param)


def test_lsrm_7b_trainable_parameters_are_exactly_the_recipes():
    c = preset_config("lsrm_7b")
    train_state, _ = summary_lib.split_params(preset_model("lsrm_7b"), c.train.trainable, c.train.frozen)
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(train_state))[0]
    sizes = {partition.path_string(p): x.size for p, x in leaves}
    adapters = {k: v for k, v in sizes.items() if "/adapter/" in k}
    assert len(adapters) == 48 and sum(adapters.values()) == 589_824
    assert sizes["memory_key_embedding"] == sizes["memory_value_embedding"] == 320 * 4096
    assert sizes["modality_embedding"] == 2 * 4096
    for level in ("clip_layer13", "clip_layer23"):
        p = f"vision/projectors/{level}"
        assert sizes[f"{p}/diagonal"] == 64
        assert sizes[f"{p}/fc1/kernel"] + sizes[f"{p}/fc1/bias"] == 1024 * 64 + 64
        assert sizes[f"{p}/fc2/kernel"] + sizes[f"{p}/fc2/bias"] == 64 * 4096 + 4096
    assert len(sizes) == 48 + 3 + 2 * 5


@pytest.mark.parametrize(
    "name, params",
    [
        ("llama_7b", 6_738_415_616),
        ("llama2_7b", 6_738_415_616),
        ("llama_13b", 13_015_864_320),
        ("llama2_13b", 13_015_864_320),
        ("vicuna_7b", 6_738_415_616),
        ("llama3_8b", 8_030_261_248),
        ("llama3.2_1b", 1_235_814_400),
        ("llama3.2_3b", 3_212_749_824),
    ],
)
def test_llm_shapes_have_the_published_parameter_counts(name, params):
    llm = summary_lib.abstract_llm(LlamaConfig(**presets.llm_shape(name)))
    assert summary_lib.param_counts(llm) == (params, params)


@pytest.mark.parametrize("name", presets.MODEL_PRESETS)
def test_every_preset_validates_and_builds_its_typed_config(name):
    c = preset_config(name)
    assert c.preset == name
    config_lib.validate(c)
    mc = config_lib.model_config(c, TOKENIZER_VOCAB)
    if name in presets.RELEASE_PRESETS + presets.ENSEMBLE_PRESETS + presets.LSRM_ON_LLM_PRESETS:
        assert mc.llm.dtype == "bfloat16" and mc.llm.param_dtype == "float32"
        assert c.train.frozen_dtype == "bfloat16"
        enc = {e.name: e for e in mc.vision.encoders}["clip"]
        assert (enc.vit.width, enc.vit.depth, enc.vit.heads, enc.vit.mlp_dim, enc.vit.patch_size) == (1024, 24, 16, 4096, 14)
        assert enc.vit.act == "quick_gelu" and enc.vit.norm_eps == 1e-5
        # Release presets set the whole model section: the base config does not matter.
        assert flat(preset_config(name, base="tiny").model) == flat(c.model)
    else:
        assert tuple(c.train.trainable) == (".*",)  # demo-size ablations train from random init
        assert flat(c.train) == flat(vqa.get_config("demo").train)


def test_release_presets_differ_in_the_intended_knobs():
    lsrm7, lsrm13, memvp = (flat(preset_config(n).model) for n in ("lsrm_7b", "lsrm_13b", "memvp_7b"))
    assert lsrm7["encoders.clip.taps"] == (13, 23) and lsrm7["num_memory_slots"] == 320
    assert lsrm7["ica.start"] == "epoch:15" and (lsrm7["ica.delta"], lsrm7["ica.lam"]) == (0.3, 0.85)
    assert (lsrm7["ica.scale"], lsrm7["projector.memory_scale"], lsrm7["ica.dropout"]) == (0.1, 0.01, 0.1)
    assert {k for k in lsrm7 if lsrm7[k] != lsrm13[k]} == {
        "num_memory_slots", "llm.dim", "llm.n_layers", "llm.n_heads", "llm.n_kv_heads", "llm.mlp_dim"
    }
    assert {k: memvp[k] for k in lsrm7 if lsrm7[k] != memvp[k]} == {
        "encoders.clip.taps": (23,),
        "projector.hidden": 128,
        "projector.learnable_diagonal": False,
        "ica.delta": 0.0,
        "ica.start": "never",
    }
    llava = preset_config("llava_7b")
    assert llava.model.injection == "prefix" and tuple(llava.train.trainable) == presets.PROJECTOR_ONLY
    assert llava.model.encoders.clip.image_size == 336 and not llava.model.encoders.clip.post_ln


def test_ablation_presets_differ_in_exactly_one_knob_each():
    m = {n: flat(preset_config(n).model) for n in presets.ABLATION_PRESETS}
    demo_config = vqa.get_config("demo").model
    demo = flat(demo_config)
    depth, width = demo_config.encoders.vit.depth, demo_config.encoders.vit.width
    d, hidden = demo_config.llm.dim, demo_config.projector.hidden

    def diff(a, b):
        return {k: b[k] for k in a if a[k] != b[k]}

    assert diff(demo, m["ablation_memvp"]) == {
        "encoders.vit.taps": (depth,),
        "projector.learnable_diagonal": False,
        "ica.delta": 0.0,
    }
    assert diff(m["ablation_memvp"], m["ablation_multilevel"]) == {"encoders.vit.taps": (depth // 2, depth)}
    assert diff(m["ablation_multilevel"], m["ablation_srproj"]) == {"projector.learnable_diagonal": True}
    assert diff(m["ablation_srproj"], m["ablation_lsrm"]) == {"ica.delta": 0.3}
    assert diff(m["ablation_memvp"], m["ablation_llava"]) == {"injection": "prefix"}
    assert m["ablation_lsrm"] == demo  # the demo is full LSRM
    # The ablation ingredients show up in the parameter counts: +1 projector, +Λ per level, nothing for the mask.
    counts = {n: summary_lib.param_counts(preset_model(n))[0] for n in presets.ABLATION_PRESETS}
    projector = width * hidden + hidden + hidden * d + d
    assert counts["ablation_multilevel"] - counts["ablation_memvp"] == projector
    assert counts["ablation_srproj"] - counts["ablation_multilevel"] == 2 * hidden
    assert counts["ablation_lsrm"] == counts["ablation_srproj"]
    # LLaVA drops the memory slot embeddings P_k, P_v (N_mem = the 25 visual tokens at demo size).
    assert counts["ablation_memvp"] - counts["ablation_llava"] == 2 * 25 * d



def test_ablation_on_the_object_recipe_changes_the_same_knobs():
    """experiments/ablation.py --base=objects: llava is :objects itself; the ICA presets read the objects as
    memory (without the prefix-only distance bias); the second level is the objects before the tower's block."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", os.path.join(ROOT, "experiments", "ablation.py"))
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    objects = flat(vqa.get_config("objects").model)
    m = {n: flat(ablation._config(vqa, n, "objects").model) for n in presets.ABLATION_PRESETS}

    def diff(a, b):
        return {k: b[k] for k in a if a[k] != b[k]}

    assert objects["injection"] == "prefix" and objects["encoders.vit.taps"] == (1,)
    assert diff(objects, m["ablation_llava"]) == {"ica.delta": 0.0}  # the mask's knob, unread by a prefix
    assert diff(m["ablation_llava"], m["ablation_memvp"]) == {"injection": "ica", "prefix_distance_bias": False}
    assert diff(m["ablation_memvp"], m["ablation_multilevel"]) == {"encoders.vit.taps": (0, 1)}
    assert diff(m["ablation_multilevel"], m["ablation_srproj"]) == {"projector.learnable_diagonal": True}
    assert diff(m["ablation_srproj"], m["ablation_lsrm"]) == {"ica.delta": 0.3}
    with pytest.raises(ValueError, match="Unknown model preset 'objects'"):
        ablation._config(vqa, "objects", "objects")


def test_ablation_on_the_relational_recipe_validates_and_drops_every_prefix_only_knob():
    """--base=relational: its distance heads start with slopes (and may read themselves apart); a memory has none
    of them, so the ICA presets turn all three off rather than leave a config the validator refuses."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", os.path.join(ROOT, "experiments", "ablation.py"))
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    configs = {n: ablation._config(vqa, n, "relational") for n in presets.ABLATION_PRESETS}
    for config in configs.values():
        config_lib.validate(config)
    llava, memvp = flat(configs["ablation_llava"].model), flat(configs["ablation_memvp"].model)
    assert {k: memvp[k] for k in llava if llava[k] != memvp[k]} == {
        "injection": "ica", "prefix_distance_bias": False, "prefix_distance_bias_init": 0.0,
        "prefix_distance_bias_self": False}
    assert llava["prefix_distance_bias_init"] == vqa.get_config("relational").model.prefix_distance_bias_init > 0
    assert llava["prefix_distance_bias_self"]


def test_ablation_entries_carry_config_overrides():
    """experiments/ablation.py: 'preset@key=value' is that preset with the override (the mask's shift epoch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", os.path.join(ROOT, "experiments", "ablation.py"))
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    shifted = ablation._config(vqa, "ablation_lsrm@model.ica.start=step:3000@train.num_steps=4000")
    assert shifted.model.ica.start == "step:3000" and shifted.train.num_steps == 4000  # string kept, int parsed
    assert flat(shifted.model) == flat(vqa.get_config("ablation_lsrm").model) | {"ica.start": "step:3000"}
    for bad in ("model.ica.strat=step:3000", "model.icaa.start=step:3000", "model.ica.start", "train.num_steps=many"):
        with pytest.raises(KeyError, match="ablation_lsrm@"):
            ablation._config(vqa, f"ablation_lsrm@{bad}")

def test_unknown_preset_and_stale_schema_fail_loudly():
    with pytest.raises(ValueError, match=r"Unknown model preset 'lsrm_70b'.*'lsrm_7b'.*'ablation_llava'"):
        presets.apply(vqa.get_config("demo"), "lsrm_70b")
    c = vqa.get_config("demo")
    del c.model.projector["memory_scale"]
    with pytest.raises(KeyError, match="memory_scale"):
        presets.apply(c, "lsrm_7b")
    with pytest.raises(ValueError, match="Unknown LLM"):
        presets.llm_shape("llama_70b")


def test_cli_prints_counts_for_tiny(tokenizer):
    cmd = [sys.executable, "-m", "semrel_jax.summary", "--config=configs/vqa.py:tiny", "--max_lines=5"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    total = re.fullmatch(r"total_params: (\d+)", lines[-2])
    trainable = re.fullmatch(r"trainable_params: (\d+)", lines[-1])
    assert total and trainable, lines[-5:]
    c = vqa.get_config("tiny")
    expected = summary_lib.param_counts(abstract(c, len(tokenizer)))[0]
    assert int(total.group(1)) == int(trainable.group(1)) == expected  # everything trains in tiny
    assert "vision/projectors/vit_layer2" in proc.stdout


def test_cli_overrides_and_frozen_split(tmp_path):
    cmd = [
        sys.executable, "-m", "semrel_jax.summary", "--config=configs/vqa.py:tiny", "--vocab_size=50",
        "--config.train.trainable=('^vision/projectors/',)", "--max_lines=3",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"trainable_params: {2 * (32 * 16 + 16 + 16 + 16 * 32 + 32)}"  # two SRProjs of tiny
