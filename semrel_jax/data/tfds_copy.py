"""Prepared copies of the data sources: TFDS array_record datasets, written once and read fast, without TensorFlow.

    python -m semrel_jax.data.prepare --config=configs/vqa.py --config.data.name=scienceqa \\
        --config.data.root=/data/ScienceQA --out=/data/prepared          # once (a no-op when already done)
    python -m semrel_jax.main --config=configs/vqa.py:demo --config.data.name=scienceqa \\
        --config.data.prompt_format=raw \\
        --config.data.prepared_dir=/data/prepared --workdir=/tmp/run     # reads the copy, not the raw files

Any pair of sources (``semrel_jax.data.registry.build_sources``: both splits) is copied record by record:
``prepared[i] == raw[i]`` (same keys in the same order, same values, images pixel-equal), and the rest of
the pipeline is unchanged. Decoding an image from its stored bytes is the raw readers' own decoding
(``semrel_jax.data.images.load_image``), so pixels match exactly. Reads are deterministic, and grain worker
processes can make them (a source pickles as its directory, split and attributes; each process opens the
files itself). A copy is a :class:`semrel_jax.data.source.Source` like the raw one. An example the raw reader replaced by the next readable one (``on_bad_data='skip'``, corrupt
image) is stored as it was served, i.e. replaced, exactly as the raw source serves it.

**The TFDS route, without TensorFlow** (what tensorflow-datasets 4.9.10 does with TF absent):

* ``tfds.core.GeneratorBasedBuilder(file_format='array_record').download_and_prepare()`` runs only while a
  split's serialized examples fit TFDS's 1 GB in-memory shuffle buffer: past it the shuffler spills to
  temporary bucket files through ``tf.io.gfile`` and fails with "No module named 'tensorflow'". And record
  ``i`` must stay record ``i`` (``disable_shuffling=True``), which sends every integer key to the first
  bucket, i.e. the whole split into memory at once. So the builder cannot prepare VQA v2 / COCO-size data.
* ``tfds.core.SequentialWriter(ds_info, ..., file_format='array_record')`` (used here) writes examples in the
  order given straight into ArrayRecord shards, as ``tf.train.Example`` protos built by TFDS's own TF-free
  serializer, and writes ``dataset_info.json`` / ``features.json`` / ``metadata.json``. Constant memory.
* Reading: ``tfds.builder_from_directory(dir).as_data_source(split)`` (an ``ArrayRecordDataSource``, parsed
  with NumPy: ``Text`` comes back as bytes). No TF. The copy is a standard TFDS dataset directory.

Layout (``<prepared_dir>`` = ``data.prepared_dir`` = the CLI's ``--out``; it may hold several datasets)::

    <prepared_dir>/semrel_prepared/<data.name>/1.0.0/
        dataset_info.json  features.json  metadata.json
        semrel_prepared-train.array_record-00000 ...            one row per example
        semrel_prepared-train_images.array_record-00000 ...     one row per distinct image of the split
        semrel_prepared-train_metadata.array_record-00000 ...   one row per 1,024 examples' metadata
        semrel_prepared-eval.array_record-00000 ...             (and eval_images, eval_metadata)

Features (one set for all splits):

* ``json`` (Text): on example rows, the example as a JSON object, every field but the image; ``"image": null``
  keeps the image's place (so the key order is the source's). Types must survive JSON exactly (checked). On
  ``*_metadata`` rows, a JSON list of what the source's ``metadata(i)`` gives for 1,024 consecutive examples:
  evaluation's per-example metadata and the bulk scans (``texts()``) read these without touching example or
  image rows.
* ``image_index`` (int64): the row of ``<split>_images`` holding the example's image; -1 without one.
* ``image`` (bytes, on ``*_images`` rows): the encoded image: the file's bytes as they were on disk
  (PNG/JPEG/...) when they decode to the example's pixels, else lossless PNG (generated images).
  Examples sharing an image (VQA questions, COCO captions, Sort-of-CLEVR questions) share one row.

``metadata.json`` holds, per split, the row counts, the source's ``scoring_data()`` (ScienceQA ``problems``),
its own ``texts()`` where they are not its metadata's questions and answers (the generated sources), and the
``record_settings`` (``semrel_jax.data.registry``): a copy is only read under the same settings (else an
error names them). A copy of another ``FORMAT`` is not read (prepare it again).

**Complete or not.** Preparation writes to ``incomplete.<random>_1.0.0`` next to the final directory
and renames it into place once every split is closed (TFDS's own convention), so an interrupted run never
leaves a partial copy under the final name; preparing again ignores (and leaves) such leftovers. A final
directory is only taken as complete when its dataset_info lists all six splits, every shard it names
exists and holds exactly the records dataset_info gives (a truncated or missing shard fails), and its
metadata matches; an incomplete one is prepared again by ``prepare``, and is an error to read.
"""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import io
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from semrel_jax.data import images as images_lib
from semrel_jax.data.records import RecordSource
from semrel_jax.errors import DataError

