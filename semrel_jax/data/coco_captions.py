"""COCO captions on the Karpathy split (Karpathy & Fei-Fei, CVPR 2015), from ``dataset_coco.json``.

File (as distributed with the Karpathy splits)::

    {"dataset": "coco", "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
        "split": "train" | "restval" | "val" | "test", "cocoid": 391895, "imgid": 0,
        "sentences": [{"raw": "A man with a red helmet ...", "tokens": [...], "sentid": 0, ...}, ...]}, ...]}

The image of an entry is ``image_root/<filepath>/<filename>`` (``image_root/<filename>`` when the entry has
no ``filepath``, as in the Flickr files of the same format).

Splits: ``train`` is Karpathy's training set, i.e. the ``train`` AND ``restval`` entries (113,287 images
on the real file; ``include_restval=False`` keeps the 82,783 ``train`` ones only); ``restval``, ``val``
(5,000) and ``test`` (5,000) select their own entries.

Modes:
  ``train``  one example per (image, caption): ``'answer'`` is that caption (its ``raw`` text, stripped).
  ``eval``   one example per image: ``'answer'`` is the first caption and ``'references'`` all of them
             (captioning metrics score a generation against every reference).

Every example has ``question`` (the ``prompt``, the same for all), ``answer``, ``references``, ``index``,
``cocoid``, ``filename``, ``sentid`` (the caption's; in eval mode the first caption's). Order: the file's
image order, then its caption order. Bad data: a record is one image entry (with all its captions); an
entry whose ``split`` is missing cannot be assigned to a split and is malformed in every split. See
``semrel_jax.data.images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from semrel_jax import files
from semrel_jax.data import records
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.images import Malformed
from semrel_jax.data.records import RecordSource
from semrel_jax.evaluation import captioning

SPLITS: tuple[str, ...] = ("train", "restval", "val", "test")
MODES: tuple[str, ...] = ("train", "eval")
DEFAULT_PROMPT = "Provide a one-sentence caption for the provided image."


class KarpathyCOCO(RecordSource):
    """Random-access COCO captions (Karpathy split); a grain ``RandomAccessDataSource``."""

    name = "coco_captions"

    def __init__(
        self,
        json_path: str,
        image_root: str,
        split: str,
        mode: str = "train",
        prompt: str = DEFAULT_PROMPT,
        include_restval: bool = True,
        on_bad_data: str = "error",
        verify_images: bool = False,
    ) -> None:
        super().__init__(on_bad_data, verify_images)
        if split not in SPLITS:
            raise ValueError(f"Unknown Karpathy split {split!r}; expected one of {SPLITS}.")
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string.")
        self.json_path, self.image_root, self.split, self.mode = json_path, image_root, split, mode
        self.prompt, self.include_restval = prompt, include_restval
        data = files.read_json(json_path, "Karpathy split file")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{json_path!r}: expected {{'images': [...]}} (the Karpathy dataset_*.json format).")
        wanted = {"train", "restval"} if split == "train" and include_restval else {split}

        def record_id(i: int, entry: Any) -> Any:
            if isinstance(entry, dict):
                for key in ("cocoid", "filename", "imgid"):
                    if entry.get(key) is not None:
                        return entry[key]
            return f"images[{i}]"

        def selected(entry: Any) -> bool:
            # entries with an unusable 'split' are passed on (and rejected as malformed) in every split
            return not isinstance(entry, dict) or not isinstance(entry.get("split"), str) or entry["split"] in wanted

        def parse(rid, entry):
            if not isinstance(entry, dict):
                raise Malformed("image entry is not an object")
            if not isinstance(entry.get("split"), str):
                raise Malformed(f"'split' missing or not a string: {entry.get('split')!r}")
            filename, filepath = entry.get("filename"), entry.get("filepath", "")
            if not isinstance(filename, str) or not filename or not isinstance(filepath, str):
                raise Malformed(f"'filename' / 'filepath' missing or not strings: {filename!r}, {filepath!r}")
            sentences = entry.get("sentences")
            if not isinstance(sentences, list) or not sentences:
                raise Malformed("'sentences' missing or empty")
            captions, sentids = [], []
            for s in sentences:
                raw = s.get("raw") if isinstance(s, dict) else None
                if not isinstance(raw, str) or not raw.strip():
                    raise Malformed(f"a sentence has no 'raw' text: {s!r}")
                captions.append(raw.strip())
                sentids.append(s.get("sentid"))
            refs = tuple(captions)
            meta = (entry.get("cocoid"), filename)
            if mode == "train":
                entries = [(meta, refs, k, sentids[k]) for k in range(len(refs))]
            else:
                entries = [(meta, refs, 0, sentids[0])]
            return records.path_inside(image_root, filepath, filename), entries

        images = data["images"]
        self._admit(((record_id(i, e), e) for i, e in enumerate(images) if selected(e)), parse)

    def __repr__(self) -> str:
        return (f"KarpathyCOCO(json_path={self.json_path!r}, image_root={self.image_root!r}, split={self.split!r}, "
                f"mode={self.mode!r}, include_restval={self.include_restval}, on_bad_data={self.on_bad_data!r}, "
                f"len={len(self)})")

    def _fields(self, index: int) -> dict[str, Any]:
        (cocoid, filename), refs, k, sentid = self._entries[index]
        return {
            "question": self.prompt,
            "answer": refs[k],
            "references": list(refs),
            "index": index,
            "cocoid": cocoid,
            "filename": filename,
            "sentid": sentid,
        }


# ---------------------------------------------------------------------------------------------- the dataset


def _build(c: ml_collections.ConfigDict) -> tuple[KarpathyCOCO, KarpathyCOCO]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    train, evaluation = DATASET.split_names(d)
    return (
        KarpathyCOCO(d.train_file, d.image_root, train, "train", **train_policy),
        KarpathyCOCO(d.train_file, d.image_root, evaluation, "eval", **eval_policy),
    )


def _record_settings(c: ml_collections.ConfigDict) -> dict:
    return DATASET.split_settings(c.data)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    del train_source, eval_source
    return captioning.caption_scores({r["cocoid"]: r["prediction"] for r in rows}, {r["cocoid"]: r["references"] for r in rows})


DATASET = Dataset(
    semvlp_rows="captions",
    name="coco_captions",
    defaults={},
    build=_build,
    record_settings=_record_settings,
    score=_score,
    validate=lambda c: records.validate(c, "coco_captions", ("train_file", "image_root")),
)
