"""What ``model.scan_layers``' per-step stacking of the per-block parameters costs the TPU compiler: only
those stacks (the LLM's blocks, the vision towers' blocks up to their deepest tap), with the train step's
shardings, compiled for a TPU topology; prints the compile time and the kernels it generates.

    python benchmarks/scan_stack_cost.py --preset=lsrm_7b --topology=v5e:2x4      # needs libtpu ([tpu] extra)

``models/scan.py`` stacks every block's parameters inside the traced step (``jnp.stack``); XLA turns each
stack into one dynamic-update-slice kernel per block, which is what storing the parameters stacked would remove.
Every block of each tower is stacked here (the step stops at the deepest tap: CLIP-L/14's 23 of 24 blocks).
"""

from __future__ import annotations

import collections
import os
import re
import sys
import time

from absl import app, flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only: the TPU is only compiled for
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # beside another compile-only process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_PRESET = flags.DEFINE_string("preset", "lsrm_7b", "Model preset of configs/vqa.py.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x4", "TPU topology name.")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax.experimental import topologies

    from configs import vqa
    from semrel_jax import recipe
    from semrel_jax.training import chips, model_init

    c = vqa.get_config(_PRESET.value)
    c.mesh.data, c.mesh.fsdp = 1, chips.chips_in(_TOPOLOGY.value)
    c.model.scan_layers = True
    recipe.prepare_config(c)
    mesh = recipe.create_mesh(c, topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY.value).devices)
    state = model_init.create_model_state(c, c.model.llm.vocab_size or recipe.tokenizer_vocab_size(c), mesh, abstract=True)
    stacks = collections.defaultdict(list)  # (tower, path within a block) -> that leaf of every block, in order
    for tree in (state.params, state.frozen):
        for path, variable in nnx.to_flat_state(tree):
            if "layers" in path:
                i = path.index("layers")
                stacks[(path[:i], path[i + 2:])].append((path[i + 1], variable.get_value()))
    leaves = [[v for _, v in sorted(blocks, key=lambda b: b[0])] for blocks in stacks.values()]
    start, start_cpu = time.time(), time.process_time()
    with jax.set_mesh(mesh):
        compiled = jax.jit(lambda leaves: [jnp.stack(blocks) for blocks in leaves]).lower(leaves).compile()
    kernels = len(re.findall(r" fusion\(", compiled.as_text()))
    print(f"{len(leaves)} stacks of {sum(map(len, leaves))} per-block parameters: compiled in "
          f"{time.time() - start:.1f}s wall, {time.process_time() - start_cpu:.1f}s CPU; {kernels} kernels")


if __name__ == "__main__":
    app.run(main)
