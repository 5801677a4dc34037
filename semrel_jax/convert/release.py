"""The LSRM authors' release checkpoint (GitHub ``simonmonmonn/LSRM``) -> a ``VisionLanguageModel``.

The release is one PyTorch module (``lsrm/model.py`` ``Transformer``) whose state dict holds three parts:

  ``llm``       Meta-format LLaMA: ``tok_embeddings``, ``layers.{i}.attention.w{q,k,v,o}``,
                ``layers.{i}.feed_forward.w{1,2,3}``, ``layers.{i}.{attention,ffn}_norm``, ``norm``, ``output``;
  ``clip``      OpenAI CLIP's vision tower under ``backbone.visual.`` (``conv1``, ``class_embedding``,
                ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.{i}.attn.in_proj_*`` ..., ``ln_post``);
  ``adapters``  what the release trains (every name holds "adapter"): ``adapter_emb1`` / ``adapter_emb2``
                ``[1, N_mem, d]`` (P_k, P_v), ``adapter_proj`` (the final level's SRProj, ``SVDvalue`` = Λ),
                ``adapter_proj_ll`` (the intermediate level's), ``adapter_modality_embedding`` and the CLIP
                blocks' ``adapter_mlp.fc{1,2}``.

A file may hold any of the parts, each complete (the release's own training checkpoints hold only
``adapters``; the LLM and CLIP can come from ``hf_dir``s instead). The release names are viewed as the
Hugging Face names of ``convert/families.py`` (Meta's interleaved RoPE rows permuted to HF's halves,
CLIP's fused ``in_proj`` split into q/k/v), so the families' mapping tables load them unchanged.

Only safetensors are read (pickles run code when loaded): convert a ``.pth`` once with
``python -c "import torch, safetensors.torch as s; s.save_file(torch.load('ckpt.pth')['model'], 'out/model.safetensors')"``
(``['model']`` for the release's training checkpoints; Meta's ``consolidated.00.pth`` is the dict itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
from flax import nnx

from semrel_jax.convert import families, loader
from semrel_jax.convert.safetensors_io import CheckpointError, SafetensorsCheckpoint
from semrel_jax.method.ensemble import projector_name

PARTS = ("llm", "clip", "adapters")
_PROBE = {"llm": "tok_embeddings.weight", "clip": "backbone.visual.conv1.weight", "adapters": "adapter_emb1"}
_CLIP = "backbone.visual."
_UNUSED = {"backbone.visual.proj"}  # CLIP's joint-embedding projection: the release never uses it


def meta_to_hf_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """``[heads·hd, d]`` q/k weight with Meta's interleaved rotary pairs (2j, 2j+1) -> HF's halves (j, j+hd/2)."""
    rows, d = w.shape
    hd = rows // heads
    return np.asarray(w).reshape(heads, hd // 2, 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


class _View(Mapping):
    """Release tensors under the names a mapping table expects: ``name -> (release name, transform)``."""

    def __init__(self, source: SafetensorsCheckpoint, entries: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]):
        self._source = source
        self._entries = {k: v for k, v in entries.items() if v[0] in source}

    def __getitem__(self, name: str) -> np.ndarray:
        release, transform = self._entries[name]
        return transform(self._source[release])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        release, transform = self._entries[name]
        return transform(np.broadcast_to(np.zeros((), np.float32), self._source.shape(release))).shape


def _llm_entries(n_layers: int, n_heads: int, n_kv_heads: int) -> dict:
    same = lambda a: a  # noqa: E731
    entries = {
        "model.embed_tokens.weight": ("tok_embeddings.weight", same),
        "model.norm.weight": ("norm.weight", same),
        "lm_head.weight": ("output.weight", same),
    }
    for i in range(n_layers):
        hf, rel = f"model.layers.{i}.", f"layers.{i}."
        entries[hf + "self_attn.q_proj.weight"] = (rel + "attention.wq.weight", lambda a: meta_to_hf_rope_rows(a, n_heads))
        entries[hf + "self_attn.k_proj.weight"] = (rel + "attention.wk.weight", lambda a: meta_to_hf_rope_rows(a, n_kv_heads))
        entries[hf + "self_attn.v_proj.weight"] = (rel + "attention.wv.weight", same)
        entries[hf + "self_attn.o_proj.weight"] = (rel + "attention.wo.weight", same)
        for ours, theirs in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
            entries[hf + f"mlp.{ours}.weight"] = (rel + f"feed_forward.{theirs}.weight", same)
        entries[hf + "input_layernorm.weight"] = (rel + "attention_norm.weight", same)
        entries[hf + "post_attention_layernorm.weight"] = (rel + "ffn_norm.weight", same)
    return entries


def _clip_entries(depth: int) -> dict:
    same = lambda a: a  # noqa: E731
    entries = {
        "embeddings.patch_embedding.weight": (_CLIP + "conv1.weight", same),
        "embeddings.class_embedding": (_CLIP + "class_embedding", same),
        "embeddings.position_embedding.weight": (_CLIP + "positional_embedding", same),
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            entries[f"{ours}.{p}"] = (f"{_CLIP}{theirs}.{p}", same)
    for i in range(depth):
        hf, rel = f"encoder.layers.{i}.", f"{_CLIP}transformer.resblocks.{i}."
        for k, proj in enumerate(("q_proj", "k_proj", "v_proj")):  # in_proj = [q; k; v] along the output rows
            third = lambda a, k=k: np.split(np.asarray(a), 3, axis=0)[k]  # noqa: E731
            entries[hf + f"self_attn.{proj}.weight"] = (rel + "attn.in_proj_weight", third)
            entries[hf + f"self_attn.{proj}.bias"] = (rel + "attn.in_proj_bias", third)
        for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
                             ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
            for p in ("weight", "bias"):
                entries[f"{hf}{ours}.{p}"] = (f"{rel}{theirs}.{p}", same)
    return entries


def _adapter_rows(model, encoder: str) -> tuple[list[families.Row], dict]:
    """Rows (our path in the whole model, release name, transform) of the release's trained parameters."""
    spec = next((e for e in model.config.vision.encoders if e.name == encoder), None)
    if spec is None or len(spec.taps) != 2:
        raise CheckpointError(
            f"the release's model is one encoder with two levels; this model's encoder {encoder!r} has "
            f"taps {None if spec is None else spec.taps}"
        )
    middle, final = sorted(spec.taps)
    squeeze = lambda a: np.asarray(a)[0]  # noqa: E731  [1, N_mem, d] -> [N_mem, d]
    same = lambda a: a  # noqa: E731
    entries = {"adapter_emb1": ("adapter_emb1", squeeze), "adapter_emb2": ("adapter_emb2", squeeze)}
    rows: list[families.Row] = [(("memory_key_embedding",), "adapter_emb1", "identity"),
                                (("memory_value_embedding",), "adapter_emb2", "identity")]
    if model.config.modality_embedding:
        entries["adapter_modality_embedding.weight"] = ("adapter_modality_embedding.weight", same)
        rows.append((("modality_embedding",), "adapter_modality_embedding.weight", "identity"))
    for release, tap in (("adapter_proj", final), ("adapter_proj_ll", middle)):
        ours = ("vision", "projectors", projector_name(encoder, tap))
        for layer in ("fc1", "fc2"):
            rows.append((ours + (layer, "kernel"), f"{release}.{layer}.weight", "linear"))
            rows.append((ours + (layer, "bias"), f"{release}.{layer}.bias", "identity"))
        rows.append((ours + ("diagonal",), f"{release}.SVDvalue", "identity"))
    for i in range(spec.vit.depth):
        for layer in ("fc1", "fc2"):
            name = f"{_CLIP}transformer.resblocks.{i}.adapter_mlp.{layer}.weight"
            rows.append((("vision", "encoders", encoder, "layers", i, "adapter", layer, "kernel"), name, "linear"))
    entries |= {name: (name, same) for _, name, _ in rows if name not in entries}
    return rows, entries


