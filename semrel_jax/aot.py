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

from semrel_jax import cli

config_flags.DEFINE_config_file("config", None, "Config file with preset, e.g. configs/vqa.py:lsrm_7b.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Simulated CPU devices (0: the devices present).")
_TOPOLOGY = flags.DEFINE_string("topology", "", "TPU topology name (e.g. v5e:2x4); needs libtpu.")
flags.mark_flags_as_required(["config"])


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def compile_report(c, devices=None) -> dict:
    """Lowers and compiles ``c``'s train step for its mesh; returns memory figures (bytes per device)."""
    import jax

    from semrel_jax import recipe
    from semrel_jax.training import mesh as mesh_lib

    recipe.prepare_config(c)
    vocab = c.model.llm.vocab_size or recipe.tokenizer_vocab_size(c)
    mesh = recipe.create_mesh(c, devices)
    model = recipe.build_model(c, vocab, mesh, abstract=True)
    setup = recipe.build_train_state(c, model, mesh, abstract=True)
    step = recipe.build_step(c, model, setup, mesh, mask_start=0)
    start = time.time()
    with jax.set_mesh(mesh):
        compiled = step.lower(setup.state, setup.frozen, recipe.abstract_batch(c, mesh)).compile()
    memory = compiled.memory_analysis()
    report = {
        "mesh": dict(zip(mesh_lib.AXES, mesh.devices.shape)),
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


def simulate_devices(argv: list[str]) -> None:
    """Fixes the simulated CPU device count of ``--num_devices N`` / ``--num_devices=N`` before JAX starts."""
    count = cli.flag_value(argv, "num_devices")
    if count is not None and count.isdigit() and int(count) > 0:  # anything else: the flag parser reports it
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


if __name__ == "__main__":
    simulate_devices(sys.argv)
    cli.run(main)
