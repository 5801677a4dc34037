"""Train-step throughput of config presets: compile time, step time, examples/s, tokens/s, model TFLOP/s, MFU, memory.

    python benchmarks/step_throughput.py --presets=demo                                  # one preset
    python benchmarks/step_throughput.py --compare=ablation_lsrm,ablation_llava         # side by side, ratio
    python benchmarks/step_throughput.py --compare=objects_lsrm@data.object_token_cache=0,objects_lsrm
    python benchmarks/step_throughput.py --presets=demo --config_overrides=train.batch_size=64

Each preset is ``configs/vqa.py:<preset>`` built exactly as ``semrel_jax.main`` builds it
(``recipe.build_model`` -> ``recipe.build_train_state`` -> ``recipe.build_step`` on a 1-device mesh, state donated),
compiled ahead of time (``.lower(...).compile()``, timed), then stepped on real Sort-of-CLEVR batches that are
already on the device (a few distinct batches, cycled): the step is measured, not the input pipeline
(``benchmarks/input_pipeline.py`` measures that).

Reported per preset:
  * lower (trace) and compile seconds;
  * step time: median (and p10/p90) over the timed steps, each timed to ``block_until_ready``, after
    ``--warmup`` steps; examples/s = batch / median step; tokens/s counts the LLM's padded text positions
    (batch × data.max_text_len); the prefix preset's visual positions are not text tokens and are not counted;
  * CPU time per step: the process's user + system time over the timed steps (every thread, so XLA threads
    that spin on an idle core count), with XLA's CPU pool on ``--xla_cpu_cores`` cores (the preset's own
    ``train.xla_cpu_cores`` by default);
  * model FLOPs per example from ``semrel_jax.training.flops`` (training: forward + backward with the
    preset's trainable set), model TFLOP/s = FLOPs × examples/s, and MFU = that / ``--peak_tflops``;
    XLA's own FLOP count of the compiled step (``cost_analysis``) beside it;
  * ``compiled.memory_analysis()`` (argument / output / alias / temp bytes) and the process's resident set
    (VmRSS after the preset's steps, VmHWM = peak so far; in compare mode the peak is process-wide).

Peak FLOP/s of a CPU (``--peak_tflops=0``, the default, estimates it): cores in this process's affinity ×
clock (``/proc/cpuinfo`` "cpu MHz", the nominal clock a VM exposes; turbo is not counted) × fp32 FLOPs per
cycle per core (2 per FMA × SIMD lanes × FMA pipes): 32 for AVX2/FMA cores with two 256-bit FMA pipes and for
AMD Zen 4 (AVX-512 executed as 2×256 bit), 64 for cores with two 512-bit FMA pipes (Intel Xeon Scalable,
AMD Zen 5), 16 without FMA. On the development machine (2 vCPUs of an AMD EPYC Zen 4, family 25 model 17,
2.6 GHz, 1 thread per core): 2 × 2.596 GHz × 32 = 0.166 TFLOP/s. Pass ``--peak_tflops`` for anything else.
The nominal clock understates what a core sustains when it boosts: there a single-threaded fp32 matmul
(1576×384 @ 384×384, XLA) ran at 90 GFLOP/s against the nominal 83 per core, so MFU against this estimate can
read high (EPYC Zen 4 parts boost to ~3.7 GHz, 1.4× nominal).

Compare mode (``--compare=a,b``) builds and compiles both, then runs ``--rounds`` rounds that alternate the
presets (``--steps`` timed steps of each per round, after the warm-up), so that load from other processes on
a shared machine hits both alike; it prints every metric side by side and the ratio of step times.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

FLAGS = flags.FLAGS  # flags are defined by define_flags() when run as a script (other benchmarks import this module)


# ---------------------------------------------------------------------------------------------- machine


def cpu_peak_tflops() -> tuple[float, str]:
    """Estimated fp32 peak of the CPUs this process may run on, with the formula used."""
    cores = len(os.sched_getaffinity(0))
    info = open("/proc/cpuinfo").read()
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    ghz = (max(mhz) if mhz else 2000.0) / 1000
    flag_line = next((line for line in info.splitlines() if line.startswith("flags")), "")
    flags_set = set(flag_line.split(":", 1)[-1].split())
    vendor = next((line.split(":")[1].strip() for line in info.splitlines() if line.startswith("vendor_id")), "")
    family = next((int(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu family")), 0)
    model = next((int(line.split(":")[1]) for line in info.splitlines() if line.startswith("model\t")), 0)
    if "avx512f" in flags_set and not (vendor == "AuthenticAMD" and family == 25):
        per_cycle, why = 64, "2 x 512-bit FMA pipes"
    elif "avx512f" in flags_set:
        per_cycle, why = 32, "AMD Zen 4: AVX-512 as 2 x 256-bit FMA pipes"
    elif "fma" in flags_set and "avx2" in flags_set:
        per_cycle, why = 32, "2 x 256-bit FMA pipes"
    else:
        per_cycle, why = 16, "no FMA"
    peak = cores * ghz * per_cycle / 1000
    return peak, (f"{cores} cores x {ghz:.3f} GHz x {per_cycle} fp32 FLOP/cycle ({why}; {vendor} family {family} "
                  f"model {model}) = {peak:.3f} TFLOP/s")


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> dict[str, int]:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def device_peak_bytes() -> float:
    """The accelerator's peak bytes in use so far (GPU/TPU allocator statistics); NaN on CPU, which keeps none."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return float(stats.get("peak_bytes_in_use", float("nan")))