BUILDER_NAME = "semrel_prepared"
VERSION = "1.0.0"
FORMAT = 2  # of the metadata and features below; bump when they change (2: every source has metadata)
SPLITS = ("train", "eval")  # build_sources' (train_source, eval_source)
METADATA_CHUNK = 1024  # examples per *_metadata row
_META_KEY = "semrel_prepared"
_CACHE = 8  # decoded images / parsed metadata rows kept per source (neighbouring examples share them)


class PreparedDataError(DataError):
    """A prepared copy that is missing, incomplete, or made with other settings; the message names the path."""


def dataset_dir(prepared_dir: str, name: str) -> str:
    """The TFDS version directory of dataset ``name`` under ``prepared_dir``."""
    return os.path.join(prepared_dir, BUILDER_NAME, name, VERSION)


def _features():
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "json": tfds.features.Text(),
        "image_index": np.int64,
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
    })


def _row(json_text: str = "", image_index: int = -1, image: bytes = b"") -> dict[str, Any]:
    return {"json": json_text, "image_index": image_index, "image": image}


# ---------------------------------------------------------------------------------------------- checking


def _inspect(directory: str) -> tuple[str | None, dict | None]:
    """``(None, metadata)`` for a complete prepared copy at ``directory``, else ``(why it is not, None)``."""
    if not os.path.isdir(directory):
        leftovers = [f for f in _siblings(directory) if f.startswith("incomplete.")]
        return "no prepared copy there" + (f" (an interrupted preparation left {leftovers})" if leftovers else ""), None
    if not os.path.isfile(os.path.join(directory, "dataset_info.json")):
        return "dataset_info.json is missing", None
    try:
        reason = _incomplete_files(directory, meta := _read_meta(directory))
    except Exception as e:  # noqa: BLE001 - any unreadable piece means "not complete"
        reason = f"unreadable ({type(e).__name__}: {e})"
    return (reason, None) if reason else (None, meta)


def _incomplete_files(directory: str, meta: dict) -> str | None:
    """What is wrong with the metadata, splits or shards of ``directory``; None when nothing is."""
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"metadata.json is not of format {FORMAT}"
    if not meta.get("complete"):
        return "metadata.json does not mark the copy complete"
    splits = tfds.builder_from_directory(directory).info.splits
    for split in SPLITS:
        for suffix, key in (("", "length"), ("_images", "distinct_images"), ("_metadata", "metadata_rows")):
            name = split + suffix
            if name not in splits:
                return f"split {name!r} is missing from dataset_info.json"
            found, expected = splits[name].num_examples, meta["splits"][split][key]
            if found != expected:
                return f"split {name!r} has {found} rows, metadata.json says {expected}"
    for info in splits.values():
        for path, expected in zip(info.filepaths, info.shard_lengths):
            name = os.path.basename(path)
            if not os.path.isfile(path):
                return f"shard {name} is missing"
            try:
                reader = array_record_module.ArrayRecordReader(os.fspath(path))
                try:
                    found = reader.num_records()
                finally:
                    reader.close()
            except Exception as e:  # noqa: BLE001
                return f"shard {name} does not read (truncated?): {type(e).__name__}: {e}"
            if found != expected:
                return f"shard {name} holds {found} records, dataset_info.json says {expected} (truncated?)"
    return None


def _siblings(directory: str) -> list[str]:
    parent = os.path.dirname(directory)
    return sorted(os.listdir(parent)) if os.path.isdir(parent) else []


def _read_meta(directory: str) -> dict:
    """Our part of TFDS's metadata.json (read directly: TFDS loads it lazily, and only we need it)."""
    with open(os.path.join(directory, "metadata.json"), encoding="utf-8") as f:
        return json.load(f)[_META_KEY]


def _settings_diff(stored: dict, wanted: dict) -> list[str]:
    keys = list(dict.fromkeys([*wanted, *stored]))
    return [f"{k}: prepared {stored.get(k)!r}, config {wanted.get(k)!r}"
            for k in keys if stored.get(k) != wanted.get(k)]


