"""Small helpers the numbered notebooks share: where things live, fast mode, showing figures.

Nothing here is course content; it keeps the notebooks' cells short and their paths consistent:

- ``IN_COLAB``: whether the code runs on Google Colab.
- ``fast_mode()``: ``CLIP_PACL_FAST=1`` asks for a smoke run (small data, very few epochs).
- ``repo_root()``, ``data_dir()``, ``outputs_dir(name)``: ``data/`` and ``outputs/<name>/`` under
  the repository root, moved elsewhere by ``CLIP_PACL_DATA`` / ``CLIP_PACL_OUTPUTS``.
- ``synthetic_dataset(fast)``: the captioned-shapes set every notebook uses offline (one folder
  for the full size, one for the fast size, so switching never regenerates the other).
- ``show(fig)``, ``image_grid``, ``caption_ranking``, ``confusion_matrix``, ``format_table``:
  display helpers.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from utils.train import resolve_device

IN_COLAB = "google.colab" in sys.modules

FAST_ENV, DATA_ENV, OUTPUTS_ENV = "CLIP_PACL_FAST", "CLIP_PACL_DATA", "CLIP_PACL_OUTPUTS"

# Split sizes of the synthetic set: the full one is what `make demo` uses (same folder name, so the
# notebooks and the demo share one copy); the fast one is small enough for a smoke run on a CPU.
SYNTHETIC_SIZES = {
    "full": {"num_train": 6000, "num_dev": 1000, "num_test": 1000},
    "fast": {"num_train": 600, "num_dev": 100, "num_test": 200},
}
SYNTHETIC_FOLDERS = {"full": "captioned_shapes", "fast": "captioned_shapes_fast"}

HIT_COLOUR, MISS_COLOUR = "#2ca02c", "#d62728"


def fast_mode() -> bool:
    """True when the environment variable ``CLIP_PACL_FAST`` is ``"1"`` (tests set it)."""
    return os.environ.get(FAST_ENV, "").strip() == "1"


def repo_root() -> Path:
    """The repository's root folder (the one holding ``utils/`` and ``notebooks/``)."""
    return Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Where datasets live: ``$CLIP_PACL_DATA`` if set, else ``<repo>/data``."""
    return Path(os.environ.get(DATA_ENV) or repo_root() / "data").expanduser()


def outputs_dir(name: str) -> Path:
    """``<outputs>/<name>``, created; ``<outputs>`` is ``$CLIP_PACL_OUTPUTS`` or ``<repo>/outputs``."""
    folder = Path(os.environ.get(OUTPUTS_ENV) or repo_root() / "outputs").expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def synthetic_dataset(fast: bool, image_size: int = 64, progress: bool = True) -> Path:
    """Generate (once) and return the captioned-shapes folder for the fast or the full size."""
    from utils.sources.synthetic import (
        ensure_captioned_shapes,  # keeps `import utils.course.notebook` light
    )

    size = "fast" if fast else "full"
    return ensure_captioned_shapes(data_dir() / SYNTHETIC_FOLDERS[size], image_size=image_size,
                                   progress=progress, **SYNTHETIC_SIZES[size])


def pick_device() -> torch.device:
    """CUDA when there is a GPU (Colab's GPU runtime), else the CPU."""
    return resolve_device("auto")


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def show(fig: Figure) -> None:
    """Display a figure once and free it (inline backends would otherwise show it twice)."""
    from IPython.display import display

    if not plt.get_backend().lower().endswith("inline"):
        # Without the inline backend (tests use Agg) display() prints only the figure's repr:
        # draw it anyway, so that a plotting error cannot pass unnoticed.
        fig.canvas.draw()
    display(fig)
    plt.close(fig)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 float_format: str = "{:.3f}") -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [
        [float_format.format(v) if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths),
                      *(line(row) for row in cells[1:])])


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 4,
               width: int = 34, title_size: float = 7.5) -> Figure:
    """Images in a grid, each with a multi-line title underneath (lines wrapped at ``width``)."""
    wrapped = ["\n".join(textwrap.fill(line, width) for line in t.split("\n")) for t in titles]
    rows = -(-len(images) // columns)
    width = 2.6                                                    # inches per image
    height = width * min(1.5, max(image.shape[0] / image.shape[1] for image in images))
    lines = max(w.count("\n") + 1 for w in wrapped)
    text = 0.05 + title_size / 72 * 1.45 * lines                    # inches of titles per row
    total = rows * (height + text) + 0.1
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(width * 1.1 * columns, total))
    # Leave room under every row for its titles: hspace is relative to the axes' height.
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.05 / total, bottom=text / total,
                        hspace=text / height, wspace=0.1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, wrapped, strict=False):
        ax.imshow(image)
        ax.text(0.5, -0.02, title, transform=ax.transAxes, ha="center", va="top",
                fontsize=title_size)
    return fig


def caption_ranking(images: Sequence[np.ndarray], captions: Sequence[Sequence[str]],
                    scores: torch.Tensor | np.ndarray, hits: torch.Tensor | np.ndarray
                    ) -> Figure:
    """One row per image: the image, then its top captions with scores (green: a true caption)."""
    scores, hits = np.asarray(scores), np.asarray(hits)
    fig, axes = plt.subplots(len(images), 2, figsize=(9, 1.7 * len(images)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 4]})
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        axes[row, 0].axis("off")
        text_ax = axes[row, 1]
        text_ax.axis("off")
        k = len(captions[row])
        for rank, caption in enumerate(captions[row]):
            colour = HIT_COLOUR if hits[row, rank] else MISS_COLOUR
            text_ax.text(0, 1 - (rank + 0.5) / k, f"{scores[row, rank]:.2f}  {caption}",
                         color=colour, fontsize=8.5, va="center", transform=text_ax.transAxes)
    fig.suptitle("image -> caption ranking (green: one of the image's own captions)", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], labels: Sequence[str],
                     title: str = "zero-shot confusion matrix") -> Figure:
    """Row-normalised confusion matrix: row = true label, column = predicted label."""
    n = len(labels)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (np.asarray(truth), np.asarray(predicted)), 1)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{counts[i, j]}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the row")
    fig.tight_layout()
    return fig
