"""Hugging Face model directories in and out: LLMs and vision towers as our NNX modules.

    llm = load_llm("/models/Llama-3.2-1B")                     # Llama module with the HF weights
    vit, family = load_vision("/models/clip-vit-large-patch14")
    export_llm(llm, "/out/merged", like="/models/Llama-3.2-1B") # transformers loads /out/merged

Loading streams the memory-mapped safetensors into the parameters (``loader.load_params``); the
module is first built abstractly, so no random weights are ever allocated for the converted parts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax import files
from semrel_jax.convert import bert_family, families, loader
from semrel_jax.convert.safetensors_io import CheckpointError, SafetensorsCheckpoint, save_file
from semrel_jax.models import abstract as abstract_init
from semrel_jax.models.bert import Bert
from semrel_jax.models.llama import Llama, LlamaConfig
from semrel_jax.models.lora import LoRALinear
from semrel_jax.models.vit import ViT

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "vocab.txt",  # WordPiece (BERT)
)


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{hf_dir}: no config.json (expected a Hugging Face model directory).")
    return files.read_json(path, "model config.json", error=CheckpointError)


def is_llm(cfg: dict) -> bool:
    return cfg.get("model_type") in families.LLM_TYPES


def is_bert(cfg: dict) -> bool:
    return cfg.get("model_type") in bert_family.BERT_TYPES


def _restore_converted(directory: str, graphdef, state, sharding_for) -> nnx.State:
    """Parameters from a ``convert --out`` Orbax checkpoint onto the target shapes/dtypes/shardings."""
    import orbax.checkpoint as ocp

    def target(path, v):
        value = v.get_value()
        sharding = sharding_for(path) if sharding_for else None
        return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding)

    flat = [(path, v.replace(target(path, v))) for path, v in nnx.to_flat_state(state)]
    abstract = nnx.to_pure_dict(nnx.from_flat_state(flat))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(os.path.abspath(os.path.join(directory, "params")), abstract)
    nnx.replace_by_pure_dict(state, restored)
    return state


def convert_to_orbax(hf_dir: str, out_dir: str, *, dtype: str = "float32") -> str:
    """Writes a HF directory's parameters as an Orbax checkpoint (``out_dir/params``) for fast restarts.

    ``config.json`` and the tokenizer files are copied alongside, so ``load_llm(out_dir)`` /
    ``load_vision(out_dir)`` and the tokenizer loader accept ``out_dir`` like the original.
    """
    import orbax.checkpoint as ocp

    cfg = read_config(hf_dir)
    if is_llm(cfg):
        module = load_llm(hf_dir, dtype=dtype, param_dtype=dtype)
    elif is_bert(cfg):
        module = load_bert(hf_dir, dtype=dtype, param_dtype=dtype)
    else:
        module = load_vision(hf_dir, dtype=dtype, param_dtype=dtype)[0]
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.path.join(out_dir, "params")), nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    for name in ("config.json",) + _TOKENIZER_FILES:
        if os.path.exists(os.path.join(hf_dir, name)):
            shutil.copy(os.path.join(hf_dir, name), os.path.join(out_dir, name))
    return out_dir


def _is_converted(directory: str) -> bool:
    return os.path.isdir(os.path.join(directory, "params"))


def _abstract(build: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(abstract_init.eval_shape(build))


def load_llm(
    hf_dir: str,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    sharding_for=None,
) -> Llama:
    """A ``Llama`` module holding the weights of a HF LLaMA/Vicuna/Mistral/Qwen2/Qwen3 directory."""
    config = families.llm_config_from_hf(read_config(hf_dir), dtype=dtype, param_dtype=param_dtype)
    graphdef, state = _abstract(lambda: Llama(config, rngs=nnx.Rngs(0)))
    if _is_converted(hf_dir):
        return nnx.merge(graphdef, _restore_converted(hf_dir, graphdef, state, sharding_for))
    state = loader.load_params(
        state,
        families.llm_rows(config),
        SafetensorsCheckpoint(hf_dir),
        ignored=families.LLM_IGNORED,
        sharding_for=sharding_for,
    )
    return nnx.merge(graphdef, state)


def load_vision(
    hf_dir: str, *, dtype: str = "float32", param_dtype: str = "float32", sharding_for=None
) -> tuple[ViT, families.VisionFamily]:
    """A ``ViT`` holding a HF CLIP / SigLIP / DINOv2 vision tower, and its family (normalisation etc.)."""
    family = families.vision_config_from_hf(read_config(hf_dir), dtype=dtype, param_dtype=param_dtype)
    graphdef, state = _abstract(lambda: ViT(family.config, rngs=nnx.Rngs(0)))
    if _is_converted(hf_dir):
        return nnx.merge(graphdef, _restore_converted(hf_dir, graphdef, state, sharding_for)), family
    state = loader.load_params(
        state,
        families.vision_rows(family),
        SafetensorsCheckpoint(hf_dir),
        ignored=families.VISION_IGNORED,
        prefixes=("vision_model.", "dinov2.", "model.vision_model."),
        sharding_for=sharding_for,
    )
    return nnx.merge(graphdef, state), family


def load_bert(hf_dir: str, *, dtype: str = "float32", param_dtype: str = "float32", sharding_for=None) -> Bert:
    """A ``Bert`` holding a HF BERT-family encoder (``BertModel``, ``BertForPreTraining``, MiniLM, ...)."""
    config = bert_family.bert_config_from_hf(read_config(hf_dir), dtype=dtype, param_dtype=param_dtype)
    graphdef, state = _abstract(lambda: Bert(config, rngs=nnx.Rngs(0)))
    if _is_converted(hf_dir):
        return nnx.merge(graphdef, _restore_converted(hf_dir, graphdef, state, sharding_for))
    ckpt = SafetensorsCheckpoint(hf_dir)
    has_pooler = any(prefix + "pooler.dense.weight" in ckpt for prefix in ("",) + bert_family.BERT_PREFIXES)
    if not has_pooler:  # an MLM export: the pooler keeps its initialisation (needs a concrete state)
        graphdef, state = nnx.split(Bert(config, rngs=nnx.Rngs(0)))
    state = loader.load_params(
        state,
        bert_family.bert_rows(config, has_pooler=has_pooler),
        ckpt,
        ignored=bert_family.BERT_IGNORED,
        prefixes=bert_family.BERT_PREFIXES,
        sharding_for=sharding_for,
        allow_unmapped=not has_pooler,
    )
    return nnx.merge(graphdef, state)


def export_bert(model: Bert, out_dir: str, *, like: str | None = None) -> str:
    """Writes ``model`` as a HF ``BertModel`` directory (``config.json`` + ``model.safetensors``);
    ``like``: the source directory, whose config fields and tokenizer files are kept."""
    os.makedirs(out_dir, exist_ok=True)
    flat = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    tensors = {
        hf: np.ascontiguousarray(loader.to_hf(t, np.asarray(jax.device_get(flat[ours]))))
        for ours, hf, t in bert_family.bert_rows(model.config)
    }
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), {"format": "pt"})
    cfg = bert_family.hf_config_for_bert(model.config, read_config(like) if like else None)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in _TOKENIZER_FILES if like else ():
        if os.path.exists(os.path.join(like, name)):
            shutil.copy(os.path.join(like, name), os.path.join(out_dir, name))
    return out_dir


def llm_to_hf_tensors(model: Llama, dtype=None) -> dict[str, np.ndarray]:
    """Our Llama's parameters as HF-named NumPy arrays (HF layout), LoRA updates merged in."""
    flat = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    out = {}
    for ours, hf, t in families.llm_rows(model.config):
        value = flat[ours]
        if ours[-1] == "kernel":
            owner = model
            for key in ours[:-1]:
                owner = owner[key] if isinstance(key, int) else getattr(owner, key)
            if isinstance(owner, LoRALinear):  # LoRA is merged into the exported weight
                value = owner.merged_kernel()
        a = np.asarray(jax.device_get(value))
        if dtype is not None:
            a = a.astype(dtype)
        out[hf] = loader.to_hf(t, a)
    return out


