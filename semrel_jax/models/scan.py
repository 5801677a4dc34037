"""Run a stack of identically-structured modules as one ``jax.lax.scan`` over their stacked parameters.

An unrolled Python loop over N blocks hands the compiler N copies of the block (a 32-block 7B decoder took
229 s to compile for a TPU slice); a scan hands it one body. The parameters stay stored per block
(``layers/0/...``, ``layers/1/...``: converted checkpoints, exports and saved runs are unchanged) and are
stacked along a new leading axis inside the traced step. The price is that stacked copy: one more buffer of
the blocks' parameters (in their stored dtype) per device while the step runs, and the matching unstack of
their gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def scan_modules(
    modules: Sequence[nnx.Module], fn: Callable[[nnx.Module, Any, Any], Any], carry: Any, xs: Any, *,
    every_carry: bool = False,
) -> Any:
    """``carry = fn(modules[i], carry, xs[i])`` for ``i = 0 .. N-1``, as one scan; returns the final carry.

    ``xs``: a pytree of arrays with leading axis N (e.g. the block index). Every module must have the same
    structure (one graphdef); only their arrays differ. ``every_carry``: returns ``(final carry, carries)``,
    the carry after every step stacked along a leading axis N (one scan where several intermediate results
    are read: the compiler generates the body's kernels once per scan, forward and backward).
    """
    graphdef, first = nnx.split(modules[0])
    states = [first]
    for module in modules[1:]:
        other, state = nnx.split(module)
        if other != graphdef:
            raise ValueError("scan_modules needs modules of one structure (same sub-modules, shapes and settings)")
        states.append(state)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

    def body(carry, slice_):
        state, x = slice_
        carry = fn(nnx.merge(graphdef, state), carry, x)
        return carry, (carry if every_carry else None)

    carry, carries = jax.lax.scan(body, carry, (stacked, xs))
    return (carry, carries) if every_carry else carry
