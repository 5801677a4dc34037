"""An object tower's training input, tokenized on the host once per image.

The object tokenizer (``models/objects.py``) has no parameters: an image's tokens never change during a run.
Inside the step it is about a third of a CPU step on Sort-of-CLEVR, and it runs for every example, although
each of the 10,000 training images comes back ~13 times in 2,000 steps × 64 (~115 times in 18,000).
``ObjectTokenCache`` preprocesses and tokenizes an image the first time the training pipeline meets it, on
the host's CPU with the same jitted tokenizer (one image at a time: bit-equal to the step's batched call on
CPU, ``tests/test_object_cache.py``), and keeps the result under a digest of the image's bytes. Training batches
and the run's evaluation batches then carry ``ObjectTokens`` in place of that tower's pixels (the heatmap
gallery preprocesses its few examples' pixels again); ``VQAFeaturizer.prompt`` gives pixels unless asked.

``data.object_token_cache``: the number of images kept (0: tokenize in the step). Past it, further images are
tokenized on the host each time they come.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np

from semrel_jax.data.preprocess import ImagePreprocessor
from semrel_jax.models.objects import ObjectTokenizer, ObjectTokens


def host_device() -> jax.Device:
    """The host's CPU, where the pipeline's threads compute (the accelerator keeps the step); the default device
    when ``JAX_PLATFORMS`` leaves the CPU out."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return jax.devices()[0]


class ObjectTokenCache:
    """uint8 image ``[H, W, 3]`` (None: a text-only example's blank image) -> its ``ObjectTokens`` for one
    image, NumPy: ``tokens [K, F]``, ``centres [K, 2]``, ``valid [K]``. The prefetch threads share it (two may
    tokenize one image at once; ``hits`` / ``misses`` are for the log and may miss a concurrent count); a pickled
    copy starts empty."""

    def __init__(self, preprocess: ImagePreprocessor, tokenizer: ObjectTokenizer, capacity: int):
        self.preprocess, self.tokenizer, self.capacity = preprocess, tokenizer, capacity
        self.hits = self.misses = 0
        self._entries: dict[Any, ObjectTokens] = {}
        self._tokenize = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_entries": {}, "_tokenize": None, "hits": 0, "misses": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, image: np.ndarray | None) -> ObjectTokens:
        # SHA-1: a key against accidental collisions, computed by the CPU's SHA instructions where it has them
        # (x86 since Zen / Ice Lake): half blake2b's time, ~31 us for a 128 px image, on every example
        key = None if image is None else (image.shape, hashlib.sha1(np.ascontiguousarray(image)).digest())
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        size = self.preprocess.size
        pixels = np.zeros((size, size, 3), np.float32) if image is None else self.preprocess(image)
        found = self._tokens(pixels)
        if len(self._entries) < self.capacity:
            self._entries[key] = found
        return found

    def _tokens(self, pixels: np.ndarray) -> ObjectTokens:
        if self._tokenize is None:
            tokenizer = self.tokenizer
            self._tokenize = jax.jit(lambda image: jax.tree.map(lambda x: x[0], tokenizer(image[None])))
        found = jax.device_get(self._tokenize(jax.device_put(pixels, host_device())))
        return ObjectTokens(*(np.asarray(x) for x in found))