def load_release(model, directory: str, *, encoder: str = "clip") -> list[str]:
    """Loads the release checkpoint in ``directory`` (safetensors) into ``model`` in place.

    Args:
      model: a concrete ``VisionLanguageModel`` of the release's shape (one encoder ``encoder`` with two taps,
        ICA injection, ``num_memory_slots`` = the release's ``emb``).
      directory: a directory of ``*.safetensors`` holding the release's state dict (any of ``PARTS``, each whole).

    Returns:
      the parts loaded, e.g. ``['llm', 'clip', 'adapters']``.

    Raises:
      CheckpointError naming missing, unexpected or mis-shaped tensors (a partial part included).
    """
    source = SafetensorsCheckpoint(directory)
    present = [part for part in PARTS if _PROBE[part] in source]
    if not present:
        raise CheckpointError(f"{directory}: none of the release's parts ({', '.join(_PROBE.values())}) found.")
    llm, vit = model.llm, model.vision.encoders[encoder]
    rows: list[families.Row] = []
    entries: dict = {}
    if "llm" in present:
        c = llm.config
        rows += [(("llm",) + ours, name, t) for ours, name, t in families.llm_rows(c)]
        entries |= _llm_entries(c.n_layers, c.n_heads, c.n_kv_heads)
    if "clip" in present:
        clip = families.VisionFamily("clip", "", vit.config, (0.0,) * 3, (1.0,) * 3)
        rows += [(("vision", "encoders", encoder) + ours, name, t) for ours, name, t in families.vision_rows(clip)]
        entries |= _clip_entries(vit.config.depth)
    if "adapters" in present:
        adapter_rows, adapter_entries = _adapter_rows(model, encoder)
        rows += adapter_rows
        entries |= adapter_entries
    view = _View(source, entries)
    release_names = {entries[name][0] for name in view}
    unexpected = sorted(k for k in source if k not in release_names and k not in _UNUSED)
    if unexpected:
        raise CheckpointError(f"{directory}: tensors the release's model does not have (or a part is mixed in): {unexpected[:12]}")
    state = nnx.state(model, nnx.Param)
    state = loader.load_params(state, rows, view, allow_unmapped=True)
    nnx.update(model, state)
    return present
