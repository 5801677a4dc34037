"""Is it perception or relational learning? Issue #19's sets answered from object tokens instead of pixels.

A diagnostic, not a recipe: each image of a ``relational_sets.py`` set (LLaVA JSON) is cut into its objects
without any label, by background subtraction: the background is the image's median colour, a pixel is
foreground where a channel differs from it by more than 0.25, and each 4-connected component of at least 4
pixels (the 8 largest) becomes one token:

  [mean colour minus background (3), centre x, y - 0.5 (2), box width, height (2), 9 x 9 mask thumbnail (81)]

(``--colour=palette`` appends a one-hot of the nearest ``relational_sets.PALETTE`` colour: an oracle colour
name, to separate learning colours from learning relations). A small transformer (pre-LN, ``--layers`` x 64
wide, 4 heads; no position for the object tokens) reads ``[CLS] question words [objects]`` and classifies the
answer from CLS: the perception problem removed, what is left is binding words to objects and the relations.

Variants of the answering model, each a flag: ``--geometric`` (attention between two objects gets a learned
per-head bias from their centres' offset and distance, as a relative position bias on a patch grid),
``--head=relation_network`` (Santoro et al.'s sum over object pairs instead of the transformer), ``--causal``
(decoder order: objects, words, then the answer token), ``--standardise`` (token features to unit variance),
``--position_scale`` (the question's word-position embeddings larger than its word embeddings), ``--self_pair``
(with ``--geometric``: an object's attention to itself gets a bias of its own).

The VLM's parts, each a flag, to find what delays the VLM (experiments/LOG.md, sessions 14-15 and 19):
``--vlm_objects``, ``--vlm_block``, ``--in_model_tokens``, ``--rope`` (``--rope_one_object_position``: all objects at
one position), ``--read_last_word`` (without ``--causal``: the
VLM's bidirectional prompt, ``[objects] words`` read at the last word), ``--word_scale``, with ``--causal`` also
``--all_slots``; its optimiser's settings ``--batch_size --learning_rate --b2 --weight_decay --grad_clip --lr_warmup``.

``--stages=left_of+above:3000:2500,nearest+farthest:3000:2500``: a curriculum. Each stage in turn draws only from
the first ``examples`` training questions of its kinds for ``steps`` steps; the steps after the last, from all.
``--warmup_kinds`` / ``--warmup_examples`` / ``--warmup_steps``: the same for one stage (the earlier spelling).

    python experiments/relational_sets.py --out /tmp/relA30k --variant A --train 30000 --eval 100 --seed 0
    python experiments/object_token_probe.py --data=/tmp/relA30k --cache=/tmp/otp_cache --steps=14000 \
        --geometric --stages=left_of:3000:2500,above:3000:2500

Prints the evaluation accuracy per kind every ``--eval_every`` steps, and at the end one JSON line with the
final accuracies and each kind's majority baseline (the training split's most frequent answer of that kind).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from PIL import Image
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relational_sets  # noqa: E402  (the palette, for --colour=palette)

MAX_OBJECTS = 8
THUMB = 9  # mask thumbnail side
FOREGROUND = 0.25  # largest channel difference from the background colour, in [0, 1]
MIN_PIXELS = 4
WIDTH, HEADS = 64, 4
GEOMETRY = 4  # pairwise geometric features of two objects: dx, dy, distance, squared distance (x 4)
RN_WIDTH = 256  # the relation network's pair and output MLPs (Santoro et al. 2017 use 256 too)


def object_tokens(path: str, palette: bool) -> tuple[np.ndarray, np.ndarray]:
    """``tokens [MAX_OBJECTS, F]`` and ``valid [MAX_OBJECTS]`` of one image (largest components first)."""
    try:
        image = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    except (OSError, ValueError) as e:  # missing, truncated or not an image
        raise app.UsageError(f"cannot read image {path}: {e}") from None
    size = image.shape[0]
    background = np.median(image.reshape(-1, 3), 0)
    labels, count = ndimage.label(np.abs(image - background).max(-1) > FOREGROUND)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    colours = np.asarray(list(relational_sets.PALETTE.values()), np.float32) / 255
    width = 3 + 4 + THUMB * THUMB + (len(colours) if palette else 0)
    tokens = np.zeros((MAX_OBJECTS, width), np.float32)
    valid = np.zeros(MAX_OBJECTS, bool)
    boxes = ndimage.find_objects(labels)
    for slot, index in enumerate(np.argsort(-areas, kind="stable")[:MAX_OBJECTS]):
        mask = labels == index + 1
        if areas[index] < MIN_PIXELS:
            continue
        ys, xs = np.nonzero(mask)
        crop = mask[boxes[index]].astype(np.uint8) * 255
        thumb = np.asarray(Image.fromarray(crop).resize((THUMB, THUMB), Image.BILINEAR), np.float32) / 255
        mean = image[mask].mean(0)
        tokens[slot, :3] = mean - background
        tokens[slot, 3:7] = [xs.mean() / size - 0.5, ys.mean() / size - 0.5, crop.shape[1] / size, crop.shape[0] / size]
        tokens[slot, 7:7 + THUMB * THUMB] = thumb.ravel()
        if palette:
            tokens[slot, 7 + THUMB * THUMB + np.argmin(((colours - mean) ** 2).sum(1))] = 1.0
        valid[slot] = True
    return tokens, valid


def words(question: str) -> list[str]:
    return question.replace("<image>", " ").lower().replace("?", " ?").split()


def in_model_tokens(directory: str, images: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The tokens the VLM computes inside its step (``semrel_jax.models.objects``, pixels normalised against the
    background as ``configs/vqa.py:scratch`` does; its thumbnail is each cell's covered fraction, not a resize)."""
    from semrel_jax.data.preprocess import ImagePreprocessor
    from semrel_jax.models.objects import ObjectTokenizer

    tokenizer = jax.jit(ObjectTokenizer(MAX_OBJECTS))
    tokens, valid = [], []
    for start in range(0, len(images), 500):
        arrays = [np.asarray(Image.open(os.path.join(directory, i)).convert("RGB")) for i in images[start:start + 500]]
        preprocess = ImagePreprocessor(arrays[0].shape[0], "background", "bicubic", True, 0)
        batch_tokens, _, batch_valid = tokenizer(np.stack([preprocess(a) for a in arrays]))
        tokens.append(np.asarray(batch_tokens))
        valid.append(np.asarray(batch_valid))
    return np.concatenate(tokens), np.concatenate(valid)


