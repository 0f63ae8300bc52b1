"""CLIP's figures: training curves, similarity matrices, retrieval galleries, images with their
captions, caption rankings and a zero-shot confusion matrix."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from utils.storage.atomic import atomic_file

HIT_COLOUR, MISS_COLOUR = "#2ca02c", "#d62728"


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (temp file + rename) and close it."""
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), same length as ``values``."""
    values = np.asarray(values, dtype=float)
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (cumsum[idx] - cumsum[start]) / (idx - start)


def plot_training_curves(steps: Sequence[dict], evals: Sequence[dict] = (),
                         metric: str = "text_to_image_R@1") -> Figure:
    """Loss (raw and smoothed), learning rate and logit scale per step; a metric per evaluation."""
    loss = [s["loss"] for s in steps]
    panels = 3 if "logit_scale" in steps[0] else 2
    fig, axes = plt.subplots(1, panels + bool(evals), figsize=(4.2 * (panels + bool(evals)), 3.2))
    axes[0].plot(loss, alpha=0.3, label="per step")
    axes[0].plot(moving_average(loss, max(1, len(loss) // 30)), label="smoothed")
    axes[0].set(title="training loss", xlabel="step")
    axes[0].legend()
    axes[1].plot([s["lr"] for s in steps])
    axes[1].set(title="learning rate (first group)", xlabel="step")
    if panels == 3:
        axes[2].plot([s["logit_scale"] for s in steps])
        axes[2].set(title="logit scale  s = 1 / temperature", xlabel="step")
    if evals:
        axes[-1].plot([e["epoch"] for e in evals], [e[metric] for e in evals], marker="o")
        axes[-1].set(title=f"validation {metric}", xlabel="epoch", ylim=(0, 1))
    fig.tight_layout()
    return fig


def plot_similarity_matrix(similarity: torch.Tensor | np.ndarray, images: Sequence[np.ndarray],
                           captions: Sequence[str], title: str = "cosine similarity") -> Figure:
    """Heatmap of ``[n, n]`` image-caption similarities with thumbnails on the rows and captions
    on the columns: a trained CLIP puts its largest values on the diagonal."""
    similarity = np.asarray(similarity, dtype=float)
    n = similarity.shape[0]
    fig = plt.figure(figsize=(1.0 + 0.55 * n, 1.5 + 0.55 * n))
    grid = fig.add_gridspec(1, 2, width_ratios=[1, n], wspace=0.02)
    heat = fig.add_subplot(grid[1])
    im = heat.imshow(similarity, cmap="viridis", vmin=min(0.0, similarity.min()), vmax=1.0)
    heat.set_xticks(range(n), [_shorten(c, 38) for c in captions], rotation=75, ha="right",
                    fontsize=7)
    heat.set_yticks([])
    for i in range(n):
        for j in range(n):
            heat.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                      color="white" if similarity[i, j] < 0.6 else "black")
    heat.set_title(title)
    fig.colorbar(im, ax=heat, fraction=0.03)
    thumbs = fig.add_subplot(grid[0])
    thumbs.imshow(np.concatenate([_fit(img, 48) for img in images], axis=0))
    thumbs.axis("off")
    return fig


def plot_retrieval_gallery(queries: Sequence[str], images: Sequence[Sequence[np.ndarray]],
                           scores: torch.Tensor | np.ndarray, hits: torch.Tensor | np.ndarray
                           ) -> Figure:
    """One row per text query: its top-k images, framed green when they match the query.

    Args:
        queries: ``Q`` caption strings.
        images: ``Q`` lists of ``k`` RGB arrays, best first.
        scores: ``[Q, k]`` cosine similarities of those images.
        hits: ``[Q, k]`` booleans, whether each image is a correct match.
    """
    scores, hits = np.asarray(scores), np.asarray(hits)
    rows, k = len(queries), len(images[0])
    fig, axes = plt.subplots(rows, k, figsize=(1.6 * k + 2.6, 1.7 * rows), squeeze=False)
    for r, query in enumerate(queries):
        for c in range(k):
            ax = axes[r, c]
            ax.imshow(images[r][c])
            ax.set_xticks([])
            ax.set_yticks([])
            colour = HIT_COLOUR if hits[r, c] else MISS_COLOUR
            for spine in ax.spines.values():
                spine.set(color=colour, linewidth=3)
            ax.set_title(f"{scores[r, c]:.2f}", fontsize=8, color=colour)
        axes[r, 0].set_ylabel(textwrap.fill(query, 28), rotation=0, ha="right", va="center",
                              fontsize=8)
    fig.suptitle("text -> image search (green: a correct match)", fontsize=10)
    fig.tight_layout()
    return fig


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``[H, W, 3]`` uint8 image to ``[size, size, 3]``."""
    rows = np.arange(size) * image.shape[0] // size
    cols = np.arange(size) * image.shape[1] // size
    return image[rows][:, cols]


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
