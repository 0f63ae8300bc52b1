"""Plots of segmentation results: coloured masks, overlays, score heatmaps, method comparisons,
worst cases and mIoU bar charts.

Everything takes plain NumPy arrays, so it works with any segmenter. One labelling convention
throughout (the one of :mod:`utils.segmentation`, the synthetic masks and Pascal VOC):

- ``class_names`` are the *foreground* classes; mask value ``c + 1`` is ``class_names[c]``;
- mask value ``0`` is background; ``255`` (VOC's object boundaries) is "ignore" and drawn white;
- ``scores[c]`` of a ``[C, H, W]`` score array belongs to ``class_names[c]``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

BACKGROUND = "background"
IGNORE_INDEX = 255
BACKGROUND_COLOUR = (0, 0, 0)       # as in VOC's palette: blending with black darkens the scene
IGNORE_COLOUR = (255, 255, 255)


def class_palette(num_classes: int) -> np.ndarray:
    """``[num_classes + 1, 3]`` uint8 colours: row 0 background (black), then one per class.

    The first 20 class colours are matplotlib's ``tab20`` with its ten strong colours first and
    their light twins after, so small class lists get the most distinct colours; beyond 20,
    hues step by the golden angle, which keeps consecutive classes far apart on the colour wheel.
    """
    tab20 = (np.array(plt.get_cmap("tab20").colors) * 255).round().astype(np.uint8)
    colours = [*tab20[0::2], *tab20[1::2]]
    for i in range(num_classes - len(colours)):
        hue = (i * 0.618033988749895) % 1.0
        colours.append(np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9)) * 255)
    palette = np.array([BACKGROUND_COLOUR, *colours[:num_classes]], dtype=float)
    return palette.round().astype(np.uint8).reshape(num_classes + 1, 3)


def colour_mask(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``[H, W]`` mask of class ids -> ``[H, W, 3]`` uint8 picture (ignored pixels white)."""
    mask = np.asarray(mask)
    known = mask < len(palette)
    unexpected = ~known & (mask != IGNORE_INDEX)
    if unexpected.any():
        raise ValueError(f"mask holds class id {int(mask[unexpected].max())}, but the palette has "
                         f"only {len(palette)} entries (background + {len(palette) - 1} classes): "
                         "pass all class names the mask uses")
    picture = np.empty((*mask.shape, 3), dtype=np.uint8)
    picture[known] = palette[mask[known]]
    picture[~known] = IGNORE_COLOUR
    return picture


def overlay_mask(image: np.ndarray, mask: np.ndarray, palette: np.ndarray,
                 alpha: float = 0.6) -> np.ndarray:
    """Blend the coloured mask over the image's grey levels: ``(1 - alpha) * grey + alpha *
    colour``. Grey, because blending with a red object would turn a blue class colour purple:
    the legend's colours must stay readable, while the grey keeps the objects' outlines.

    ``image [H, W, 3]`` uint8 and ``mask [H, W]`` -> ``[H, W, 3]`` uint8.
    """
    image = _check_image(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {image.shape[:2]}; "
                         "upsample the mask to the image size first")
    grey = image.astype(float).mean(2, keepdims=True)
    blended = (1 - alpha) * grey + alpha * colour_mask(mask, palette)
    return blended.round().astype(np.uint8)


def legend_handles(masks: Sequence[np.ndarray], class_names: Sequence[str],
                   palette: np.ndarray) -> list[Patch]:
    """One coloured patch per class id that occurs in any of ``masks``, in id order."""
    present = np.unique(np.concatenate([np.unique(np.asarray(m)) for m in masks]))
    names = [BACKGROUND, *class_names]
    return [Patch(facecolor=palette[i] / 255, edgecolor="grey", label=names[i])
            for i in present if i < len(names)]


