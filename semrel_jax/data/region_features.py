"""Pre-extracted region features by image id (bottom-up-attention detections, as LXMERT / VisualBERT use them).

Two on-disk formats:

* **npz, one file per image**: ``<directory>/<image_id>.npz`` holding ``features`` ``[N, D]`` float,
  ``boxes`` ``[N, 4]`` ``(x0, y0, x1, y1)`` in pixels, ``image_w`` and ``image_h`` (scalars). Read with
  ``allow_pickle=False``: an npz that needs pickle is malformed, never executed.
* **LXMERT TSV** (``*_obj36.tsv``): one image per line, tab-separated, no header, the fields ``FIELDS``:
  ``img_id``, ``img_h``, ``img_w``, ``objects_id``, ``objects_conf``, ``attrs_id``, ``attrs_conf``,
  ``num_boxes``, ``boxes``, ``features``; the last six are base64 of little-endian arrays: ids int64
  ``[N]``, confidences float32 ``[N]``, ``boxes`` float32 ``[N, 4]`` (pixels), ``features`` float32 ``[N, D]``.
  The file is indexed (byte offset per line) when the store is built; a line is decoded when read.

``store[i]`` / ``store.get(image_id)``: ``image_id`` (str), ``features`` float32 ``[N, D]``, ``boxes``
float32 ``[N, 4]`` ``(x0, y0, x1, y1)`` normalised to [0, 1] by the image size (the SemVLP model's box
input), ``num_boxes`` N, ``image_w``, ``image_h``. :func:`pad` batches items into the model's
``regions [B, M, D]``, ``boxes [B, M, 4]``, ``visual_valid [B, M]``.

Bad data (``on_bad_data``, as for images, ``semrel_jax.data.records``): a record is one image's features.
``malformed_record``: wrong shapes (``features`` not ``[N, feature_dim]``, ``boxes`` not ``[N, 4]``, N = 0,
a TSV field count or base64 length that disagrees with ``num_boxes``), non-finite values, boxes outside
the image or inverted, a duplicate id, an id whose file would leave the directory (:func:`records.path_inside`),
an npz that does not load. ``missing_file``: an npz named by ``image_ids`` that is absent. Checked when the
store is built: everything that needs no decoding (``verify=True`` decodes and checks every record then,
making the store exact). Checked when read: the rest; under ``skip`` a bad one is counted, ``store[i]``
serves the next good record (its own ``image_id``) and ``store.get`` returns None.
"""

from __future__ import annotations

import base64
import binascii
import glob
import os
import zipfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from absl import logging

from semrel_jax import errors, files
from semrel_jax.data import records
from semrel_jax.data.images import MALFORMED_RECORD, MISSING_FILE, BadDataError, Malformed, check_policy

FIELDS: tuple[str, ...] = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                           "num_boxes", "boxes", "features")
# the base64 fields: (dtype, values per box; None = feature_dim)
_ARRAYS = {"objects_id": ("<i8", 1), "objects_conf": ("<f4", 1), "attrs_id": ("<i8", 1), "attrs_conf": ("<f4", 1),
           "boxes": ("<f4", 4), "features": ("<f4", None)}
BOX_TOLERANCE = 1.0  # pixels a box may overhang its image (detectors round); normalised boxes are clipped


