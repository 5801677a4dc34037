"""Llama-family decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention) as an NNX module.

Parameter names follow Hugging Face's ``LlamaForCausalLM`` (``embed_tokens``, ``layers.N.self_attn.q_proj``,
``mlp.gate_proj``, ``input_layernorm``, ...) so that converted checkpoints map one to one.

Each block can run an optional side branch in parallel with its FFN, carrying a state from block to block:

    h          = x + Attn(input_layernorm(x))
    u          = post_attention_layernorm(h)
    delta, s'  = side(u, s, key)
    out        = h + FFN(u) + delta

The decoder knows nothing of what the branch computes or what its state holds (the method layer,
``semrel_jax.method``, plugs in through it); without one the block is the plain Llama block. Decoding uses an
explicit ``KVCache`` pytree that is passed in and returned, so generation loops stay pure functions.

``capture=True`` (static; off, the traced computation is exactly the plain one) also returns a ``DecoderTrace``:
the side branch's state and the self-attention probabilities (mean over heads) of every block, for inspection.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from semrel_jax.models import attention as attention_lib
from semrel_jax.models import layers, scan
from semrel_jax.models.lora import LoRALinear

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_dim: int
    head_dim: int | None = None  # None: dim // n_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (Qwen2)
    o_proj_bias: bool = False  # bias on the output projection too (HF Llama's attention_bias=True)
    qk_norm: bool = False  # RMSNorm over head_dim of q and k before RoPE (Qwen3)
    sliding_window: int | None = None  # Mistral-style local attention
    rope_scaling: str = "none"  # 'none' | 'linear' | 'llama3' (see layers.rope_frequencies)
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    lora_rank: int = 0  # > 0: low-rank adapters on the projections named in lora_targets
    lora_alpha: float = 16.0  # the update is (lora_alpha / lora_rank) · x A B
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    remat: str = "none"  # rematerialisation policy per decoder layer (layers.REMAT_POLICIES)
    scan_layers: bool = False  # training/prefill run the blocks as one lax.scan (models/scan.py): compiles once
    attention: str = "xla"  # attention_lib.IMPLEMENTATIONS: xla | cudnn (GPU) | splash (TPU); decoding always uses xla
    # > 0: every block's attention adds a learned per-head bias  features @ W  [F, heads] for the token pairs of
    # the first P slots, from pair features [B, P, P, F] given at call time (``pair_features``; e.g. the image
    # tokens' 2-D offsets, method/vlm.py); other pairs get none. W starts at pair_bias_init ([F][heads]; (): 0)
    pair_bias_features: int = 0
    pair_bias_init: tuple[tuple[float, ...], ...] = ()
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}.")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}.")
        if self.attention not in attention_lib.IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r}; expected one of {attention_lib.IMPLEMENTATIONS}.")
        unknown = set(self.lora_targets) - set(LORA_TARGETS)
        if self.lora_rank and unknown:
            raise ValueError(f"lora_targets {sorted(unknown)} unknown; choose from {LORA_TARGETS}.")
        if self.resolved_head_dim % 2:
            raise ValueError(f"head_dim={self.resolved_head_dim} must be even for rotary embeddings.")
        init, features = self.pair_bias_init, self.pair_bias_features
        if init and [len(row) for row in init] != [self.n_heads] * features:
            raise ValueError(f"pair_bias_init must be [pair_bias_features={features}][n_heads={self.n_heads}].")


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys/values of every layer for incremental decoding.

    keys, values: ``[L, B, S_max, n_kv_heads, head_dim]``.
    valid: ``[B, S_max]`` True at slots holding real tokens (prompts are left-padded).
    lengths: ``[B]`` number of real tokens so far (the next token's RoPE position).
    index: scalar, the next slot to write (shared by the batch).
    """

    keys: Array
    values: Array
    valid: Array
    lengths: Array
    index: Array

    @classmethod
    def empty(cls, config: LlamaConfig, batch: int, max_len: int) -> "KVCache":
        shape = (config.n_layers, batch, max_len, config.n_kv_heads, config.resolved_head_dim)
        dtype = jnp.dtype(config.dtype)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, max_len), bool),
            lengths=jnp.zeros((batch,), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )


def _linear(
    n_in: int, n_out: int, config: LlamaConfig, rngs: nnx.Rngs, bias: bool = False, name: str = ""
) -> nnx.Linear:
    kwargs = dict(
        use_bias=bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=nnx.initializers.lecun_normal(),
        rngs=rngs,
    )
    if config.lora_rank and name in config.lora_targets:
        return LoRALinear(n_in, n_out, rank=config.lora_rank, alpha=config.lora_alpha, **kwargs)
    return nnx.Linear(n_in, n_out, **kwargs)


