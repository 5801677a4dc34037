"""The one interface every data source provides: what the pipeline, the tokenizer, prepared copies and
evaluation read. Nothing guesses a source's kind; a source that lacks a capability says so explicitly.

Every source (the generated Sort-of-CLEVR ones, the on-disk readers built on
:class:`semrel_jax.data.records.RecordSource`, prepared copies) is random-access, deterministic and picklable,
i.e. a grain ``RandomAccessDataSource``, and provides the methods of :class:`Source`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Source(Protocol):
    """A dataset split as random-access examples."""

    def __len__(self) -> int:
        """The number of examples."""
        ...

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Example ``index``: ``image`` (uint8 [H, W, 3], a fresh writable array; None for a text-only example),
        ``question`` and ``answer`` (str), and the dataset's own fields (``index``, ids, labels, ...)."""
        ...

    def metadata(self, index: int) -> dict[str, Any]:
        """What evaluation writes next to example ``index``'s prediction and scores it with: the example's
        fields without its image. Never reads or draws an image; a fresh dict the caller may change."""
        ...

    def texts(self) -> Iterator[str]:
        """Every text a closed-vocabulary tokenizer trained for this source must cover (no image is read)."""
        ...

    def image_groups(self, size: int) -> np.ndarray | None:
        """``[len / size, size]`` example indices, each row ``size`` examples of one image (the vision tower
        then runs once per row); None when the source does not group its examples by image."""
        ...

    def scoring_data(self) -> dict[str, Any]:
        """What this split's scorer reads besides the per-example metadata, JSON-serialisable (a prepared
        copy stores it): ``{}`` for most sources; ScienceQA: ``{"problems": {pid: problems.json entry}}``."""
        ...
