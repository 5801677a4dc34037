"""Metric sinks: a JSONL file, TensorBoard event files (tensorboardX, no TensorFlow) and a console bar, and
the collection (``clu.metrics``, TF-free) that turns a logging interval's per-step metrics into what is logged.

Only process 0 writes; other processes get a writer that drops everything.

The bar shows the values of the interval that just ended (loss, throughput) and an ETA measured from the
end of the first step: that step includes compilation, which would otherwise make the first ETAs far too
long (tqdm's own rate counts it).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from clu import metrics as clu_metrics
from PIL import Image
from tqdm import tqdm


def _import_summary_writer():
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX imports PyTorch at import time whenever it is installed, only to accept torch tensors (we pass
    NumPy): about 3 s and a few hundred MB in every process of a user who has PyTorch in the environment. For the
    duration of the import ``torch`` reads as not installed (tensorboardX catches that ImportError); a PyTorch that is
    already loaded, or imported later, is untouched.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while this entry is None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _import_summary_writer()


_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"  # tqdm's rate/ETA replaced by ours


# A logging interval of training: the mean of each step's value, the learning rate of its last step, and the
# fraction of steps whose loss or gradients were not finite (train_step's metrics). Built with ``create``
# (this module's postponed annotations would hide the field types from a class body).
TrainInterval = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_output("loss"),
    token_accuracy=clu_metrics.Average.from_output("token_accuracy"),
    answer_tokens=clu_metrics.Average.from_output("answer_tokens"),
    grad_norm=clu_metrics.Average.from_output("grad_norm"),
    learning_rate=clu_metrics.LastValue.from_output("learning_rate"),
    nonfinite_steps=clu_metrics.Average.from_output("nonfinite"),
)


def interval_summary(steps: list[dict]) -> dict[str, float]:
    """The logged values of a logging interval from its steps' metrics (host NumPy values, oldest first).

    A metric the step reports beyond ``TrainInterval``'s (an optional objective's term, e.g. ``alignment_loss``)
    is logged as its mean over the interval.
    """
    # one collection from the interval's stacked values ([n] per metric; the learning rate: its last step's, [1]),
    # not one merged per step: each merge is a few eager JAX operations, ~8 ms a step on a 2-core CPU
    stacked = {k: np.asarray([step[k] for step in steps], np.float32) for k in steps[0]}
    stacked["learning_rate"] = stacked["learning_rate"][-1:]
    summary = {k: float(v) for k, v in TrainInterval.single_from_model_output(**stacked).compute().items()}
    summary["nonfinite_steps"] = float(round(summary["nonfinite_steps"] * len(steps)))
    known = set(TrainInterval.__annotations__) | {"nonfinite"}
    for name in sorted(set(steps[0]) - known):
        summary[name] = float(stacked[name].mean())
    return summary


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
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=1.0,
                         bar_format=_BAR_FORMAT)
        self._steady_from: tuple[int, float] | None = None  # (step, time) once the first step has finished

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

    def compiled(self, step: int, loss) -> None:
        """The first step of this run finished (compiled and ran); the ETA is measured from here."""
        self._steady_from = (step, time.monotonic())
        self.progress(step, {"loss": loss})

    def eta_seconds(self, step: int) -> float | None:
        """Seconds to ``total_steps`` at the rate since the first step (None before two points exist)."""
        if self._steady_from is None or step <= self._steady_from[0]:
            return None
        first_step, first_time = self._steady_from
        seconds_per_step = (time.monotonic() - first_time) / (step - first_step)
        return max(self._bar.total - step, 0) * seconds_per_step

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
        """Moves the console bar to ``step``, showing ``postfix`` (this interval's values) and the ETA."""
        if not self.enabled:
            return
        shown = {k: f"{_to_float(v):.4g}" for k, v in postfix.items()}
        eta = self.eta_seconds(step)
        shown["eta"] = "?" if eta is None else tqdm.format_interval(eta)
        self._bar.set_postfix(shown, refresh=False)  # before update, whose redraw must show these values
        self._bar.update(step - self._bar.n)

    def log(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if not self.enabled:
            return
        self._bar.close()
        self._jsonl.close()
        self._tb.close()