class Attention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        hd = config.resolved_head_dim
        self.config = config
        self.q_proj = _linear(config.dim, config.n_heads * hd, config, rngs, config.attention_bias, "q_proj")
        self.k_proj = _linear(config.dim, config.n_kv_heads * hd, config, rngs, config.attention_bias, "k_proj")
        self.v_proj = _linear(config.dim, config.n_kv_heads * hd, config, rngs, config.attention_bias, "v_proj")
        self.o_proj = _linear(config.n_heads * hd, config.dim, config, rngs, config.o_proj_bias, "o_proj")
        pd = jnp.dtype(config.param_dtype)
        if config.qk_norm:
            self.q_norm = layers.RMSNorm(hd, eps=config.norm_eps, param_dtype=pd)
            self.k_norm = layers.RMSNorm(hd, eps=config.norm_eps, param_dtype=pd)
        if config.pair_bias_features:
            init = config.pair_bias_init or [[0.0] * config.n_heads] * config.pair_bias_features
            self.pair_bias = nnx.Param(jnp.asarray(init, pd))

    def __call__(
        self,
        x: Array,
        positions: Array,
        mask: attention_lib.Mask,
        kv: tuple[Array, Array, Array] | None = None,
        capture: bool = False,
        pair_features: Array | None = None,
    ) -> tuple[Array, tuple[Array, Array], Array | None]:
        """x: ``[B, T, d]``; positions ``[B, T]``; mask: queries ``[B, T]`` over keys ``[B, S]``.

        kv: optional ``(cached_keys, cached_values, write_index)`` with caches ``[B, S, K, hd]``;
        the new keys/values are written at ``write_index`` and attention runs over the cache.
        pair_features: ``[B, P, P, F]`` for the pairs among the first ``P`` queries and the first ``P`` keys
        (``config.pair_bias_features``; a prefill writes from slot 0, so its prefix is both), or None.
        Returns the output, the (possibly updated) keys/values ``[B, S, K, hd]`` and, with ``capture``, the
        attention probabilities averaged over heads ``[B, T, S]`` (else None).
        """
        c = self.config
        b, t, _ = x.shape
        hd = c.resolved_head_dim
        inv_freq = layers.rope_frequencies(
            hd,
            c.rope_theta,
            c.rope_scaling,
            c.rope_scaling_factor,
            c.rope_low_freq_factor,
            c.rope_high_freq_factor,
            c.rope_original_max_position,
        )
        q = layers.constrain(self.q_proj(x).reshape(b, t, c.n_heads, hd), ("batch", None, "heads", None))
        k = layers.constrain(self.k_proj(x).reshape(b, t, c.n_kv_heads, hd), ("batch", None, "kv_heads", None))
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = layers.apply_rope(q, positions, inv_freq)
        k = layers.apply_rope(k, positions, inv_freq)
        v = self.v_proj(x).reshape(b, t, c.n_kv_heads, hd)
        if kv is not None:
            cached_k, cached_v, index = kv
            k = jax.lax.dynamic_update_slice(cached_k, k.astype(cached_k.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cached_v, v.astype(cached_v.dtype), (0, index, 0, 0))
        # the fused kernels serve training and prefill; a decoding step (one query over the cache) uses XLA's
        implementation = c.attention if kv is None else "xla"
        bias = None if pair_features is None else self._pair_bias(pair_features, t, k.shape[1], q.dtype)
        out = attention_lib.attend(q, k.astype(q.dtype), v.astype(q.dtype), mask, implementation, bias)
        probabilities = attention_probabilities(q, k.astype(q.dtype), mask.dense(), bias) if capture else None
        return self.o_proj(out.reshape(b, t, c.n_heads * hd)), (k, v), probabilities

    def _pair_bias(self, pair_features: Array, t: int, s: int, dtype) -> Array:
        """``[B, P, P, F]`` -> the additive attention bias ``[B, heads, T, S]``, zero outside the first P x P."""
        p = pair_features.shape[1]
        bias = jnp.moveaxis(pair_features.astype(jnp.float32) @ self.pair_bias[...].astype(jnp.float32), -1, 1)
        return jnp.pad(bias, ((0, 0), (0, 0), (0, t - p), (0, s - p))).astype(dtype)


def attention_probabilities(q: Array, k: Array, mask: Array, bias: Array | None = None) -> Array:
    """Softmax attention weights averaged over heads ``[B, T, S]`` (what ``dot_product_attention`` applies).

    q ``[B, T, H, hd]``, k ``[B, S, K, hd]`` (grouped-query: each of the K heads serves H / K query heads),
    mask ``[B, 1, T, S]``, bias ``[B, H, T, S]`` or None. A query row with no visible key (padding) gets
    uniform weights, not NaN.
    """
    k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1).mean(axis=1)


