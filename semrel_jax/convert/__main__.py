"""Convert or check a Hugging Face model directory.

    python -m semrel_jax.convert --hf_dir=/models/Llama-3.2-1B --check
    python -m semrel_jax.convert --hf_dir=/models/Llama-3.2-1B --check --dtype=bfloat16
    python -m semrel_jax.convert --hf_dir=/models/Llama-3.2-1B --out=/ckpt/llama32_1b

``--check`` runs our module and the transformers PyTorch model on the same random inputs and prints
the max absolute logit (LLM) or hidden-state (vision tower) difference. ``--out`` writes the converted
parameters as an Orbax checkpoint (plus config.json and tokenizer files) for fast restarts; configs
may point at either directory.
"""

from __future__ import annotations

import json

from absl import app, flags

from semrel_jax import cli
from semrel_jax.convert import hf

FLAGS = flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + *.safetensors).")
_OUT = flags.DEFINE_string("out", None, "Write the converted parameters here as an Orbax checkpoint.")
_CHECK = flags.DEFINE_bool("check", False, "Compare with the transformers PyTorch model and print the max |diff|.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Parameter and compute dtype of our model: float32 | bfloat16.")
flags.mark_flag_as_required("hf_dir")


def main(argv):
    del argv
    hf_dir = FLAGS.value
    if _CHECK.value:
        from semrel_jax.convert import check

        report = check.check(hf_dir, dtype=_DTYPE.value)
        print(json.dumps(report, indent=2))
        print(f"max_abs_diff: {report['max_abs_diff']:.3e}")
    if _OUT.value:
        path = hf.convert_to_orbax(hf_dir, _OUT.value, dtype=_DTYPE.value)
        print(f"converted parameters written to {path}")
    if not (_CHECK.value or _OUT.value):
        raise app.UsageError("Nothing to do: pass --check and/or --out.")


if __name__ == "__main__":
    cli.run(main)
