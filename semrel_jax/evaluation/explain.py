"""What the model looked at for each token it generated: ICA weights alpha and inherited masks M per block (or,
for the prefix preset, attention over the image tokens), mapped back onto each encoder's patch grid, or for an
object-token encoder onto the pixels of each object.

Generation runs as in evaluation (KV cache, greedy / sampling / beam search); the readouts come from one
teacher-forced ``capture=True`` pass over ``prompt + generated`` with the inference semantics of decoding (mask
on, no dropout), which equals cached decoding (``tests/test_models.py``). Generated token ``i`` was chosen from
the output at the position before it (the last prompt token for ``i = 0``), so its row of alpha / M is that
position's: what the model read while choosing it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.errors import UserError
from semrel_jax.method.vlm import SlotGroup


@dataclasses.dataclass
class Explanation:
    """One example's readouts for its ``n`` generated tokens (up to its first EOS, at least one).

    readouts: name -> ``[L, n, N]`` per block and token: ``alpha`` and ``mask`` over the ``N_mem`` memory slots
    (``ica``) or ``attention`` over the ``N_vis`` image tokens (``prefix``).
    """

    image: np.ndarray | None  # uint8 [H, W, 3] as the dataset gave it (None: a text-only example)
    question: str
    prediction: str
    tokens: list[str]  # the generated tokens' texts
    readouts: dict[str, np.ndarray]
    layout: tuple[SlotGroup, ...]
    answer: str | None = None
    index: int | None = None
    token_ids: list[int] = dataclasses.field(default_factory=list)
    # object-token encoder -> ``[H, W]`` the slot of each pixel's object in the model's input image (models/objects.py)
    object_maps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return next(iter(self.readouts.values())).shape[0]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def captured_readouts(graphdef, states: tuple, inputs: dict, generated: jax.Array) -> dict[str, jax.Array]:
    """Readouts ``[L, B, n, N]`` for the ``n`` generated tokens ``[B, n]`` of left-padded prompts ``[B, P]``."""
    model = nnx.merge(graphdef, *states)
    n = generated.shape[1]
    tokens = jnp.concatenate([inputs["prompt"], generated[:, :-1]], axis=1)
    valid = jnp.concatenate([inputs["prompt_valid"], jnp.ones(generated[:, :-1].shape, bool)], axis=1)
    # the left-padded prompt is the prompt (read both ways under model.prompt_attention='bidirectional')
    prompt_length = jnp.full(tokens.shape[:1], inputs["prompt"].shape[1], jnp.int32)
    _, captured = model(inputs["images"], inputs["has_image"], tokens, valid, mask_enabled=True, capture=True,
                        prompt_length=prompt_length)
    if captured.alpha is not None:
        return {"alpha": captured.alpha[:, :, -n:], "mask": captured.mask[:, :, -n:]}
    return {"attention": captured.image_attention[:, :, -n:]}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def object_slot_maps(graphdef, states: tuple, images: dict) -> dict[str, jax.Array]:
    """Object-token encoder -> ``[B, H, W]`` each pixel's token slot among its objects (``max_objects``: none)."""
    model = nnx.merge(graphdef, *states)
    objects = {name: tower for name, tower in model.vision.encoders.items() if tower.config.tokens == "objects"}
    return {name: tower.tokenizer.slot_map(images[name]) for name, tower in objects.items()}


def explain_batch(graphdef, states, inputs: dict, generated: np.ndarray, tokenizer, layout, examples: list[dict],
                  pixels: dict | None = None):
    """An ``Explanation`` per row of ``examples`` (raw dataset examples: ``image``, ``question``, ``answer``).

    ``inputs``: the featurized batch the ids ``generated [B, max_new_tokens]`` came from (rows beyond
    ``len(examples)`` are ignored). ``pixels``: the examples' preprocessed images, where ``inputs`` carry an
    object tower's ``ObjectTokens`` (its slot maps segment the pixels); None: ``inputs["images"]``.
    """
    readouts = jax.device_get(captured_readouts(graphdef, states, inputs, jnp.asarray(generated)))
    maps = {}
    if any(g.objects for g in layout):
        maps = jax.device_get(object_slot_maps(graphdef, states, inputs["images"] if pixels is None else pixels))
    explanations = []
    for row, example in enumerate(examples):
        ids = np.asarray(generated[row]).tolist()
        n = max(1, ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids))
        explanations.append(
            Explanation(
                image=example.get("image"),
                question=example["question"],
                prediction=tokenizer.decode(ids[:n], skip_special_tokens=True).strip(),
                tokens=[tokenizer.decode([i]).strip() or repr(tokenizer.convert_ids_to_tokens(i)) for i in ids[:n]],
                readouts={name: values[:, row, :n] for name, values in readouts.items()},
                layout=tuple(layout),
                answer=example.get("answer"),
                index=example.get("index"),
                token_ids=ids[:n],
                object_maps={name: values[row] for name, values in maps.items()},
            )
        )
    return explanations


def slot_maps(values: np.ndarray, layout: tuple[SlotGroup, ...], object_maps: dict) -> dict[str, np.ndarray]:
    """One row of slot values ``[N]`` -> a map per encoder to draw: a patch encoder's ``[grid, grid]``
    (``patch_grids``), an object-token encoder's ``[H, W]`` with each object's pixels at its slot's value and NaN
    (drawn transparent) elsewhere, when ``object_maps`` holds its pixels' slots."""
    values = np.asarray(values, np.float64)
    maps = patch_grids(values, layout)
    for g in layout:
        if g.objects and g.encoder in object_maps:
            per_slot = np.append(values[g.object_slots.start : g.object_slots.stop], np.nan)  # slot `objects`: none
            maps[g.encoder] = per_slot[np.asarray(object_maps[g.encoder])]
    return maps


def patch_grids(values: np.ndarray, layout: tuple[SlotGroup, ...]) -> dict[str, np.ndarray]:
    """One row of slot values ``[N]`` -> each patch encoder's ``[grid, grid]`` map (row-major, as the patches were
    flattened); class-token and padding slots are left out, and so are object-token encoders (no grid to draw on)."""
    values = np.asarray(values)
    return {g.encoder: values[g.patch_slots.start : g.patch_slots.stop].reshape(g.grid, g.grid) for g in layout if g.grid}


def chosen_blocks(num_blocks: int, blocks: tuple[int, ...] = (), most: int = 6) -> tuple[int, ...]:
    """The blocks to draw: ``blocks`` if given (negative counts from the end), else all up to ``most`` of them
    spread evenly from the first to the last."""
    if blocks:
        wrong = [b for b in blocks if not -num_blocks <= b < num_blocks]
        if wrong:
            raise UserError(f"blocks {wrong} do not exist: the model has blocks 0..{num_blocks - 1} (or -1 for the last)")
        return tuple(b % num_blocks for b in blocks)
    if num_blocks <= most:
        return tuple(range(num_blocks))
    return tuple(int(round(x)) for x in np.linspace(0, num_blocks - 1, most))
