"""Deterministic, procedural Sort-of-CLEVR generator.

Sort-of-CLEVR is the toy visual question answering task introduced in

    Santoro, Raposo, Barrett, Malinowski, Pascanu, Battaglia, Lillicrap.
    "A simple neural network module for relational reasoning", NeurIPS 2017.
    arXiv:1706.01427.

Each image is ``image_size x image_size`` (75 by default) RGB on a black
background and holds six objects, one per colour in :data:`COLORS`. Each object
is a square or a circle, drawn uniformly at random. Every image comes with
questions about one colour-identified object: half non-relational (shape,
horizontal position, vertical position) and half relational (shape of the
closest object, shape of the furthest object, number of objects with the same
shape).

Choices the paper leaves open, fixed here:

* **Geometry.** Centres are integer pixel coordinates ``(x, y)`` with ``x`` the
  column and ``y`` the row. A square covers pixels ``[c - s, c + s)`` on both
  axes (side ``2 s``); a circle covers pixels within Euclidean distance ``s``
  of the centre (``dx**2 + dy**2 <= s**2``). Every object lies fully inside
  the image.
* **No overlap.** Each object is bounded by the closed box ``[c - s, c + s]``;
  boxes of different objects must be at least one pixel apart (so objects
  never share or touch pixels). Centres violating this are rejected and
  resampled.
* **Left / top rule.** An object is on the *left* iff ``x < W / 2`` and on the
  *top* iff ``y < H / 2``; otherwise it is on the right / bottom.
* **Count excludes self.** "how many other objects have the same shape as the
  {c} object?" counts the *other* objects only, so answers range over
  ``'0'..'5'`` (as in the widely used reference implementation).
* **Tie rejection.** "Closest" and "furthest" use the Euclidean distance
  between centres. Scenes in which any object's nearest or farthest other
  object is not unique are rejected and resampled, so these questions never
  have ambiguous answers. Centres are integers, so squared distances are
  integers and ties are detected exactly (equivalent to any tolerance below
  ``1 / (2 * max_distance)``, e.g. 1e-9).

Determinism and random access: everything about image ``i`` of a split is a
pure function of ``(seed, split, i)``, via
``numpy.random.default_rng([seed, split_id, i])``. The scene is drawn first,
then the questions from the same generator. Hence any example can be produced
independently of all others (suitable for a grain ``RandomAccessDataSource``
and for multiprocess data loading).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from semrel_jax import errors
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.images import as_index
from semrel_jax.evaluation import vqa

COLORS: tuple[str, ...] = ("red", "green", "blue", "orange", "gray", "yellow")
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 165, 0),
    "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}
SHAPES: tuple[str, ...] = ("square", "circle")
NON_RELATIONAL_KINDS: tuple[str, ...] = ("shape", "horizontal", "vertical")
RELATIONAL_KINDS: tuple[str, ...] = ("closest", "furthest", "count")
IMAGE_SIZE: int = 75
OBJECT_SIZE: int = 5

SPLITS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}

NUM_OBJECTS: int = len(COLORS)

# Rejection-sampling budgets. They are generous for any feasible configuration
# (at the defaults a scene needs only a handful of draws); they exist so that a
# nearly infeasible configuration fails loudly instead of looping forever.
_MAX_TRIES_PER_OBJECT = 1_000
_MAX_SCENE_RESTARTS = 10_000

_QUESTION_TEMPLATES: dict[str, str] = {
    "shape": "what is the shape of the {c} object?",
    "horizontal": "is the {c} object on the left or the right?",
    "vertical": "is the {c} object on the top or the bottom?",
    "closest": "what is the shape of the object closest to the {c} object?",
    "furthest": "what is the shape of the object furthest from the {c} object?",
    "count": "how many other objects have the same shape as the {c} object?",
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """One Sort-of-CLEVR scene.

    Attributes:
      centers: int array [6, 2] of (x, y) = (column, row); row i is COLORS[i].
      shapes: length-6 tuple; shapes[i] is the shape of COLORS[i].
      image_size: image height and width in pixels.
      object_size: half-side of squares / radius of circles in pixels.
    """

    centers: np.ndarray
    shapes: tuple[str, ...]
    image_size: int
    object_size: int


@dataclasses.dataclass(frozen=True)
class Question:
    """A question about one scene, with its ground-truth single-word answer."""

    text: str
    answer: str
    family: str  # 'non_relational' | 'relational'
    kind: str  # one of NON_RELATIONAL_KINDS + RELATIONAL_KINDS
    color: str


def _check_sizes(image_size: int, object_size: int) -> None:
    """Raises ValueError unless six objects can be placed without overlap."""
    if int(image_size) != image_size or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if int(object_size) != object_size or object_size <= 0:
        raise ValueError(f"object_size must be a positive int, got {object_size!r}")
    # Centres range over [s, W-1-s]; two boxes need centres >= 2s+2 apart on
    # some axis. A regular grid with that pitch is a witness of feasibility.
    span = image_size - 1 - 2 * object_size
    slots_per_axis = span // (2 * object_size + 2) + 1 if span >= 0 else 0
    if slots_per_axis**2 < NUM_OBJECTS:
        raise ValueError(
            f"cannot place {NUM_OBJECTS} non-overlapping objects of size "
            f"{object_size} in a {image_size}x{image_size} image"
        )


def _has_distance_ties(centers: np.ndarray) -> bool:
    """True if some object's nearest or farthest other object is not unique.

    Args:
      centers: int array [N, 2].
    """
    c = centers.astype(np.int64)
    diff = c[:, None, :] - c[None, :, :]
    # Integer squared distances: ties are exact, no tolerance needed.
    d2 = (diff**2).sum(-1)
    n = len(c)
    for i in range(n):
        others = np.delete(d2[i], i)
        if np.count_nonzero(others == others.min()) > 1:
            return True
        if np.count_nonzero(others == others.max()) > 1:
            return True
    return False


def generate_scene(
    rng: np.random.Generator,
    image_size: int = IMAGE_SIZE,
    object_size: int = OBJECT_SIZE,
) -> Scene:
    """Samples a scene: 6 non-overlapping objects, no distance ties.

    Centres are placed one object at a time by rejection (uniform over valid
    in-image positions, conditioned on keeping a 1px gap to earlier objects);
    the whole layout is redrawn if an object jams or distances tie. Shapes are
    drawn afterwards since the conservative bounding box does not depend on
    them.

    Args:
      rng: source of randomness (consumed).
      image_size: image height/width.
      object_size: square half-side / circle radius.

    Returns:
      A Scene with centers int64 [6, 2].

    Raises:
      ValueError: if the configuration is infeasible.
      RuntimeError: if sampling fails within the rejection budget.
    """
    _check_sizes(image_size, object_size)
    s = object_size
    min_sep = 2 * s + 2  # closed boxes [c-s, c+s] plus one empty pixel between
    lo, hi = s, image_size - 1 - s  # inclusive centre range
    for _ in range(_MAX_SCENE_RESTARTS):
        centers: list[tuple[int, int]] = []
        for _ in range(NUM_OBJECTS):
            for _ in range(_MAX_TRIES_PER_OBJECT):
                x, y = (int(v) for v in rng.integers(lo, hi + 1, size=2))
                if all(abs(x - px) >= min_sep or abs(y - py) >= min_sep for px, py in centers):
                    centers.append((x, y))
                    break
            else:
                break  # jammed: restart the layout
        if len(centers) < NUM_OBJECTS:
            continue
        arr = np.asarray(centers, dtype=np.int64)
        if _has_distance_ties(arr):
            continue
        shape_ids = rng.integers(0, len(SHAPES), size=NUM_OBJECTS)
        arr.setflags(write=False)  # Scene is frozen; keep its array immutable too
        return Scene(
            centers=arr,
            shapes=tuple(SHAPES[int(k)] for k in shape_ids),
            image_size=int(image_size),
            object_size=int(object_size),
        )
    raise RuntimeError(
        f"failed to sample a scene (image_size={image_size}, object_size={object_size}) "
        f"after {_MAX_SCENE_RESTARTS} restarts"
    )


def render(scene: Scene) -> np.ndarray:
    """Draws the scene.

    Returns:
      uint8 [H, W, 3] image, black background.
    """
    size, s = scene.image_size, scene.object_size
    img = np.zeros((size, size, 3), dtype=np.uint8)
    # Local offsets for the circle mask over the closed box [-s, s].
    off = np.arange(-s, s + 1)
    disk = off[:, None] ** 2 + off[None, :] ** 2 <= s * s  # [2s+1, 2s+1], (dy, dx)
    for color, (x, y), shape in zip(COLORS, scene.centers.tolist(), scene.shapes):
        rgb = np.asarray(COLOR_RGB[color], dtype=np.uint8)
        if shape == "square":
            img[y - s : y + s, x - s : x + s] = rgb
        elif shape == "circle":
            img[y - s : y + s + 1, x - s : x + s + 1][disk] = rgb
        else:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return img


def _color_index(color: str) -> int:
    try:
        return COLORS.index(color)
    except ValueError:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}") from None


def answer(scene: Scene, kind: str, color: str) -> str:
    """Ground-truth answer to question `kind` about the `color` object."""
    i = _color_index(color)
    x, y = (int(v) for v in scene.centers[i])
    if kind == "shape":
        return scene.shapes[i]
    if kind == "horizontal":
        return "left" if x < scene.image_size / 2 else "right"
    if kind == "vertical":
        return "top" if y < scene.image_size / 2 else "bottom"
    if kind in ("closest", "furthest"):
        c = scene.centers.astype(np.int64)
        d2 = ((c - c[i]) ** 2).sum(-1)
        others = [j for j in range(len(c)) if j != i]
        pick = min if kind == "closest" else max
        # Unique by construction (generate_scene rejects ties).
        j = pick(others, key=lambda k: int(d2[k]))
        return scene.shapes[j]
    if kind == "count":
        same = sum(1 for j, sh in enumerate(scene.shapes) if j != i and sh == scene.shapes[i])
        return str(same)
    raise ValueError(
        f"unknown question kind {kind!r}; expected one of "
        f"{NON_RELATIONAL_KINDS + RELATIONAL_KINDS}"
    )


def question_text(kind: str, color: str) -> str:
    """Lowercase question text ending in '?'."""
    _color_index(color)
    try:
        template = _QUESTION_TEMPLATES[kind]
    except KeyError:
        raise ValueError(
            f"unknown question kind {kind!r}; expected one of {tuple(_QUESTION_TEMPLATES)}"
        ) from None
    return template.format(c=color)


def _family(kind: str) -> str:
    if kind in NON_RELATIONAL_KINDS:
        return "non_relational"
    if kind in RELATIONAL_KINDS:
        return "relational"
    raise ValueError(f"unknown question kind {kind!r}")


def make_question(scene: Scene, kind: str, color: str) -> Question:
    """Builds the Question (text and answer) for `kind` about `color`."""
    return Question(
        text=question_text(kind, color),
        answer=answer(scene, kind, color),
        family=_family(kind),
        kind=kind,
        color=color,
    )


def answer_space() -> dict[str, tuple[str, ...]]:
    """Maps each question kind to its possible answers."""
    return {
        "shape": SHAPES,
        "horizontal": ("left", "right"),
        "vertical": ("top", "bottom"),
        "closest": SHAPES,
        "furthest": SHAPES,
        "count": tuple(str(k) for k in range(NUM_OBJECTS)),
    }


def tokenize(text: str) -> list[str]:
    """Whitespace tokenization with '?' as its own token."""
    return text.replace("?", " ?").split()


def vocabulary() -> list[str]:
    """Sorted list of every token that can occur in any question or answer."""
    words: set[str] = set()
    for kind in _QUESTION_TEMPLATES:
        for color in COLORS:
            words.update(tokenize(question_text(kind, color)))
    for answers in answer_space().values():
        for a in answers:
            words.update(tokenize(a))
    return sorted(words)


def split_id(split: str) -> int:
    """Fixed integer id of a split name, used in the RNG seed."""
    try:
        return SPLITS[split]
    except (KeyError, TypeError):
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}") from None


class SortOfClevr:
    """Random-access Sort-of-CLEVR source (usable as a grain RandomAccessDataSource).

    Example ``i`` is question ``i % questions_per_image`` of image
    ``i // questions_per_image``. Per image, the first half of the questions
    are non-relational and the second half relational; each question's colour
    and kind are drawn from the image's generator after the scene.
    """

    # Rendered images are kept up to 192 MiB (11,900 images of 75 px: the default 10,000 training images hold
    # 169 MB): a shuffled stream meets each image every ~10,000 examples, and rendering it again (~65 us) was a
    # fifth of the input pipeline's time
    _IMAGE_CACHE_BYTES = 192 << 20
    # Scenes and questions (~5 KB per image) are kept for up to 50k images (~270 MB): drawing a scene
    # (rejection sampling) costs ~10x rendering it, and an epoch visits each image questions_per_image times.
    _SCENE_CACHE_SIZE = 50_000

    def __init__(
        self,
        split: str,
        num_images: int,
        seed: int = 0,
        questions_per_image: int = 20,
        image_size: int = IMAGE_SIZE,
        object_size: int = OBJECT_SIZE,
    ) -> None:
        self._split_id = split_id(split)
        if int(num_images) != num_images or num_images <= 0:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if int(seed) != seed or seed < 0:
            # SeedSequence only accepts non-negative integers.
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if (
            int(questions_per_image) != questions_per_image
            or questions_per_image <= 0
            or questions_per_image % 2
        ):
            raise ValueError(
                f"questions_per_image must be a positive even int, got {questions_per_image!r}"
            )
        _check_sizes(image_size, object_size)
        self.split = split
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.questions_per_image = int(questions_per_image)
        self.image_size = int(image_size)
        self.object_size = int(object_size)
        # image_index -> (read-only image, questions). A plain dict keeps the
        # object picklable; it is dropped on pickling (see __getstate__).
        self._cache: dict[int, tuple[np.ndarray, list[Question]]] = {}
        self._scenes: dict[int, tuple[Scene, list[Question]]] = {}

    def __len__(self) -> int:
        return self.num_images * self.questions_per_image

    def __repr__(self) -> str:
        return (
            f"SortOfClevr(split={self.split!r}, num_images={self.num_images}, seed={self.seed}, "
            f"questions_per_image={self.questions_per_image}, image_size={self.image_size}, "
            f"object_size={self.object_size})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}  # workers rebuild cheaply; keeps pickles small
        state["_scenes"] = {}
        return state

    def _check_image_index(self, image_index: Any) -> int:
        i = as_index(image_index)
        if not 0 <= i < self.num_images:
            raise IndexError(f"image_index {i} out of range [0, {self.num_images})")
        return i

    def _generate(self, image_index: int) -> tuple[Scene, list[Question]]:
        hit = self._scenes.get(image_index)
        if hit is None:
            hit = self._draw(image_index)
            if len(self._scenes) < self._SCENE_CACHE_SIZE:
                self._scenes[image_index] = hit
        return hit

    def _draw(self, image_index: int) -> tuple[Scene, list[Question]]:
        rng = np.random.default_rng([self.seed, self._split_id, image_index])
        scene = generate_scene(rng, self.image_size, self.object_size)
        half = self.questions_per_image // 2
        questions: list[Question] = []
        for kinds in (NON_RELATIONAL_KINDS, RELATIONAL_KINDS):
            color_ids = rng.integers(0, NUM_OBJECTS, size=half)
            kind_ids = rng.integers(0, len(kinds), size=half)
            for ci, ki in zip(color_ids, kind_ids):
                questions.append(make_question(scene, kinds[int(ki)], COLORS[int(ci)]))
        return scene, questions

    def scene(self, image_index: int) -> Scene:
        """The scene of image `image_index`."""
        return self._generate(self._check_image_index(image_index))[0]

    def questions(self, image_index: int) -> list[Question]:
        """All questions of image `image_index` (non-relational first); never renders the image."""
        i = self._check_image_index(image_index)
        hit = self._cache.get(i)
        return list(hit[1] if hit is not None else self._generate(i)[1])

    def _cached(self, image_index: int) -> tuple[np.ndarray, list[Question]]:
        hit = self._cache.get(image_index)
        if hit is not None:
            return hit
        scene, questions = self._generate(image_index)
        image = render(scene)
        image.setflags(write=False)
        if len(self._cache) >= max(32, self._IMAGE_CACHE_BYTES // image.nbytes):
            # FIFO eviction
            self._cache.pop(next(iter(self._cache)), None)
        self._cache[image_index] = (image, questions)
        return image, questions

    def _locate(self, index: Any) -> tuple[int, int]:
        i = as_index(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range [0, {len(self)})")
        return divmod(i, self.questions_per_image)

    def metadata(self, index: int) -> dict[str, Any]:
        """Question ``index``: 'question', 'answer', 'family', 'kind' (what a prediction is scored with)."""
        image_index, q = self._locate(index)
        question = self.questions(image_index)[q]
        return {"question": question.text, "answer": question.answer, "family": question.family, "kind": question.kind}

    def texts(self) -> Iterator[str]:
        """Every question and answer the generator can produce (the whole vocabulary, without a scan)."""
        for kind in _QUESTION_TEMPLATES:
            for color in COLORS:
                yield question_text(kind, color)
        for answers in answer_space().values():
            yield from answers

    def scoring_data(self) -> dict[str, Any]:
        return {}

    def image_groups(self, size: int) -> np.ndarray:
        """``[len / size, size]`` example indices, each row ``size`` questions of one image."""
        if size < 1 or self.questions_per_image % size:
            raise ValueError(
                f"Groups of {size} questions must divide the {self.questions_per_image} questions per image."
            )
        return np.arange(len(self)).reshape(-1, size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns one example.

        Returns:
          dict with 'image' (uint8 [H, W, 3], a fresh writable array),
          'question', 'answer', 'family', 'kind' (str), 'image_index', 'index'
          (int).
        """
        image_index, q = self._locate(index)
        i = image_index * self.questions_per_image + q
        image, questions = self._cached(image_index)
        question = questions[q]
        return {
            "image": image.copy(),
            "question": question.text,
            "answer": question.answer,
            "family": question.family,
            "kind": question.kind,
            "image_index": image_index,
            "index": i,
        }


