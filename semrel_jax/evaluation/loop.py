"""The evaluation loop: generate every answer of the eval split and score it with the dataset's metric.

Runs on one device or across the batch axes of every device of every host: each batch is split over
them (the batch rounded up to a multiple of the shards; padding rows dropped) and the generated ids are
gathered back on every host.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from semrel_jax import config as config_lib
from semrel_jax.config import model as model_config
from semrel_jax.data import pipeline, registry
from semrel_jax.evaluation import explain as explain_lib
from semrel_jax.evaluation import explain_plot, generate
from semrel_jax.method.vlm import slot_layout
from semrel_jax.training import mesh as mesh_lib


def _global_batch(inputs: dict, mesh) -> dict:
    """Every host holds the same evaluation batch: each contributes its slice to one global array."""
    count, index = jax.process_count(), jax.process_index()
    local = jax.tree.map(lambda x: x[index * len(x) // count : (index + 1) * len(x) // count], inputs)
    sharding = mesh_lib.batch_sharding(mesh)
    return jax.make_array_from_process_local_data(sharding, local)


def _fetch(ids) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(ids)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(ids, tiled=True))


def generate_ids(c, graphdef, states, inputs: dict, eos_id: int, key_offset: int = 0) -> jax.Array:
    """Generated ids ``[B, eval.max_new_tokens]`` as the ``eval`` section says: beam search
    (``eval.num_beams > 1``), sampling (``eval.temperature > 0``, key folded from ``seed`` and ``key_offset``)
    or greedy decoding."""
    temperature, top_p = float(c.eval.temperature), float(c.eval.top_p)
    if int(c.eval.num_beams) > 1:
        return generate.beam_search(
            graphdef, states, inputs, c.eval.max_new_tokens, int(c.eval.num_beams), float(c.eval.length_penalty),
            eos_id=eos_id,
        )
    key = jax.random.fold_in(jax.random.PRNGKey(c.seed), key_offset) if temperature > 0 else None
    return generate.generate(graphdef, states, inputs, c.eval.max_new_tokens, key, temperature, top_p)


class OtherImages:
    """An evaluation split whose example ``i`` carries the image of example ``(i + n // 2) % n`` (its question,
    answer and metadata unchanged): the image control of ``eval.image_control``. Half the split away, so the
    questions asked about one image in a row (VQA v2, GQA, the generated relational sets) get another image; a
    split of one example is its own control. Example ``i`` is read whole (its image unused) so that every source's
    own fields reach the featurizer unchanged: one extra image read per example, in the control pass only."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        n = len(self.source)
        example = self.source[index]
        other = self.source[(index + n // 2) % n]
        if example.get("image") is None or other.get("image") is None:  # a text-only example stays as it is
            return example
        # sources without a has_image field (Sort-of-CLEVR) mean 1, as the featurizer reads them
        return {**example, "image": other["image"], "has_image": other.get("has_image", 1)}


def evaluate(
    c, graphdef, states, featurizer, tokenizer, data, out_dir: str, mesh=None, *, num_examples: int | None = None,
    explain: int = 0, blocks: tuple[int, ...] = (),
) -> dict:
    """Generates the answers of ``data.eval`` (``num_examples``, default ``eval.num_examples``; 0: all) and
    scores them.

    ``states``: the model's state pieces for ``nnx.merge(graphdef, *states)``. Writes ``predictions.json``
    (each example's metadata, image reference and prediction) to ``out_dir``, and with ``explain = N`` the
    heatmaps of the first N examples (``out_dir/explain/``: a PNG each, ``samples.json``, ``index.html``);
    returns the metrics. With ``eval.image_control`` the same questions are answered again about other images
    (:class:`OtherImages`) and their scores are added as ``image_control/<metric>``.
    """
    config_lib.validate_eval(c)
    n = c.eval.num_examples if num_examples is None else num_examples
    n = min(n or len(data.eval), len(data.eval))
    batch_size = c.eval.batch_size
    if mesh is not None:
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        batch_size = -(-batch_size // shards) * shards
    is_main = jax.process_index() == 0
    if explain and jax.process_count() > 1:
        # the readouts pass gathers on one host only; a multi-process run scores and skips the gallery
        logging.warning("evaluation: the %d explained examples are skipped on a multi-process run.", explain)
        explain = 0
    run = dict(c=c, graphdef=graphdef, states=states, featurizer=featurizer, tokenizer=tokenizer, data=data,
               mesh=mesh, batch_size=batch_size, n=n, is_main=is_main)
    predictions, explained = _predict(data.eval, explain=explain, **run)
    results = registry.score(c, predictions, data.train, data.eval)
    if c.eval.image_control:
        control, _ = _predict(OtherImages(data.eval), explain=0, **run)
        scores = registry.score(c, control, data.train, data.eval)
        results.update({f"image_control/{k}": v for k, v in scores.items() if not k.startswith(("num_", "majority_baseline"))})
    if is_main:
        with open(os.path.join(out_dir, "predictions.json"), "w") as f:
            json.dump(predictions, f, indent=1, default=str)
        if explained:
            explain_plot.write_gallery(explained, os.path.join(out_dir, "explain"), blocks)
    return results


def _predict(source, *, c, graphdef, states, featurizer, tokenizer, data, mesh, batch_size, n, is_main, explain):
    """The first ``n`` examples of ``source`` answered: their rows for ``registry.score``, and the heatmaps of
    the first ``explain`` of them."""
    predictions, explained = [], []
    prefix_ids = featurizer.answer_prefix_ids()  # eval.answer_prefix, placed after every prompt by the featurizer
    # an object tower's tokens from the host's cache (data/object_cache.py); the explained rows' pixels below
    featurize = functools.partial(featurizer.prompt, object_tokens=True)
    batches = pipeline.evaluation_batches(source, featurize, batch_size, n)
    for batch in tqdm(batches, total=-(-n // batch_size), desc="evaluation", unit="batch", disable=not is_main, leave=False):
        inputs = {k: batch[k] for k in ("images", "has_image", "prompt", "prompt_valid")}
        if mesh is not None:
            inputs = _global_batch(inputs, mesh)
        ids = _fetch(generate_ids(c, graphdef, states, inputs, tokenizer.eos_token_id, len(predictions)))
        answer_ids = ids
        if prefix_ids:  # the prediction is the whole answer: the forced prefix, then what was generated
            answer_ids = np.concatenate([np.tile(np.asarray(prefix_ids, ids.dtype), (len(ids), 1)), ids], axis=1)
        texts = generate.decode_texts(tokenizer, answer_ids, tuple(c.eval.stop_strings))
        if len(explained) < explain:
            rows = batch["index"][batch["example_valid"]][: explain - len(explained)]  # not the padding rows
            examples = [source[int(i)] for i in rows]
            layout = slot_layout(model_config.model_config(c, len(tokenizer)).vision)
            pixels = pipeline.stack([featurizer.pixels(example) for example in examples])
            new = explain_lib.explain_batch(graphdef, states, inputs, ids, tokenizer, layout, examples, pixels)
            for text, explanation in zip(texts, new):
                explanation.prediction = text  # as predictions.json has it (stop strings applied)
            explained += new
        for index, keep, text in zip(batch["index"], batch["example_valid"], texts):
            if keep:
                row = {"index": int(index), **registry.describe(data.eval, int(index))}
                predictions.append({**row, "image": image_reference(c, int(index)), "prediction": text})
    return predictions, explained


def image_reference(c, index: int) -> str:
    """Where example ``index``'s image comes from: ``<data.name>:<data.eval_split>[<index>]`` (``eval``: the
    dataset's usual evaluation split), which ``recipe.build_data(c).eval[index]['image']`` reads back."""
    return f"{c.data.name}:{c.data.eval_split or 'eval'}[{index}]"


def format_results(results: dict) -> str:
    """The console table: every metric, beside the majority baseline where the dataset has one, and beside the
    accuracy with other examples' images where ``eval.image_control`` measured it."""
    skip = ("num_", "majority_baseline", "image_control", "wall_seconds", "train_seconds", "preempted")
    control = any(k.startswith("image_control/") for k in results)
    lines = ["", f"{'metric':<28}{'model':>10}{'majority':>10}" + (f"{'other image':>13}" if control else "")]
    for key in sorted(k for k, v in results.items() if not isinstance(v, str) and not k.startswith(skip)):
        is_accuracy = key.startswith("accuracy")
        name = (key.replace("accuracy", "").lstrip("/") or "all") if is_accuracy else key
        base = results.get(key.replace("accuracy", "majority_baseline")) if is_accuracy else None
        line = f"{name:<28}{results[key]:>10.3f}" + (f"{base:>10.3f}" if base is not None else f"{'-':>10}")
        if control:
            other = results.get(f"image_control/{key}")
            line += f"{other:>13.3f}" if other is not None else f"{'-':>13}"
        lines.append(line)
    lines += [f"{k}: {v}" for k, v in results.items() if isinstance(v, str)]
    n = results.get("num_examples", results.get("num_images", 0))
    lines.append(f"examples: {int(n)}, wall: {results.get('wall_seconds', 0):.0f}s")
    return "\n".join(lines)
