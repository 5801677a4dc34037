"""The BERT family (BERT, MiniLM, sentence-transformers encoders): HF ``config.json`` -> ``BertConfig``, and
our parameter paths <-> HF ``BertModel`` tensor names.

Rows are ``(our path, hf name, transform)`` as for the other families (``families.py``). Checkpoints saved
from ``BertForPreTraining`` / ``BertForMaskedLM`` carry a ``bert.`` prefix and task heads (``cls.*``): the
prefix is found by the loader and the heads are ignored. A checkpoint without a pooler (some MLM exports)
keeps our freshly initialised pooler (``has_pooler=False`` drops its rows).
"""

from __future__ import annotations

from semrel_jax.convert.families import Path, Row, hf_value
from semrel_jax.convert.safetensors_io import CheckpointError
from semrel_jax.models.bert import BertConfig

BERT_TYPES = ("bert",)
BERT_PREFIXES = ("bert.",)
BERT_IGNORED = (r"^cls\..*", r".*embeddings\.position_ids$")

# HF activation names of BERT configs -> ours (layers.activation)
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def bert_config_from_hf(cfg: dict, *, dtype: str = "float32", param_dtype: str = "float32") -> BertConfig:
    """Our BertConfig for a HF ``model_type: bert`` ``config.json`` (absolute position embeddings only)."""
    if cfg.get("model_type") not in BERT_TYPES:
        raise CheckpointError(f"model_type {cfg.get('model_type')!r} is not a BERT-family encoder; supported: {BERT_TYPES}.")
    act = hf_value(cfg, "hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"BERT hidden_act {act!r} is not supported; supported: {sorted(_ACTIVATIONS)}.")
    if hf_value(cfg, "position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {cfg['position_embedding_type']!r} is not supported (absolute only).")
    return BertConfig(
        vocab_size=hf_value(cfg, "vocab_size", required=True),
        dim=hf_value(cfg, "hidden_size", required=True),
        n_layers=hf_value(cfg, "num_hidden_layers", required=True),
        n_heads=hf_value(cfg, "num_attention_heads", required=True),
        mlp_dim=hf_value(cfg, "intermediate_size", required=True),
        max_positions=hf_value(cfg, "max_position_embeddings", 512),
        type_vocab_size=hf_value(cfg, "type_vocab_size", 2),
        act=_ACTIVATIONS[act],
        norm_eps=float(hf_value(cfg, "layer_norm_eps", 1e-12)),
        dtype=dtype,
        param_dtype=param_dtype,
    )


def hf_config_for_bert(c: BertConfig, like: dict | None = None) -> dict:
    """A ``config.json`` for our BertConfig; ``like`` (the source model's config) keeps its other fields."""
    cfg = dict(like or {"model_type": "bert", "architectures": ["BertModel"], "position_embedding_type": "absolute"})
    act = {"gelu": "gelu", "gelu_tanh": "gelu_new"}[c.act]
    cfg.update(
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        intermediate_size=c.mlp_dim,
        max_position_embeddings=c.max_positions,
        type_vocab_size=c.type_vocab_size,
        hidden_act=act,
        layer_norm_eps=c.norm_eps,
    )
    return cfg


def _dense(ours: Path, hf: str) -> list[Row]:
    return [(ours + ("kernel",), f"{hf}.weight", "linear"), (ours + ("bias",), f"{hf}.bias", "identity")]


def _norm(ours: Path, hf: str) -> list[Row]:
    return [(ours + ("scale",), f"{hf}.weight", "identity"), (ours + ("bias",), f"{hf}.bias", "identity")]


def bert_rows(c: BertConfig, *, has_pooler: bool = True) -> list[Row]:
    rows: list[Row] = []
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        rows.append((("embeddings", name, "embedding"), f"embeddings.{name}.weight", "identity"))
    rows += _norm(("embeddings", "layer_norm"), "embeddings.LayerNorm")
    for i in range(c.n_layers):
        hf = f"encoder.layer.{i}."
        attn: Path = ("layers", i, "attention")
        for mine, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            rows += _dense(attn + (mine,), f"{hf}attention.self.{theirs}")
        rows += _dense(attn + ("out_proj",), f"{hf}attention.output.dense")
        rows += _norm(attn + ("norm",), f"{hf}attention.output.LayerNorm")
        rows += _dense(("layers", i, "fc1"), f"{hf}intermediate.dense")
        rows += _dense(("layers", i, "fc2"), f"{hf}output.dense")
        rows += _norm(("layers", i, "output_norm"), f"{hf}output.LayerNorm")
    if has_pooler:
        rows += _dense(("pooler",), "pooler.dense")
    return rows
