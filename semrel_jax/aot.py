"""Compile the train step ahead of time for a target mesh and print per-device memory, before any hardware.

    python -m semrel_jax.aot --config=configs/vqa.py:lsrm_7b --num_devices=8 \\
        --config.mesh.data=1 --config.mesh.fsdp=8 --config.train.batch_size=32
    python -m semrel_jax.aot --config=configs/vqa.py:lsrm_7b --topology=v5e:4x4 --config.mesh.fsdp=16  # with libtpu

Everything is abstract (shapes, dtypes and shardings; no weights are allocated): the model and optimizer
state come from ``nnx.eval_shape``, placed by the config's sharding rules, and the real jitted train
step is lowered and compiled for ``--num_devices`` simulated CPU devices (the XLA CPU compiler's memory
analysis, a close proxy for other backends) or, where libtpu is installed, for a named TPU topology.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file with preset, e.g. configs/vqa.py:lsrm_7b.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Simulated CPU devices (0: the devices present).")
_TOPOLOGY = flags.DEFINE_string("topology", "", "TPU topology name (e.g. v5e:2x4); needs libtpu.")
flags.mark_flags_as_required(["config"])


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def compile_report(c, devices=None) -> dict:
    """Lowers and compiles ``c``'s train step for its mesh; returns memory figures (bytes per device)."""
    import jax

    from semrel_jax import config as config_lib, inspect as inspect_lib
    from semrel_jax.training import mesh as mesh_lib, optimizer as optimizer_lib, train

    config_lib.validate(c)
    vocab = c.model.llm.vocab_size or inspect_lib.tokenizer_vocab_size(c)
    devices = devices or jax.devices()
    shape = mesh_lib.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, len(devices))
    mesh = jax.make_mesh(shape, mesh_lib.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)
    graphdef, params, frozen = train.build_split_model(c, vocab, abstract=True)
    optimizer = optimizer_lib.make_optimizer(c.train)
    schedule = optimizer_lib.learning_rate_schedule(c.train.learning_rate, c.train.warmup_steps, c.train.num_steps)
    abstract_state, state_sharding, frozen_sharding, _ = train.state_shardings(c, mesh, params, frozen, optimizer)

    def place(tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    group = c.data.get("examples_per_image", 1)  # > 1: images [B/G], text [B/G, G, T] (data/pipeline.py)
    b, t = c.train.batch_size // group, c.data.max_text_len
    text = (b, group, t) if group > 1 else (b, t)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)  # noqa: E731
    batch = {
        "images": {n: sds((b, e.image_size, e.image_size, 3), "float32") for n, e in c.model.encoders.items()},
        "has_image": sds((b,), "int32"),
        "tokens": sds(text, "int32"),
        "targets": sds(text, "int32"),
        "loss_mask": sds(text, "float32"),
        "valid": sds(text, "bool"),
    }
    step = train.make_step_fn(
        graphdef, optimizer, schedule, 0, mesh, state_sharding, frozen_sharding,
        accumulation_steps=c.train.grad_accum_steps,
    )
    start = time.time()
    with jax.set_mesh(mesh):
        compiled = step.lower(place(abstract_state, state_sharding), place(frozen, frozen_sharding), batch).compile()
    memory = compiled.memory_analysis()
    report = {
        "mesh": dict(zip(mesh_lib.AXES, shape)),
        "compile_seconds": time.time() - start,
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
    }
    # donated state aliases its output buffers, so the live peak is arguments + temporaries (+ unaliased outputs)
    report["peak_bytes"] = report["argument_bytes"] + report["temp_bytes"] + report["output_bytes"] - report["alias_bytes"]
    return report


def main(argv):
    del argv
    import jax

    devices = None
    if _TOPOLOGY.value:
        from jax.experimental import topologies

        try:
            devices = topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY.value).devices
        except Exception as e:  # noqa: BLE001 - no libtpu, unknown name
            raise app.UsageError(f"--topology={_TOPOLOGY.value}: {e} (needs libtpu; use --num_devices on CPU)")
    r = compile_report(flags.FLAGS.config, devices)
    print(f"mesh {r['mesh']} on {len(devices or jax.devices())} x {(devices or jax.devices())[0].platform}; "
          f"compiled in {r['compile_seconds']:.1f}s")
    for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes"):
        print(f"per-device {key.replace('_bytes', '')}: {_gib(r[key])} ({r[key]:,} bytes)")


if __name__ == "__main__":
    # The simulated device count must be fixed before JAX starts.
    for arg in sys.argv:
        if arg.startswith("--num_devices=") and int(arg.split("=", 1)[1]) > 0:
            os.environ["XLA_FLAGS"] = (
                os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={arg.split('=', 1)[1]}"
            )
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
    app.run(main)