# ---------------------------------------------------------------------------------------------- the dataset


def validate_images(c: ml_collections.ConfigDict) -> None:
    """The checks of the keys every generated Sort-of-CLEVR source reads (the captions source too)."""
    for key in ("data.train_images", "data.eval_images"):
        errors.positive_int(c, key)
    for key in ("data.train_split", "data.eval_split"):
        errors.one_of(c, key, ("",) + tuple(SPLITS))


def _validate(c: ml_collections.ConfigDict) -> None:
    validate_images(c)
    errors.positive_int(c, "data.questions_per_image")
    mix = c.data.caption_mix
    errors.check(
        isinstance(mix, (int, float)) and not isinstance(mix, bool) and 0.0 <= mix < 1.0,
        "data.caption_mix", f"expected a fraction 0 <= caption_mix < 1, got {mix!r}",
    )
    group = c.data.examples_per_image
    errors.check(not (mix and group > 1), "data.caption_mix", "mixing in scene descriptions needs data.examples_per_image=1")
    errors.check(
        group <= 1 or c.data.questions_per_image % group == 0,
        "data.examples_per_image", f"must divide data.questions_per_image={c.data.questions_per_image}, got {group}",
    )


def _build(c: ml_collections.ConfigDict) -> tuple[SortOfClevr, SortOfClevr]:
    """Train on "train", evaluate on "test"; ``data.eval_split='train'`` evaluates on the first
    ``eval_images`` training images (does the model fit what it was trained on, or fail to generalise?)."""
    d = c.data
    kw = dict(seed=c.seed, questions_per_image=d.questions_per_image, object_size=d.object_size)
    train, evaluation = DATASET.split_names(d)
    return SortOfClevr(train, d.train_images, **kw), SortOfClevr(evaluation, d.eval_images, **kw)


