"""Inheritable cross-attention (ICA), the LSRM injection of visual memory into every LLM block.

For one block, with ``q = norm_ffn(h)`` and the shared memory ``K = X_v + P_k``, ``V = X_v + P_v``:

    alpha  = SiLU(q Kᵀ)                                 # no softmax, no 1/sqrt(d)   [B, T, N_mem]
             (model.ica.read='softmax': softmax(q Kᵀ / sqrt(d)) over the slots, an option beside the paper's read)
    thr    = sort(alpha, -1)[..., floor(delta·N_mem)]   # per text token, THIS block's unmasked alpha
    M     <- M * where(alpha < thr, lam, 1)             # the mask is inherited block to block
    out    = dropout(M * alpha) V

so a (token, slot) pair that scores low in k blocks is down-weighted by lam**k. ``M`` starts as
ones at the first block of every forward pass. Because every quantity above is computed from the
token's own row, a token decoded with a KV cache gets exactly the mask it would get in a full
forward pass: generation needs no mask state beyond the current tokens.

In the decoder ICA is a side branch (``semrel_jax.models.llama.SideBranch``): ``InheritableCrossAttention``
computes ``s·ICA(u)`` next to each block's FFN, and ``M`` is the state the decoder carries from block to block.
With ``capture=True`` (static) the carried state is a ``BlockWeights`` holding this block's ``alpha`` beside
``M``, so the decoder's per-block trace yields both; off, the state is ``M`` alone and nothing extra is traced.

The release's setup code never forwards delta/lam (a no-op mask); here they are always applied
when masking is enabled (``model.ica.release_noop_mask=True`` builds this config with delta=0, lam=1 to
reproduce the release as published). Enabling is a traced boolean so that switching it on mid-training (the
"shift epoch") does not recompile the step.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from semrel_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ICAConfig:
    """Static hyper-parameters of the inheritable cross-attention."""

    scale: float = 0.1  # s in  out = h + FFN(x) + s·ICA(x)
    delta: float = 0.3  # fraction of each row treated as low-correlation
    lam: float = 0.85  # decay multiplied into M for low-correlation pairs
    dropout: float = 0.1
    # How alpha is read from the scores: 'silu' (the paper: SiLU(q Kᵀ), unnormalised) or 'softmax'
    # (softmax(q Kᵀ / sqrt(d)) over the slots, as in ordinary attention: each token's weights sum to 1,
    # which lets one slot win outright, e.g. the object a "closest to X" question points at).
    read: str = "silu"


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Memory:
    """Visual memory shared by every block of one forward pass.

    keys, values: ``[B, N_mem, d_llm]`` (``X_v + P_k`` and ``X_v + P_v``).
    mask_enabled: scalar bool, whether the inheritance mask is applied in this pass.
    """

    keys: Array
    values: Array
    mask_enabled: Array


def low_correlation_threshold(alpha: Array, delta: float) -> Array:
    """Per-row threshold ``[..., 1]``: the value at ascending sorted index floor(delta·N)."""
    n = alpha.shape[-1]
    index = min(int(math.floor(delta * n)), n - 1)
    return jnp.sort(alpha, axis=-1)[..., index : index + 1]


def inheritable_cross_attention(
    query: Array,
    memory: Memory,
    inherited_mask: Array,
    config: ICAConfig,
    dropout_key: Array | None = None,
    *,
    return_alpha: bool = False,
) -> tuple[Array, Array] | tuple[Array, Array, Array]:
    """One block's ICA.

    Args:
      query: ``[B, T, d]`` normalised FFN input of this block.
      memory: the shared visual memory.
      inherited_mask: ``[B, T, N_mem]`` mask from the previous block (ones at block 0).
      config: static hyper-parameters.
      dropout_key: PRNG key, or None for deterministic evaluation.

    Returns:
      ``(out [B, T, d] already multiplied by config.scale, new_mask [B, T, N_mem])``, and with
      ``return_alpha`` also ``alpha [B, T, N_mem]`` (float32, before the mask).
    """
    keys = memory.keys.astype(query.dtype)
    values = memory.values.astype(query.dtype)
    # Accumulate the scores in float32: with no softmax, alpha's magnitude carries the signal.
    scores = jnp.einsum("btd,bnd->btn", query, keys, preferred_element_type=jnp.float32)
    if config.read == "softmax":
        alpha = jax.nn.softmax(scores / math.sqrt(query.shape[-1]), axis=-1)
    else:
        alpha = jax.nn.silu(scores)
    if config.delta > 0.0 and config.lam != 1.0:
        threshold = jax.lax.stop_gradient(low_correlation_threshold(alpha, config.delta))
        low = (alpha < threshold) & memory.mask_enabled
        mask = inherited_mask * jnp.where(low, jnp.float32(config.lam), jnp.float32(1.0))
    else:
        mask = inherited_mask
    weights = layers.dropout(mask * alpha, config.dropout, dropout_key).astype(query.dtype)
    out = jnp.einsum("btn,bnd->btd", weights, values)
    if return_alpha:
        return config.scale * out, mask, alpha
    return config.scale * out, mask


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BlockWeights:
    """The state ICA carries with ``capture=True``: ``alpha`` ``[B, T, N_mem]`` of the block that produced it
    and the inherited mask ``M`` ``[B, T, N_mem]`` after that block (the one the next block starts from)."""

    alpha: Array
    mask: Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["memory"], meta_fields=["config", "capture"])
@dataclasses.dataclass(frozen=True)
class InheritableCrossAttention:
    """ICA as the decoder's side branch: ``(u, M, key) -> (s·ICA(u, memory, M), M')``.

    A pytree (the config and ``capture`` static) so that it crosses the decoder's remat as an argument.
    ``capture``: carry ``BlockWeights`` (this block's alpha and M') instead of ``M`` alone.
    """

    memory: Memory
    config: ICAConfig
    capture: bool = False

    def initial_mask(self, length: int) -> Array:
        """The mask ``M`` entering block 0: ones ``[B, T, N_mem]`` for ``T = length`` text tokens."""
        batch, slots = self.memory.keys.shape[:2]
        return jnp.ones((batch, length, slots), jnp.float32)

    def initial_state(self, length: int) -> Array | BlockWeights:
        """The state entering block 0: ``M`` = ones, wrapped in ``BlockWeights`` (alpha zeros) with capture."""
        mask = self.initial_mask(length)
        return BlockWeights(alpha=jnp.zeros_like(mask), mask=mask) if self.capture else mask

    def __call__(
        self, query: Array, state: Array | BlockWeights, dropout_key: Array | None
    ) -> tuple[Array, Array | BlockWeights]:
        if not self.capture:
            return inheritable_cross_attention(query, self.memory, state, self.config, dropout_key)
        out, mask, alpha = inheritable_cross_attention(
            query, self.memory, state.mask, self.config, dropout_key, return_alpha=True
        )
        return out, BlockWeights(alpha=alpha, mask=mask)
