"""BERT: a bidirectional post-LN Transformer encoder (token + position + type embeddings), HF ``BertModel`` layout.

Parameter layout follows HF ``BertModel`` one module to one module, so converted checkpoints (BERT,
MiniLM, sentence-transformers) map by a flat table (``convert/bert_family.py``). Names follow this
project's conventions (``q_proj``/``fc1``/``scale``) so the one sharding table covers them.

Post-LN as BERT: each sub-layer is ``LayerNorm(x + sublayer(x))``. The encoder is exposed in pieces
(``embed_text``, ``BertLayer.attention``, ``BertLayer.feed_forward``) so a method can run the shared
layers on other sequences (visual tokens) or insert its own modules between them (cross-attention).
``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of layer ``i``, as HF's
``output_hidden_states``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from semrel_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    mlp_dim: int
    max_positions: int = 512
    type_vocab_size: int = 2
    act: str = "gelu"
    norm_eps: float = 1e-12
    remat: str = "none"  # rematerialisation policy per layer (layers.REMAT_POLICIES)
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}.")


def _linear(n_in: int, n_out: int, config: BertConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        n_out,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=nnx.initializers.truncated_normal(0.02),  # BERT's initializer_range
        rngs=rngs,
    )


def _layer_norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.dim,
        epsilon=config.norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


def _embed(n: int, config: BertConfig, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        n,
        config.dim,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        embedding_init=nnx.initializers.truncated_normal(0.02),
        rngs=rngs,
    )


def key_mask(key_valid: Array) -> Array:
    """``[B, S]`` valid keys -> the ``[B, 1, 1, S]`` boolean mask every query shares (bidirectional)."""
    return key_valid[:, None, None, :]


class BertAttention(nnx.Module):
    """Multi-head attention with a post-LN residual: ``norm(x + out_proj(attend(x -> context)))``.

    Self-attention when ``context`` is None; cross-attention otherwise (queries from ``x``, keys and
    values from ``context``), which is how a method reuses the block with its own weights.
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.dim
        self.q_proj = _linear(d, d, config, rngs)
        self.k_proj = _linear(d, d, config, rngs)
        self.v_proj = _linear(d, d, config, rngs)
        self.out_proj = _linear(d, d, config, rngs)
        self.norm = _layer_norm(config, rngs)

    def __call__(self, x: Array, mask: Array, context: Array | None = None) -> Array:
        """x: ``[B, T, D]``; context: ``[B, S, D]`` (default ``x``); mask: boolean, broadcastable to ``[B, 1, T, S]``."""
        context = x if context is None else context
        b, t, d = x.shape
        heads = self.config.n_heads
        q = self.q_proj(x).reshape(b, t, heads, d // heads)
        k = self.k_proj(context).reshape(b, context.shape[1], heads, d // heads)
        v = self.v_proj(context).reshape(b, context.shape[1], heads, d // heads)
        mask = jnp.broadcast_to(mask, (b, 1, t, context.shape[1]))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask).reshape(b, t, d)
        return self.norm(x + self.out_proj(out))


class BertLayer(nnx.Module):
    """Self-attention then feed-forward, each post-LN."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.attention = BertAttention(config, rngs=rngs)
        self.fc1 = _linear(config.dim, config.mlp_dim, config, rngs)
        self.fc2 = _linear(config.mlp_dim, config.dim, config, rngs)
        self.output_norm = _layer_norm(config, rngs)

    def feed_forward(self, x: Array) -> Array:
        """``[B, T, D]`` -> ``[B, T, D]``: ``norm(x + fc2(act(fc1(x))))``."""
        return self.output_norm(x + self.fc2(layers.activation(self.config.act)(self.fc1(x))))

    def __call__(self, x: Array, mask: Array) -> Array:
        return self.feed_forward(self.attention(x, mask))


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = _embed(config.vocab_size, config, rngs)
        self.position_embeddings = _embed(config.max_positions, config, rngs)
        self.token_type_embeddings = _embed(config.type_vocab_size, config, rngs)
        self.layer_norm = _layer_norm(config, rngs)

    def __call__(self, tokens: Array, token_types: Array, positions: Array) -> Array:
        """tokens, token_types, positions: ``[B, T]`` int -> ``[B, T, D]``."""
        x = self.word_embeddings(tokens) + self.position_embeddings(positions)
        return self.layer_norm(x + self.token_type_embeddings(token_types))


class Bert(nnx.Module):
    """``BertModel``: embeddings, ``n_layers`` post-LN layers, and the tanh pooler over the first token."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.n_layers)])
        self.pooler = _linear(config.dim, config.dim, config, rngs)

    def embed_text(self, tokens: Array, token_types: Array | None = None) -> Array:
        """``[B, T]`` token ids -> ``[B, T, D]``; positions ``0..T-1`` (BERT pads on the right)."""
        if tokens.shape[1] > self.config.max_positions:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_positions={self.config.max_positions}.")
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        token_types = jnp.zeros_like(tokens) if token_types is None else token_types
        return self.embeddings(tokens, token_types, positions)

    def run_layer(self, i: int, x: Array, mask: Array) -> Array:
        """Layer ``i`` (0-based) on ``x [B, T, D]``, rematerialised by ``config.remat``."""
        out = layers.remat(BertLayer.__call__, self.config.remat)(self.layers[i], x, mask)
        return layers.constrain(out, ("batch", None, None))

    def pool(self, x: Array) -> Array:
        """``[B, T, D]`` -> ``[B, D]``: ``tanh(dense(x[:, 0]))`` (BERT's pooled output)."""
        return jnp.tanh(self.pooler(x[:, 0]))

    def __call__(self, tokens: Array, valid: Array, token_types: Array | None = None) -> list[Array]:
        """tokens, valid: ``[B, T]`` -> every hidden state, ``n_layers + 1`` arrays ``[B, T, D]``."""
        x = self.embed_text(tokens, token_types)
        mask = key_mask(valid)
        hidden = [x]
        for i in range(self.config.n_layers):
            x = self.run_layer(i, x, mask)
            hidden.append(x)
        return hidden
