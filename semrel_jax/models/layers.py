"""Small building blocks shared by the networks: norms, rotary embeddings, dropout, attention masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from semrel_jax.models import partitioning

Array = jax.Array


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale (``weight``, as in HF Llama).

    The statistics are computed in float32 whatever the compute dtype, as the
    reference implementations do; bf16 variance loses too much precision.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32.astype(dtype)) * self.weight[...].astype(dtype)


def rope_frequencies(
    head_dim: int,
    theta: float,
    scaling: str = "none",
    factor: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_position: int = 8192,
) -> Array:
    """Inverse frequencies ``[head_dim // 2]`` of rotary embeddings.

    scaling: 'none'; 'linear' (positions divided by ``factor``); 'llama3' (LLaMA-3.1's
    wavelength-dependent rescaling: long wavelengths divided by ``factor``, short ones kept,
    a smooth blend in between, so the model extends its context without retraining).
    """
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling == "none":
        return inv_freq
    if scaling == "linear":
        return inv_freq / factor
    if scaling != "llama3":
        raise ValueError(f"Unknown rope scaling {scaling!r}; expected 'none', 'linear' or 'llama3'.")
    wavelength = 2 * jnp.pi / inv_freq
    low_freq_wavelength = original_max_position / low_freq_factor
    high_freq_wavelength = original_max_position / high_freq_factor
    scaled = jnp.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    smooth = (original_max_position / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1.0 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return jnp.where(medium, blended, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotates ``x [B, T, heads, head_dim]`` by ``positions [B, T]``.

    Uses the "rotate half" layout of HF Llama (first half / second half of the head
    dimension form the complex pairs), so converted checkpoints need no permutation.
    """
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; ``key=None`` means deterministic (evaluation).

    Taking the key explicitly keeps modules pure functions of (params, inputs, key),
    which is what the jitted train step needs.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def causal_mask(
    query_slots: Array, key_valid: Array, sliding_window: int | None = None, prefix_end: Array | None = None
) -> Array:
    """Boolean attention mask ``[B, 1, T, S]``.

    Args:
      query_slots: ``[B, T]`` absolute slot index of each query in the key sequence.
      key_valid: ``[B, S]`` True where the key slot holds a real (non-padding) token.
      sliding_window: if set, a query sees only the last ``sliding_window`` slots (itself included),
        as in Mistral. Slots, not token positions: with left padding the two differ only for
        padding keys, which are masked anyway.
      prefix_end: ``[B]`` optional; every query also sees the keys at slots ``< prefix_end`` (a prefix-LM, as
        PaliGemma: the slots before ``prefix_end`` attend to each other both ways, later ones causally).

    A query sees keys at slots ``<=`` its own that are valid. A padding query would see
    nothing; it is allowed to see itself so its (ignored) softmax row stays finite.
    """
    key_slots = jnp.arange(key_valid.shape[1])
    visible = key_slots[None, None, :] <= query_slots[:, :, None]
    if sliding_window is not None:
        visible &= key_slots[None, None, :] > query_slots[:, :, None] - sliding_window
    if prefix_end is not None:
        visible |= key_slots[None, None, :] < prefix_end[:, None, None]
    visible &= key_valid[:, None, :] | (key_slots[None, None, :] == query_slots[:, :, None])
    return visible[:, None, :, :]


def positions_from_mask(valid: Array) -> Array:
    """Token positions ``[B, T]`` counting only valid tokens (left or right padding alike)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def activation(name: str):
    """Maps a config string to an activation function."""
    table = {
        "silu": jax.nn.silu,
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    }
    if name not in table:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(table)}.")
    return table[name]


REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def remat(fn, policy: str):
    """``fn(module, *args)`` rematerialised in the backward pass by a named policy (``jax.checkpoint``).

    none: keep every activation; full: keep only the block inputs, recompute the rest; dots: keep matmul
    outputs, recompute elementwise ops; dots_no_batch: keep only matmuls without batch dimensions (the
    projections, not attention scores) — the usual memory/compute trade-offs for big models.
    """
    if policy == "none":
        return fn
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    if policy not in policies:
        raise ValueError(f"Unknown remat policy {policy!r}; expected one of {REMAT_POLICIES}.")

    def rematerialised(module, *args):
        # A pure function of the module's state: frozen parameters traced at an outer level (they are
        # not differentiated) are read, never written back, which nnx.remat would attempt.
        graphdef, state = nnx.split(module)

        def pure(state, *args):
            return fn(nnx.merge(graphdef, state), *args)

        return jax.checkpoint(pure, policy=policies[policy])(state, *args)

    return rematerialised


def constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
    """Pins ``x``'s sharding by logical axis names when a mesh is set; a no-op otherwise.

    The logical -> mesh axis rules are the parameters' (one table, ``semrel_jax.models.partitioning``;
    the caller sets them around tracing with ``partitioning.axis_rules``). Kept here for the model code.
    """
    return partitioning.constrain(x, axes)
