"""Causal self-attention with padding, by one of three implementations (``model.attention``):

* ``xla``: ``jax.nn.dot_product_attention`` with a dense ``[B, 1, T, S]`` boolean mask; runs everywhere, and
  is the only one used while decoding with a KV cache.
* ``cudnn``: the same call with ``implementation="cudnn"`` (cuDNN's fused flash attention; NVIDIA GPUs,
  bf16/fp16 inputs).
* ``splash``: the Pallas TPU splash-attention kernel (``jax.experimental.pallas.ops.tpu.splash_attention``): a
  block-sparse flash attention that skips the blocks above the causal diagonal and never materialises the
  ``T x S`` scores in HBM. Padding is expressed as segment ids (valid tokens 1, padding 0), grouped-query
  attention by the kernel's own head grouping. Under a mesh it runs per shard (``shard_map`` over the batch
  and head axes), since the SPMD partitioner cannot split a custom kernel.

All three agree on every query that is a real token. A padding query's output differs (the dense mask lets
it see only itself, splash lets it see the padding before it) and is never read: real queries never attend
to padding keys, and the loss ignores padding positions.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from semrel_jax.models import layers, partitioning

Array = jax.Array
IMPLEMENTATIONS = ("xla", "cudnn", "splash")
PLATFORM_OF = {"cudnn": "gpu", "splash": "tpu"}  # what a fused implementation needs; xla runs anywhere
SPLASH_BLOCK = 128  # the kernel's default block; sequences are padded up to a multiple of it


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Mask:
    """Who attends to whom: a query sees the valid keys at slots up to its own (within ``sliding_window``),
    and every valid key at slots before ``prefix_end``.

    query_slots: ``[B, T]`` each query's slot in the key sequence; key_valid: ``[B, S]`` False at padding;
    prefix_end: ``[B]`` or None (causal): the slots before it attend to each other both ways (prefix-LM).
    """

    query_slots: Array
    key_valid: Array
    sliding_window: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    prefix_end: Array | None = None

    def dense(self) -> Array:
        """``[B, 1, T, S]`` booleans (``layers.causal_mask``)."""
        return layers.causal_mask(self.query_slots, self.key_valid, self.sliding_window, self.prefix_end)


_INTERPRET: contextvars.ContextVar[bool] = contextvars.ContextVar("semrel_jax_interpret_kernels", default=False)


@contextlib.contextmanager
def interpret_kernels() -> Iterator[None]:
    """Pallas kernels traced inside run in interpret mode (any backend, slowly): for numerics tests on CPU."""
    token = _INTERPRET.set(True)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


def attend(q: Array, k: Array, v: Array, mask: Mask, implementation: str = "xla", bias: Array | None = None) -> Array:
    """Softmax attention. q ``[B, T, H, hd]``, k/v ``[B, S, K, hd]`` (``H % K == 0``) -> ``[B, T, H, hd]``.

    ``bias``: ``[B, H, T, S]`` added to the scores, or None. ``splash`` needs self-attention without a cache
    (``S == T``, query ``i`` at slot ``i``) and no bias.
    """
    if implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask.dense())
    if implementation == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask.dense(), implementation="cudnn")
    if implementation == "splash":
        if mask.prefix_end is not None:  # the kernel's mask is static per head; a per-row prefix is not
            raise ValueError("The splash kernel runs causal attention only; a bidirectional prompt "
                             "(model.prompt_attention='bidirectional') needs attention 'xla' or 'cudnn'.")
        if bias is not None:
            raise ValueError("The splash kernel takes no attention bias (model.prefix_distance_bias); "
                             "use attention 'xla' or 'cudnn'.")
        return _splash(q, k, v, mask.key_valid, mask.sliding_window)
    raise ValueError(f"Unknown attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}.")


def _splash(q: Array, k: Array, v: Array, valid: Array, sliding_window: int | None) -> Array:
    b, t, h, hd = q.shape
    padded = math.ceil(t / SPLASH_BLOCK) * SPLASH_BLOCK
    pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
    # [B, H, T, hd] as the kernel wants; the scale is applied to q (the kernel does not scale)
    q = jnp.pad(q * (1.0 / math.sqrt(hd)), pad).astype(q.dtype).transpose(0, 2, 1, 3)
    k, v = (jnp.pad(x, pad).transpose(0, 2, 1, 3) for x in (k, v))
    segments = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, padded - t)))
    kernel_fn = functools.partial(_splash_per_shard, sliding_window=sliding_window, interpret=_INTERPRET.get())
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        q_spec, _ = partitioning.logical_to_spec(("batch", "heads", None, None), q.shape, dict(mesh.shape))
        kv_spec, _ = partitioning.logical_to_spec(("batch", "kv_heads", None, None), k.shape, dict(mesh.shape))
        # q heads and kv heads must split alike (each shard keeps whole groups): follow the kv heads
        q_spec = PartitionSpec(q_spec[0], kv_spec[1], None, None)
        kv_spec = PartitionSpec(q_spec[0], kv_spec[1], None, None)
        seg_spec = PartitionSpec(q_spec[0], None)
        kernel_fn = jax.shard_map(
            kernel_fn, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec, check_vma=False
        )
    out = kernel_fn(q, k, v, segments)
    return out.transpose(0, 2, 1, 3)[:, :t]


def _splash_per_shard(q: Array, k: Array, v: Array, segments: Array, *, sliding_window, interpret) -> Array:
    """q ``[b, h, T, hd]``, k/v ``[b, kh, T, hd]``, segments ``[b, T]`` (one shard's) -> ``[b, h, T, hd]``."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    _, h, t, _ = q.shape
    if sliding_window is None:
        head_mask = splash.CausalMask((t, t))
    else:  # query i sees keys i - window + 1 .. i, as layers.causal_mask does
        head_mask = splash.LocalMask((t, t), window_size=(sliding_window - 1, 0), offset=0)
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([head_mask] * h), head_shards=1, q_seq_shards=1, interpret=interpret
    )
    per_example = lambda q, k, v, seg: kernel(q, k, v, splash.SegmentIds(q=seg, kv=seg))  # noqa: E731
    return jax.vmap(per_example)(q, k, v, segments).astype(q.dtype)