def load(directory: str, split: str, palette: bool, cache: str = "", in_model: bool = False) -> dict:
    """One split's object tokens, questions, answers and kinds; ``cache``: a directory that keeps the tokens
    (extracting 30,000 images takes ~1 CPU-minute)."""
    path = os.path.join(directory, f"{split}.json")
    try:
        with open(path) as f:
            records = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise app.UsageError(f"cannot read {path} (a relational_sets.py output directory?): {e}") from None
    images = sorted({r["image"] for r in records})
    suffix = "_in_model" if in_model else ""
    cached = os.path.join(cache, f"{os.path.abspath(directory).strip('/').replace('/', '_')}_{split}_{palette}{suffix}.npz")
    # a cache is used only for the same split file (modification time) and the same images; else extracted anew
    stamp = np.asarray([os.stat(path).st_mtime_ns], np.int64)
    tokens = None
    if cache and os.path.exists(cached):
        try:
            with np.load(cached) as z:
                if np.array_equal(z["stamp"], stamp) and z["images"].tolist() == images:
                    tokens, valid = z["tokens"], z["valid"]
                else:
                    print(f"token cache {cached} is for another version of {path}: extracting again", flush=True)
        except (OSError, ValueError, KeyError) as e:
            print(f"token cache {cached} is unreadable ({e}): extracting again", flush=True)
    if tokens is None:
        if in_model:
            tokens, valid = in_model_tokens(directory, images)
        else:
            tokens, valid = map(np.stack, zip(*(object_tokens(os.path.join(directory, i), palette) for i in images)))
        if cache:
            os.makedirs(cache, exist_ok=True)
            np.savez(cached, tokens=tokens, valid=valid, stamp=stamp, images=np.asarray(images))
    row = {image: i for i, image in enumerate(images)}
    return {
        "tokens": tokens[[row[r["image"]] for r in records]],
        "valid": valid[[row[r["image"]] for r in records]],
        "question": [words(r["conversations"][0]["value"]) for r in records],
        "answer": [r["conversations"][1]["value"].strip().lower() for r in records],
        "kind": np.asarray([r.get("kind", "all") for r in records]),
    }