def accelerator_peak_tflops() -> tuple[float, str] | None:
    """The dense bf16 peak of a known GPU or TPU (``semrel_jax.training.chips``); None on CPU or an unknown chip."""
    import jax

    from semrel_jax.training import chips

    kind = jax.devices()[0].device_kind
    chip = chips.gpu_for(kind) or chips.chip_for(kind)
    return (chip.peak_bf16_tflops, f"{kind}: dense bf16 peak {chip.peak_bf16_tflops} TFLOP/s") if chip else None


def machine_load() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"


# --------------------------------------------------------------------------------------------- one preset


def get_config(preset: str, overrides=(), batch_size: int = 0):
    """``preset`` may carry its own overrides after '@': ``objects_lsrm@data.object_token_cache=0``."""
    import vqa

    preset, *own = preset.split("@")
    c = vqa.get_config(preset)
    for item in [*own, *overrides]:
        key, value = item.split("=", 1)
        node = c
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        try:
            node[leaf] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            node[leaf] = value  # a plain string
    if batch_size:
        c.train.batch_size = batch_size
    return c


@dataclasses.dataclass
class Bench:
    name: str
    config: object
    step: object  # the compiled step
    state: object
    frozen: object
    batches: list
    lower_s: float
    compile_s: float
    xla_flops_per_example: float
    count: object  # flops.FlopsCount
    memory: dict
    params: tuple[int, int]  # trainable, frozen
    times: list = dataclasses.field(default_factory=list)
    cpu_seconds: float = 0.0  # the process's CPU time (user + system, every thread) over the timed steps
    rss_setup: dict = dataclasses.field(default_factory=dict)  # after build, compile and warm-up
    rss_after: dict = dataclasses.field(default_factory=dict)
    _i: int = 0

    def run(self, n: int, record: bool = True) -> None:
        import jax

        for _ in range(n):
            batch = self.batches[self._i % len(self.batches)]
            self._i += 1
            t0, cpu0 = time.perf_counter(), process_cpu_seconds()
            self.state, metrics = self.step(self.state, self.frozen, batch)
            jax.block_until_ready((self.state, metrics))
            if record:
                self.times.append(time.perf_counter() - t0)
                self.cpu_seconds += process_cpu_seconds() - cpu0
        self.last_loss = float(metrics["loss"])


