"""A curriculum by question kind: the training stream starts with stages drawn from small subsets.

``data.curriculum = ("left_of:3000:2500", "above:3000:2500")``: stage ``kinds:examples:steps`` (kinds joined by
``+``) draws its batches, for ``steps`` steps, only from the first ``examples`` training examples whose ``kind``
(``Source.metadata(i)["kind"]``: llava_json's optional ``kind``/``type`` field, Sort-of-CLEVR's question kinds) is
one of ``kinds``; the stages run in order, then the full stream follows. Steps count toward
``train.num_steps``.

``kinds:examples:steps:loss`` ends the stage early, at the first logging step (``train.log_every``) whose mean
training loss over the logging interval, all of it inside the stage, is below ``loss``: a stage lasts as long as
this seed needs to leave its plateau, at most ``steps``. The steps at which stages ended are saved with each
checkpoint (``Progress``), so a resumed run follows the same schedule.

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
    steps: int  # at most, when ``until_loss`` is set
    until_loss: float | None = None

    def __str__(self) -> str:
        end = "" if self.until_loss is None else f":{self.until_loss:g}"
        return f"{'+'.join(self.kinds)}:{self.examples}:{self.steps}{end}"


def parse(spec: str) -> Stage:
    """``"left_of+above:3000:2500"`` or ``"left_of+above:3000:6000:0.03"`` -> ``Stage``; ValueError saying what is wrong."""
    parts = str(spec).split(":")
    kinds = tuple(k for k in parts[0].split("+") if k)
    try:
        examples, steps = (int(p) for p in parts[1:3])
        until_loss = float(parts[3]) if len(parts) == 4 else None
    except ValueError:
        examples = steps = 0
        until_loss = None
    if len(parts) not in (3, 4) or not kinds or examples < 1 or steps < 1 or not (until_loss is None or until_loss > 0):
        raise ValueError(f"expected 'kind[+kind...]:examples:steps[:loss]' with examples, steps >= 1 and loss > 0, "
                         f"got {spec!r}")
    return Stage(kinds, examples, steps, until_loss)


class Progress:
    """How long each stage actually lasts: its ``steps``, or fewer where its loss ended it (``observe``).

    ``ended``: ``{stage index: steps it lasted}``, as saved with a checkpoint (``to_json``/``from_json``).
    """

    def __init__(self, stages: list[Stage], ended: dict[int, int] | None = None):
        self.stages, self.ended = list(stages), dict(ended or {})

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(self.ended.get(i, stage.steps) for i, stage in enumerate(self.stages))

    def observe(self, step: int, interval_start: int, loss: float) -> Stage | None:
        """After ``step``: the mean training loss of steps ``[interval_start, step)`` was ``loss``. Returns the stage
        this ends (it lasts up to ``step``; the full stream or the next stage takes step ``step`` on), or None."""
        start = 0
        for i, (stage, length) in enumerate(zip(self.stages, self.lengths)):
            if step <= start + length:  # step's last batch came from stage i
                if (stage.until_loss is not None and i not in self.ended and interval_start >= start
                        and step < start + length and loss < stage.until_loss):
                    self.ended[i] = step - start
                    return stage
                return None
            start += length
        return None

    def to_json(self) -> dict:
        return {"curriculum_ended": {str(i): n for i, n in sorted(self.ended.items())}}

    @classmethod
    def from_json(cls, stages: list[Stage], saved: dict) -> "Progress":
        return cls(stages, {int(i): int(n) for i, n in saved.get("curriculum_ended", {}).items()})


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