def select_kinds(split: dict, kinds: list[str]) -> dict:
    """The questions of ``split`` whose kind is one of ``kinds``."""
    keep = np.nonzero(np.isin(split["kind"], kinds))[0]
    return {k: [v[i] for i in keep] if isinstance(v, list) else v[keep] for k, v in split.items()}


ROLE = 100_000  # --oracle_roles: ids + ROLE x (1 for the question's first colour word, 2 for its second)


def encode(split: dict, vocab: dict, answers: dict, length: int, colours: frozenset = frozenset()) -> dict:
    ids = np.zeros((len(split["question"]), length), np.int32)  # 0: padding
    for i, q in enumerate(split["question"]):
        ids[i, :len(q)] = [vocab.get(w, 1) for w in q[:length]]  # 1: unknown word
        seen = 0
        for j, w in enumerate(q[:length]):
            if w in colours:
                seen += 1
                ids[i, j] += ROLE * min(seen, 2)
    return dict(split, ids=ids, label=np.asarray([answers.get(a, -1) for a in split["answer"]]))


def init_params(key, num_words: int, feature_dim: int, length: int, num_answers: int, layers: int,
                position_scale: float = 0.1, word_scale: float = 0.1) -> dict:
    keys = iter(jax.random.split(key, 16 + 5 * layers))

    def dense(n_in, n_out, scale=1.0):
        return jax.random.normal(next(keys), (n_in, n_out)) * scale / np.sqrt(n_in)

    # the VLM-part variants' weights from keys of their own, so the other parameters stay as before
    extra = iter(jax.random.split(jax.random.fold_in(key, 1000), 1 + layers))
    return {
        "vlm_projector": jax.random.normal(next(extra), (WIDTH, WIDTH)) / np.sqrt(WIDTH),
        "vlm_gates": [jax.random.normal(next(extra), (WIDTH, 3 * WIDTH)) / np.sqrt(WIDTH) for _ in range(layers)],
        "word": jax.random.normal(next(keys), (num_words, WIDTH)) * word_scale,
        "position": jax.random.normal(next(keys), (length + 1, WIDTH)) * position_scale,
        "kind": jax.random.normal(next(keys), (2, WIDTH)) * 0.1,  # text / object
        "object_in": dense(feature_dim, WIDTH), "object_bias": jnp.zeros(WIDTH), "object_out": dense(WIDTH, WIDTH),
        "answer": dense(WIDTH, num_answers),
        "relation_pair": [dense(3 * WIDTH, RN_WIDTH)] + [dense(RN_WIDTH, RN_WIDTH) for _ in range(2)],
        "relation_out": [dense(RN_WIDTH, RN_WIDTH), dense(RN_WIDTH, num_answers)],
        "question": dense(length * WIDTH, WIDTH),
        "geometry": [jax.random.normal(next(keys), (GEOMETRY, HEADS)) * 0.1 for _ in range(layers)],
        "geometry_self": [jnp.zeros(HEADS) for _ in range(layers)],  # --self_pair: an object's bias on itself
        "blocks": [{"qkv": dense(WIDTH, 3 * WIDTH), "out": dense(WIDTH, WIDTH, 0.5), "up": dense(WIDTH, 3 * WIDTH),
                    "down": dense(3 * WIDTH, WIDTH, 0.5), "ln1": jnp.ones(WIDTH), "ln2": jnp.ones(WIDTH)}
                   for _ in range(layers)],
        "final_norm": jnp.ones(WIDTH),
        "role": jnp.zeros((3, WIDTH)).at[1:].set(jax.random.normal(jax.random.fold_in(key, 2000), (2, WIDTH))),
    }


def layer_norm(x, gain):
    x = x - x.mean(-1, keepdims=True)
    return gain * x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def rms_norm(x, gain):
    return gain * x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-6)


