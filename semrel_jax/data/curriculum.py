"""A curriculum by question kind: the training stream starts with stages drawn from small subsets.

``data.curriculum = ("left_of:3000:2500", "above:3000:2500")``: stage ``kinds:examples:steps`` (kinds joined by
``+``) draws its batches, for ``steps`` steps, only from the first ``examples`` training examples whose ``kind``
(``Source.metadata(i)["kind"]``: llava_json's optional ``kind``/``type`` field, Sort-of-CLEVR's question kinds) is
one of ``kinds``; the stages run in order, then the full stream follows. Steps count toward
``train.num_steps``.

``kinds:examples:steps:loss`` ends the stage early, at the first logging step (``train.log_every``, at least one
interval into the stage) at which the mean answer loss on held-out examples of its kinds is below ``loss``: one
global batch of the examples of those kinds that follow its subset in the training split (``held_out``), never
trained on during the stage. A stage so lasts as long as this seed needs to learn its kinds, at most ``steps``;
its own training loss would not do, since it falls as low when the subset is memorised without the relation
being found (experiments/LOG.md, session 21). The steps at which stages ended are saved with each checkpoint
(``Progress``), so a resumed run follows the same schedule.

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
    """How long each stage actually lasts: its ``steps``, or fewer where its held-out loss ended it (``end``).

    ``ended``: ``{stage index: steps it lasted}``, as saved with a checkpoint (``to_json``/``from_json``).
    """

    def __init__(self, stages: list[Stage], ended: dict[int, int] | None = None):
        self.stages, self.ended = list(stages), dict(ended or {})

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(self.ended.get(i, stage.steps) for i, stage in enumerate(self.stages))

    def deciding(self, step: int, interval_start: int) -> int | None:
        """The stage whose end is decided after ``step`` (steps ``[interval_start, step)`` all came from it, it ends
        on its loss and has steps left), or None."""
        start = 0
        for i, (stage, length) in enumerate(zip(self.stages, self.lengths)):
            if step <= start + length:  # step's last batch came from stage i
                if stage.until_loss is not None and start <= interval_start < step < start + length:
                    return i
                return None
            start += length
        return None

    def end(self, index: int, step: int) -> None:
        """Stage ``index`` lasts up to ``step``: the next stage (or the full stream) takes step ``step`` on."""
        self.ended[index] = step - sum(self.lengths[:index])

    def to_json(self) -> dict:
        return {"curriculum_ended": {str(i): n for i, n in sorted(self.ended.items())}}

    @classmethod
    def from_json(cls, stages: list[Stage], saved: dict) -> "Progress":
        return cls(stages, {int(i): int(n) for i, n in saved.get("curriculum_ended", {}).items()})


class Subset:
    """The first ``stage.examples`` examples of ``source`` whose kind is one of ``stage.kinds``, in order;
    ``held_out`` > 0: the ``held_out`` examples of those kinds that follow them instead."""

    def __init__(self, source, stage: Stage, held_out: int = 0):
        self.source = source
        self.indices = []
        seen = set()
        wanted = stage.examples + held_out
        for i in range(len(source)):
            kind = source.metadata(i).get("kind")
            seen.add(kind)
            if kind in stage.kinds:
                self.indices.append(i)
                if len(self.indices) == wanted:
                    break
        if len(self.indices) < wanted:
            named = sorted(k for k in seen if k is not None)
            what = f"{stage.examples} + {held_out} held out (its loss ends the stage)" if held_out else stage.examples
            raise UserError(
                f"data.curriculum stage {stage}: the training split has {len(self.indices)} examples of kinds "
                f"{list(stage.kinds)}, fewer than {what}; its kinds are {named or 'none (no kind field)'}"
            )
        if held_out:
            self.indices = self.indices[stage.examples:]

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