def plot_overlay(image: np.ndarray, mask: np.ndarray, class_names: Sequence[str], *,
                 alpha: float = 0.6, title: str | None = None, ax: Axes | None = None) -> Figure:
    """The image with its mask blended on top and a legend of the classes present in the mask.

    Args:
        image: ``[H, W, 3]`` uint8.
        mask: ``[H, W]`` class ids (0 background, ``c + 1`` = ``class_names[c]``, 255 ignored).
        ax: draw into this axes instead of a new figure.
    """
    fig, ax = _figure_and_axes(ax)
    palette = class_palette(len(class_names))
    ax.imshow(overlay_mask(image, mask, palette, alpha))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    _legend_below(ax, legend_handles([mask], class_names, palette))
    return fig


def plot_class_heatmaps(image: np.ndarray, scores: np.ndarray, class_names: Sequence[str], *,
                        columns: int = 4, max_classes: int | None = None,
                        cmap: str = "magma") -> Figure:
    """The image, then one heatmap per class of where it scores high (one shared colour scale).

    Args:
        image: ``[H, W, 3]`` uint8.
        scores: ``[C, H, W]`` per-pixel scores (cosines or probabilities) of ``class_names``.
        max_classes: show only this many classes, those with the highest peak score.
    """
    image = _check_image(image)
    scores = _check_scores(scores, class_names, image.shape[:2])
    order = np.argsort(-scores.reshape(len(scores), -1).max(1), kind="stable")
    shown = np.sort(order[:max_classes]) if max_classes else np.arange(len(scores))
    panels = len(shown) + 1
    columns = min(columns, panels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("image", fontsize=9)
    low, high = float(scores[shown].min()), float(scores[shown].max())
    for ax, c in zip(axes.flat[1:], shown, strict=False):
        # The faint grey image underneath shows what each hot region sits on.
        ax.imshow(image.mean(2), cmap="gray", alpha=0.35)
        heat = ax.imshow(scores[c], cmap=cmap, vmin=low, vmax=high, alpha=0.8)
        ax.set_title(f"{class_names[c]} (max {scores[c].max():.2f})", fontsize=9)
    fig.colorbar(heat, ax=list(axes.flat), fraction=0.02, pad=0.02, label="score")
    return fig


def plot_methods_side_by_side(image: np.ndarray, masks: Mapping[str, np.ndarray],
                              class_names: Sequence[str], ground_truth: np.ndarray | None = None,
                              *, metrics: Mapping[str, float] | None = None,
                              alpha: float = 0.6) -> Figure:
    """One image, then the ground truth (if given), then each method's mask as an overlay.

    Args:
        masks: method name -> ``[H, W]`` predicted mask.
        metrics: optional method name -> a number (e.g. this image's mIoU) shown in the title.
    """
    panels = {"image": None, **({"ground truth": ground_truth} if ground_truth is not None
                                else {}), **masks}
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2), squeeze=False)
    palette = class_palette(len(class_names))
    for ax, (name, mask) in zip(axes[0], panels.items(), strict=True):
        ax.imshow(image if mask is None else overlay_mask(image, mask, palette, alpha))
        ax.axis("off")
        score = (metrics or {}).get(name)
        ax.set_title(name if score is None else f"{name}\nmIoU {score:.2f}", fontsize=9)
    drawn = [m for m in panels.values() if m is not None]
    _legend_below_figure(fig, legend_handles(drawn, class_names, palette))
    return fig