def check_regions(features: Any, boxes: Any, image_w: Any, image_h: Any, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [N, D], boxes float32 [N, 4] in [0, 1])``; :class:`Malformed` saying what is wrong."""
    features, boxes = np.asarray(features), np.asarray(boxes)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != feature_dim:
        raise Malformed(f"features have shape {features.shape}, expected [N > 0, {feature_dim}]")
    if boxes.shape != (features.shape[0], 4):
        raise Malformed(f"boxes have shape {boxes.shape}, expected [{features.shape[0]}, 4] (one per feature row)")
    if not (np.issubdtype(features.dtype, np.floating) and np.issubdtype(boxes.dtype, np.number)):
        raise Malformed(f"features / boxes must be float / numeric, got {features.dtype} / {boxes.dtype}")
    size = np.asarray([image_w, image_h], np.float64)
    if size.shape != (2,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise Malformed(f"image_w / image_h must be positive numbers, got {image_w!r} / {image_h!r}")
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(boxes))):
        raise Malformed("features or boxes hold NaN or infinite values")
    low, high = boxes[:, :2], boxes[:, 2:]
    if np.any(high < low) or np.any(low < -BOX_TOLERANCE) or np.any(high > size + BOX_TOLERANCE):
        raise Malformed(f"a box is inverted or leaves the {image_w}x{image_h} image")
    normalised = np.clip(boxes / np.tile(size, 2), 0.0, 1.0)
    return features.astype(np.float32), normalised.astype(np.float32)


def pad(items: Sequence[dict], max_regions: int) -> dict[str, np.ndarray]:
    """Items -> ``regions [B, M, D]``, ``boxes [B, M, 4]`` (zeros past an image's N), ``visual_valid [B, M]``;
    an image with more than M regions keeps its first M (detectors write them by confidence)."""
    dim = items[0]["features"].shape[1]
    regions = np.zeros((len(items), max_regions, dim), np.float32)
    boxes = np.zeros((len(items), max_regions, 4), np.float32)
    valid = np.zeros((len(items), max_regions), bool)
    for b, item in enumerate(items):
        n = min(item["num_boxes"], max_regions)
        regions[b, :n], boxes[b, :n], valid[b, :n] = item["features"][:n], item["boxes"][:n], True
    return {"regions": regions, "boxes": boxes, "visual_valid": valid}


def _scalar(value: np.ndarray, key: str) -> float:
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise Malformed(f"{key} must be one number, got {value.dtype} {value.shape}")
    return float(value.reshape(-1)[0])


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(features, boxes, image_w, image_h)`` as stored; :class:`Malformed` for a file that is not such an npz."""
    keys = ("features", "boxes", "image_w", "image_h")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise Malformed("a single .npy array, not an .npz archive")
        with loaded as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise Malformed(f"npz lacks {missing}")
            features, boxes, width, height = (npz[k] for k in keys)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # not about the data (permission, EIO): never skipped
        raise Malformed(f"not a readable npz ({type(e).__name__}: {e})") from None
    return features, boxes, _scalar(width, "image_w"), _scalar(height, "image_h")


def _b64_size(text: bytes) -> int:
    """Decoded byte count of a base64 field, without decoding it."""
    return len(text) // 4 * 3 - text[-2:].count(b"=") if len(text) % 4 == 0 else -1


class RegionFeatures:
    """Random access to the region features of a set of images (see the module docstring)."""

    name = "region_features"

    def __init__(self, feature_dim: int = 2048, on_bad_data: str = "error") -> None:
        self.feature_dim, self.on_bad_data = int(feature_dim), check_policy(on_bad_data)
        self.skipped = {MISSING_FILE: 0, MALFORMED_RECORD: 0}
        self._ids: list[str] = []
        self._where: list[Any] = []  # per record: an npz path, or (tsv path, byte offset)
        self._index: dict[str, int] = {}
        self._bad: set[int] = set()  # records found bad when read (this process)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_npz_dir(cls, directory: str, image_ids: Iterable[Any] | None = None, *, verify: bool = False,
                     **kwargs) -> "RegionFeatures":
        """``<directory>/<image_id>.npz`` for each of ``image_ids`` (default: every ``*.npz`` there, by name)."""
        store = cls(**kwargs)
        if not os.path.isdir(directory):
            raise errors.PathError(f"region feature directory not found at {directory!r}.")
        if image_ids is None:
            image_ids = sorted(os.path.basename(p)[: -len(".npz")] for p in glob.glob(os.path.join(directory, "*.npz")))
        for image_id in image_ids:
            image_id = str(image_id)
            try:
                path = records.path_inside(directory, f"{image_id}.npz")
            except Malformed as e:
                store._reject(image_id, None, MALFORMED_RECORD, str(e))
                continue
            if not os.path.isfile(path):
                store._reject(image_id, path, MISSING_FILE, "no such file")
                continue
            store._add(image_id, path)
        return store._verified(verify)

    @classmethod
    def from_tsv(cls, path: str, *, verify: bool = False, **kwargs) -> "RegionFeatures":
        """Every line of an LXMERT feature TSV (indexed now, decoded when read)."""
        store = cls(**kwargs)
        files.require_file(path, "LXMERT region feature TSV")
        with open(path, "rb") as f:
            offset = 0
            for number, line in enumerate(f, start=1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                fields = line.rstrip(b"\r\n").split(b"\t")
                image_id = fields[0].decode("utf-8", "replace") if fields[0] else f"line {number}"
                try:
                    store._check_tsv_line(fields)
                except Malformed as e:
                    store._reject(image_id, path, MALFORMED_RECORD, f"line {number}: {e}")
                    continue
                store._add(image_id, (path, start))
        return store._verified(verify)

    def _check_tsv_line(self, fields: list[bytes]) -> None:
        """The cheap structural checks (no base64 is decoded): field count, sizes, base64 lengths vs num_boxes."""
        if len(fields) != len(FIELDS):
            raise Malformed(f"{len(fields)} tab-separated fields, expected {len(FIELDS)} {FIELDS}")
        row = dict(zip(FIELDS, fields))
        try:
            n, height, width = (int(row[k]) for k in ("num_boxes", "img_h", "img_w"))
        except ValueError:
            raise Malformed("num_boxes / img_h / img_w are not integers") from None
        if n <= 0 or height <= 0 or width <= 0:
            raise Malformed(f"num_boxes, img_h, img_w must be positive, got {n}, {height}, {width}")
        for key, (dtype, per_box) in _ARRAYS.items():
            expected = n * (per_box or self.feature_dim) * np.dtype(dtype).itemsize
            if _b64_size(row[key]) != expected:
                shape = f"[{n}]" if per_box == 1 else f"[{n}, {per_box or self.feature_dim}]"
                raise Malformed(f"{key} is not base64 of {dtype} {shape} ({expected} bytes)")

    def _add(self, image_id: str, where: Any) -> None:
        if image_id in self._index:
            self._reject(image_id, None, MALFORMED_RECORD, "duplicate image id (its first record is kept)")
            return
        self._index[image_id] = len(self._ids)
        self._ids.append(image_id)
        self._where.append(where)

    def _reject(self, image_id: str, path: str | None, reason: str, detail: str) -> None:
        if self.on_bad_data == "error":
            raise BadDataError(self.name, image_id, path, reason, detail)
        self.skipped[reason] += 1
        logging.log_first_n(logging.WARNING, "%s: skipping record %r (%s: %s; path %s)", 20,
                            self.name, image_id, reason, detail, path)

    def _verified(self, verify: bool) -> "RegionFeatures":
        """With ``verify``, every record decoded and checked now; the bad ones left out under ``skip``."""
        if verify:
            good = []
            for i, image_id in enumerate(self._ids):
                try:
                    self._load(i)
                    good.append(i)
                except Malformed as e:
                    self._reject(image_id, self._path(i), MALFORMED_RECORD, str(e))
            self._ids, self._where = [self._ids[i] for i in good], [self._where[i] for i in good]
            self._index = {image_id: i for i, image_id in enumerate(self._ids)}
        if sum(self.skipped.values()):
            logging.warning("%s: %d image(s) kept; records left out by reason: %s", self.name, len(self), self.skipped)
        return self

    # ------------------------------------------------------------------ reading

    def _path(self, i: int) -> str:
        where = self._where[i]
        return where if isinstance(where, str) else where[0]

    def _load(self, i: int) -> dict[str, Any]:
        """Record ``i`` decoded and checked; :class:`Malformed` when it is bad."""
        where = self._where[i]
        if isinstance(where, str):
            features, boxes, width, height = _read_npz(where)
        else:
            path, offset = where
            with open(path, "rb") as f:
                f.seek(offset)
                row = dict(zip(FIELDS, f.readline().rstrip(b"\r\n").split(b"\t")))
            try:
                arrays = {k: np.frombuffer(base64.b64decode(row[k], validate=True), dtype=_ARRAYS[k][0])
                          for k in ("boxes", "features")}
            except (binascii.Error, ValueError) as e:
                raise Malformed(f"undecodable base64 ({e})") from None
            width, height = float(row["img_w"]), float(row["img_h"])
            features, boxes = arrays["features"].reshape(-1, self.feature_dim), arrays["boxes"].reshape(-1, 4)
        features, boxes = check_regions(features, boxes, width, height, self.feature_dim)
        return {"image_id": self._ids[i], "features": features, "boxes": boxes, "num_boxes": features.shape[0],
                "image_w": width, "image_h": height}

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def image_ids(self) -> tuple[str, ...]:
        return tuple(self._ids)

    def __contains__(self, image_id: Any) -> bool:
        return str(image_id) in self._index

    def _read(self, i: int) -> dict[str, Any] | None:
        """Record ``i``, or None when it is bad under ``skip`` (counted and logged once)."""
        if i in self._bad:
            return None
        try:
            return self._load(i)
        except Malformed as e:
            if self.on_bad_data == "error":
                raise BadDataError(self.name, self._ids[i], self._path(i), MALFORMED_RECORD, str(e)) from None
            self._bad.add(i)
            self.skipped[MALFORMED_RECORD] += 1
            logging.warning("%s: record %r is bad when read (%s; path %s)", self.name, self._ids[i], e, self._path(i))
            return None

    def get(self, image_id: Any) -> dict[str, Any] | None:
        """The features of ``image_id`` (KeyError when the store has none; None when bad under ``skip``)."""
        return self._read(self._index[str(image_id)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Record ``index``; under ``skip`` a bad one is served by the next good record (its own ``image_id``)."""
        n = len(self)
        if not 0 <= int(index) < n:
            raise IndexError(f"index {index} out of range [0, {n})")
        for step in range(n):
            item = self._read((int(index) + step) % n)
            if item is not None:
                return item
        raise BadDataError(self.name, self._ids[int(index)], self._path(int(index)), MALFORMED_RECORD,
                           "no record of the store is readable")

    def __repr__(self) -> str:
        return f"RegionFeatures(feature_dim={self.feature_dim}, on_bad_data={self.on_bad_data!r}, len={len(self)})"


def feature_width(path: str) -> int:
    """The feature width of the store at ``path`` (a directory of ``<image_id>.npz`` or an LXMERT ``.tsv``), read
    from its first record that declares one, so a model's ``region_dim`` follows the files (2048 for
    bottom-up-attention, other widths for other detectors). PathError when nothing there says."""
    if os.path.isdir(path):
        for name in sorted(glob.glob(os.path.join(path, "*.npz"))):
            try:
                with np.load(name, allow_pickle=False) as f:
                    shape = f["features"].shape
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                continue  # a damaged file: the store's policy meets it when it is read
            if len(shape) == 2 and shape[1] > 0:
                return int(shape[1])
        raise errors.PathError(f"no readable <image_id>.npz with a [N, D] 'features' array in {path!r}.")
    files.require_file(path, "LXMERT region feature TSV")
    with open(path, "rb") as f:
        for line in f:
            fields = dict(zip(FIELDS, line.rstrip(b"\r\n").split(b"\t")))
            try:
                n = int(fields["num_boxes"])
                size = len(base64.b64decode(fields["features"], validate=True)) // 4
            except (KeyError, ValueError, binascii.Error):
                continue
            if n > 0 and size % n == 0 and size:
                return size // n
    raise errors.PathError(f"no line of {path!r} gives a feature width (features / num_boxes).")


def open_store(path: str, on_bad_data: str = "error") -> "RegionFeatures":
    """The store at ``path`` (``.tsv``: LXMERT's file; else a directory of npz files), its width from the files."""
    width = feature_width(path)
    if os.path.isdir(path):
        return RegionFeatures.from_npz_dir(path, feature_dim=width, on_bad_data=on_bad_data)
    return RegionFeatures.from_tsv(path, feature_dim=width, on_bad_data=on_bad_data)