def record_settings(c: ml_collections.ConfigDict) -> dict:
    """The settings of the generated Sort-of-CLEVR images (shared by the captions source)."""
    d = c.data
    train, evaluation = DATASET.split_names(d)
    return dict(seed=c.seed, train_images=d.train_images, eval_images=d.eval_images, object_size=d.object_size,
                train_split=train, eval_split=evaluation)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    """Exact match per family and kind, beside the majority answer per kind of the training questions."""
    del eval_source
    train_answers = (train_source.metadata(i) for i in range(len(train_source)))
    return vqa.accuracy_report(rows, vqa.majority_answers(train_answers))


DATASET = Dataset(
    name="sort_of_clevr",
    defaults=dict(train_images=10_000, eval_images=500, questions_per_image=20, object_size=OBJECT_SIZE,
                  caption_mix=0.6, caption_kinds=("objects",)),
    build=_build,
    record_settings=lambda c: {**record_settings(c), "questions_per_image": c.data.questions_per_image},
    score=_score,
    validate=_validate,
    prompt_formats=("qa", "raw", "chat"),
    # LLaVA's caption alignment as a mixture: a data.caption_mix fraction of the training examples are scene
    # descriptions of the same training images (of the data.caption_kinds kinds, equally often).
    mix=("sort_of_clevr_captions", lambda c: c.data.caption_mix),
    groups_by_image=True,
)
