"""Training curves as a PNG (``<workdir>/curves.png``) for those who do not run TensorBoard: the training loss and
every evaluation's accuracy (or caption metric) against the step, read back from ``metrics.jsonl``."""

from __future__ import annotations

import json

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def read_metrics(path: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``metrics.jsonl`` -> split -> metric -> ``[(step, value)]`` in file order (a resumed run appends)."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            for key, value in row.items():
                if key not in ("step", "split", "time") and isinstance(value, (int, float)):
                    series.setdefault(row["split"], {}).setdefault(key, []).append((row["step"], float(value)))
    return series


def _headline(eval_series: dict) -> list[str]:
    """The evaluation metrics worth a line: overall accuracy, else every accuracy/caption score at the top level."""
    if "accuracy" in eval_series:
        families = ("accuracy/relational", "accuracy/non_relational")  # Sort-of-CLEVR's
        return ["accuracy"] + [k for k in families if k in eval_series]
    return [k for k in eval_series if k.split("/")[0] in ("CIDEr", "BLEU_4", "exact_match", "accuracy")][:4]


def plot_training_curves(metrics_path: str, out_path: str) -> str:
    """Writes the loss (and learning rate, when logged) and the evaluation curves; returns ``out_path``."""
    series = read_metrics(metrics_path)
    train, evaluation = series.get("train", {}), series.get("eval", {})
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_axis, eval_axis = fig.subplots(1, 2)
    if "loss" in train:
        steps, values = zip(*train["loss"])
        loss_axis.plot(steps, values, label="training loss")
    loss_axis.set(xlabel="step", ylabel="loss", title="training")
    for name in _headline(evaluation):
        steps, values = zip(*evaluation[name])
        eval_axis.plot(steps, values, marker="o", label=name)
    eval_axis.set(xlabel="step", title="evaluation")
    for axis in (loss_axis, eval_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    fig.savefig(out_path, dpi=90)
    return out_path