def lowest_scores(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` lowest scores, lowest first (NaN, an image with nothing to score,
    never counts as a failure)."""
    scores = np.asarray(scores, dtype=float)
    valid = np.flatnonzero(~np.isnan(scores))
    return [int(i) for i in valid[np.argsort(scores[valid], kind="stable")][:k]]


def plot_worst_cases(images: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                     targets: Sequence[np.ndarray], class_names: Sequence[str],
                     scores_per_image: Sequence[float], *, k: int = 6,
                     names: Sequence[str] | None = None, alpha: float = 0.6) -> Figure:
    """The ``k`` images with the lowest score (e.g. per-image mIoU), worst first: one column per
    image, rows image / ground truth / prediction.

    Args:
        images: ``N`` ``[H, W, 3]`` uint8 images; ``predictions``, ``targets``: ``N`` ``[H, W]``.
        scores_per_image: ``N`` numbers, lower = worse.
        names: optional ``N`` image names for the titles (default: the index).
    """
    if not len(images) == len(predictions) == len(targets) == len(scores_per_image):
        raise ValueError(f"images, predictions, targets and scores_per_image must have one entry "
                         f"per image; got {len(images)}, {len(predictions)}, {len(targets)}, "
                         f"{len(scores_per_image)}")
    worst = lowest_scores(scores_per_image, k)
    if not worst:
        raise ValueError("scores_per_image holds no number (all NaN): nothing to rank")
    palette = class_palette(len(class_names))
    fig, axes = plt.subplots(3, len(worst), figsize=(2.2 * len(worst), 6.9), squeeze=False)
    for column, i in enumerate(worst):
        label = names[i] if names is not None else f"#{i}"
        rows = (images[i], overlay_mask(images[i], targets[i], palette, alpha),
                overlay_mask(images[i], predictions[i], palette, alpha))
        for row, picture in enumerate(rows):
            axes[row, column].imshow(picture)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(f"{label}\nscore {scores_per_image[i]:.2f}", fontsize=8)
    for row, text in enumerate(("image", "ground truth", "prediction")):
        axes[row, 0].set_ylabel(text, fontsize=9)
    shown = [targets[i] for i in worst] + [predictions[i] for i in worst]
    _legend_below_figure(fig, legend_handles(shown, class_names, palette))
    return fig


def plot_miou_bars(miou: Mapping[str, float], *, reference: float | None = None,
                   reference_label: str = "target", title: str = "mIoU per method") -> Figure:
    """A bar per method (``name -> mIoU``) with its value on top; optionally a dashed line."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(miou), 3.4))
    colours = class_palette(len(miou))[1:] / 255
    bars = ax.bar(list(miou), list(miou.values()), color=colours)
    ax.bar_label(bars, fmt="%.2f", fontsize=9)
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=1,
                   label=f"{reference_label} ({reference:.2f})")
        ax.legend(loc="upper left", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="mIoU", title=title)
    fig.tight_layout()
    return fig


def plot_per_class_iou(per_class_iou: Mapping[str, Sequence[float]],
                       class_names: Sequence[str]) -> Figure:
    """Grouped bars: for every class (background first), the IoU each method reaches.

    ``per_class_iou``: method name -> ``len(class_names) + 1`` IoUs (NaN: class absent, no bar),
    as ``utils.metrics.mean_iou(...)["per_class_iou"]`` returns them.
    """
    labels = [BACKGROUND, *class_names]
    width = 0.8 / len(per_class_iou)
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(labels) * max(1, len(per_class_iou) / 2), 3.4))
    colours = class_palette(len(per_class_iou))[1:] / 255
    for m, (method, values) in enumerate(per_class_iou.items()):
        if len(values) != len(labels):
            raise ValueError(f"{method}: {len(values)} IoUs for {len(labels)} labels "
                             "(background + class_names)")
        ax.bar(np.arange(len(labels)) + (m - (len(per_class_iou) - 1) / 2) * width,
               np.nan_to_num(np.asarray(values, dtype=float)), width, label=method,
               color=colours[m])
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, ha="right"
                  if len(labels) > 8 else "center")
    ax.set(ylim=(0, 1), ylabel="IoU", title="IoU per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image [H, W, 3] of uint8, got shape {image.shape} "
                         f"dtype {image.dtype}")
    return image


def _check_scores(scores: np.ndarray, class_names: Sequence[str],
                  size: tuple[int, int]) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(class_names), *size):
        raise ValueError(f"scores have shape {scores.shape}; expected [C, H, W] = "
                         f"{(len(class_names), *size)} (one map per class, at the image's size)")
    return scores


def _figure_and_axes(ax: Axes | None) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=(4, 4.4))
    return fig, ax


def _legend_below(ax: Axes, handles: list[Patch]) -> None:
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=8,
              ncol=min(3, len(handles)), frameon=False, handlelength=1.2)


def _legend_below_figure(fig: Figure, handles: list[Patch]) -> None:
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles=handles, loc="lower center", fontsize=8, frameon=False,
               ncol=min(7, len(handles)), handlelength=1.2)
