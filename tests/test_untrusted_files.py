"""Files from model and data directories are data, never code, and a damaged one is refused before it costs memory.

Safetensors headers are validated against the file before the library maps anything (an absurd length,
byte ranges past the end, sizes that disagree with shape x dtype); a tokenizer directory that asks for its
own Python code does not get it run; bfloat16 round-trips through the ``safetensors`` library.
"""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import safetensors

from semrel_jax import errors
from semrel_jax.convert import hf
from semrel_jax.convert.safetensors_io import CheckpointError, SafetensorsCheckpoint, save_file
from semrel_jax.data import tokenizer as tokenizer_lib


def _raw_file(path, header: dict, data: bytes = b"", length: int | None = None):
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)


@pytest.fixture
def never_mapped(monkeypatch):
    """Fails the test if the library is asked to open a file (the header check must refuse it first)."""
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("a bad file reached safe_open"))


def test_bfloat16_round_trips_through_the_library(tmp_path):
    tensors = {
        "w": (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(ml_dtypes.bfloat16),
        "ids": np.array([3, -1, 7], np.int64),
        "empty": np.zeros((0, 5), np.float16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"), {"format": "np"})
    ckpt = SafetensorsCheckpoint(str(tmp_path))
    assert sorted(ckpt) == ["empty", "ids", "w"] and ckpt.shape("w") == (3, 4)
    for name, expected in tensors.items():
        assert ckpt[name].dtype == expected.dtype
        np.testing.assert_array_equal(ckpt[name], expected)


@pytest.mark.parametrize("header, data, length, message", [
    ({}, b"", 2**62, "implausible safetensors header length"),
    ({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}, b"\0" * 16, None, "truncated"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 16, None, "spans 8 bytes"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, None, "has shape"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}, b"\0" * 16, None, "data_offsets"),
    ({"w": {"dtype": "X9", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, None, "unsupported dtype"),
])
def test_damaged_headers_are_refused_before_mapping(tmp_path, never_mapped, header, data, length, message):
    path = tmp_path / "model.safetensors"
    _raw_file(path, header, data, length)
    with pytest.raises(CheckpointError, match=message) as raised:
        SafetensorsCheckpoint(str(tmp_path))
    assert str(path) in str(raised.value) and raised.value.exit_code == errors.CheckpointError.exit_code


def test_an_index_cannot_point_outside_its_directory(tmp_path, never_mapped):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="not a file in the directory"):
        SafetensorsCheckpoint(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": ')
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: the safetensors index is not valid JSON"):
        SafetensorsCheckpoint(str(tmp_path))


def test_a_damaged_config_json_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }')
    with pytest.raises(CheckpointError, match=r"config\.json: the model config\.json is not valid JSON .*line 2, column 17"):
        hf.read_config(str(tmp_path))


def test_a_tokenizer_directory_never_runs_its_own_code(tmp_path):
    words = ["red", "blue"]
    path = tmp_path / "tok"
    tokenizer_lib.train_word_level(words).save_pretrained(str(path))
    marker = tmp_path / "code-ran"
    (path / "evil_tokenizer.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    try:
        tokenizer_lib.load(str(path))
    except errors.DataError as e:  # refusing is fine; running the file is not
        assert str(path) in str(e)
    assert not marker.exists()


def test_writing_an_unsupported_dtype_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="cannot write"):
        save_file({"s": np.array(["text"])}, str(tmp_path / "x.safetensors"))
