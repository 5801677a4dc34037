"""Which dtypes the train step computes in: lowers (does not compile) a preset's step on 8 simulated CPU devices
and counts, in its StableHLO, the frozen and trainable bytes per dtype, the element types of every dot product,
and the large bf16 -> float32 converts (a frozen weight upcast to float32 would show as one of a weight's shape).

    python benchmarks/step_dtypes.py --preset=lsrm_7b --loss_chunk=128     # ≈ 20 s of CPU for the 7B step

Shapes are global (before SPMD partitioning): divide by the FSDP size for a device's share.
"""

from __future__ import annotations

import collections
import math
import os
import re
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "configs")]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

_PRESET = flags.DEFINE_string("preset", "lsrm_7b", "Preset of configs/vqa.py.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch (8 devices, FSDP over all of them).")
_TEXT_LEN = flags.DEFINE_integer("text_len", 512, "data.max_text_len.")
_LOSS_CHUNK = flags.DEFINE_integer("loss_chunk", 128, "train.loss_chunk.")
_REMAT = flags.DEFINE_string("remat", "full", "model.remat.")
_MIN_ELEMENTS = flags.DEFINE_integer("min_elements", 2**22, "Converts of fewer elements are not listed.")

DOT = re.compile(r"stablehlo.dot_general %\S+, %\S+.*?: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>")
CONVERT = re.compile(r"stablehlo.convert %\S+ : \(tensor<([^>]*)>\) -> tensor<([^>]*)>")


def _element_type(tensor_type: str) -> str:
    return tensor_type.split("x")[-1]


def _elements(tensor_type: str) -> int:
    return math.prod(int(d) for d in tensor_type.split("x")[:-1])


def _bytes_by_dtype(tree) -> dict[str, str]:
    import jax

    totals = collections.Counter()
    for leaf in jax.tree.leaves(tree):
        totals[str(leaf.dtype)] += leaf.size * leaf.dtype.itemsize
    return {dtype: f"{n / 2**30:.3f} GiB" for dtype, n in totals.items()}


def main(argv):
    del argv
    import jax
    import vqa

    from semrel_jax import recipe

    c = vqa.get_config(_PRESET.value)
    c.mesh.data, c.mesh.fsdp = 1, 8
    c.train.batch_size, c.data.max_text_len = _BATCH.value, _TEXT_LEN.value
    c.model.scan_layers, c.model.remat, c.train.loss_chunk = True, _REMAT.value, _LOSS_CHUNK.value
    recipe.prepare_config(c)
    mesh = recipe.create_mesh(c, None)
    model = recipe.build_model(c, c.model.llm.vocab_size or recipe.tokenizer_vocab_size(c), mesh, abstract=True)
    setup = recipe.build_train_state(c, model, mesh, abstract=True)
    print("frozen parameters:", _bytes_by_dtype(setup.frozen))
    print("trainable parameters:", _bytes_by_dtype(setup.state.params))
    step = recipe.build_step(c, model, setup, mesh, mask_start=0)
    with jax.set_mesh(mesh):
        text = step.lower(setup.state, setup.frozen, recipe.abstract_batch(c, mesh)).as_text()
    dots = collections.Counter(tuple(_element_type(t) for t in m.groups()) for m in DOT.finditer(text))
    print("dot products by (lhs, rhs, out) element type:", dict(dots))
    for m in DOT.finditer(text):
        if {_element_type(t) for t in m.groups()} != {"bf16"}:
            print(f"  {m.group(1)} · {m.group(2)} -> {m.group(3)}")
    upcasts = collections.Counter(
        dst for src, dst in CONVERT.findall(text)
        if _element_type(src) == "bf16" and _element_type(dst) == "f32" and _elements(dst) >= _MIN_ELEMENTS.value
    )
    print(f"bf16 -> f32 converts of >= {_MIN_ELEMENTS.value:,} elements:", dict(upcasts))


if __name__ == "__main__":
    app.run(main)
