"""Figures of ``evaluation.explain.Explanation``: the image and, per generated token, alpha and M (or the prefix
attention) of chosen blocks over each patch encoder's grid, or an object-token encoder's objects (each object's
pixels coloured by its slot's value); and a gallery (PNG per example + index.html).

Uses matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import html
import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from semrel_jax.evaluation import explain as explain_lib

# what each readout is called on the figure, and its colour map
_READOUTS = {
    "alpha": ("ICA weight α", "viridis"),
    "mask": ("inherited mask M", "magma"),
    "attention": ("attention", "viridis"),
}


def explanation_figure(explanation: explain_lib.Explanation, blocks: tuple[int, ...] = (), max_tokens: int = 8) -> Figure:
    """Rows: every generated token (the first ``max_tokens``: captions run long) × readout; columns: the image,
    then every chosen block × encoder.

    Each readout shares one colour scale over its panels (M: [0, 1]), so blocks and tokens compare directly.
    """
    chosen = explain_lib.chosen_blocks(explanation.num_blocks, blocks)
    # an object-token encoder is drawn on its objects' pixels, which an Explanation built by hand may lack
    encoders = [g.encoder for g in explanation.layout if g.grid or g.encoder in explanation.object_maps]
    names = list(explanation.readouts)
    rows = [(t, name) for t in range(min(len(explanation.tokens), max_tokens)) for name in names]
    cols = [(b, e) for b in chosen for e in encoders]
    width = max(1.9 * (len(cols) + 1), 4.0)  # room for the title when the image is the only column
    fig = Figure(figsize=(width, 1.9 * len(rows) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(rows), len(cols) + 1, squeeze=False))
    title = f"Q: {explanation.question}\nprediction: {explanation.prediction}"
    if explanation.answer is not None:
        title += f"   (truth: {explanation.answer})"
    fig.suptitle(title, fontsize=9)
    shown_tokens = slice(0, rows[-1][0] + 1)
    scales = {name: _scale(name, explanation.readouts[name][list(chosen), shown_tokens]) for name in names}
    for r, (t, name) in enumerate(rows):
        label, cmap = _READOUTS[name]
        image_axis = axes[r, 0]
        if explanation.image is not None:
            image_axis.imshow(explanation.image)
        image_axis.set_title(f"token {t}: {explanation.tokens[t]!r}\n{label}", fontsize=8)
        for c, (b, encoder) in enumerate(cols):
            maps = explain_lib.slot_maps(explanation.readouts[name][b, t], explanation.layout, explanation.object_maps)
            grid = maps[encoder]
            ax = axes[r, c + 1]
            shown = _overlay(ax, explanation.image, grid, cmap, scales[name])
            ax.set_title(f"block {b}" + (f" · {encoder}" if len(encoders) > 1 else ""), fontsize=8)
        if cols:
            fig.colorbar(shown, ax=list(axes[r, 1:]), shrink=0.8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _scale(name: str, values: np.ndarray) -> tuple[float, float]:
    if name == "mask":
        return 0.0, 1.0
    return float(values.min()), float(max(values.max(), values.min() + 1e-6))


def _overlay(ax, image, grid: np.ndarray, cmap: str, scale: tuple[float, float]):
    """The patch grid drawn over the image (each cell covers its patch; an object map's NaN background stays
    transparent), or alone for a text-only example."""
    if image is None:
        return ax.imshow(grid, cmap=cmap, vmin=scale[0], vmax=scale[1])
    h, w = image.shape[:2]
    ax.imshow(image.mean(-1), cmap="gray", extent=(0, w, h, 0))
    return ax.imshow(grid, cmap=cmap, vmin=scale[0], vmax=scale[1], alpha=0.7, extent=(0, w, h, 0), interpolation="nearest")


def save_figure(explanation: explain_lib.Explanation, path: str, blocks: tuple[int, ...] = (), dpi: int = 80) -> str:
    explanation_figure(explanation, blocks).savefig(path, dpi=dpi)
    return path


def write_gallery(explanations: list, out_dir: str, blocks: tuple[int, ...] = ()) -> list[dict]:
    """``out_dir/example_<k>.png`` per explanation, ``samples.json`` (question, truth, prediction, figure) and
    ``index.html`` showing them in one page; returns the samples."""
    os.makedirs(out_dir, exist_ok=True)
    samples = []
    for k, explanation in enumerate(explanations):
        figure = f"example_{k}.png"
        save_figure(explanation, os.path.join(out_dir, figure), blocks)
        samples.append(
            dict(index=explanation.index, question=explanation.question, answer=explanation.answer,
                 prediction=explanation.prediction, figure=figure)
        )
    with open(os.path.join(out_dir, "samples.json"), "w") as f:
        json.dump(samples, f, indent=1, default=str)
    rows = "\n".join(
        f"<tr><td>{s['index']}</td><td>{html.escape(s['question'])}</td><td>{html.escape(str(s['answer']))}</td>"
        f"<td>{html.escape(s['prediction'])}</td></tr><tr><td colspan=4><img src=\"{s['figure']}\"></td></tr>"
        for s in samples
    )
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(
            "<!doctype html><meta charset=utf-8><title>semrel_jax: what the model sees</title>\n<table border=1>\n"
            f"<tr><th>example</th><th>question</th><th>truth</th><th>prediction</th></tr>\n{rows}\n</table>\n"
        )
    return samples
