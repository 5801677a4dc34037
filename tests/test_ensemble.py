"""Vision-encoder ensembles from a preset name or the command line: CLIP + SigLIP + DINOv2, each with its own
taps, preprocessing, adapters and SRProjs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import vqa  # noqa: E402

from semrel_jax import config as config_lib, presets, recipe, summary as summary_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOWERS = {"clip": transformers.CLIPVisionModel, "siglip": transformers.SiglipVisionModel,
          "dinov2": transformers.Dinov2Model}
TAPS = {"clip": (2, 3), "siglip": (1, 3), "dinov2": (3,)}


@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {name: hf_fixtures.save_vision(str(root / name), name) for name in TOWERS}


@pytest.mark.slow
def test_ensemble_preset_adds_each_towers_recipe_to_lsrm_7b():
    """lsrm_7b_ensemble = lsrm_7b + SigLIP-so400m/14 + DINOv2-L/14: per added tower its adapters (12 wide) and
    one SRProj per level train; the memory holds exactly the concatenated tokens (256 + 256 + 1,369)."""
    counts = {}
    for name in ("lsrm_7b", "lsrm_7b_ensemble"):
        c = vqa.get_config(name)
        config_lib.prepare(c)
        model = summary_lib.abstract_model(config_lib.model_config(c, 32000))
        counts[name] = summary_lib.param_counts(model, c.train.trainable, c.train.frozen)[1]
    assert vqa.get_config("lsrm_7b_ensemble").model.encoders.siglip.taps == (14, 26)
    d, d_h = 4096, 64
    srproj = lambda width: width * d_h + d_h + d_h + d_h * d + d  # noqa: E731  fc1, Λ, fc2
    adapters = 27 * 2 * 1152 * 12 + 24 * 2 * 1024 * 12
    slots = 2 * (256 + 256 + 37 * 37 - 320) * d  # P_k, P_v grow from the release's 320 slots
    assert counts["lsrm_7b_ensemble"] - counts["lsrm_7b"] == adapters + 2 * srproj(1152) + 2 * srproj(1024) + slots
    # each family's processor fills the preprocessing the preset leaves unset; CLIP keeps the release's
    c = vqa.get_config("lsrm_7b_ensemble")
    config_lib.prepare(c)
    got = {n: (e.normalization, e.crop, e.resize) for n, e in c.model.encoders.items()}
    assert got == {"clip": ("imagenet", False, 0), "siglip": ("siglip", False, 0), "dinov2": ("imagenet", True, 592)}


def test_encoders_added_and_removed_by_name():
    c = vqa.get_config("tiny+siglip-vit")
    assert list(c.model.encoders) == ["siglip"] and c.model.num_memory_slots == 0
    with pytest.raises(ValueError, match="Unknown encoder 'eva'"):
        vqa.get_config("lsrm_7b+eva")
    with pytest.raises(ValueError, match="removes every vision encoder"):
        vqa.get_config("lsrm_7b-clip")
    assert presets.split_encoder_changes("lsrm_llama3.2_1b+dinov2") == ("lsrm_llama3.2_1b", "+dinov2")


@pytest.mark.slow
def test_ensemble_towers_load_their_checkpoints_with_their_own_preprocessing(tower_dirs):
    c = vqa.get_config("tiny+clip+siglip+dinov2-vit")
    for name, directory in tower_dirs.items():
        c.model.encoders[name].update(hf_dir=directory, taps=TAPS[name])
    filled = config_lib.prepare(c)
    assert {e.family for e in c.model.encoders.values()} == set(TOWERS)
    assert sum(line.startswith("config.model.encoders.siglip:") for line in filled) == 2  # architecture, processor
    model = recipe.build_module(c, vocab_size=50)
    assert set(model.vision.projectors) == {f"{n}_layer{t}" for n in TOWERS for t in TAPS[n]}
    pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for name, cls in TOWERS.items():
        tower = cls.from_pretrained(tower_dirs[name], dtype=torch.float32).eval()
        with torch.no_grad():
            hidden = tower(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
        ours = model.vision.encoders[name](jnp.asarray(pixels.transpose(0, 2, 3, 1)), TAPS[name])
        for tap, got in zip(TAPS[name], ours):
            np.testing.assert_allclose(np.asarray(got), hidden[tap].numpy(), atol=1e-4)
    featurizer = recipe.build_featurizer(c, tokenizer=None)
    norms = {n: p.normalization for n, p in featurizer.preprocessors.items()}
    assert norms == {"clip": "imagenet", "siglip": "siglip", "dinov2": "imagenet"}


@pytest.mark.slow
def test_ensemble_from_the_command_line_trains_and_evaluates(tower_dirs, tmp_path):
    """`--config.model.encoders.siglip.hf_dir=...` works once the preset name adds the encoder."""
    overrides = []
    for name, directory in tower_dirs.items():
        overrides += [f"--config.model.encoders.{name}.hf_dir={directory}",
                      f"--config.model.encoders.{name}.taps={TAPS[name]}".replace(" ", "")]
    cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny+clip+siglip+dinov2-vit",
           f"--workdir={tmp_path}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "config.json").read_text())
    encoders = saved["model"]["encoders"]
    assert {n: (e["family"], tuple(e["taps"]), e["normalization"]) for n, e in encoders.items()} == {
        "clip": ("clip", (2, 3), "imagenet"), "siglip": ("siglip", (1, 3), "siglip"), "dinov2": ("dinov2", (3,), "imagenet")
    }
    assert (tmp_path / "results.json").exists()