class MLP(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.gate_proj = _linear(config.dim, config.mlp_dim, config, rngs, name="gate_proj")
        self.up_proj = _linear(config.dim, config.mlp_dim, config, rngs, name="up_proj")
        self.down_proj = _linear(config.mlp_dim, config.dim, config, rngs, name="down_proj")

    def __call__(self, x: Array) -> Array:
        hidden = layers.constrain(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x), ("batch", None, "mlp"))
        return self.down_proj(hidden)


class SideBranch(Protocol):
    """A computation added beside every block's FFN: ``out = h + FFN(u) + delta``.

    Called as ``side(u, state, key) -> (delta, new_state)`` with ``u = post_attention_layernorm(h)``
    ``[B, T, d]``, the state returned by the previous block (the caller's initial state at block 0) and the
    block's dropout key (None: deterministic). ``delta`` is ``[B, T, d]``; the state is any pytree.

    Under remat it is an argument of the rematerialised block, so it must be a pytree whose arrays are leaves
    (e.g. a ``jax.tree_util.register_dataclass`` with static settings as meta fields).
    """

    def __call__(self, u: Array, state: Any, key: Array | None) -> tuple[Array, Any]: ...


class DecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(config.param_dtype)
        self.input_layernorm = layers.RMSNorm(config.dim, eps=config.norm_eps, param_dtype=pd)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = layers.RMSNorm(config.dim, eps=config.norm_eps, param_dtype=pd)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x: Array,
        positions: Array,
        mask: attention_lib.Mask,
        kv: tuple[Array, Array, Array] | None = None,
        side: SideBranch | None = None,
        side_state: Any = None,
        dropout_key: Array | None = None,
        capture: bool = False,
        pair_features: Array | None = None,
    ) -> tuple[Array, tuple[Array, Array], Any, Array | None]:
        """x ``[B, T, d]`` -> ``(out [B, T, d], keys/values, side_state after this block, attention [B, T, S]
        averaged over heads with ``capture``, else None)``.

        The block itself has no dropout: ``dropout_key`` is the side branch's.
        """
        attn_out, new_kv, attention = self.self_attn(
            self.input_layernorm(x), positions, mask, kv, capture, pair_features
        )
        h = x + attn_out
        u = self.post_attention_layernorm(h)
        out = h + self.mlp(u)
        if side is not None:
            delta, side_state = side(u, side_state, dropout_key)
            out = out + delta.astype(out.dtype)
        return out, new_kv, side_state, attention


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecoderTrace:
    """What ``Llama(..., capture=True)`` records of one forward pass: ``side_states``, the side branch's state after
    each block (a tuple of ``n_layers`` pytrees; Nones without one), and ``attention [L, B, T, S]``, each block's
    self-attention probabilities averaged over heads (``S`` keys: the positions, or the cache's slots decoding)."""

    side_states: tuple
    attention: Array


