"""Pretrained weights into a VisionLanguageModel, as the config names them.

``model.llm.hf_dir`` and ``model.encoders.<name>.hf_dir`` point at Hugging Face directories (or at
``python -m semrel_jax.convert --out`` directories). The model is built first (its random init is
sharded like the training state), then every converted parameter is streamed from the checkpoint into
the sharding its random counterpart already has; parameters the checkpoint does not hold (adapters,
projectors, memory slots) keep their initialisation.
"""

from __future__ import annotations

import ml_collections
from absl import logging
from flax import nnx

from semrel_jax.convert import families, hf, loader
from semrel_jax.convert.safetensors_io import SafetensorsCheckpoint


def _current_sharding(state: nnx.State):
    shardings = {path: getattr(v.get_value(), "sharding", None) for path, v in nnx.to_flat_state(state)}
    return lambda path: shardings.get(path)


def _load_converted(module: nnx.Module, plain: nnx.Module, directory: str) -> None:
    """From a ``convert --out`` Orbax directory: restore the plain tower's tree, copy it in."""
    graphdef, abstract = nnx.split(plain)
    restored = hf._restore_converted(directory, graphdef, abstract, _current_sharding(nnx.state(module, nnx.Param)))
    nnx.update(module, restored)


def _load(module: nnx.Module, rows, directory: str, ignored, prefixes=()) -> int:
    state = nnx.state(module, nnx.Param)
    loaded = loader.load_params(
        state,
        rows,
        SafetensorsCheckpoint(directory),
        ignored=ignored,
        prefixes=prefixes,
        sharding_for=_current_sharding(state),
        allow_unmapped=True,
    )
    nnx.update(module, loaded)
    return len(rows)


def load_pretrained(model, c: ml_collections.ConfigDict) -> list[str]:
    """Loads every ``hf_dir`` the config names into ``model`` (in place); returns one log line per source."""
    lines = []
    if c.model.llm.get("hf_dir"):
        directory = c.model.llm.hf_dir
        if hf._is_converted(directory):
            _load_converted(model.llm, nnx.eval_shape(lambda: type(model.llm)(model.llm.config, rngs=nnx.Rngs(0))), directory)
        else:
            _load(model.llm, families.llm_rows(model.llm.config), directory, families.LLM_IGNORED)
        lines.append(f"llm <- {directory}")
    for name, e in c.model.encoders.items():
        if not e.get("hf_dir"):
            continue
        vit = model.vision.encoders[name]
        family = families.vision_config_from_hf(hf.read_config(e.hf_dir), dtype=vit.config.dtype, param_dtype=vit.config.param_dtype)
        if hf._is_converted(e.hf_dir):
            _load_converted(vit, nnx.eval_shape(lambda f=family: type(vit)(f.config, rngs=nnx.Rngs(0))), e.hf_dir)
        else:
            prefixes = ("vision_model.", "dinov2.", "model.vision_model.")
            _load(vit, families.vision_rows(family), e.hf_dir, families.VISION_IGNORED, prefixes)
        lines.append(f"encoders/{name} <- {e.hf_dir} ({family.model_type})")
    for line in lines:
        logging.info("pretrained weights: %s", line)
    return lines
