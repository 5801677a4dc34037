"""Pretrained weights for a VisionLanguageModel, as the config names them.

``model.llm.hf_dir`` and ``model.encoders.<name>.hf_dir`` point at Hugging Face directories (or at
``python -m semrel_jax.convert --out`` directories). ``load_pretrained_arrays`` streams every converted
parameter from the checkpoint, tensor by tensor, straight into a target sharding per parameter and
returns them by path; the model it is given only supplies shapes, dtypes and configs, so it may be
abstract (``nnx.eval_shape``: ``semrel_jax.training.model_init`` fills an abstract model this way, and
no random weights are ever made for the converted parts). ``load_pretrained`` does the same into a
concrete model, in place. Parameters the checkpoints do not hold (adapters, projectors, memory slots)
keep their initialisation; ``pretrained_paths`` says which ones the checkpoints fill, reading only
``config.json`` files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
from absl import logging
from flax import nnx

from semrel_jax.convert import families, hf, loader
from semrel_jax.convert.safetensors_io import SafetensorsCheckpoint
from semrel_jax.models import abstract as abstract_init

Path = tuple  # a parameter's path in the whole model, e.g. ('llm', 'layers', 0, 'mlp', 'up_proj', 'kernel')

VISION_PREFIXES = ("vision_model.", "dinov2.", "model.vision_model.")


@dataclasses.dataclass(frozen=True)
class _Source:
    where: Path  # the tower's path in the model: ('llm',) or ('vision', 'encoders', name)
    module: nnx.Module  # the tower (concrete or abstract)
    directory: str
    line: str
    rows: tuple | None  # safetensors: the family's mapping; None: a `convert --out` Orbax directory
    ignored: tuple = ()
    prefixes: tuple = ()
    plain: Callable[[], nnx.Module] | None = None  # Orbax: builds the checkpoint's tower (under eval_shape)


def _sources(model, c: ml_collections.ConfigDict) -> list[_Source]:
    sources = []
    if c.model.llm.get("hf_dir"):
        directory, llm = c.model.llm.hf_dir, model.llm
        line = f"llm <- {directory}"
        if hf._is_converted(directory):
            plain = lambda llm=llm: type(llm)(llm.config, rngs=nnx.Rngs(0))  # noqa: E731
            sources.append(_Source(("llm",), llm, directory, line, None, plain=plain))
        else:
            rows = tuple(families.llm_rows(llm.config))
            sources.append(_Source(("llm",), llm, directory, line, rows, tuple(families.LLM_IGNORED)))
    for name, e in c.model.encoders.items():
        if not e.get("hf_dir"):
            continue
        vit = model.vision.encoders[name]
        family = families.vision_config_from_hf(
            hf.read_config(e.hf_dir), dtype=vit.config.dtype, param_dtype=vit.config.param_dtype
        )
        line = f"encoders/{name} <- {e.hf_dir} ({family.model_type})"
        where = ("vision", "encoders", name)
        if hf._is_converted(e.hf_dir):
            plain = lambda vit=vit, f=family: type(vit)(f.config, rngs=nnx.Rngs(0))  # noqa: E731
            sources.append(_Source(where, vit, e.hf_dir, line, None, plain=plain))
        else:
            rows = tuple(families.vision_rows(family))
            sources.append(
                _Source(where, vit, e.hf_dir, line, rows, tuple(families.VISION_IGNORED), VISION_PREFIXES)
            )
    return sources


def pretrained_paths(model, c: ml_collections.ConfigDict) -> set[Path]:
    """The paths (in the whole model) of the parameters the config's checkpoints fill; no weights are read."""
    paths = set()
    for source in _sources(model, c):
        if source.rows is None:
            plain = nnx.state(abstract_init.eval_shape(source.plain), nnx.Param)
            paths.update(source.where + tuple(path) for path, _ in nnx.to_flat_state(plain))
        else:
            paths.update(source.where + tuple(ours) for ours, _, _ in source.rows)
    return paths


def load_pretrained_arrays(
    model,
    c: ml_collections.ConfigDict,
    *,
    sharding_for: Callable[[Path], jax.sharding.Sharding | None] | None = None,
    post: Callable[[Path, jax.Array], jax.Array] | None = None,
) -> tuple[dict[Path, jax.Array], list[str]]:
    """Every parameter the config's ``hf_dir``s hold, by path in the whole model; and one log line per source.

    Args:
      model: the VisionLanguageModel, concrete or abstract (it gives shapes, dtypes and tower configs;
        each tensor is converted to its parameter's dtype).
      sharding_for: the target sharding of a parameter path (None: the default device); each tensor
        is streamed from the memory-mapped file straight into it.
      post: applied to each array as soon as it is placed (e.g. the cast of frozen parameters).
    """
    arrays: dict[Path, jax.Array] = {}
    lines = []
    for source in _sources(model, c):
        local_sharding = (lambda p, w=source.where: sharding_for(w + tuple(p))) if sharding_for else None
        local_post = (lambda p, x, w=source.where: post(w + tuple(p), x)) if post else None
        target = nnx.state(source.module, nnx.Param)
        if source.rows is None:
            graphdef, abstract = nnx.split(abstract_init.eval_shape(source.plain))
            restored = hf._restore_converted(source.directory, graphdef, abstract, local_sharding)
            for path, variable in nnx.to_flat_state(restored):
                value = variable.get_value()
                arrays[source.where + tuple(path)] = local_post(path, value) if local_post else value
        else:
            mapped = {tuple(ours) for ours, _, _ in source.rows}
            loaded = loader.load_params(
                target,
                source.rows,
                SafetensorsCheckpoint(source.directory),
                ignored=source.ignored,
                prefixes=source.prefixes,
                sharding_for=local_sharding,
                allow_unmapped=True,
                post=local_post,
            )
            for path, variable in nnx.to_flat_state(loaded):
                if tuple(path) in mapped:
                    arrays[source.where + tuple(path)] = variable.get_value()
        lines.append(source.line)
    for line in lines:
        logging.info("pretrained weights: %s", line)
    return arrays, lines


def load_pretrained(model, c: ml_collections.ConfigDict) -> list[str]:
    """Loads every ``hf_dir`` the config names into the concrete ``model`` (in place), each tensor into the
    sharding its random counterpart already has; returns one log line per source."""
    state = nnx.state(model, nnx.Param)
    flat = list(nnx.to_flat_state(state))
    shardings = {tuple(path): getattr(v.get_value(), "sharding", None) for path, v in flat}
    arrays, lines = load_pretrained_arrays(model, c, sharding_for=lambda path: shardings.get(tuple(path)))
    if arrays:
        nnx.update(model, nnx.from_flat_state([(p, v.replace(arrays[tuple(p)])) for p, v in flat if tuple(p) in arrays]))
    return lines
