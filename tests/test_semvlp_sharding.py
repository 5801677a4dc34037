"""SemVLP sharded on 8 simulated CPU devices (one subprocess: the device count is fixed at JAX start; the same
mechanism and XLA flags as ``tests/test_sharding.py``): its parameters are laid out as the rules table says,
and a step in either mode on the mesh 1x4x2 (fsdp and tensor parallel at once) equals the single-device step."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import CHEAP_CODEGEN  # the suite's XLA flags (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    r"""
    import json, os, sys
    import jax, numpy as np
    from flax import nnx
    sys.path.insert(0, os.path.join(os.getcwd(), "configs"))
    import pretrain
    from semrel_jax import recipe
    from semrel_jax.data import semvlp_pairs, semvlp_scenes
    from semrel_jax.method.semvlp import objectives
    from semrel_jax.models import partitioning
    from semrel_jax.training import mesh as mesh_lib, semvlp_train, sharding
    from semrel_jax.training.semvlp_step import SemVLPSteps, init_train_state

    c = pretrain.get_config("tiny")
    recipe.prepare_config(c)
    tokenizer = semvlp_scenes.word_tokenizer(semvlp_pairs.vocabulary())
    scenes = semvlp_scenes.SceneBatches("train", tokenizer, max_text_len=c.data.max_text_len, visual="regions")
    batch = scenes.batch(range(8), seed=0)
    masking = objectives.MaskingConfig(mask_token=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                       special_tokens=tuple(tokenizer.all_special_ids))
    optimizer, _ = recipe.build_optimizer(c)
    out = {}

    def run(shape, devices):
        mesh = jax.make_mesh(shape, mesh_lib.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)
        with jax.set_mesh(mesh), partitioning.axis_rules(c.mesh.rules):
            graphdef, params = nnx.split(semvlp_train.build_model(c, tokenizer), nnx.Param)
            shardings, _ = sharding.param_shardings(params, mesh, c.mesh.rules)
            state = init_train_state(jax.device_put(params, shardings), optimizer, c.seed)
            steps = SemVLPSteps(graphdef, optimizer, dict(c.model.semvlp.weights), masking)
            b = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
            losses = []
            for mode in ("single", "two"):
                state, metrics = steps(state, b, mode)
                losses.append(float(metrics["loss"]))
        flat = {"/".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(state.params)}
        return flat, losses

    ref, ref_losses = run((1, 1, 1), jax.devices()[:1])
    for shape in ((1, 4, 2),):  # one mesh: each extra mesh is two more compilations
        flat, losses = run(shape, jax.devices())
        out["x".join(map(str, shape))] = {
            "loss_diff": max(abs(a - b) for a, b in zip(ref_losses, losses)),
            "max_param_diff": max(float(np.max(np.abs(np.asarray(flat[k]) - np.asarray(ref[k])))) for k in ref),
            # specs padded to the array's rank (PartitionSpec drops trailing unsharded dimensions)
            "specs": {k: [None if a is None else str(a) for a in v.sharding.spec] + [None] * (v.ndim - len(v.sharding.spec))
                      for k, v in flat.items()},
            "fractions": {k: v.addressable_shards[0].data.size / v.size for k, v in flat.items()},
            "sharded_bytes": sharding.sharded_bytes(list(flat.values())),
            "total_bytes": sum(np.asarray(v).nbytes for v in flat.values()),
        }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow  # a subprocess on 8 simulated devices: two meshes, two modes each (~1 min on 2 cores)
def test_semvlp_is_sharded_by_the_rules_on_eight_simulated_devices():
    flags = f"--xla_force_host_platform_device_count=8 {CHEAP_CODEGEN}"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads([line for line in result.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    mixed = out["1x4x2"]
    assert mixed["loss_diff"] < 1e-5  # both modes: the sharded step is the single-device step
    assert mixed["max_param_diff"] < 2e-4
    # the shared BERT, the cross-attention and the heads, each by its rule: embed -> fsdp, heads/mlp -> tensor
    expected = {
        "bert/layers/0/attention/q_proj/kernel": ["fsdp", "tensor"],
        "bert/layers/1/fc1/kernel": ["fsdp", "tensor"],
        "bert/layers/1/fc2/kernel": ["tensor", "fsdp"],
        "cross_attention/0/out_proj/kernel": ["tensor", "fsdp"],
        "visual_projection/kernel": [None, "fsdp"],
        "heads/pair_hidden/kernel": ["fsdp", "tensor"],
        "heads/vqa_out/kernel": ["tensor", None],
        "bert/pooler/kernel": ["fsdp", None],
    }
    for name, spec in expected.items():
        assert mixed["specs"][name] == spec, name
    assert mixed["fractions"]["bert/layers/0/attention/q_proj/kernel"] == 1 / 8  # 4-way fsdp x 2-way tensor
    assert mixed["fractions"]["cross_attention/0/k_proj/kernel"] == 1 / 8
    # only vectors (biases, norms) and tables too small to split stay whole on every device
    assert mixed["sharded_bytes"] < 0.3 * mixed["total_bytes"]
