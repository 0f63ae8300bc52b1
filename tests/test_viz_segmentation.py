"""Segmentation plots: check what was drawn (pixel colours, legends, panel titles, order)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from utils.plots.segmentation import (  # noqa: E402
    BACKGROUND,
    IGNORE_COLOUR,
    class_palette,
    colour_mask,
    lowest_scores,
    overlay_mask,
    plot_class_heatmaps,
    plot_methods_side_by_side,
    plot_miou_bars,
    plot_overlay,
    plot_per_class_iou,
    plot_worst_cases,
)

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A grey 12x16 image; mask: left half circle (1), a 4x4 triangle block (3), rest background."""
    image = np.full((12, 16, 3), 100, dtype=np.uint8)
    mask = np.zeros((12, 16), dtype=np.int64)
    mask[:, :8] = 1
    mask[8:, 12:] = 3
    return image, mask


def _legend_labels(legend) -> list[str]:
    return [text.get_text() for text in legend.get_texts()]


def test_palette_background_black_and_colours_distinct() -> None:
    for n in (3, 20, 45):
        palette = class_palette(n)
        assert palette.shape == (n + 1, 3) and palette.dtype == np.uint8
        assert tuple(palette[0]) == (0, 0, 0)
        assert len({tuple(c) for c in palette}) == n + 1, f"repeated colours for {n} classes"
    # The first colours are the most distinct ones: any two of the first ten differ clearly.
    first = class_palette(10)[1:].astype(int)
    distances = np.abs(first[:, None] - first[None]).sum(-1)
    assert distances[~np.eye(10, dtype=bool)].min() > 60


def test_colour_mask_uses_the_palette_and_paints_ignored_pixels_white() -> None:
    palette = class_palette(3)
    mask = np.array([[0, 1], [3, 255]])
    picture = colour_mask(mask, palette)
    assert (picture[0, 0] == palette[0]).all() and (picture[0, 1] == palette[1]).all()
    assert (picture[1, 0] == palette[3]).all() and tuple(picture[1, 1]) == IGNORE_COLOUR
    with pytest.raises(ValueError, match="class id 7"):
        colour_mask(np.array([[7]]), palette)


def test_overlay_blends_each_class_colour_on_the_grey_image_where_the_mask_has_it() -> None:
    image, mask = _scene()
    image[..., 0] = 160                 # a reddish image: grey level (160 + 100 + 100) / 3 = 120
    palette = class_palette(len(CLASSES))
    blended = overlay_mask(image, mask, palette, alpha=0.5)
    for class_id in (0, 1, 3):
        expected = np.round(0.5 * 120 + 0.5 * palette[class_id].astype(float))
        assert (blended[mask == class_id] == expected).all(), f"class {class_id}"
    with pytest.raises(ValueError, match="does not match"):
        overlay_mask(image, mask[:5], palette)


def test_plot_overlay_draws_the_overlay_and_a_legend_of_the_classes_present() -> None:
    image, mask = _scene()
    fig = plot_overlay(image, mask, CLASSES, alpha=0.5, title="one image")
    ax = fig.axes[0]
    drawn = ax.get_images()[0].get_array()
    palette = class_palette(len(CLASSES))
    assert (np.asarray(drawn)[mask == 3] == np.round(50 + 0.5 * palette[3])).all()
    # "square" (id 2) is not in the mask, so not in the legend.
    assert _legend_labels(ax.get_legend()) == [BACKGROUND, "circle", "triangle"]
    assert ax.get_title() == "one image"


def test_class_heatmaps_one_panel_per_class_on_a_shared_scale() -> None:
    image, _ = _scene()
    scores = np.stack([np.full((12, 16), v) for v in (0.1, 0.9, 0.4)])
    fig = plot_class_heatmaps(image, scores, CLASSES)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == [
        "image", "circle (max 0.10)", "square (max 0.90)", "triangle (max 0.40)"]
    heat = titled[1].get_images()[-1]
    assert heat.get_clim() == (pytest.approx(0.1), pytest.approx(0.9))

    fig = plot_class_heatmaps(image, scores, CLASSES, max_classes=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["image", "square (max 0.90)", "triangle (max 0.40)"]
    with pytest.raises(ValueError, match=r"expected \[C, H, W\]"):
        plot_class_heatmaps(image, scores[:2], CLASSES)


def test_methods_side_by_side_panels_titles_and_shared_legend() -> None:
    image, truth = _scene()
    raw = np.zeros_like(truth)
    pacl = truth.copy()
    pacl[0, 0] = 2
    fig = plot_methods_side_by_side(image, {"raw": raw, "pacl": pacl}, CLASSES, truth,
                                    metrics={"raw": 0.25, "pacl": 0.9})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["image", "ground truth", "raw\nmIoU 0.25", "pacl\nmIoU 0.90"]
    assert (np.asarray(fig.axes[0].get_images()[0].get_array()) == image).all()
    assert _legend_labels(fig.legends[0]) == [BACKGROUND, "circle", "square", "triangle"]


def test_lowest_scores_orders_worst_first_and_skips_nan() -> None:
    assert lowest_scores([0.5, 0.1, float("nan"), 0.3, 0.9], k=3) == [1, 3, 0]
    assert lowest_scores([0.5, float("nan")], k=5) == [0]


def test_worst_cases_shows_the_k_lowest_images_in_order() -> None:
    image, truth = _scene()
    images = [image + i for i in range(5)]
    scores = [0.8, 0.2, 0.6, 0.05, 0.9]
    fig = plot_worst_cases(images, [truth] * 5, [truth] * 5, CLASSES, scores, k=3,
                           names=[f"img{i}" for i in range(5)])
    top_row = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in top_row] == [
        "img3\nscore 0.05", "img1\nscore 0.20", "img2\nscore 0.60"]
    # The first column's image is image 3 itself.
    assert (np.asarray(top_row[0].get_images()[0].get_array()) == images[3]).all()
    assert len(fig.axes) == 9
    with pytest.raises(ValueError, match="one entry per image"):
        plot_worst_cases(images, [truth], [truth] * 5, CLASSES, scores)


def test_miou_bars_heights_labels_and_reference_line() -> None:
    fig = plot_miou_bars({"raw": 0.2, "pacl": 0.6}, reference=0.5, reference_label="bar")
    ax = fig.axes[0]
    assert [bar.get_height() for bar in ax.patches] == [0.2, 0.6]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["raw", "pacl"]
    assert [t.get_text() for t in ax.texts] == ["0.20", "0.60"]
    assert ax.get_lines()[0].get_ydata()[0] == 0.5
    assert _legend_labels(ax.get_legend()) == ["bar (0.50)"]


def test_per_class_iou_grouped_bars_with_nan_as_no_bar() -> None:
    fig = plot_per_class_iou({"raw": [0.9, 0.1, float("nan"), 0.3],
                              "pacl": [0.95, 0.7, 0.5, 0.6]}, CLASSES)
    ax = fig.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [0.9, 0.1, 0.0, 0.3, 0.95, 0.7, 0.5, 0.6]
    assert [t.get_text() for t in ax.get_xticklabels()] == [BACKGROUND, *CLASSES]
    with pytest.raises(ValueError, match="4 labels"):
        plot_per_class_iou({"raw": [0.1, 0.2]}, CLASSES)
