"""Shared fixtures (a tokenizer trained offline, the tiny config), the test tiers, and a compilation cache.

Tiers: the end-to-end tests (training runs, CLI subprocesses, simulated 8-device meshes, transformers parity on
several models) are marked ``slow`` here, in one list. ``pytest -m "not slow" tests`` is the edit loop;
``pytest tests`` runs everything (README, .ci/run).
"""

import importlib.metadata
import os
import sys
import tempfile

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

# One persistent XLA compilation cache for the test processes and every CLI they start (set before JAX is
# imported; subprocesses inherit it): the tiny config's step is compiled once, not once per process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "semrel_jax_test_xla_cache"))
# Every program, however small: the eager initialisers' per-operation executables too (2 s less per process).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests' programs are tiny and run a few steps: LLVM's optimisation costs more than it saves (a third of the CPU
# time of a CLI run, measured), and XLA:CPU's older fusion emitters compile the tiny train step in 4.9 s instead of
# 6.4 s with the same loss and step time (measured). It does not change results a test compares: every run in a test
# uses the same flags. Tests that start processes with their own XLA_FLAGS (device counts) add these.
# XLA aborts a process on a flag it does not know: jaxlib 0.11's XLA (seen with 0.11.2 on a GPU host) has dropped the
# fusion-emitters switch, so it is passed only to the older XLAs that still read it.
CHEAP_CODEGEN = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2]) < (0, 11):
    CHEAP_CODEGEN += " --xla_cpu_use_fusion_emitters=false"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CHEAP_CODEGEN}".strip()

# Test-id prefixes of the slow tier (see the module docstring).
SLOW = (
    "test_sharding.py::test_sharded",
    "test_multiprocess.py::test_two_processes",
    "test_training.py::test_main_runs",
    "test_training.py::test_bad_config",
    "test_checkpoint.py::test_sigkill",
    "test_checkpoint.py::test_a_run_that_dies",
    "test_checkpoint.py::test_incompatible_config",
    "test_checkpoint.py::test_export_loads",
    "test_checkpoint.py::test_uncommitted_tmp_dir",
    "test_checkpoint.py::test_keep_last_n",
    "test_checkpoint.py::test_checkpoint_frozen",
    "test_checkpoint.py::test_truncated_latest",
    "test_checkpoint.py::test_nonfinite_stop",
    "test_checkpoint.py::test_no_restorable",
    "test_caption.py::test_caption_config_trains",
    "test_pretrained.py::test_main_trains",
    "test_aot.py::",
    "test_real_datasets.py::test_train_and_evaluate",
    "test_step_variants.py::test_rematerialisation",
    "test_step_variants.py::test_questions_sharing",
    "test_step_variants.py::test_gradient_accumulation",
    "test_presets.py::test_release_presets",
    "test_presets.py::test_lsrm_on_every_llm",
    "test_presets.py::test_cli_",
    "test_config.py::test_command_line",
    "test_errors.py::test_a_tuple_override",
    "test_convert.py::test_convert_cli",
    "test_prepared.py::test_command_line",
    "test_prepared.py::test_grain_worker",
    "test_notebooks.py::test_notebook_runs",
)


# The files with the most CPU per run, most first (SEMREL_TEST_CPU_REPORT, summed per file; the rest follow in name
# order). xdist hands out whole files (``--dist loadfile``, no reordering by test count): a long file handed out
# last leaves the other core idle, as the one-test 8-device files did when sorted by their test count. Only the
# order changes, never what runs; a stale list costs speed, not correctness.
HEAVY_FIRST = (
    "test_checkpoint.py", "test_semvlp.py", "test_multiprocess.py", "test_sharding.py", "test_ensemble.py",
    "test_real_datasets.py", "test_training.py", "test_models.py", "test_step_variants.py", "test_pretrained.py",
    "test_notebooks.py", "test_caption.py", "test_semvlp_sharding.py", "test_predict.py", "test_convert.py",
    "test_presets.py", "test_semvlp_tasks.py", "test_semvlp_resume.py", "test_generate.py", "test_aot.py",
)


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.nodeid.split("/")[-1]
        if name.startswith(SLOW):
            item.add_marker(pytest.mark.slow)

    def heavy_rank(item):
        file = item.nodeid.split("::")[0].split("/")[-1]
        return HEAVY_FIRST.index(file) if file in HEAVY_FIRST else len(HEAVY_FIRST)

    items.sort(key=heavy_rank)  # stable: tests keep their order within a file

# grain's worker processes read absl flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from semrel_jax.data import prompts, sort_of_clevr, tokenizer as tokenizer_lib

    words = sort_of_clevr.vocabulary() + prompts.template_words()
    return tokenizer_lib.load_or_train(str(tmp_path_factory.mktemp("tok")), words)


@pytest.fixture
def tiny_config():
    import vqa

    return vqa.get_config("tiny")


# SEMREL_TEST_CPU_REPORT=<file>: each test's CPU seconds (its process and the subprocesses it waited for) appended
# to <file>; on a shared machine a steadier measure than --durations' wall time.
_CPU_REPORT = os.environ.get("SEMREL_TEST_CPU_REPORT")


if _CPU_REPORT:
    import resource

    def _cpu_seconds():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        start = _cpu_seconds()
        yield
        with open(_CPU_REPORT, "a") as f:
            f.write(f"{_cpu_seconds() - start:.2f}\t{item.nodeid}\n")