def check(prepared_dir: str, name: str, settings: dict) -> tuple[str, dict]:
    """``(directory, metadata)`` of the complete copy of dataset ``name`` under ``prepared_dir`` made with
    ``settings`` (the config's ``record_settings``); else :class:`PreparedDataError` saying what to do."""
    directory = dataset_dir(prepared_dir, name)
    command = f"python -m semrel_jax.data.prepare --config=<this config> --out={prepared_dir}"
    if not os.path.isdir(prepared_dir):
        raise PreparedDataError(f"data.prepared_dir={prepared_dir!r} does not exist; prepare it first: {command}")
    reason, meta = _inspect(directory)
    if reason is not None:
        raise PreparedDataError(
            f"data.prepared_dir={prepared_dir!r} has no complete prepared copy of {name!r} at {directory}: {reason}. "
            f"Prepare it (again): {command}"
        )
    diff = _settings_diff(meta["settings"], settings)
    if diff:
        raise PreparedDataError(
            f"the prepared copy at {directory} was made with other data settings ({'; '.join(diff)}); "
            f"prepare this config into another directory, or again with --overwrite"
        )
    return directory, meta


# ---------------------------------------------------------------------------------------------- reading


def open_sources(prepared_dir: str, name: str, settings: dict) -> tuple["PreparedSource", "PreparedSource"]:
    """``(train_source, eval_source)`` read from the copy :func:`check` finds (checked first)."""
    directory, meta = check(prepared_dir, name, settings)
    train, evaluation = (PreparedSource(directory, split, meta["splits"][split]) for split in SPLITS)
    return train, evaluation


class _Cache:
    """A few recent values by key (thread-safe; the oldest goes first)."""

    def __init__(self, size: int):
        self.size, self._lock, self._items = size, threading.Lock(), {}

    def get(self, key, make):
        with self._lock:
            value = self._items.get(key)
        if value is None:
            value = make(key)
            with self._lock:
                if len(self._items) >= self.size:
                    self._items.pop(next(iter(self._items)), None)
                self._items[key] = value
        return value