class Llama(nnx.Module):
    """Decoder-only LM. Use ``__call__`` for training/prefill and ``KVCache`` for decoding."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(
            config.vocab_size,
            config.dim,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            embedding_init=nnx.initializers.normal(1.0),
            rngs=rngs,
        )
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.n_layers)])
        self.norm = layers.RMSNorm(config.dim, eps=config.norm_eps, param_dtype=jnp.dtype(config.param_dtype))
        if not config.tie_embeddings:
            self.lm_head = _linear(config.dim, config.vocab_size, config, rngs)

    def embed(self, tokens: Array) -> Array:
        return self.embed_tokens(tokens)

    def logits(self, x: Array) -> Array:
        """The output projection: final-normed hidden states ``[B, T, d]`` -> float32 logits ``[B, T, vocab]``."""
        logits = self.embed_tokens.attend(x) if self.config.tie_embeddings else self.lm_head(x)
        return layers.constrain(logits.astype(jnp.float32), ("batch", None, "vocab"))

    def __call__(
        self,
        tokens: Array | None = None,
        *,
        valid: Array,
        embeddings: Array | None = None,
        side: SideBranch | None = None,
        side_state: Any = None,
        dropout_key: Array | None = None,
        cache: KVCache | None = None,
        capture: bool = False,
        head: bool = True,
        prefix_length: Array | None = None,
        pair_features: Array | None = None,
    ) -> tuple[Array, KVCache | None] | tuple[Array, KVCache | None, DecoderTrace]:
        """Runs the decoder.

        Args:
          tokens: ``[B, T]`` int ids (or pass ``embeddings [B, T, d]`` instead, e.g. with visual prefixes).
          valid: ``[B, T]`` bool, False at padding.
          side: branch added beside every block's FFN (see ``SideBranch``; None: plain Llama).
          side_state: the side branch's state entering block 0; each block's output state enters the next.
          dropout_key: block ``i`` hands ``fold_in(dropout_key, i)`` to the side branch (None: deterministic).
          cache: decode with (and update) this KV cache; prompts must be left-padded.
          capture: static; also return a ``DecoderTrace`` of every block (off: the plain computation).
          head: static; False returns the final-normed hidden states ``[B, T, d]`` (compute dtype) in place of
            the logits, for a loss that applies ``logits`` a chunk at a time (training/chunked_loss.py).
          prefix_length: ``[B]`` or None (causal): the first ``prefix_length`` slots of this call's sequence
            attend to each other both ways, the rest causally (a prefix-LM; with a cache, counted from the
            cache's current slot, so a prefill passes its whole length and the decoded tokens stay causal).
          pair_features: ``[B, P, P, F]`` features of the pairs among this call's first ``P`` slots, turned
            into an attention bias by every block (``config.pair_bias_features == F``); None: no bias. With a
            cache, only a prefill (the cache empty) may pass them.

        Returns:
          logits ``[B, T, vocab]`` in float32, the updated cache (None without one) and, with ``capture``,
          the ``DecoderTrace``.
        """
        c = self.config
        x = self.embed(tokens) if embeddings is None else embeddings.astype(jnp.dtype(c.dtype))
        b, t, _ = x.shape
        if pair_features is not None and (pair_features.shape[-1] != c.pair_bias_features
                                          or pair_features.shape[1] > t):
            raise ValueError(f"pair_features {pair_features.shape} need config.pair_bias_features="
                             f"{pair_features.shape[-1]} (is {c.pair_bias_features}) and at most {t} slots.")
        if cache is None:
            positions = layers.positions_from_mask(valid)
            mask = attention_lib.Mask(jnp.broadcast_to(jnp.arange(t), (b, t)), valid, c.sliding_window, prefix_length)
        else:
            positions = cache.lengths[:, None] + layers.positions_from_mask(valid)
            key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index))
            query_slots = cache.index + jnp.broadcast_to(jnp.arange(t), (b, t))
            prefix_end = None if prefix_length is None else cache.index + prefix_length
            mask = attention_lib.Mask(query_slots, key_valid, c.sliding_window, prefix_end)
        new_keys, new_values, side_states, attentions = [], [], [], []

        def run_layer(layer, x, positions, mask, kv, side, side_state, key, pair_features):
            return layer(x, positions, mask, kv, side, side_state, key, capture, pair_features)

        # Remat wraps the whole block, side branch included; the side branch crosses it as a pytree argument.
        call = layers.remat(run_layer, c.remat)

        def block(layer, carry, index):
            x, side_state = carry
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
            x, _, side_state, _ = call(layer, x, positions, mask, None, side, side_state, key, pair_features)
            return layers.constrain(x, ("batch", None, None)), side_state

        # the scan serves training and prefill; capture reads every block out, so it runs the blocks unrolled
        if c.scan_layers and cache is None and not capture:  # the side state (ICA's mask) is carried along
            x, side_state = scan.scan_modules(self.layers, block, (x, side_state), jnp.arange(c.n_layers))
        else:
            for i, layer in enumerate(self.layers):
                kv = None if cache is None else (cache.keys[i], cache.values[i], cache.index)
                key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
                x, (k, v), side_state, attention = call(layer, x, positions, mask, kv, side, side_state, key,
                                                        pair_features)
                x = layers.constrain(x, ("batch", None, None))
                new_keys.append(k)
                new_values.append(v)
                side_states.append(side_state)
                attentions.append(attention)
        x = self.norm(x)
        if cache is not None:
            cache = KVCache(
                keys=jnp.stack(new_keys),
                values=jnp.stack(new_values),
                valid=key_valid,
                lengths=cache.lengths + valid.sum(-1).astype(jnp.int32),
                index=cache.index + t,
            )
        logits = self.logits(x) if head else x
        if capture:
            return logits, cache, DecoderTrace(tuple(side_states), jnp.stack(attentions))
        return logits, cache