def relation_network_logits(params, tokens, valid, ids):
    """Santoro et al.'s relation network over object pairs: ``f(sum_ij g(o_i, o_j, q))``; shapes as ``logits_fn``.

    The question vector ``q [B, W]`` is one linear map of the question's word + position embeddings (the sets'
    questions are templates); ``g`` is a 3-layer ReLU MLP on every ordered pair of valid objects ``[B, K, K, 3W]``.
    """
    batch, count = tokens.shape[:2]
    words = params["word"][ids] + params["position"][None, 1:]
    question = (words * (ids > 0)[..., None]).reshape(batch, -1) @ params["question"]
    objects = jax.nn.gelu(tokens @ params["object_in"] + params["object_bias"]) @ params["object_out"]
    x = jnp.concatenate([jnp.broadcast_to(objects[:, :, None], (batch, count, count, WIDTH)),
                         jnp.broadcast_to(objects[:, None], (batch, count, count, WIDTH)),
                         jnp.broadcast_to(question[:, None, None], (batch, count, count, WIDTH))], -1)
    for weight in params["relation_pair"]:
        x = jax.nn.relu(x @ weight)
    pair_valid = valid[:, :, None] & valid[:, None, :]
    x = (x * pair_valid[..., None]).sum((1, 2))
    return jax.nn.relu(x @ params["relation_out"][0]) @ params["relation_out"][1]


def rotate(x, positions):
    """The VLM's RoPE (``semrel_jax.models.layers``, theta 10,000) on ``x [B, S, H, D]`` at ``positions [S]``."""
    from semrel_jax.models import layers

    inv_freq = layers.rope_frequencies(x.shape[-1], 10_000.0)
    return layers.apply_rope(x, jnp.broadcast_to(positions, x.shape[:2]), inv_freq)


