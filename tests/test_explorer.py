"""The segmentation explorer, headless: change its controls and check the figure it redraws.

The segmenter here is a small real function (colour distance to named colours), not a mock of the
explorer: the assertions are about what the explorer passes on and draws.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from utils.plots.explorer import chosen_classes, parse_prompts, segmentation_explorer  # noqa: E402
from utils.plots.segmentation import class_palette  # noqa: E402

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images() -> list[np.ndarray]:
    """Image 0: left half red, right half grey. Image 1: top half blue, bottom half green."""
    first = np.full((10, 12, 3), 128, dtype=np.uint8)
    first[:, :6] = COLOURS["red"]
    second = np.zeros((10, 12, 3), dtype=np.uint8)
    second[:5] = COLOURS["blue"]
    second[5:] = COLOURS["green"]
    return [first, second]


class ColourSegmenter:
    """Scores = closeness of each pixel to the named colour; background where the best score is
    under the threshold. Records the arguments of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, image: np.ndarray, class_names: list[str], threshold: float):
        self.calls.append((list(class_names), threshold))
        targets = np.array([COLOURS.get(name, (0, 0, 0)) for name in class_names], dtype=float)
        distance = np.abs(image[None].astype(float) - targets[:, None, None]).sum(-1) / 765
        scores = 1 - distance                                          # [C, H, W]
        mask = scores.argmax(0) + 1
        mask[scores.max(0) < threshold] = 0
        return scores, mask


def _controls(explorer) -> dict:
    return {widget.description: widget for widget in explorer.kwargs_widgets}


def _mask_colours(fig, image: np.ndarray, class_count: int) -> np.ndarray:
    """Recover class ids from the drawn overlay panel (alpha 0.6 blend of grey image and palette)."""
    drawn = np.asarray(fig.axes[1].get_images()[0].get_array()).astype(float)
    palette = class_palette(class_count).astype(float)
    grey = image.astype(float).mean(2, keepdims=True)
    blends = 0.4 * grey[None] + 0.6 * palette[:, None, None]                # [K+1, H, W, 3]
    return np.abs(drawn[None] - blends).sum(-1).argmin(0)


def test_prompt_parsing_and_class_choice() -> None:
    assert parse_prompts(" red circle, sky ,,tree ") == ["red circle", "sky", "tree"]
    assert parse_prompts("  ") == []
    assert chosen_classes(("red", "blue"), "blue, green") == ["red", "blue", "green"]
    # One text to the model, whatever the case and the spaces: the first spelling is kept.
    assert chosen_classes(("Red", "blue"), "red, BLUE ,  green  sky, green sky") == [
        "Red", "blue", "green  sky"]


def test_controls_redraw_with_the_chosen_values() -> None:
    segmenter = ColourSegmenter()
    images = _images()
    explorer = segmentation_explorer(images, segmenter, ["red", "blue"], threshold=0.9,
                                     image_names=["halves", "sky"], display_figures=False)
    controls = _controls(explorer)
    assert set(controls) == {"image", "classes", "add classes", "threshold"}
    explorer.update()   # ipywidgets 8 draws on creation, 7 when displayed: draw here for both
    assert segmenter.calls[-1] == (["red", "blue"], 0.9)
    fig = explorer.result
    assert fig.axes[0].get_title() == "halves (threshold 0.90)"
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert legend == ["background", "red"]      # grey right half is background at 0.9
    ids = _mask_colours(fig, images[0], 2)
    assert (ids[:, :6] == 1).all() and (ids[:, 6:] == 0).all()

    controls["image"].value = 1
    controls["add classes"].value = "green, sky"
    assert segmenter.calls[-1] == (["red", "blue", "green", "sky"], 0.9)
    fig = explorer.result
    assert fig.axes[0].get_title() == "sky (threshold 0.90)"
    ids = _mask_colours(fig, images[1], 4)
    assert (ids[:5] == 2).all() and (ids[5:] == 3).all()

    controls["threshold"].value = 0.0
    assert segmenter.calls[-1][1] == 0.0
    assert explorer.result.axes[0].get_title() == "sky (threshold 0.00)"


def test_nothing_to_segment_shows_a_message_and_skips_the_segmenter() -> None:
    segmenter = ColourSegmenter()
    explorer = segmentation_explorer(_images(), segmenter, ["red"], display_figures=False)
    calls = len(segmenter.calls)
    _controls(explorer)["classes"].value = ()
    assert len(segmenter.calls) == calls
    assert len(explorer.result.axes) == 1
    assert "tick a class" in explorer.result.axes[0].get_title()


def test_only_one_figure_stays_open_and_display_path_runs() -> None:
    segmenter = ColourSegmenter()
    explorer = segmentation_explorer(_images(), segmenter, ["red"])    # shows through display()
    threshold = _controls(explorer)["threshold"]
    for value in (0.1, 0.2, 0.3, 0.4):
        threshold.value = value
    assert len(plt.get_fignums()) <= 1


def test_a_segmenter_breaking_the_contract_gets_a_clear_error() -> None:
    def wrong_shape(image, class_names, threshold):
        return np.zeros((len(class_names) + 1, *image.shape[:2])), np.zeros(image.shape[:2], int)

    explorer = segmentation_explorer(_images(), wrong_shape, ["red"], display_figures=False)
    # interactive() shows a callback's exception in its output; call the callback to see it.
    with pytest.raises(ValueError, match=r"expected scores \[C, H, W\]"):
        explorer.f(image=0, classes=("red",), add_classes="", threshold=0.5)


def test_the_slider_spans_the_given_range_and_names_the_rule() -> None:
    segmenter = ColourSegmenter()
    explorer = segmentation_explorer(_images(), segmenter, ["red"], threshold=-0.2,
                                     threshold_range=(-0.5, 0.3), threshold_label="cosine <",
                                     display_figures=False)
    slider = _controls(explorer)["threshold"]
    assert (slider.min, slider.max, slider.value) == (-0.5, 0.3, -0.2)
    explorer.update()
    assert segmenter.calls[-1][1] == -0.2
    assert explorer.result.axes[0].get_title() == "image 0 (cosine < -0.20)"
    with pytest.raises(ValueError, match="outside threshold_range"):
        segmentation_explorer(_images(), segmenter, ["red"], threshold=0.9,
                              threshold_range=(-0.5, 0.3))
