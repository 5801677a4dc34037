"""The explicit step between a config as written and the config a run uses.

``resolve(c)`` fills what the user left unset (``None``) and makes the config say what really runs:

* parts that name an ``hf_dir`` take their architecture (widths, depths, heads, RoPE, ...) from that
  directory's ``config.json``: the converted weights fix it, so a differing value is replaced, and the
  replacement is reported;
* each vision tower's preprocessing (normalization, resample, crop, resize) left unset becomes its
  family's HF image processor (the ``hf_dir``'s family, else ``family`` unless it is the from-scratch
  'vit') or the from-scratch default; a value the user set is kept.

It returns one line per filled or replaced key, which every entry point logs. The run's saved
``config.json`` is the resolved config, so evaluation and export rebuild exactly the trained model.
"""

from __future__ import annotations

import functools

import ml_collections

from semrel_jax.errors import ConfigError

# from-scratch towers: x/255 (see data/preprocess.py), bicubic resize, centre crop of the short side
SCRATCH_PREPROCESSING = dict(normalization="unit", resample="bicubic", crop=True, resize=0)
LLM_ARCHITECTURE_KEYS = (
    "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim", "rope_theta", "norm_eps", "tie_embeddings",
    "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position",
)
VIT_ARCHITECTURE_KEYS = ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim", "act")


@functools.lru_cache(maxsize=None)
def _hf_config(hf_dir: str) -> dict:
    """A HF directory's config.json, read once per process."""
    from semrel_jax.convert import hf

    return hf.read_config(hf_dir)


def llm_family(hf_dir: str, dtype: str, param_dtype: str):
    """The typed ``LlamaConfig`` of a HF LLM directory (ConfigError naming the key on failure)."""
    from semrel_jax.convert import families

    try:
        return families.llm_config_from_hf(_hf_config(hf_dir), dtype=dtype, param_dtype=param_dtype)
    except ValueError as e:
        raise ConfigError(f"config.model.llm.hf_dir={hf_dir!r}: {e}") from None


def vision_family(name: str, hf_dir: str, dtype: str = "float32", param_dtype: str = "float32"):
    """The ``families.VisionFamily`` of a HF vision directory (ConfigError naming the encoder on failure)."""
    from semrel_jax.convert import families

    try:
        return families.vision_config_from_hf(_hf_config(hf_dir), dtype=dtype, param_dtype=param_dtype)
    except ValueError as e:
        raise ConfigError(f"config.model.encoders.{name}.hf_dir={hf_dir!r}: {e}") from None


def family_preprocessing(family: str, image_size: int) -> dict:
    """The HF image processor of a vision family (data/preprocess.py reproduces it exactly)."""
    return dict(
        normalization={"clip": "clip", "siglip": "siglip", "siglip2": "siglip", "dinov2": "imagenet"}[family],
        resample="bicubic",
        crop=family in ("clip", "dinov2"),
        resize=int(image_size * 256 / 224) if family == "dinov2" else 0,
    )


def resolve(c: ml_collections.ConfigDict) -> list[str]:
    """Fills ``c`` in place (see the module docstring); returns what it filled, one line per part and source."""
    filled: list[str] = []

    def take(node, where: str, values: dict, source: str, replace: bool) -> None:
        changes = []
        for key, value in values.items():
            old = node[key]
            if old is None or (replace and old != value):
                node[key] = value
                changes.append(f"{key}={value!r}" + ("" if old is None else f" (was {old!r})"))
        if changes:
            filled.append(f"config.{where}: {', '.join(changes)} from {source}")

    m = c.model
    if m.llm.hf_dir:
        llm = llm_family(m.llm.hf_dir, m.llm.dtype, m.llm.param_dtype)
        take(m.llm, "model.llm", {k: getattr(llm, k) for k in LLM_ARCHITECTURE_KEYS}, m.llm.hf_dir, replace=True)
    for name, e in m.encoders.items():
        where = f"model.encoders.{name}"
        if e.hf_dir:
            family = vision_family(name, e.hf_dir)
            architecture = {k: getattr(family.config, k) for k in VIT_ARCHITECTURE_KEYS}
            take(e, where, dict(architecture, family=family.model_type), e.hf_dir, replace=True)
            take(e, where, family_preprocessing(family.model_type, e.image_size), f"{family.model_type}'s image processor",
                 replace=False)
        elif e.family != "vit":  # a named family without its weights (e.g. an abstract summary): its processor
            take(e, where, family_preprocessing(e.family, e.image_size), f"{e.family}'s image processor", replace=False)
        else:
            take(e, where, SCRATCH_PREPROCESSING, "the from-scratch default", replace=False)
    return filled
