"""Image files to uint8 RGB arrays, and the errors of the on-disk readers' bad-data policy.

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

The bad-data policy that uses these errors: :mod:`semrel_jax.data.records`.
"""

from __future__ import annotations

import errno
import operator
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

from semrel_jax import errors

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


class BadDataError(errors.DataError):
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
