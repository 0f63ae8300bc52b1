"""An interactive segmentation explorer: pick an image, choose classes, type new ones, move the
background threshold, and see the mask redrawn.

It is built from ipywidgets' core widgets and :func:`ipywidgets.interactive` only, which exist
with the same meaning in ipywidgets 7 (what Google Colab ships) and 8; each change calls one
Python function that draws a new matplotlib figure. No JavaScript, no ``ipympl``.

The segmenter comes in as a function, so the explorer works with any method::

    segment_fn(image, class_names, threshold) -> (scores, mask)

    image        [H, W, 3] uint8, one of the images given to the explorer
    class_names  list of C >= 1 foreground class names (free text is allowed: "a red circle")
    threshold    the slider's value: the background rule's threshold (an entropy, or a cosine)
    scores       [C, H, W] per-pixel scores (e.g. class probabilities), scores[c] for class_names[c]
    mask         [H, W] ints: 0 background, c + 1 for class_names[c]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from utils.course.notebook import show
from utils.plots.segmentation import class_palette, legend_handles, overlay_mask
from utils.prompts import normalise_text

SegmentFn = Callable[[np.ndarray, list[str], float], tuple[np.ndarray, np.ndarray]]


def parse_prompts(text: str) -> list[str]:
    """``"red circle, sky ,,tree"`` -> ``["red circle", "sky", "tree"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def chosen_classes(selected: Sequence[str], prompts: str) -> list[str]:
    """The classes to segment: those ticked in the list, then the typed ones, each name once
    (names that differ only in case or spaces are one text to the model: the first is kept)."""
    names: dict[str, str] = {}
    for name in [*selected, *parse_prompts(prompts)]:
        names.setdefault(normalise_text(name), name)
    return list(names.values())


def explorer_figure(image: np.ndarray, scores: np.ndarray, mask: np.ndarray,
                    class_names: Sequence[str], title: str = "", alpha: float = 0.6) -> Figure:
    """Three panels: the image; the mask as an overlay with a legend; the winning class's score
    per pixel (low where no class matches well: those pixels are the ones the threshold makes
    background)."""
    scores, mask = np.asarray(scores), np.asarray(mask)
    expected = (len(class_names), *image.shape[:2])
    if scores.shape != expected or mask.shape != image.shape[:2]:
        raise ValueError(f"segment_fn returned scores {scores.shape} and mask {mask.shape}; "
                         f"expected scores [C, H, W] = {expected} and mask [H, W] = "
                         f"{image.shape[:2]} (see utils.plots.explorer's docstring)")
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.9))
    palette = class_palette(len(class_names))
    axes[0].imshow(image)
    axes[0].set_title(title or "image", fontsize=9)
    axes[1].imshow(overlay_mask(image, mask, palette, alpha))
    axes[1].set_title("mask", fontsize=9)
    axes[1].legend(handles=legend_handles([mask], class_names, palette), loc="upper center",
                   bbox_to_anchor=(0.5, -0.01), fontsize=8, ncol=3, frameon=False)
    best = axes[2].imshow(scores.max(0), cmap="viridis")
    axes[2].set_title("score of the best class", fontsize=9)
    fig.colorbar(best, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    return fig


def message_figure(image: np.ndarray, message: str) -> Figure:
    """The image alone with a message: what the explorer shows when there is nothing to segment."""
    fig, ax = plt.subplots(figsize=(3.5, 3.9))
    ax.imshow(image)
    ax.set_title(message, fontsize=9)
    ax.axis("off")
    return fig


def segmentation_explorer(images: Sequence[np.ndarray], segment_fn: SegmentFn,
                          class_names: Sequence[str], *,
                          image_names: Sequence[str] | None = None, threshold: float = 0.5,
                          threshold_range: tuple[float, float] = (0.0, 1.0),
                          threshold_label: str = "threshold", prompts: str = "",
                          display_figures: bool = True) -> widgets.interactive:
    """The explorer widget: display it (last line of a cell) and play with the controls.

    Args:
        images: the ``[H, W, 3]`` uint8 images to pick from.
        segment_fn: the segmenter, see the module docstring for its contract.
        class_names: the class list (all ticked at the start).
        image_names: labels for the image picker (default ``image 0``, ``image 1``, ...).
        threshold: the slider's start value.
        threshold_range: the slider's (min, max): (0, 1) suits a normalised entropy; a cosine
            threshold is better given a range around the tuned value.
        threshold_label: names the threshold in the figure's title (e.g. "best cosine <").
        prompts: start text of the free-text box (comma-separated class names).
        display_figures: show each figure in the widget's output (False: only keep it, for tests).

    Returns:
        An ``ipywidgets.interactive``: its controls are ``.kwargs_widgets`` (descriptions
        ``image``, ``classes``, ``add classes``, ``threshold``), the last figure is ``.result``.
    """
    if not len(images):
        raise ValueError("segmentation_explorer needs at least one image")
    names = list(image_names) if image_names is not None else [f"image {i}"
                                                               for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} image_names for {len(images)} images")
    low, high = threshold_range
    if not low <= threshold <= high:
        raise ValueError(f"threshold {threshold} lies outside threshold_range {threshold_range}")
    last_figure: list[Figure] = []

    def draw(image: int, classes: tuple[str, ...], add_classes: str, threshold: float) -> Figure:
        if last_figure:
            plt.close(last_figure.pop())        # one figure alive, however long one plays
        picture = images[image]
        wanted = chosen_classes(classes, add_classes)
        if wanted:
            scores, mask = segment_fn(picture, wanted, threshold)
            fig = explorer_figure(picture, scores, mask, wanted,
                                  title=f"{names[image]} ({threshold_label} {threshold:.2f})")
        else:
            fig = message_figure(picture, "tick a class or type one (comma-separated)")
        last_figure.append(fig)
        if display_figures:
            show(fig)
        return fig

    style = {"description_width": "initial"}
    return widgets.interactive(
        draw,
        image=widgets.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0,
                               description="image"),
        classes=widgets.SelectMultiple(options=list(class_names), value=tuple(class_names),
                                       rows=min(8, len(class_names)), description="classes"),
        add_classes=widgets.Text(value=prompts, description="add classes",
                                 placeholder="e.g. red circle, sky", continuous_update=False,
                                 style=style),
        threshold=widgets.FloatSlider(value=threshold, min=low, max=high,
                                      step=(high - low) / 40, continuous_update=False,
                                      description="threshold"),
    )