def real_batches(c, tokenizer_dir: str, n: int):
    """``n`` consecutive training batches of the config's data, as the train loop reads them."""
    from semrel_jax import recipe
    from semrel_jax.data import pipeline
    from semrel_jax.training import train_step as train_step_lib

    c = c.copy_and_resolve_references()
    c.data.train_images = max(1, min(c.data.train_images, (n * c.train.batch_size) // c.data.questions_per_image + 1))
    recipe.prepare_config(c)
    data = recipe.build_data(c)
    tokenizer = recipe.build_tokenizer(c, tokenizer_dir, data)
    featurizer = recipe.build_featurizer(c, tokenizer)
    dataset = pipeline.training_dataset(data.train, featurizer.train, c.train.batch_size, c.seed)
    return [train_step_lib.device_batch(dataset[i]) for i in range(n)], len(tokenizer)


def build(name: str, c, num_batches: int = 4) -> Bench:
    """Model, sharded state and the compiled step of one config, built by ``semrel_jax.recipe`` as training does."""
    import jax
    from semrel_jax import config as config_lib, recipe
    from semrel_jax.training import flops, mesh as mesh_lib, partition

    recipe.prepare_config(c)
    with tempfile.TemporaryDirectory() as tmp:
        host_batches, vocab = real_batches(c, tmp, num_batches)
    mesh = recipe.single_device_mesh()
    with jax.set_mesh(mesh):
        model = recipe.build_model(c, vocab, mesh)
        setup = recipe.build_train_state(c, model, mesh)
        state, frozen = setup.state, setup.frozen
        n_params = (partition.count_params(model.params), partition.count_params(frozen))
        mask_start = config_lib.parse_start(c.model.ica.start, 1000.0)
        step_fn = recipe.build_step(c, model, setup, mesh, mask_start)
        batch_sharding = mesh_lib.batch_sharding(mesh)
        batches = [jax.device_put(b, batch_sharding) for b in host_batches]
        t0 = time.perf_counter()
        lowered = step_fn.lower(state, frozen, batches[0])
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    memory = {k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                 "alias_size_in_bytes", "temp_size_in_bytes",
                                                 "generated_code_size_in_bytes") if mem is not None and hasattr(mem, k)}
    count = flops.count_for_run(c, model.config)
    return Bench(name=name, config=c, step=compiled, state=state, frozen=frozen, batches=batches,
                 lower_s=t1 - t0, compile_s=t2 - t1,
                 xla_flops_per_example=flops.compiled_flops(compiled) / c.train.batch_size,
                 count=count, memory=memory, params=n_params)


def report(b: Bench, peak_tflops: float) -> dict:
    c = b.config
    times = sorted(b.times)
    median = statistics.median(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    ex_s = c.train.batch_size / median
    model_tflops = b.count.training * ex_s / 1e12
    return {
        "preset": b.name,
        "batch": c.train.batch_size,
        "text_len": c.data.max_text_len,
        "llm_seq_len": b.count.sequence_len,
        "params_trainable": b.params[0],
        "params_frozen": b.params[1],
        "lower_s": b.lower_s,
        "compile_s": b.compile_s,
        "steps_timed": len(times),
        "step_ms_median": 1e3 * median,
        "step_ms_p10": 1e3 * pick(0.1),
        "step_ms_p90": 1e3 * pick(0.9),
        "cpu_ms_per_step": 1e3 * b.cpu_seconds / len(times),  # all cores: a step that spins on two shows it here
        "examples_per_s": ex_s,
        "text_tokens_per_s": ex_s * c.data.max_text_len,
        "model_gflop_per_example_fwd": b.count.forward / 1e9,
        "model_gflop_per_example_train": b.count.training / 1e9,
        "xla_gflop_per_example_step": b.xla_flops_per_example / 1e9,
        "model_tflop_per_s": model_tflops,
        "mfu": model_tflops / peak_tflops if peak_tflops else float("nan"),
        **{f"mem_{k.replace('_size_in_bytes', '')}_MiB": v / 2**20 for k, v in b.memory.items()},
        "rss_after_setup_MiB": b.rss_setup.get("VmRSS", 0) / 2**20,
        "rss_MiB": b.rss_after.get("VmRSS", 0) / 2**20,
        "peak_rss_MiB": b.rss_after.get("VmHWM", 0) / 2**20,
        "device_peak_MiB": device_peak_bytes() / 2**20,
        "final_loss": b.last_loss,
    }


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    width = max(len(k) for k in keys) + 2
    col = max(14, *(len(str(r["preset"])) + 2 for r in rows))
    for key in keys:
        cells = []
        for r in rows:
            v = r[key]
            cells.append(f"{v:>{col}.4g}" if isinstance(v, float) else f"{v!s:>{col}}")
        print(f"{key:<{width}}" + "".join(cells))


def main(argv):
    del argv
    from semrel_jax.training import cpu_cores

    names = FLAGS.compare or FLAGS.presets
    cores = FLAGS.xla_cpu_cores if FLAGS.xla_cpu_cores >= 0 else get_config(names[0]).train.xla_cpu_cores
    # first: anything that asks JAX for its devices starts the backends, and XLA sizes its CPU pool then
    pool = cpu_cores.confine(cores) or "train.xla_cpu_cores=0: XLA's CPU pool on every core"
    import jax

    if FLAGS.peak_tflops:
        peak, formula = FLAGS.peak_tflops, f"--peak_tflops={FLAGS.peak_tflops}"
    else:
        peak, formula = accelerator_peak_tflops() or cpu_peak_tflops()
    print(pool)
    print(f"jax {jax.__version__}, devices {jax.devices()}; {machine_load()}")
    print(f"peak: {formula}")
    benches = []
    for name in names:
        c = get_config(name, FLAGS.config_overrides, FLAGS.batch_size)
        b = build(name, c)
        print(f"[{name}] lowered in {b.lower_s:.1f}s, compiled in {b.compile_s:.1f}s; per example "
              f"{b.count.training / 1e9:.4f} GFLOP (train, analytic), {b.xla_flops_per_example / 1e9:.4f} (XLA step)")
        b.run(FLAGS.warmup, record=False)
        b.rss_setup = rss_bytes()
        if not FLAGS.compare:
            b.run(FLAGS.steps * FLAGS.rounds)
            b.rss_after = rss_bytes()
        benches.append(b)
    if FLAGS.compare:
        for r in range(FLAGS.rounds):
            for b in benches if r % 2 == 0 else benches[::-1]:
                b.run(FLAGS.steps)
        for b in benches:
            b.rss_after = rss_bytes()
    rows = [report(b, peak) for b in benches]
    print()
    print_table(rows)
    if len(benches) > 1:
        base = rows[0]
        print()
        for r in rows[1:]:
            ratio = r["step_ms_median"] / base["step_ms_median"]
            print(f"{r['preset']} / {base['preset']}: step time x{ratio:.3f}  (examples/s of {base['preset']} are "
                  f"{ratio:.3f}x those of {r['preset']}); model FLOPs per example x"
                  f"{r['model_gflop_per_example_train'] / base['model_gflop_per_example_train']:.3f}")
    print(f"\n{machine_load()}")


def define_flags() -> None:
    flags.DEFINE_list("presets", ["demo"], "configs/vqa.py presets to measure one after the other.")
    flags.DEFINE_list("compare", [], "Two (or more) presets measured side by side, interleaved; overrides --presets.")
    flags.DEFINE_integer("batch_size", 0, "Batch size (0: the preset's train.batch_size).")
    flags.DEFINE_integer("steps", 20, "Timed steps per preset (per round in compare mode).")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    flags.DEFINE_integer("rounds", 1, "Rounds of --steps per preset (compare mode alternates them).")
    flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s for MFU (0: a known GPU/TPU's dense bf16 peak, else this CPU's fp32 "
                       "estimate; see the docstring).")
    flags.DEFINE_list("config_overrides", [], "key=value pairs applied to every preset, e.g. train.batch_size=64.")
    flags.DEFINE_integer("xla_cpu_cores", -1, "XLA's CPU pool on this many cores (training/cpu_cores.py; 0: all); "
                         "-1: the first preset's train.xla_cpu_cores. One process, one pool: compare settings with "
                         "benchmarks/xla_cpu_cores.py.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
