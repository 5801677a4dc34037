"""Compile the train step ahead of time for a target mesh and report, per device, before any hardware:
memory (and whether it fits the chip's HBM), model FLOPs (XLA's and ours) and a roofline step-time estimate.

    python -m semrel_jax.aot --config=configs/vqa.py:lsrm_7b --topology=v5e:2x4 \\
        --config.mesh.data=1 --config.mesh.fsdp=8 --config.train.batch_size=32      # needs `pip install -e ".[tpu]"`
    python -m semrel_jax.aot --config=configs/vqa.py:tiny --num_devices=8 --json   # simulated CPU devices

Everything is abstract (shapes, dtypes and shardings; no weights are allocated): the model and optimizer
state come from ``nnx.eval_shape``, placed by the config's sharding rules, and the real jitted train
step is lowered and compiled for a named TPU topology (libtpu's compiler, its own buffer assignment and cost
analysis, on this CPU machine) or for ``--num_devices`` simulated CPU devices (the XLA CPU compiler: its
memory figures are a poor proxy for an accelerator's, and it knows no chip to compare them with).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from semrel_jax import cli

config_flags.DEFINE_config_file("config", None, "Config file with preset, e.g. configs/vqa.py:lsrm_7b.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Simulated CPU devices (0: the devices present).")
_TOPOLOGY = flags.DEFINE_string("topology", "", "TPU topology name (e.g. v5e:2x4, v5p:2x2x1, v6e:2x4); needs libtpu.")
_JSON = flags.DEFINE_bool("json", False, "Print the report as one JSON object instead of text.")
_HLO_OUT = flags.DEFINE_string("hlo_out", "", "Write the compiled (optimised, per-device) HLO module as text here.")
flags.mark_flags_as_required(["config"])

MEMORY_KEYS = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _flop(n: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.4g} FLOP"


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g} ms"


def topology_devices(topology: str):
    """The devices of a named TPU topology (compile-only: nothing runs on them)."""
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    except Exception as e:  # noqa: BLE001 - no libtpu, unknown name
        raise app.UsageError(f"--topology={topology}: {e} (needs libtpu: pip install -e '.[tpu]'; or use --num_devices)")


def compile_report(c, devices=None, topology: str = "", hlo_out: str = "") -> dict:
    """Lowers and compiles ``c``'s train step for its mesh; returns the per-device report (see ``describe``).

    A step the compiler refuses for lack of memory (the TPU compiler does, naming the bytes it needed) is a
    report too: ``fits`` False and the compiler's one-line reason in ``refused``.
    """
    import jax

    from semrel_jax import recipe
    from semrel_jax.training import flops as flops_lib
    from semrel_jax.training import mesh as mesh_lib

    recipe.prepare_config(c)
    mesh = recipe.create_mesh(c, devices)
    if c.model.method == "semvlp":  # its own model and step per mode: training/semvlp_aot.py
        from semrel_jax.training import semvlp_aot

        lower, analytic_per_example = semvlp_aot.lower_step(c, mesh)
    else:
        vocab = c.model.llm.vocab_size or recipe.tokenizer_vocab_size(c)
        model = recipe.build_model(c, vocab, mesh, abstract=True)
        setup = recipe.build_train_state(c, model, mesh, abstract=True)
        step = recipe.build_step(c, model, setup, mesh, mask_start=0)
        analytic_per_example = flops_lib.count_for_run(c, model.config).training

        def lower():  # traced only (a jaxpr): lowering to StableHLO is timed apart below
            return step.trace(setup.state, setup.frozen, recipe.abstract_batch(c, mesh))

    # wall and this process's CPU seconds of each phase: tracing the step to a jaxpr, lowering it to StableHLO,
    # XLA's compile. On a shared machine the wall time says more about the neighbours than the CPU time does.
    start, start_cpu = time.time(), time.process_time()
    with jax.set_mesh(mesh):
        lowered = lower()
        traced_at, traced_cpu = time.time(), time.process_time()
        if not isinstance(lowered, jax.stages.Lowered):
            lowered = lowered.lower()
    phases = dict(jaxpr_seconds=traced_at - start, jaxpr_cpu_seconds=traced_cpu - start_cpu,
                  lower_seconds=time.time() - traced_at, lower_cpu_seconds=time.process_time() - traced_cpu)
    trace_seconds, compile_start, compile_start_cpu = time.time() - start, time.time(), time.process_time()
    try:
        with jax.set_mesh(mesh):
            compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        compiled, refusal = None, str(e).splitlines()[0]  # the TPU compiler's "exceeds available HBM" verdict
    compile_seconds = time.time() - start
    timing = dict(trace_seconds=trace_seconds, xla_compile_seconds=time.time() - compile_start,
                  compile_cpu_seconds=time.process_time() - start_cpu,
                  xla_compile_cpu_seconds=time.process_time() - compile_start_cpu, **phases)
    n_devices = mesh.devices.size
    examples_per_device = c.train.batch_size / n_devices
    report = {
        "topology": topology,
        "platform": mesh.devices.flat[0].platform,
        "device_kind": mesh.devices.flat[0].device_kind,
        "num_devices": n_devices,
        "mesh": dict(zip(mesh_lib.AXES, mesh.devices.shape)),
        "batch_size": c.train.batch_size,
        "text_len": c.data.max_text_len,
        "remat": c.model.remat,
        "scan_layers": c.model.scan_layers,
        "compile_seconds": compile_seconds,  # trace + lower + XLA compile, wall
        **timing,
        "loss_chunk": c.train.loss_chunk,
        "analytic_flops": analytic_per_example * examples_per_device,
    }
    if compiled is None:
        return dict(report, refused=refusal, fits=False)
    if hlo_out:  # what the compiler made of the step: its fusions (kernels), loops and collectives
        with open(hlo_out, "w") as f:
            f.write(compiled.as_text())
    memory = compiled.memory_analysis()
    cost = flops_lib.cost_analysis(compiled)
    report.update({
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        # XLA's counts are for the per-device (SPMD-partitioned) program; NaN where the backend gives none
        "xla_flops": float(cost.get("flops", float("nan"))),
        "xla_bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
    })
    return describe(report)


def describe(report: dict) -> dict:
    """Adds the derived figures to a compiled step's raw per-device numbers: the live peak, the chip's HBM,
    whether it fits (with headroom) and a roofline step time and tokens/s (estimates, see ``chips.roofline``)."""
    from semrel_jax.training import chips

    r = dict(report)
    # donated state aliases its output buffers, so the live peak is arguments + temporaries (+ unaliased outputs)
    r["peak_bytes"] = r["argument_bytes"] + r["temp_bytes"] + r["output_bytes"] - r["alias_bytes"]
    chip = chips.chip_for(r["device_kind"], r.get("topology", ""))
    r["chip"] = None
    if chip is None or r["platform"] != "tpu":
        return r
    per_chip = r["num_devices"] // chips.chips_in(r["topology"]) if r.get("topology") else 1
    share = chips.DeviceShare(chip, max(per_chip, 1))
    r["chip"] = dict(name=chip.name, hbm_gib=chip.hbm_gib, peak_bf16_tflops=chip.peak_bf16_tflops,
                     hbm_gb_per_s=chip.hbm_gb_per_s, devices_per_chip=share.devices_per_chip)
    r.update(chips.memory_verdict(r["peak_bytes"], share))
    # XLA's FLOPs include rematerialised work, which the hardware does. But XLA's cost analysis counts a loop
    # body once (model.scan_layers: 1/n_layers of the blocks' work), and some backends give no count: never
    # estimate from fewer FLOPs than the model's own.
    flops = max(r["xla_flops"], r["analytic_flops"]) if r["xla_flops"] == r["xla_flops"] else r["analytic_flops"]
    est = chips.roofline(flops, r["xla_bytes_accessed"] if r["xla_bytes_accessed"] == r["xla_bytes_accessed"] else 0.0, share)
    r["estimate"] = dict(est, tokens_per_second_per_device=r["batch_size"] * r["text_len"] / r["num_devices"] / est["step_seconds"])
    return r


def format_report(r: dict) -> str:
    lines = [f"mesh {r['mesh']} on {r['num_devices']} x {r['device_kind'] or r['platform']}"
             f"{' (' + r['topology'] + ')' if r.get('topology') else ''}; compiled in {r['compile_seconds']:.1f}s wall"]
    if "trace_seconds" in r:
        lines[0] += (f" (trace + lower {r['trace_seconds']:.1f}s, XLA {r['xla_compile_seconds']:.1f}s; "
                     f"{r['compile_cpu_seconds']:.1f}s CPU of this process)")
    if "jaxpr_cpu_seconds" in r:
        lines.append(f"CPU seconds: tracing {r['jaxpr_cpu_seconds']:.1f}, lowering {r['lower_cpu_seconds']:.1f}, "
                     f"XLA compile {r['xla_compile_cpu_seconds']:.1f}")
    if r.get("refused"):
        return "\n".join(lines + [f"does NOT fit: the compiler refused the step: {r['refused']}"])
    for key in MEMORY_KEYS:
        lines.append(f"per-device {key.replace('_bytes', '')}: {_gib(r[key])} ({r[key]:,} bytes)")
    if r.get("chip"):
        verdict = "fits" if r["fits"] else "does NOT fit"
        lines.append(f"HBM of a {r['chip']['name']} device: {_gib(r['hbm_bytes'])}; peak {verdict}, "
                     f"headroom {100 * r['headroom']:.1f}%{'' if r['fits_with_headroom'] else ' (< 10%)'}")
    lines.append(f"FLOPs per device per step: XLA {_flop(r['xla_flops'])}, model (analytic) "
                 f"{_flop(r['analytic_flops'])}; XLA's count adds rematerialised and elementwise work")
    if r.get("scan_layers"):
        lines.append("(scan_layers: XLA's FLOPs and bytes count the scanned block once, not once per block)")
    if r.get("estimate"):
        e = r["estimate"]
        lines.append(f"roofline step-time ESTIMATE (a lower bound: perfect overlap, no collectives): "
                     f"{_ms(e['step_seconds'])}, {e['bound']}-bound (compute {_ms(e['compute_seconds'])}, "
                     f"HBM traffic {_ms(e['memory_seconds'])}); ≈ {e['tokens_per_second_per_device']:,.0f} tokens/s per device")
    return "\n".join(lines)


def main(argv):
    del argv
    devices = topology_devices(_TOPOLOGY.value) if _TOPOLOGY.value else None
    r = compile_report(flags.FLAGS.config, devices, _TOPOLOGY.value, _HLO_OUT.value)
    print(json.dumps(r, indent=1) if _JSON.value else format_report(r))


def simulate_devices(argv: list[str]) -> None:
    """Before JAX starts: the simulated CPU device count of ``--num_devices N`` / ``--num_devices=N``, and for
    ``--topology`` a CPU backend (the TPU is only compiled for)."""
    count = cli.flag_value(argv, "num_devices")
    if count is not None and count.isdigit() and int(count) > 0:  # anything else: the flag parser reports it
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if cli.flag_value(argv, "topology"):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only: no attempt to open a local TPU
        # libtpu's one-process lock would refuse a second compile-only process (another aot, a test)
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


if __name__ == "__main__":
    simulate_devices(sys.argv)
    cli.run(main)