class PreparedSource:
    """One prepared split as a :class:`semrel_jax.data.source.Source`: ``source[i]``, ``metadata(i)``,
    ``texts()`` and ``scoring_data()`` are the raw source's. Not grouped by image (``image_groups``: None).
    Images are decoded per read (a few recent ones are cached; every read returns a fresh writable array,
    as the raw readers do).
    """

    def __init__(self, directory: str, split: str, info: dict):
        self.directory, self.split = directory, split
        self.prepared_from = info["source"]
        self._length = int(info["length"])
        self._chunk = int(info["metadata_chunk"])  # examples per *_metadata row
        self._texts = info["texts"]
        self._scoring_data = info["scoring_data"]
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, Any] | None = None
        self._images = _Cache(_CACHE)
        self._metadata_rows = _Cache(_CACHE)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_sources", "_images", "_metadata_rows"):
            state.pop(key)
        return state  # each process opens the files itself

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.directory!r}, split={self.split!r}, len={len(self)}; "
                f"prepared from {self.prepared_from})")

    def __len__(self) -> int:
        return self._length

    def _source(self, suffix: str = ""):
        """The TFDS data source of ``<split><suffix>`` (opened on first use, in each process)."""
        if self._sources is None:
            with self._lock:
                if self._sources is None:
                    import tensorflow_datasets as tfds

                    builder = tfds.builder_from_directory(self.directory)
                    names = [f"{self.split}{s}" for s in ("", "_images", "_metadata")]
                    self._sources = {n: builder.as_data_source(n) for n in names if builder.info.splits[n].num_examples}
        return self._sources[self.split + suffix]

    def _check_index(self, index: Any) -> int:
        i = images_lib.as_index(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range [0, {len(self)})")
        return i

    def _decode(self, k: int) -> np.ndarray:
        image = images_lib.load_image(io.BytesIO(self._source("_images")[k]["image"]))
        image.setflags(write=False)
        return image

    def __getitem__(self, index: Any) -> dict[str, Any]:
        row = self._source()[self._check_index(index)]
        example = json.loads(row["json"])
        k = int(row["image_index"])
        if k >= 0:
            example["image"] = self._images.get(k, self._decode).copy()
        return example

    def _metadata_row(self, r: int) -> list[dict]:
        return self._metadata_rows.get(r, lambda r: json.loads(self._source("_metadata")[r]["json"]))

    def _metadata(self, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """The stored metadata of examples ``start..stop`` (shared objects: do not modify)."""
        stop, n = len(self) if stop is None else stop, self._chunk
        for r in range(start // n, (stop + n - 1) // n):
            row = self._metadata_row(r)
            yield from row[max(start, r * n) - r * n : min(stop, (r + 1) * n) - r * n]

    def metadata(self, index: int) -> dict[str, Any]:
        """The raw source's ``metadata(index)`` (nothing is decoded)."""
        i = self._check_index(index)
        return copy.deepcopy(self._metadata_row(i // self._chunk)[i % self._chunk])

    def image_groups(self, size: int) -> None:
        return None

    def scoring_data(self) -> dict[str, Any]:
        return copy.deepcopy(self._scoring_data)

    def texts(self) -> Iterator[str]:
        """Every question and answer text, as the raw source's ``texts()`` gives them (no image is read)."""
        if self._texts is not None:
            yield from self._texts
            return
        for meta in self._metadata():
            for key in ("question", "answer"):
                if meta.get(key):
                    yield meta[key]


# ---------------------------------------------------------------------------------------------- preparing


def _same(a: Any, b: Any) -> bool:
    """Equal with equal types all the way down (what a JSON round trip must give back)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _to_json(value: Any, what: str) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} cannot be stored as JSON: {e}") from None
    if not _same(json.loads(text), value):
        keys = list(value) if isinstance(value, dict) else []
        bad = [k for k in keys if not _same(json.loads(json.dumps(value[k])), value[k])] or "a value"
        raise ValueError(f"{what}: {bad} does not survive JSON with its type (tuples, numpy scalars, ...)")
    return text


def _digest(image: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((image.shape, image.dtype.str)).encode())
    h.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    return h.digest()


def _image_file(source, example: dict) -> str | None:
    """The file the raw reader decoded this example's image from (the on-disk readers), else None."""
    # ``index`` is the served example's own (a skipped corrupt image is served by the next example).
    index = example.get("index")
    if isinstance(source, RecordSource) and isinstance(index, int) and 0 <= index < len(source):
        return source.image_path(index)
    return None


def _encode(image: np.ndarray, path: str | None) -> bytes:
    """The file's own bytes when they decode to exactly ``image``, else a PNG of it; checked either way."""
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = f.read()
            if np.array_equal(images_lib.load_image(io.BytesIO(data)), image):
                return data
        except Exception:  # noqa: BLE001 - the file changed since the read: store the pixels that were read
            pass
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    data = buffer.getvalue()
    if not np.array_equal(images_lib.load_image(io.BytesIO(data)), image):
        raise AssertionError("a PNG of the image does not decode to the same pixels")
    return data


def _check_image(image: Any, index: int) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3):
        what = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"example {index}: 'image' must be a uint8 [H, W, 3] array or None, got {what}")


def _write_split(writer, split: str, source, pool, chunk: int) -> dict:
    """Writes ``split``, ``<split>_images`` and ``<split>_metadata`` from ``source``; returns the split's metadata."""
    n = len(source)
    claimed: set[bytes] = set()
    lock = threading.Lock()

    def load(i: int):
        example = source[i]
        if not isinstance(example, dict):
            raise TypeError(f"{split} example {i} is a {type(example).__name__}, not a dict")
        image, digest, payload = example.get("image"), None, None
        if image is not None:
            _check_image(image, i)
            digest = _digest(image)
            with lock:
                first = digest not in claimed
                claimed.add(digest)
            if first:  # encode each distinct image once, in whichever thread meets it first
                payload = _encode(image, _image_file(source, example))
        return example, digest, payload, source.metadata(i)

    image_rows: dict[bytes, int] = {}
    per_row = METADATA_CHUNK
    pending: list[str] = []  # metadata JSON of examples not in a *_metadata row yet
    metadata_rows = 0
    raw_texts = iter(source.texts())
    texts_match = True
    for start in range(0, n, chunk):
        results = list(pool.map(load, range(start, min(n, start + chunk))))
        payloads = {digest: payload for _, digest, payload, _ in results if payload is not None}
        examples, images, metadata = [], [], []
        for i, (example, digest, _, meta) in enumerate(results, start):
            k = -1
            if digest is not None:
                if digest not in image_rows:
                    image_rows[digest] = len(image_rows)
                    images.append(_row(image=payloads[digest]))
                k = image_rows[digest]
            fields = {key: (None if key == "image" else value) for key, value in example.items()}
            examples.append(_row(_to_json(fields, f"{split} example {i}"), k))
            pending.append(_to_json(meta, f"{split} metadata of example {i}"))
            if texts_match:
                for key in ("question", "answer"):
                    if meta.get(key) and next(raw_texts, None) != meta[key]:
                        texts_match = False
        while len(pending) >= per_row or (pending and start + chunk >= n):
            metadata.append(_row("[" + ",".join(pending[:per_row]) + "]"))
            del pending[:per_row]
        metadata_rows += len(metadata)
        writer.add_examples({split: examples, f"{split}_images": images, f"{split}_metadata": metadata})
    if next(raw_texts, None) is not None:
        texts_match = False
    texts = None
    if not texts_match:  # a source with texts() of its own: store them
        texts = list(source.texts())
        if len(texts) > 100_000:
            logging.warning("%s: storing %d texts() strings in metadata.json", split, len(texts))
    scoring_data = source.scoring_data()
    _to_json(scoring_data, f"{split} scoring_data()")
    return {
        "length": n,
        "distinct_images": len(image_rows),
        "metadata_rows": metadata_rows,
        "metadata_chunk": per_row,
        "source": repr(source),
        "texts": texts,
        "scoring_data": scoring_data,
        "skipped": dict(getattr(source, "skipped", {}) or {}),
    }


def _write(directory: str, settings: dict, provenance: dict, sources_by_split: dict, threads: int,
           examples_per_shard: int) -> None:
    import tensorflow_datasets as tfds

    os.makedirs(directory)
    meta = {"format": FORMAT, "settings": settings, "provenance": provenance, "complete": False}
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(
            name=BUILDER_NAME, version=tfds.core.Version(VERSION), data_dir=directory,
            module_name=__name__, config_name=settings["name"],
        ),
        description=f"semrel_jax prepared copy of data.name={settings['name']!r} (see {__name__}).",
        features=_features(),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict({_META_KEY: meta}),
    )
    writer = tfds.core.SequentialWriter(
        ds_info=info, max_examples_per_shard=examples_per_shard, file_format="array_record"
    )
    writer.initialize_splits([split + s for split in sources_by_split for s in ("", "_images", "_metadata")])
    splits = {}
    for split, source in sources_by_split.items():
        # Threads pay where Pillow decodes image files (without the GIL); generated data is pure Python.
        n = max(1, threads) if isinstance(source, RecordSource) else 1
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            splits[split] = _write_split(writer, split, source, pool, chunk=max(64, 16 * n))
        logging.info("prepared %s: %d examples, %d distinct images", split, splits[split]["length"],
                     splits[split]["distinct_images"])
    meta.update(splits=splits, complete=True)  # metadata.json is rewritten by close_all
    writer.close_all()


def prepare(out: str, name: str, settings: dict, build: Callable[[], tuple[Any, Any]], *, provenance: dict,
            overwrite: bool = False, threads: int = 0, examples_per_shard: int = 10_000) -> str:
    """Prepares ``build()``'s ``(train_source, eval_source)`` as dataset ``name`` under ``out``; returns the directory.

    ``settings``: the config's ``record_settings`` (stored; a copy is only read under the same ones);
    ``provenance``: where the raw files were (stored, informative). ``build`` is only called when there is
    work to do: a no-op when ``out`` already holds a complete copy made with the same settings; a copy with
    other settings is an error unless ``overwrite``; an incomplete one is prepared again. ``threads``: threads
    reading the on-disk datasets (0: one per CPU, at most 8); the generated ones are read by one. Run it in one
    process (not once per host): concurrent preparations of the same directory are not coordinated.
    """
    directory = dataset_dir(out, name)
    reason, meta = _inspect(directory)
    if reason is None:
        diff = _settings_diff(meta["settings"], settings)
        if not diff and not overwrite:
            logging.info("%s is already prepared (same settings): nothing to do", directory)
            return directory
        if diff and not overwrite:
            raise PreparedDataError(
                f"{directory} holds a copy prepared with other data settings ({'; '.join(diff)}); "
                "use another --out, or --overwrite to replace it"
            )
    elif os.path.exists(directory):
        logging.warning("%s is incomplete (%s): preparing it again", directory, reason)
    train, evaluation = build()
    threads = threads or min(8, os.cpu_count() or 1)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = os.path.join(os.path.dirname(directory), f"incomplete.{uuid.uuid4().hex}_{VERSION}")
    try:
        _write(tmp, settings, provenance, {"train": train, "eval": evaluation}, threads, examples_per_shard)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reason, _ = _inspect(directory)
    if reason is not None:
        raise PreparedDataError(f"{directory} failed its completeness check right after preparation: {reason}")
    return directory
