"""Image files to uint8 RGB arrays, and the bad-data policy shared by the on-disk dataset readers.

Loading (:func:`load_image`): Pillow decodes the whole file (``Image.load``; truncated files raise,
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set) and the pixels come back as a fresh, writable
``uint8 [H, W, 3]`` RGB array:

* ``RGB`` as is; ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` via ``Image.convert("RGB")``.
* Alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency entry) is dropped, not composited: this is
  what the reference loaders do (``Image.open(...).convert('RGB')`` in MemVP/LaVIN/LLaVA, the HF image
  processors' ``convert_rgb``), so features match theirs.
* 16-bit grayscale (``I;16*``) is scaled to 8 bits (``round(v / 257)``); ``I`` / ``F`` images are taken as
  8-bit when all values lie in ``[0, 255]``, else as 16-bit (clipped to ``[0, 65535]``, then ``/ 257``).
* Multi-frame files (GIF, TIFF) give their first frame. EXIF orientation is NOT applied (the pixels as
  stored, as the reference loaders and the HF processors read them).

Bad-data policy (``on_bad_data``), for every reader built on :class:`RecordSource`. A *record* is one
entry of the dataset's own JSON (a ScienceQA problem, a VQA question, a Karpathy image entry, a LLaVA
conversation); one record may give several examples (captions, turns). Bad records have a reason:

* ``missing_file``: the record names an image file that does not exist;
* ``corrupt_image``: the file exists but does not decode (truncated, not an image, decompression bomb);
* ``malformed_record``: the record itself is unusable (missing or mistyped fields, answer index out of
  range, unknown roles, a placeholder without an image, ...).

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

import errno
import operator
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

MISSING_FILE = "missing_file"
CORRUPT_IMAGE = "corrupt_image"
MALFORMED_RECORD = "malformed_record"
REASONS: tuple[str, ...] = (MISSING_FILE, CORRUPT_IMAGE, MALFORMED_RECORD)
POLICIES: tuple[str, ...] = ("error", "skip")

_REASON_TEXT = {
    MISSING_FILE: "image file is missing",
    CORRUPT_IMAGE: "image file is corrupt or truncated",
    MALFORMED_RECORD: "malformed record",
}
# What Pillow raises for undecodable data (errno-less OSErrors: "image file is truncated", UnidentifiedImageError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
_MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


class BadDataError(ValueError):
    """A bad record under ``on_bad_data='error'``; the message names dataset, record id, path and reason."""

    def __init__(self, dataset: str, record_id: Any, path: str | None, reason: str, detail: str = ""):
        self.dataset, self.record_id, self.path, self.reason, self.detail = dataset, record_id, path, reason, detail
        where = f"; path: {path}" if path else ""
        what = _REASON_TEXT.get(reason, reason) + (f": {detail}" if detail else "")
        super().__init__(
            f"{dataset}: bad record {record_id!r} [{reason}] {what}{where}. "
            "Fix the data, or set on_bad_data='skip' to leave such records out (they are counted and logged)."
        )

    def __reduce__(self):  # picklable across grain worker processes
        return type(self), (self.dataset, self.record_id, self.path, self.reason, self.detail)


class Malformed(Exception):
    """Raised by a reader's record parser; becomes a ``malformed_record`` under the policy."""


class UnreadableImage(Exception):
    """An image file that is missing or does not decode (``reason`` says which)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A decoded PIL image -> fresh ``uint8 [H, W, 3]`` RGB (conversions: see the module docstring)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if values.ndim == 3:  # defensive: multi-channel integer data
            values = values[..., 0]
        eight_bit = not mode.startswith("I;16") and values.size and values.min() >= 0 and values.max() <= 255
        gray = values if eight_bit else np.clip(values, 0, 65535) / 257.0
        gray = np.rint(gray).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's own route for palette transparency; alpha then dropped
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.array(image, dtype=np.uint8)  # a copy: writable, independent of the PIL buffer
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"conversion to RGB gave shape {array.shape}")
    return array


def load_image(path: str) -> np.ndarray:
    """Decodes ``path`` fully -> ``uint8 [H, W, 3]`` RGB. Raises Pillow's/OS errors unchanged."""
    with Image.open(path) as image:
        image.load()
        return to_rgb_array(image)


def read_image(path: str) -> np.ndarray:
    """:func:`load_image`, with data problems turned into :class:`UnreadableImage`.

    Environment problems (permission denied, I/O errors: errno-carrying OSErrors other than "not found")
    propagate unchanged: they say nothing about the data and must never be skipped.
    """
    try:
        return load_image(path)
    except OSError as e:
        if e.errno in _MISSING_ERRNOS:
            raise UnreadableImage(MISSING_FILE, f"{type(e).__name__}: {e.strerror or e}") from e
        if e.errno is not None:
            raise
        raise UnreadableImage(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from e
    except _DECODE_ERRORS as e:
        raise UnreadableImage(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from e


def as_index(index: Any) -> int:
    if isinstance(index, (bool, np.bool_)):
        raise TypeError(f"index must be an integer, got {type(index).__name__}")
    try:
        return operator.index(index)
    except TypeError:
        raise TypeError(f"index must be an integer, got {type(index).__name__}") from None


def check_policy(on_bad_data: str) -> str:
    if on_bad_data not in POLICIES:
        raise ValueError(f"on_bad_data must be one of {POLICIES}, got {on_bad_data!r}")
    return on_bad_data


class RecordSource:
    """Base of the on-disk readers: a grain-compatible random-access source with the bad-data policy.

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
                image = read_image(path)
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
