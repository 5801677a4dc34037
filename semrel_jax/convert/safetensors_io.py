"""Hugging Face safetensors checkpoints through the ``safetensors`` library, behind a header check.

Reading is ``safetensors.safe_open(path, "np")`` (bfloat16 included, as ``ml_dtypes.bfloat16``: checked
with safetensors 0.8, the pinned minimum), one tensor at a time, so a loader holds only the tensors in
flight; writing is ``safetensors.numpy.save_file``. What the library does not do, kept here:

* **the header is validated before anything is mapped or allocated**: an 8-byte length that is absurd or
  runs past the file, JSON that does not parse, an unknown dtype, a negative or non-integer shape, byte
  ranges that overlap the header, run past the end of the file, or disagree with shape x dtype, are all a
  :class:`CheckpointError` naming the file (and tensor) - never a huge allocation or a crash;
* a Hugging Face *directory* (single file or sharded with ``model.safetensors.index.json``) as one mapping;
* pickle checkpoints (``*.bin``, ``*.pth``, ...) are refused, never loaded: unpickling runs code.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from semrel_jax import errors

_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER_BYTES = 100 * 2**20  # the reference implementation's own limit
_PICKLE_PATTERNS = ("*.bin", "*.pth", "*.pt", "*.ckpt", "*.pkl")


class CheckpointError(errors.CheckpointError):
    """A checkpoint that cannot be loaded as asked: names the files/tensors involved (exit code 5)."""


def read_header(path: str) -> tuple[dict, dict[str, str]]:
    """``(entries, metadata)`` of a safetensors file, validated against the file's size (see module docstring)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length).")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path}: implausible safetensors header length {n} for a file of {size} bytes; "
                                  "the file is corrupt or truncated.")
        header = f.read(n)
    try:
        entries = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e}).") from None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object).")
    metadata = entries.pop("__metadata__", None) or {}
    data_bytes = size - 8 - n
    for name, entry in entries.items():
        _check_entry(path, name, entry, data_bytes)
    return entries, metadata


def _check_entry(path: str, name: str, entry, data_bytes: int) -> None:
    def bad(why: str):
        return CheckpointError(f"{path}: tensor {name!r} {why}; the file is corrupt.")

    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise bad("has no dtype/shape/data_offsets")
    if entry["dtype"] not in _ITEM_BYTES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}.")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"has shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise bad(f"has data_offsets {offsets!r}")
    if offsets[1] > data_bytes:
        raise CheckpointError(f"{path}: tensor {name!r} ends at data byte {offsets[1]} but the file has {data_bytes} "
                              "data bytes: truncated.")
    if offsets[1] - offsets[0] != int(np.prod(shape, dtype=np.int64)) * _ITEM_BYTES[entry["dtype"]]:
        raise bad(f"spans {offsets[1] - offsets[0]} bytes, not what shape {shape} of {entry['dtype']} needs")


class SafetensorsFile:
    """One ``*.safetensors`` file; ``get(name)`` reads one tensor (a fresh NumPy array)."""

    def __init__(self, path: str):
        self.path = path
        self._entries, self.metadata = read_header(path)  # before the library maps anything
        self._handle = safetensors.safe_open(path, framework="np")

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        return self._handle.get_tensor(name)


class SafetensorsCheckpoint(Mapping):
    """All tensors of a Hugging Face model directory (single file or sharded with an index).

    Refuses pickle-based checkpoints (``pytorch_model.bin``, Meta's ``consolidated.*.pth``): unpickling
    runs arbitrary code. Convert those with transformers' own scripts to safetensors first.
    """

    def __init__(self, hf_dir: str):
        if not os.path.isdir(hf_dir):
            raise CheckpointError(f"{hf_dir}: not a directory (expected a Hugging Face model directory).")
        index = os.path.join(hf_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            from semrel_jax import files

            weight_map = files.read_json(index, "safetensors index", error=CheckpointError).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object (the safetensors index format).")
            names = sorted(set(weight_map.values()))
        else:
            names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.safetensors")))
            weight_map = None
        if not names:
            pickles = [os.path.basename(p) for pat in _PICKLE_PATTERNS for p in glob.glob(os.path.join(hf_dir, pat))]
            if pickles:
                raise CheckpointError(
                    f"{hf_dir} holds only pickle checkpoints ({', '.join(sorted(pickles))}); they are never unpickled "
                    "here because unpickling runs arbitrary code. Convert them to safetensors first, e.g. "
                    "transformers' convert_llama_weights_to_hf.py for Meta's consolidated.*.pth, or "
                    "`AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`."
                )
            raise CheckpointError(f"{hf_dir}: no *.safetensors files found.")
        self._where: dict[str, SafetensorsFile] = {}
        for name in names:
            path = os.path.join(hf_dir, name)
            if os.path.dirname(os.path.normpath(name)) or not os.path.isfile(path):  # the index names files beside it
                raise CheckpointError(f"{hf_dir}: the index names {name!r}, which is not a file in the directory.")
            f = SafetensorsFile(path)
            for key in f.keys():
                self._where[key] = f
        if weight_map is not None:
            missing = sorted(k for k in weight_map if k not in self._where)
            if missing:
                raise CheckpointError(f"{hf_dir}: tensors listed in the index but absent from the shards: {missing[:10]}")

    def __getitem__(self, name: str) -> np.ndarray:
        return self._where[name].get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)


def save_file(tensors: Mapping[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
    """Writes ``tensors`` (NumPy arrays, bfloat16 included) as one safetensors file, atomically."""
    tmp = path + ".tmp"
    try:
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)
    except (TypeError, ValueError, safetensors.SafetensorError) as e:
        raise CheckpointError(f"cannot write {path} as safetensors: {e}") from e
    os.replace(tmp, path)
