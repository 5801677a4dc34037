"""Reading and writing Hugging Face safetensors checkpoints without materialising them.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor name
to its dtype, shape and byte range, then the raw bytes. Reading through ``np.memmap`` gives zero-copy
views, so a loader touches one tensor at a time (and, with ``jax.make_array_from_callback``, each
device only its own shard of it); peak host memory stays near the largest single tensor.

The ``safetensors`` package's NumPy route cannot represent bfloat16, the dtype most LLM checkpoints
ship in; ``ml_dtypes`` (a JAX dependency) can, hence this small reader/writer.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_PICKLE_PATTERNS = ("*.bin", "*.pth", "*.pt", "*.ckpt", "*.pkl")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: names the files/tensors involved."""


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length).")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
            raise CheckpointError(f"{path}: implausible safetensors header length {n}; the file is corrupt.")
        header = f.read(n)
    if len(header) != n:
        raise CheckpointError(f"{path}: truncated safetensors header.")
    try:
        return json.loads(header), 8 + n
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e}).") from None


class SafetensorsFile:
    """One ``*.safetensors`` file; ``get(name)`` returns a read-only memory-mapped view."""

    def __init__(self, path: str):
        self.path = path
        header, self._data_start = _read_header(path)
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries = header
        size = os.path.getsize(path)
        for name, e in header.items():
            if e["dtype"] not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {e['dtype']}.")
            end = self._data_start + e["data_offsets"][1]
            if end > size:
                raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} but the file has {size}: truncated.")

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return _DTYPES[self._entries[name]["dtype"]]

    def get(self, name: str) -> np.ndarray:
        # One mapping per tensor: once the caller drops the view, its pages leave this process's
        # resident set, so loading a checkpoint never holds more than the tensors in flight.
        e = self._entries[name]
        start, end = e["data_offsets"]
        dtype = _DTYPES[e["dtype"]]
        if end == start:
            return np.zeros(e["shape"], dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + start, shape=tuple(e["shape"]))


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
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.safetensors")))
            weight_map = None
        if not files:
            pickles = [os.path.basename(p) for pat in _PICKLE_PATTERNS for p in glob.glob(os.path.join(hf_dir, pat))]
            if pickles:
                raise CheckpointError(
                    f"{hf_dir} holds only pickle checkpoints ({', '.join(sorted(pickles))}); they are never unpickled "
                    "here because unpickling runs arbitrary code. Convert them to safetensors first, e.g. "
                    "transformers' convert_llama_weights_to_hf.py for Meta's consolidated.*.pth, or "
                    "`AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`."
                )
            raise CheckpointError(f"{hf_dir}: no *.safetensors files found.")
        self._files = {}
        self._where: dict[str, SafetensorsFile] = {}
        for name in files:
            path = os.path.join(hf_dir, name)
            if not os.path.exists(path):
                raise CheckpointError(f"{hf_dir}: the index names {name}, which is missing.")
            f = SafetensorsFile(path)
            self._files[name] = f
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
    """Writes ``tensors`` (NumPy arrays, bfloat16 included) as one safetensors file, tensor by tensor."""
    header: dict = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, a in tensors.items():
        a_dtype = np.dtype(a.dtype)
        if a_dtype not in _NAMES:
            raise CheckpointError(f"cannot write tensor {name!r} of dtype {a_dtype} as safetensors.")
        nbytes = int(np.prod(a.shape, dtype=np.int64)) * a_dtype.itemsize
        header[name] = {"dtype": _NAMES[a_dtype], "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned, as the reference writer does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())
    os.replace(tmp, path)
