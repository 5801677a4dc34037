"""A curriculum by question kind: the training stream starts with stages drawn from small subsets.

``data.curriculum = ("left_of:3000:2500", "above:3000:2500")``: stage ``kinds:examples:steps`` (kinds joined by
``+``) draws its batches, for ``steps`` steps, only from the first ``examples`` training examples whose ``kind``
(``Source.metadata(i)["kind"]``: llava_json's optional ``kind``/``type`` field, Sort-of-CLEVR's question kinds) is
one of ``kinds``; the stages run in order, then the full stream follows. Steps count toward
``train.num_steps``.

Why small subsets: a relation such as "is X left of Y" is symmetric in the two named objects until the reader
tells them apart, and sits at a saddle (loss ln 2) on the full set; memorising a few thousand examples breaks
the symmetry and the comparison built doing so generalises (experiments/LOG.md, sessions 11-12).

Still indexable by step (``dataset[s]`` is step ``s``'s batch): resuming at any step, inside a stage or after,
is exact.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import grain

from semrel_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Stage:
    kinds: tuple[str, ...]
    examples: int
    steps: int

    def __str__(self) -> str:
        return f"{'+'.join(self.kinds)}:{self.examples}:{self.steps}"


def parse(spec: str) -> Stage:
    """``"left_of+above:3000:2500"`` -> ``Stage``; ValueError saying what is wrong."""
    parts = str(spec).split(":")
    kinds = tuple(k for k in parts[0].split("+") if k)
    try:
        examples, steps = (int(p) for p in parts[1:])
    except ValueError:
        examples = steps = 0
    if len(parts) != 3 or not kinds or examples < 1 or steps < 1:
        raise ValueError(f"expected 'kind[+kind...]:examples:steps' with examples, steps >= 1, got {spec!r}")
    return Stage(kinds, examples, steps)


class Subset:
    """The first ``stage.examples`` examples of ``source`` whose kind is one of ``stage.kinds``, in order."""

    def __init__(self, source, stage: Stage):
        self.source = source
        self.indices = []
        seen = set()
        for i in range(len(source)):
            kind = source.metadata(i).get("kind")
            seen.add(kind)
            if kind in stage.kinds:
                self.indices.append(i)
                if len(self.indices) == stage.examples:
                    break
        if len(self.indices) < stage.examples:
            named = sorted(k for k in seen if k is not None)
            raise UserError(
                f"data.curriculum stage {stage}: the training split has {len(self.indices)} examples of kinds "
                f"{list(stage.kinds)}, fewer than {stage.examples}; its kinds are {named or 'none (no kind field)'}"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[self.indices[index]]


class _Schedule:
    """Step ``s``'s batch: from the stage whose steps hold ``s``, then from ``rest`` (``rest[s - stage steps]``)."""

    def __init__(self, stages: list[tuple[grain.MapDataset, int]], rest: grain.MapDataset):
        self.stages, self.rest = stages, rest

    def __len__(self) -> int:
        return sys.maxsize  # infinite, as the repeated stream it ends in

    def __getitem__(self, step: int):
        for batches, steps in self.stages:
            if step < steps:
                return batches[step]
            step -= steps
        return self.rest[step]


def staged(stages: list[tuple[grain.MapDataset, int]], rest: grain.MapDataset) -> grain.MapDataset:
    """``stages``: ``(batches, steps)`` in order, each an infinite stream of batches; ``rest``: the full stream."""
    return grain.MapDataset.source(_Schedule(stages, rest))