def logits_fn(params, tokens, valid, ids, causal: bool = False, geometric: bool = False, vlm_objects: bool = False,
              vlm_block: bool = False, rope: bool = False, read_last_word: bool = False, all_slots: bool = False,
              alibi: bool = False, sincos: int = 0, self_pair: bool = False, rope_one_object_position: bool = False):
    """``tokens [B, K, F]``, ``valid [B, K]``, ``ids [B, L]`` -> answer logits ``[B, A]``.

    ``causal``: the sequence is ``[objects] words [ANS]`` as in a decoder VLM: objects see objects, a word sees the
    objects and the words before it, the answer is read at the last position; otherwise ``[CLS] words [objects]``,
    all attending to all, the answer read at CLS. ``geometric``: each block's attention between two objects gets a
    learned per-head bias from their centres' offset (dx, dy, distance, squared distance), as a relative position
    bias does on a patch grid. (Reads the centres from ``tokens[..., 3:5]``: not with --standardise.)
    ``vlm_objects``: the objects embedded as the VLM's tower does with no blocks (linear map, LayerNorm, then a
    SiLU projector) in place of the GELU MLP; ``vlm_block``: the VLM's LLM block (RMSNorm, SwiGLU) in place of
    LayerNorm and a GELU MLP. ``rope``, ``read_last_word``, ``all_slots``: the VLM's positions, answer readout and
    image prefix (see the flags); not causal, ``read_last_word`` is the VLM's bidirectional prompt: ``[objects]
    words``, all attending to all, the answer read at the last word. ``self_pair``: with ``geometric``, an object's
    attention to itself gets a learned per-head bias of its own, as a relative position table has an entry for
    offset 0. ``rope_one_object_position``: with ``rope``, every object slot at one position (the objects are a set).
    """
    if not params["blocks"]:  # --head=relation_network
        return relation_network_logits(params, tokens, valid, ids)
    batch, count = tokens.shape[:2]
    role, ids = ids // ROLE, ids % ROLE
    if vlm_objects:
        embedded = layer_norm(tokens @ params["object_in"] + params["object_bias"], 1.0)
        objects = jax.nn.silu(embedded @ params["vlm_projector"]) @ params["object_out"] + params["kind"][1]
    else:
        objects = jax.nn.gelu(tokens @ params["object_in"] + params["object_bias"]) @ params["object_out"] + params["kind"][1]
    if sincos:  # the patch grid's 2-D sine-cosine position embedding, at each object's centre on a sincos-cell grid
        centre = (tokens[..., 3:5] + 0.5) * sincos  # [B, K, 2] in grid cells
        omega = 1.0 / (10_000.0 ** (jnp.arange(WIDTH // 4) / (WIDTH // 4)))
        x_angle, y_angle = centre[..., :1] * omega, centre[..., 1:] * omega
        objects = objects + jnp.concatenate([jnp.sin(x_angle), jnp.cos(x_angle), jnp.sin(y_angle), jnp.cos(y_angle)],
                                            -1) * valid[..., None]
    norm = rms_norm if vlm_block else layer_norm
    readout = jnp.zeros((batch, 1), ids.dtype)  # the CLS / ANS token shares padding's row
    if causal:
        words = ids if read_last_word else jnp.concatenate([ids, readout], 1)
        text = params["word"][words] + params["kind"][0]
        roles = jnp.concatenate([role, jnp.zeros_like(readout)], 1)[:, :text.shape[1]]
        text = text + params["role"][roles] * (roles > 0)[..., None]  # no role (every run without the oracle): + 0
        if not rope:
            text = text + params["position"][None, :text.shape[1]]
        x = jnp.concatenate([objects, text], 1)
        keep = jnp.concatenate([jnp.ones_like(valid) if all_slots else valid, ids > 0, jnp.ones((batch, 1), bool)], 1)
        keep = keep[:, :x.shape[1]]  # no readout token: nothing after the words
        position = jnp.arange(x.shape[1])
        visible = (position[None, :] <= position[:, None]) | ((position[None, :] < count) & (not all_slots))
        mask = keep[:, None, None] & visible[None, None]
    elif read_last_word:  # the VLM's bidirectional prompt: [objects] words, all attending to all, no readout token
        text = params["word"][ids] + params["kind"][0]
        if not rope:
            text = text + params["position"][None, 1:]
        x = jnp.concatenate([objects, text], 1)
        mask = jnp.concatenate([valid, ids > 0], 1)[:, None, None]
    else:
        text = params["word"][jnp.concatenate([readout, ids], 1)]
        if not rope:
            text = text + params["position"][None]
        x = jnp.concatenate([text + params["kind"][0], objects], 1)
        mask = jnp.concatenate([jnp.ones((batch, 1), bool), ids > 0, valid], 1)[:, None, None]
    bias = text_bias = 0.0
    if alibi and causal:  # ALiBi between words: head h weights a word d words back by exp(-d * 4^-(h+1))
        slopes = 4.0 ** -(1.0 + jnp.arange(HEADS))
        position = jnp.arange(x.shape[1])
        back = jnp.maximum(position[:, None] - position[None, :], 0) * (position[None, :] >= count)
        bias = text_bias = -slopes[None, :, None, None] * back[None, None].astype(jnp.float32)
    if geometric:  # object-to-object attention gets a learned function of the two centres' offset
        centre = tokens[..., 3:5]
        offset = centre[:, :, None] - centre[:, None]  # [B, K, K, 2]
        squared = (offset ** 2).sum(-1, keepdims=True)
        pair = 4.0 * jnp.concatenate([offset, jnp.sqrt(squared + 1e-6), squared], -1)  # [B, K, K, GEOMETRY]
        first = count if causal or read_last_word else x.shape[1] - count  # where the objects sit in the sequence
        pad = [(0, 0), (first, x.shape[1] - first - count), (first, x.shape[1] - first - count), (0, 0)]
        pair = jnp.pad(pair, pad)  # zero for every pair that is not two objects
        same = jnp.pad(jnp.eye(count), pad[1:3])  # [S, S]: 1 where an object meets itself
    for layer, block in enumerate(params["blocks"]):
        if geometric:
            bias = jnp.moveaxis(pair @ params["geometry"][layer], -1, 1) + text_bias  # [B, H, S, S]
            if self_pair:
                bias = bias + params["geometry_self"][layer][:, None, None] * same
        q, k, v = jnp.split((norm(x, block["ln1"]) @ block["qkv"]).reshape(batch, x.shape[1], 3, HEADS, -1), 3, 2)
        q, k = q[:, :, 0], k[:, :, 0]
        if rope:
            position = jnp.arange(x.shape[1])
            if rope_one_object_position:  # the object slots as a set: one position for all of them
                first = 0 if causal or read_last_word else x.shape[1] - count
                position = jnp.where((position >= first) & (position < first + count), first, position)
            q, k = rotate(q, position), rotate(k, position)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(WIDTH // HEADS) + bias
        weights = jax.nn.softmax(jnp.where(mask, scores, -1e9), -1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", weights, v[:, :, 0]).reshape(x.shape) @ block["out"]
        h = norm(x, block["ln2"])
        if vlm_block:
            x = x + (jax.nn.silu(h @ params["vlm_gates"][layer]) * (h @ block["up"])) @ block["down"]
        else:
            x = x + jax.nn.gelu(h @ block["up"]) @ block["down"]
    if read_last_word:  # the question's last word: the '?' the VLM answers after
        last = count + (ids > 0).sum(1) - 1
        return rms_norm(x[jnp.arange(batch), last], params["final_norm"]) @ params["answer"]
    return x[:, -1 if causal else 0] @ params["answer"]


def parse_stages(text: str) -> list[tuple[list[str], int, int]]:
    """``"left_of+above:3000:2500,nearest:3000:2000"`` -> ``[(kinds, examples, steps), ...]`` in order."""
    stages = []
    for item in filter(None, text.split(",")):
        try:
            kinds, examples, steps = item.split(":")
            stages.append((kinds.split("+"), int(examples), int(steps)))
        except ValueError:
            raise app.UsageError(f"--stages item {item!r} is not kind+kind:examples:steps") from None
        if stages[-1][1] <= 0 or stages[-1][2] <= 0:
            raise app.UsageError(f"--stages item {item!r}: examples and steps must be positive")
    return stages


def main(argv):
    del argv
    f = flags.FLAGS
    started = time.time()
    global WIDTH, HEADS  # read by init_params and logits_fn
    WIDTH, HEADS = f.width, f.heads
    if f.geometric and (f.standardise or f.head != "transformer"):
        raise app.UsageError("--geometric reads raw centres in the transformer head: not with --standardise or "
                             "--head=relation_network")
    if f.in_model_tokens and f.colour == "palette":
        raise app.UsageError("--in_model_tokens are the VLM's tokens: no oracle palette colour (--colour=mean)")
    train = load(f.data, "train", f.colour == "palette", f.cache, f.in_model_tokens)
    evaluation = load(f.data, "eval", f.colour == "palette", f.cache, f.in_model_tokens)
    if f.kinds:  # train and evaluate on these kinds only
        train, evaluation = select_kinds(train, f.kinds), select_kinds(evaluation, f.kinds)
    if not len(train["kind"]) or not len(evaluation["kind"]):
        raise app.UsageError(f"--kinds={','.join(f.kinds)} leaves no training or evaluation questions")
    if f.standardise:  # every token feature to zero mean, unit variance over the training objects
        objects = train["tokens"][train["valid"]]
        mean, std = objects.mean(0), objects.std(0) + 1e-6
        for split in (train, evaluation):
            split["tokens"] = np.where(split["valid"][..., None], (split["tokens"] - mean) / std, 0.0).astype(np.float32)
    print(f"object tokens: {train['valid'].sum(1).mean():.2f} per training image "
          f"({time.time() - started:.0f} s to extract)", flush=True)
    vocab = {w: i + 2 for i, w in enumerate(sorted({w for q in train["question"] for w in q}))}
    answers = {a: i for i, a in enumerate(sorted(set(train["answer"])))}
    length = max(len(q) for q in train["question"] + evaluation["question"])
    colours = frozenset(q[q.index("object") - 1] for q, kind in zip(train["question"], train["kind"])
                        if kind == "shape" and "object" in q) if f.oracle_roles else frozenset()
    print("oracle role words:", sorted(colours)) if colours else None
    train, evaluation = (encode(s, vocab, answers, length, colours) for s in (train, evaluation))
    kinds = sorted({str(k) for k in evaluation["kind"]})
    majority = {}
    for kind in kinds:
        values, counts = np.unique(np.asarray(train["answer"])[train["kind"] == kind], return_counts=True)
        majority[kind] = float(np.mean(np.asarray(evaluation["answer"])[evaluation["kind"] == kind] == values[counts.argmax()]))

    stages = parse_stages(f.stages)
    if f.warmup_steps:  # the one-stage shorthand
        if stages:
            raise app.UsageError("give the curriculum as --stages or as --warmup_*, not both")
        stages = [(f.warmup_kinds or kinds, f.warmup_examples, f.warmup_steps)]
    schedule = []  # (last step + 1, the training questions it draws from) per stage
    for stage_kinds, examples, stage_steps in stages:
        pool = np.nonzero(np.isin(train["kind"], stage_kinds))[0][:examples]
        if not len(pool):
            raise app.UsageError(f"curriculum stage {','.join(stage_kinds)}: no training questions of those kinds "
                                 f"(examples={examples}; kinds here: {', '.join(kinds)})")
        schedule.append(((schedule[-1][0] if schedule else 0) + stage_steps, pool))
    params = init_params(jax.random.PRNGKey(f.seed), len(vocab) + 2, train["tokens"].shape[-1], length,
                         len(answers), f.layers if f.head == "transformer" else 0, f.position_scale, f.word_scale)
    vlm = (f.vlm_objects, f.vlm_block, f.rope, f.read_last_word, f.all_slots, f.alibi, f.sincos, f.self_pair,
           f.rope_one_object_position)
    if f.self_pair and not f.geometric:
        raise app.UsageError("--self_pair is a variant of --geometric")
    if f.rope_one_object_position and not f.rope:
        raise app.UsageError("--rope_one_object_position is a variant of --rope")
    if f.all_slots and not f.causal:
        raise app.UsageError("--all_slots is a variant of --causal")
    learning_rate = optax.warmup_cosine_decay_schedule(0.0, f.learning_rate, min(f.lr_warmup, f.steps // 2), f.steps)
    optimizer = optax.adamw(learning_rate, b2=f.b2, weight_decay=f.weight_decay)
    if f.grad_clip:
        optimizer = optax.chain(optax.clip_by_global_norm(f.grad_clip), optimizer)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, tokens, valid, ids, label):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, tokens, valid, ids, f.causal, f.geometric, *vlm), label).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda p, t, v, i: logits_fn(p, t, v, i, f.causal, f.geometric, *vlm).argmax(-1))
    rng = np.random.default_rng(f.seed)
    train_seconds = 0.0
    for i in range(f.steps):
        pool = next((p for end, p in schedule if i < end), None)
        if pool is not None:
            index = pool[rng.integers(0, len(pool), f.batch_size)]
        else:
            index = rng.integers(0, len(train["ids"]), f.batch_size)
        tick = time.time()
        params, opt_state, loss = step(params, opt_state, *(train[k][index] for k in ("tokens", "valid", "ids", "label")))
        loss = float(loss)
        train_seconds += time.time() - tick
        if (i + 1) % f.eval_every == 0 or i + 1 == f.steps:
            correct = np.asarray(predict(params, *(evaluation[k] for k in ("tokens", "valid", "ids")))) == evaluation["label"]
            per_kind = {k: round(float(correct[evaluation["kind"] == k].mean()), 3) for k in kinds}
            print(f"step {i + 1} loss {loss:.3f} all {correct.mean():.3f} {per_kind} train {train_seconds:.0f} s", flush=True)
    print(json.dumps({"data": f.data, "seed": f.seed, "steps": f.steps, "layers": f.layers, "width": f.width, "heads": f.heads, "kinds": f.kinds, "curriculum": [[k, n, t] for k, n, t in stages],
                      "colour": f.colour, "head": f.head, "standardise": f.standardise, "position_scale": f.position_scale, "causal": f.causal, "geometric": f.geometric, "vlm_objects": f.vlm_objects, "vlm_block": f.vlm_block, "in_model_tokens": f.in_model_tokens, "rope": f.rope, "alibi": f.alibi, "sincos": f.sincos, "read_last_word": f.read_last_word, "self_pair": f.self_pair, "rope_one_object_position": f.rope_one_object_position,
                      "word_scale": f.word_scale, "all_slots": f.all_slots, "b2": f.b2, "weight_decay": f.weight_decay, "grad_clip": f.grad_clip,
                      "lr_warmup": f.lr_warmup, "batch_size": f.batch_size, "learning_rate": f.learning_rate, "all": round(float(correct.mean()), 3), "per_kind": per_kind,
                      "majority": {k: round(v, 3) for k, v in majority.items()}, "train_seconds": round(train_seconds)}))


def _define_flags():
    flags.DEFINE_string("data", None, "A relational_sets.py output directory (train.json, eval.json, images/).", required=True)
    flags.DEFINE_integer("steps", 8000, "Training steps.")
    flags.DEFINE_string("cache", "", "A directory to keep the extracted object tokens in (empty: extract every run).")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_float("learning_rate", 1e-3, "Peak AdamW learning rate (--lr_warmup steps of warmup, cosine decay).")
    flags.DEFINE_integer("layers", 3, "Transformer blocks.")
    flags.DEFINE_integer("width", WIDTH, "Transformer width (the VLM's LLM: 64).")
    flags.DEFINE_integer("heads", HEADS, "Attention heads (the VLM's LLM: 4).")
    flags.DEFINE_enum("head", "transformer", ["transformer", "relation_network"],
                      "What answers from the object tokens: a transformer over [CLS, words, objects], or a relation network over object pairs.")
    flags.DEFINE_integer("seed", 0, "Initialisation and sampling seed.")
    flags.DEFINE_enum("colour", "mean", ["mean", "palette"], "Object colour: its mean RGB only, or + an oracle palette one-hot.")
    flags.DEFINE_bool("geometric", False, "Attention between two objects gets a learned bias from their centres' offset.")
    flags.DEFINE_bool("self_pair", False, "--geometric: an object's attention to itself gets a learned bias of its own "
                      "(its offset, zero, is otherwise the nearest one).")
    flags.DEFINE_bool("causal", False, "Transformer head as a decoder VLM: [objects] words [ANS], causal text, answer read last.")
    flags.DEFINE_bool("vlm_objects", False, "Objects embedded as the VLM's tower with no blocks: linear, LayerNorm, SiLU projector.")
    flags.DEFINE_bool("vlm_block", False, "The VLM's LLM block: RMSNorm and SwiGLU instead of LayerNorm and a GELU MLP.")
    flags.DEFINE_bool("in_model_tokens", False, "The object tokens the VLM computes in its step (semrel_jax.models.objects) "
                      "instead of this script's (same definition, but the thumbnail is each cell's covered fraction).")
    flags.DEFINE_bool("alibi", False, "Causal: ALiBi between words (head h's weight on a word d back falls as "
                      "exp(-d * 4^-(h+1))): each head prefers nearer words by its own amount from the first step.")
    flags.DEFINE_integer("sincos", 0, "> 0: add the patch grid's 2-D sine-cosine position embedding to each object's "
                         "embedding, at its centre on a grid of this many cells (0: the centre is only in the token).")
    flags.DEFINE_bool("oracle_roles", False, "Causal, diagnostic: the question's first and second colour word get "
                      "an embedding of their role (an oracle: tells the two named objects apart).")
    flags.DEFINE_bool("rope", False, "Decoder positions as the VLM's LLM has them: RoPE in every block, no learned word positions.")
    flags.DEFINE_bool("read_last_word", False, "Read the answer at the question's last word (the VLM's '?') through a "
                      "final RMSNorm, not at a readout token of its own; not --causal: the order [objects] words, all "
                      "attending to all (the VLM's prompt_attention='bidirectional').")
    flags.DEFINE_bool("rope_one_object_position", False, "--rope: every object slot at one position, so RoPE "
                      "adds nothing between two objects (they are a set; their slot order is arbitrary).")
    flags.DEFINE_float("word_scale", 0.1, "Initial scale of the word embeddings (the VLM's: 1.0).")
    flags.DEFINE_bool("all_slots", False, "Causal: all MAX_OBJECTS slots visible (empty ones as zero tokens) and each "
                      "object sees only the slots before it, as the VLM's causal image prefix.")
    flags.DEFINE_float("b2", 0.999, "AdamW's b2 (the VLM's: 0.95).")
    flags.DEFINE_float("weight_decay", 0.01, "AdamW's weight decay (the VLM's: 0.02).")
    flags.DEFINE_float("grad_clip", 0.0, "Clip gradients to this global norm (0: none; the VLM's: 1).")
    flags.DEFINE_integer("lr_warmup", 200, "Learning-rate warmup steps (the VLM's: 100), then cosine decay.")
    flags.DEFINE_float("position_scale", 0.1, "Initial scale of the question's word-position embeddings (words: 0.1).")
    flags.DEFINE_bool("standardise", False, "Scale every token feature to zero mean and unit variance over the training objects.")
    flags.DEFINE_list("kinds", [], "Train and evaluate on these question kinds only (empty: all).")
    flags.DEFINE_list("warmup_kinds", [], "Curriculum: the kinds the first --warmup_steps steps draw from (empty: all).")
    flags.DEFINE_integer("warmup_examples", 0, "Curriculum: only the first N training questions of those kinds.")
    flags.DEFINE_integer("warmup_steps", 0, "Curriculum: its length in steps (0: none).")
    flags.DEFINE_string("stages", "", "A curriculum of stages, in order, before the full data: kind+kind:examples:steps,... "
                        "(each draws from the first `examples` training questions of its kinds for `steps` steps).")
    flags.DEFINE_integer("eval_every", 1000, "Evaluate every N steps.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
