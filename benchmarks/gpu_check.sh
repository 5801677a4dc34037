#!/usr/bin/env bash
# One command on a CUDA host: the 1B and 7B LSRM train steps (bf16 compute, Sort-of-CLEVR batches generated on
# the fly, rows padded to 512 text tokens) with each attention path, through benchmarks/step_throughput.py:
# step time, tokens/s, model TFLOP/s, MFU against the GPU's dense bf16 peak (semrel_jax/training/chips.py),
# compiled and peak device memory. Installs nothing: it needs what `pip install "jax[cuda12]" && pip install -e .`
# gave (PYTHON picks the interpreter, python3 by default). It took 6.5 min on one H200 (2026-12-04; each run
# is a fresh process of ≈ 80-95 s, most of it compiling; each is capped at RUN_TIMEOUT seconds, 150 for the 1B and 180
# for the 7B: a first process on a fresh host ran past 90 s).
# Each run's whole output goes to $LOG_DIR/<preset>_<attention>.log (LOG_DIR: a temporary folder unless set); a
# failing run's last lines are printed.
#
#   bash benchmarks/gpu_check.sh          # on the GPU host
#   bash benchmarks/gpu_check.sh --dry    # the same loop with the tiny preset on any machine (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOG_DIR=${LOG_DIR:-$(mktemp -d)}

if [[ "${1:-}" == "--dry" ]]; then
  runs=("tiny:8:${RUN_TIMEOUT:-300}")   # preset:batch:seconds
  attentions=(xla)
  steps=2; text_len=20
else
  "$PYTHON" - <<'PY'
import jax, sys
if jax.default_backend() != "gpu":
    sys.exit(f"gpu_check: no GPU visible to JAX (backend {jax.default_backend()!r}); install jax[cuda12], or use --dry")
print("devices:", jax.devices())
PY
  runs=("lsrm_llama3.2_1b:32:${RUN_TIMEOUT:-150}" "lsrm_7b:16:${RUN_TIMEOUT:-180}")
  attentions=(xla cudnn)
  steps=10; text_len=512
fi

for run in "${runs[@]}"; do
  IFS=: read -r preset batch run_timeout <<< "${run}"
  for attention in "${attentions[@]}"; do
    echo "=== ${preset}, batch ${batch} x ${text_len} tokens, model.attention=${attention}"
    # a failing path (e.g. cuDNN refusing a shape) is reported and the loop goes on to the next
    log=${LOG_DIR}/${preset}_${attention}.log
    timeout "${run_timeout}" "$PYTHON" benchmarks/step_throughput.py --presets="${preset}" --batch_size="${batch}" \
      --steps="${steps}" --warmup=2 \
      --config_overrides="model.attention=${attention},data.max_text_len=${text_len}" 2>&1 \
      | tee "${log}" | grep -E "^(peak|jax|\[|step_ms_median|examples_per_s|text_tokens_per_s|model_tflop_per_s|mfu|mem_temp|device_peak|compile_s)" \
      || { echo "!!! ${preset} with ${attention} failed or ran out of time (${run_timeout}s); the end of ${log}:"
           tail -n 15 "${log}"; }
  done
done
