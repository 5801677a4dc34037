"""Metric sinks: a JSONL file, TensorBoard event files (tensorboardX, no TensorFlow) and a console bar.

Only process 0 writes; other processes get a writer that drops everything.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tqdm import tqdm


def _to_float(v) -> float:
    return float(np.asarray(v))


class MetricWriter:
    def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=1.0)

    def write_scalars(self, step: int, scalars: dict, *, prefix: str = "train") -> None:
        if not self.enabled:
            return
        # scalars only: reports may carry notes (e.g. which caption tokenizer ran); results.json keeps them
        values = {k: _to_float(v) for k, v in scalars.items() if not isinstance(v, str)}
        self._jsonl.write(json.dumps({"step": step, "split": prefix, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tb.add_scalar(f"{prefix}/{name}", value, step)
        self._tb.flush()

    def write_samples(self, step: int, gallery_dir: str) -> None:
        """An evaluation's examples with their heatmaps (``evaluation.explain_plot.write_gallery``'s directory):
        each figure as a TensorBoard image, question / truth / prediction as TensorBoard text and a JSONL row."""
        if not self.enabled:
            return
        with open(os.path.join(gallery_dir, "samples.json")) as f:
            samples = json.load(f)
        row = {"step": step, "split": "eval_samples", "time": time.time(), "samples": samples}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for k, sample in enumerate(samples):
            with Image.open(os.path.join(gallery_dir, sample["figure"])) as figure:
                self._tb.add_image(f"eval_samples/{k}", np.asarray(figure.convert("RGB")), step, dataformats="HWC")
        table = "| question | truth | prediction |\n|---|---|---|\n" + "\n".join(
            f"| {s['question']} | {s['answer']} | {s['prediction']} |" for s in samples
        )
        self._tb.add_text("eval_samples", table, step)
        self._tb.flush()

    def progress(self, step: int, postfix: dict) -> None:
        """Moves the console bar to ``step`` (its rate and ETA come from tqdm)."""
        if not self.enabled:
            return
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix({k: f"{_to_float(v):.4g}" for k, v in postfix.items()}, refresh=False)

    def log(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._jsonl.close()
        self._tb.close()