def hf_config_for(config: LlamaConfig, like: dict | None = None) -> dict:
    """A ``config.json`` for our LlamaConfig; ``like`` (the source model's config) keeps its other fields."""
    cfg = dict(like or {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu"})
    cfg.update(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        intermediate_size=config.mlp_dim,
        head_dim=config.resolved_head_dim,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
    )
    if like is None:
        cfg.update(rope_theta=config.rope_theta, attention_bias=config.attention_bias)
    return cfg


def export_llm(model: Llama, out_dir: str, *, like: str | None = None, dtype: str | None = None) -> str:
    """Writes ``model`` as a HF directory (``config.json`` + ``model.safetensors``) that transformers loads.

    like: the HF directory the model was converted from; its config fields and tokenizer files are kept.
    dtype: storage dtype (default: the parameters' own), e.g. 'bfloat16'.
    """
    os.makedirs(out_dir, exist_ok=True)
    source = read_config(like) if like else None
    cfg = hf_config_for(model.config, source)
    if dtype is not None:
        cfg["torch_dtype"] = cfg["dtype"] = dtype
    np_dtype = None if dtype is None else jnp.dtype(dtype)
    save_file(llm_to_hf_tensors(model, np_dtype), os.path.join(out_dir, "model.safetensors"), {"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if like:
        for name in _TOKENIZER_FILES:
            if os.path.exists(os.path.join(like, name)):
                shutil.copy(os.path.join(like, name), os.path.join(out_dir, name))
    return out_dir
