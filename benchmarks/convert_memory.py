"""Peak host memory of loading a multi-GiB HF checkpoint: our streaming loader vs loading it whole.

    python benchmarks/convert_memory.py --workdir=/tmp/convert_bench   # ~4 GiB checkpoint, a few minutes

Writes a random LLaMA-architecture checkpoint with transformers (sharded safetensors, fp32), then
loads it in fresh subprocesses, one per method, and reports each one's peak resident set (VmHWM)
above its baseline after imports:

  streaming  semrel_jax.convert.hf.load_llm: memory-mapped, tensor by tensor into the parameters
  whole      every tensor read into memory first (safetensors.numpy.load_file per shard), then converted

On CPU the loaded parameters live in host memory themselves, so the floor is 1.0x the checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/convert_bench", "Where the random checkpoint is written.")
_DIM = flags.DEFINE_integer("dim", 2048, "Model width (the default gives ~1B parameters, ~4 GiB in fp32).")
_LAYERS = flags.DEFINE_integer("layers", 16, "Decoder layers.")

_CHILD = r"""
import json, sys, glob, os
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) * 1024
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from semrel_jax.convert import hf
import safetensors.numpy
base = hwm()
method, path = sys.argv[1], sys.argv[2]
if method == 'streaming':
    model = hf.load_llm(path)
else:
    tensors = {}
    for f in sorted(glob.glob(os.path.join(path, '*.safetensors'))):
        tensors.update(safetensors.numpy.load_file(f))
    model = hf.load_llm(path)  # the same conversion, with the whole checkpoint already resident
    del tensors
n = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
print(json.dumps({'method': method, 'peak_above_baseline': hwm() - base, 'params': int(n)}))
"""


def _make_checkpoint(path: str) -> int:
    import torch
    import transformers

    if not os.path.exists(os.path.join(path, "config.json")):
        config = transformers.LlamaConfig(
            vocab_size=32000,
            hidden_size=_DIM.value,
            intermediate_size=int(_DIM.value * 2.75),
            num_hidden_layers=_LAYERS.value,
            num_attention_heads=_DIM.value // 128,
            num_key_value_heads=_DIM.value // 128,
        )
        with torch.device("cpu"):
            model = transformers.LlamaForCausalLM(config)
        model.save_pretrained(path, max_shard_size="1GB")
        del model
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def main(argv):
    del argv
    path = os.path.join(_WORKDIR.value, "llama_random")
    size = _make_checkpoint(path)
    print(f"checkpoint: {size / 2**30:.2f} GiB of safetensors in {path}")
    for method in ("streaming", "whole"):
        out = subprocess.run([sys.executable, "-c", _CHILD, method, path], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        peak = result["peak_above_baseline"]
        print(f"{method:>10}: peak RSS above baseline {peak / 2**30:.2f} GiB = {peak / size:.2f}x the checkpoint "
              f"({result['params']:,} parameters)")


if __name__ == "__main__":
    app.run(main)
