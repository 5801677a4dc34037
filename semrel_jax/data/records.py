"""The base of the on-disk dataset readers: records -> examples, under the bad-data policy.

Bad-data policy (``on_bad_data``), for every reader built on :class:`RecordSource`. A *record* is one
entry of the dataset's own JSON (a ScienceQA problem, a VQA question, a Karpathy image entry, a LLaVA
conversation); one record may give several examples (captions, turns). Bad records have a reason:

* ``missing_file``: the record names an image file that does not exist;
* ``corrupt_image``: the file exists but does not decode (truncated, not an image, decompression bomb);
* ``malformed_record``: the record itself is unusable (missing or mistyped fields, answer index out of
  range, unknown roles, a placeholder without an image, ...), or its image path leaves the image root
  (``..``, an absolute path, a symlink pointing outside: :func:`path_inside`; a dataset file never makes
  a reader open a file outside the directory the config names for its images).

``"error"`` (the default) raises :class:`BadDataError` naming the dataset, the record id, the image path
(when there is one) and the reason. ``"skip"``:

* malformed records and missing files are found when the source is built (every distinct image path is
  ``stat``-ed once) and their records are left out: the source never contains them;
* corrupt images are found when an example is read (decoding every file up front would take hours on
  the large sets; pass ``verify_images=True`` to decode them all at construction instead, which makes the
  source exact: then no read-time replacement can happen). A read that hits a corrupt (or since-deleted)
  image returns the NEXT example, ``index + 1, index + 2, ...`` (wrapping around), whose image reads. The
  replacement is deterministic (it depends only on which files decode), its ``index`` is its own (so
  question, answer and metadata always belong to the returned image: never a silent wrong answer), and
  the bad record is remembered so it is not decoded again.

``source.skipped`` maps every reason to the number of distinct records dropped or replaced, and each one
is logged (a summary at construction, one warning per corrupt record at read time). Read-time counts
live in the process that did the read: with grain worker processes, each worker counts (and logs) its
own. I/O failures that are not about the data (permission denied, EIO, ...) are never skipped: they
raise whatever the policy.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from absl import logging

from semrel_jax import errors
from semrel_jax.data.images import (
    CORRUPT_IMAGE, MALFORMED_RECORD, MISSING_FILE, POLICIES, REASONS, BadDataError, Malformed, UnreadableImage,
    as_index, check_policy, read_image,
)


@functools.lru_cache(maxsize=4096)
def _real_directory(directory: str) -> str:
    """``realpath`` of a directory, once per directory (images share few): one ``lstat`` per record, not per component."""
    return os.path.realpath(directory)


def path_inside(root: str, *parts: str) -> str:
    """``root/part/...`` for a path taken from a dataset file; :class:`Malformed` when it leaves ``root``.

    Refused: absolute parts, ``..`` that climbs out, and symlinks (anywhere on the path) that resolve
    outside ``root``. The returned path is the joined one (not resolved), so messages show what the file said.
    """
    relative = os.path.join(*parts) if parts else ""
    if any(os.path.isabs(p) for p in parts):
        raise Malformed(f"image path {relative!r} is absolute; it must be relative to the image root {root!r}")
    joined = os.path.join(root, relative)
    head, tail = os.path.split(joined)
    resolved = os.path.normpath(os.path.join(_real_directory(head), tail))
    if os.path.islink(resolved):
        resolved = os.path.realpath(resolved)
    inside = _real_directory(root).rstrip(os.sep) + os.sep
    if not (resolved + os.sep).startswith(inside):
        raise Malformed(f"image path {relative!r} resolves to {resolved!r}, outside the image root {root!r}")
    return joined


def policies(on_bad_data: str) -> tuple[dict, dict]:
    """Reader keyword arguments ``(train, eval)`` under ``data.on_bad_data``.

    A corrupt eval image must never be replaced by its neighbour (that example would be scored twice), so
    under ``skip`` the eval reader decodes every image up front.
    """
    return dict(on_bad_data=on_bad_data), dict(on_bad_data=on_bad_data, verify_images=on_bad_data == "skip")


def validate(c, name: str, required: tuple[str, ...]) -> None:
    """The config checks every on-disk dataset shares: the policy, and the ``data`` keys naming its files
    (``required``; a prepared copy is read without them)."""
    errors.one_of(c, "data.on_bad_data", POLICIES)
    for key in required if not c.data.prepared_dir else ():
        errors.check(bool(c.data[key]), f"data.{key}", f"required for data.name={name!r}")


class RecordSource:
    """Base of the on-disk readers: a :class:`semrel_jax.data.source.Source` with the bad-data policy.

    Subclasses parse their files into *entries* (one per example; plain picklable values), each tied to
    a record id and an image path (``None`` for text-only), by calling :meth:`_admit`, and implement
    :meth:`_fields` (the example without its image). ``source[i]`` is ``_fields(i)`` plus ``'image'``
    (``uint8 [H, W, 3]``, or ``None`` for text-only examples) and ``'has_image'`` (1 / 0).
    """

    name = "dataset"

    def __init__(self, on_bad_data: str = "error", verify_images: bool = False):
        self.on_bad_data = check_policy(on_bad_data)
        self.verify_images = bool(verify_images)
        self.skipped: dict[str, int] = {reason: 0 for reason in REASONS}
        self._entries: list[Any] = []
        self._record_ids: list[Any] = []  # per entry
        self._paths: list[str | None] = []  # per entry
        self._bad_records: set = set()  # corrupt records found at read time (this process)
        self._images = _ImageCache(0)

    def cache_images(self, max_bytes: int) -> None:
        """Keep decoded images, up to ``max_bytes`` in all, so that an image met again is not decoded again
        (``data.image_cache_mb``); the first images met are kept, later ones are decoded each time."""
        self._images = _ImageCache(max_bytes)

    @property
    def image_cache(self) -> _ImageCache:
        return self._images

    # ------------------------------------------------------------------ construction

    def _bad(self, record_id: Any, path: str | None, reason: str, detail: str, examples: int) -> None:
        if self.on_bad_data == "error":
            raise BadDataError(self.name, record_id, path, reason, detail)
        self.skipped[reason] += 1
        logging.log_first_n(
            logging.WARNING, "%s: skipping record %r (%s: %s; path %s; %d example(s))", 20,
            self.name, record_id, reason, detail, path, examples,
        )

    def _admit(self, records: Iterable[tuple[Any, Any]], parse: Callable[[Any, Any], tuple[str | None, list[Any]]]) -> None:
        """Fills the source from ``(record_id, raw_record)`` pairs, applying the policy.

        ``parse(record_id, raw)`` returns ``(image_path or None, [entry, ...])`` or raises :class:`Malformed`.
        """
        parsed: list[tuple[Any, str | None, list[Any]]] = []
        for record_id, raw in records:
            try:
                path, entries = parse(record_id, raw)
            except Malformed as e:
                self._bad(record_id, None, MALFORMED_RECORD, str(e), 0)
                continue
            if not entries:
                self._bad(record_id, path, MALFORMED_RECORD, "the record gives no example", 0)
                continue
            parsed.append((record_id, path, entries))
        file_ok: dict[str, tuple[str, str] | None] = {}  # path -> None (good) or (reason, detail)
        for record_id, path, entries in parsed:
            if path is not None:
                if path not in file_ok:
                    file_ok[path] = self._check_file(path)
                problem = file_ok[path]
                if problem is not None:
                    self._bad(record_id, path, problem[0], problem[1], len(entries))
                    continue
            for entry in entries:
                self._entries.append(entry)
                self._record_ids.append(record_id)
                self._paths.append(path)
        dropped = sum(self.skipped.values())
        if dropped:
            logging.warning("%s: %d example(s) kept; records left out by reason: %s", self.name, len(self._entries), self.skipped)

    def _check_file(self, path: str) -> tuple[str, str] | None:
        if not self.verify_images:
            if os.path.isfile(path):
                return None
            return MISSING_FILE, "no such file" if not os.path.exists(path) else "not a regular file"
        try:
            read_image(path)
        except UnreadableImage as e:
            return e.reason, e.detail
        return None

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self._entries)

    def _check_index(self, index: Any) -> int:
        i = as_index(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range [0, {len(self)})")
        return i

    def _fields(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def metadata(self, index: int) -> dict[str, Any]:
        """Example ``index`` without reading its image (``'image'`` absent; ``'has_image'`` present)."""
        i = self._check_index(index)
        return {**self._fields(i), "has_image": int(self._paths[i] is not None)}

    def texts(self) -> Iterator[str]:
        """Every question and answer text, in order (for building a tokenizer; no image is read)."""
        for i in range(len(self)):
            fields = self._fields(i)
            for key in ("question", "answer"):
                if fields.get(key):
                    yield fields[key]

    def record_id(self, index: int) -> Any:
        return self._record_ids[self._check_index(index)]

    def image_path(self, index: int) -> str | None:
        """The file example ``index``'s image is read from (None: text-only)."""
        return self._paths[self._check_index(index)]

    def image_groups(self, size: int) -> np.ndarray | None:
        """None: the on-disk readers do not group their examples by image."""
        return None

    def scoring_data(self) -> dict[str, Any]:
        """Nothing beyond the per-example metadata (ScienceQA overrides this)."""
        return {}

    def __getitem__(self, index: Any) -> dict[str, Any]:
        """Example ``index``: ``_fields`` + ``'image'`` (uint8 [H, W, 3] or None) + ``'has_image'``."""
        i = self._check_index(index)
        n = len(self)
        for step in range(n):
            j = (i + step) % n
            path = self._paths[j]
            if path is None:
                return {**self._fields(j), "image": None, "has_image": 0}
            record_id = self._record_ids[j]
            if record_id in self._bad_records:
                continue
            try:
                image = self._images.read(path)
            except UnreadableImage as e:
                if self.on_bad_data == "error":
                    raise BadDataError(self.name, record_id, path, e.reason, e.detail) from e
                self._bad_records.add(record_id)
                self.skipped[e.reason] += 1
                logging.warning(
                    "%s: record %r has an unreadable image (%s: %s; path %s); index %d is served by the next "
                    "readable example", self.name, record_id, e.reason, e.detail, path, j,
                )
                continue
            except OSError as e:  # not about the data (permission, EIO): never skipped, but say whose file it was
                if hasattr(e, "add_note"):
                    e.add_note(f"{self.name}: while reading the image of record {record_id!r} ({path})")
                raise
            return {**self._fields(j), "image": image, "has_image": 1}
        raise BadDataError(self.name, self._record_ids[i], self._paths[i], CORRUPT_IMAGE, "no example of the source has a readable image")


class _ImageCache:
    """Decoded images by path, up to ``max_bytes`` (0: none kept). ``read(path)`` is a fresh writable array either
    way. The prefetch threads share it: ``hits`` / ``decoded`` are for the log and may miss a concurrent count."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = int(max_bytes), 0
        self.hits = self.decoded = 0
        self._kept: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # two threads may decode one image at once: it is kept and counted once

    def __len__(self) -> int:
        return len(self._kept)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes}  # a grain worker's copy starts empty (small pickles)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])

    def read(self, path: str) -> np.ndarray:
        kept = self._kept.get(path)
        if kept is not None:
            self.hits += 1
            return kept.copy()
        image = read_image(path)
        self.decoded += 1
        if self.bytes + image.nbytes <= self.max_bytes:
            kept = image.copy()
            kept.setflags(write=False)
            with self._lock:
                if path not in self._kept and self.bytes + kept.nbytes <= self.max_bytes:
                    self._kept[path] = kept
                    self.bytes += kept.nbytes
        return image
