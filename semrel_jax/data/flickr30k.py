"""Flickr30K captions on the Karpathy split (Karpathy & Fei-Fei, CVPR 2015), for retrieval and captioning.

File (as distributed with the Karpathy splits; the same format as ``dataset_coco.json``)::

    dataset_flickr30k.json
        {"dataset": "flickr30k", "images": [{"filename": "1000092795.jpg", "imgid": 0,
            "split": "train" | "val" | "test", "sentids": [...],
            "sentences": [{"raw": "Two young guys with shaggy hair ...", "tokens": [...], "sentid": 0, ...}, x5]}, ...]}
    <image_root>/1000092795.jpg                  (the ``flickr30k-images`` folder of the image release)

Splits: ``train`` (29,000 images on the real file), ``val`` (1,014), ``test`` (1,000); 5 captions each.
The reader is ``coco_captions.KarpathyCOCO`` (same format, same modes, same bad-data policy); what differs:
an example names its image by ``image_id`` (the file name's stem: the Flickr photo id) instead of
``cocoid`` (SemVLP's retrieval gallery groups an image's captions by it: ``semvlp_records.RecordRows.retrieval``).

Modes: ``train`` one example per (image, caption); ``eval`` one per image, ``references`` its captions
(what captioning metrics and retrieval use). Registered as ``data.name=flickr30k`` (captioning; scored
with the COCO caption metrics).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from semrel_jax.data import records
from semrel_jax.data.coco_captions import KarpathyCOCO
from semrel_jax.data.dataset import Dataset
from semrel_jax.evaluation import captioning

SPLITS: tuple[str, ...] = ("train", "val", "test")


class Flickr30K(KarpathyCOCO):
    """Random-access Flickr30K (Karpathy split): ``KarpathyCOCO`` with ``image_id`` for ``cocoid``."""

    name = "flickr30k"

    def __init__(self, json_path: str, image_root: str, split: str, mode: str = "train", **kwargs) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown Flickr30K split {split!r}; expected one of {SPLITS}.")
        super().__init__(json_path, image_root, split, mode, **kwargs)

    def __repr__(self) -> str:
        return (f"Flickr30K(json_path={self.json_path!r}, image_root={self.image_root!r}, split={self.split!r}, "
                f"mode={self.mode!r}, on_bad_data={self.on_bad_data!r}, len={len(self)})")

    def _fields(self, index: int) -> dict[str, Any]:
        fields = super()._fields(index)
        del fields["cocoid"]
        return {**fields, "image_id": os.path.splitext(fields["filename"])[0]}


# ---------------------------------------------------------------------------------------------- the dataset


def _build(c: ml_collections.ConfigDict) -> tuple[Flickr30K, Flickr30K]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    train, evaluation = DATASET.split_names(d)
    return (Flickr30K(d.train_file, d.image_root, train, "train", **train_policy),
            Flickr30K(d.train_file, d.image_root, evaluation, "eval", **eval_policy))


def _validate(c: ml_collections.ConfigDict) -> None:
    records.validate(c, "flickr30k", ("train_file", "image_root"))
    DATASET.check_splits(c.data, SPLITS.__contains__, f"Flickr30K Karpathy splits are {SPLITS}")


def _record_settings(c: ml_collections.ConfigDict) -> dict:
    return DATASET.split_settings(c.data)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    del train_source, eval_source
    return captioning.caption_scores({r["image_id"]: r["prediction"] for r in rows},
                                     {r["image_id"]: r["references"] for r in rows})


DATASET = Dataset(
    semvlp_rows="captions",
    name="flickr30k",
    defaults={},
    build=_build,
    record_settings=_record_settings,
    score=_score,
    validate=_validate,
)
