"""Draw the figures of the README into ``Images/``: the course's diagrams, and the results of a
``make demo`` run.

    python scripts/draw_figures.py                      # every diagram (no data, no training)
    python scripts/draw_figures.py clip_architecture --out Images
    python scripts/draw_figures.py --results outputs/demo   # the demo's result figures

Each diagram is one ``draw_<name>(ax)`` function registered in ``FIGURES`` with its canvas size;
adding one means adding one function and one entry. Diagrams are byte-for-byte reproducible: no
timestamps or version strings in the PNG. ``--results`` copies the figures the demo drew
(``DEMO_FIGURES``) and draws one it does not: each class's probability map from the raw CLIP
patches next to PACL's, from the models the demo saved.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle

from utils.backbones import CourseCLIPBackbone
from utils.data import DatasetFiles, load_image, load_split, locate_dataset
from utils.models import load_clip
from utils.plots.clip import save_figure
from utils.plots.segmentation import class_palette, legend_handles, overlay_mask
from utils.segmentation import (
    Segmenter,
    load_mask,
    masks_from_scores,
    normalised_entropy,
    upsample_scores,
)
from utils.sources.synthetic import CLASS_NAMES
from utils.storage.atomic import atomic_file
from utils.storage.pacl_io import load_pacl

matplotlib.use("Agg")  # a script: never open a window
REPO_ROOT = Path(__file__).resolve().parents[1]

# One palette for every figure: the image side warm, the text side cool, matches green.
IMAGE_COLOUR = "#f4a259"
TEXT_COLOUR = "#5b8fd6"
MATCH_COLOUR = "#59b36b"
NEUTRAL_COLOUR = "#eeeeee"
EDGE_COLOUR = "#333333"
SHAPE_COLOURS = {"red": "#d72828", "green": "#28a53c", "blue": "#2855d7", "yellow": "#f0cd1e",
                 "purple": "#8737b9", "orange": "#f58719"}


# --------------------------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------------------------

def box(ax: Axes, x: float, y: float, w: float, h: float, label: str, colour: str,
        fontsize: float = 11, alpha: float = 1.0) -> tuple[float, float, float, float]:
    """A rounded box with centred text; returns (x, y, w, h) so arrows can attach to it."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.25",
                                facecolor=colour, edgecolor=EDGE_COLOUR, linewidth=1.2,
                                alpha=alpha))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize)
    return x, y, w, h


def arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float],
          connection: str = "arc3", colour: str = EDGE_COLOUR) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, linewidth=1.4,
                                 color=colour, connectionstyle=connection, shrinkA=2, shrinkB=2))


def bracket(ax: Axes, start: tuple[float, float], end: tuple[float, float],
            towards: tuple[float, float], depth: float = 0.15) -> None:
    """A straight bracket from ``start`` to ``end`` whose ends bend ``depth`` towards ``towards``:
    shows that one arrow feeds a whole row or column of boxes."""
    (x0, y0), (x1, y1), (dx, dy) = start, end, towards
    ax.plot([x0 + dx * depth, x0, x1, x1 + dx * depth], [y0 + dy * depth, y0, y1, y1 + dy * depth],
            color=EDGE_COLOUR, linewidth=1.4, solid_capstyle="butt")


def star_vertices(cx: float, cy: float, radius: float, points: int = 5) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, radius, 0.42 * radius)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def shape_tile(ax: Axes, x: float, y: float, side: float, shapes: list[tuple[str, str, float,
               float, float]], background: str = "#c9c6bd") -> None:
    """A little picture like the synthetic set's: ``shapes`` = (kind, colour, u, v, size) with
    (u, v) the centre and size the radius, all as fractions of the tile."""
    ax.add_patch(Rectangle((x, y), side, side, facecolor=background, edgecolor=EDGE_COLOUR,
                           linewidth=1.0))
    for kind, colour, u, v, size in shapes:
        cx, cy, r = x + u * side, y + v * side, size * side
        face = SHAPE_COLOURS[colour]
        if kind == "circle":
            ax.add_patch(Circle((cx, cy), r, facecolor=face, edgecolor="none"))
        elif kind == "square":
            ax.add_patch(Rectangle((cx - r, cy - r), 2 * r, 2 * r, facecolor=face,
                                   edgecolor="none"))
        elif kind == "triangle":
            ax.add_patch(Polygon([(cx, cy + r), (cx + r, cy - r), (cx - r, cy - r)],
                                 facecolor=face, edgecolor="none"))
        elif kind == "star":
            ax.add_patch(Polygon(star_vertices(cx, cy, r), facecolor=face, edgecolor="none"))


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def draw_clip_architecture(ax: Axes, n: int = 4) -> None:
    """CLIP's training step: two encoders, two projections, an n x n similarity matrix whose
    diagonal holds the matching pairs."""
    cell, top = 1.25, 7.1                       # matrix cell size and the matrix's top edge
    mx = 16.3                                    # matrix's left edge
    my = top - n * cell                          # matrix's bottom edge

    # Text side (top row): captions -> text encoder -> projection -> T_1..T_n above the matrix.
    ty = 9.6
    captions = ["a red circle on the left", "two stars", "a large blue square",
                "something yellow"][:n]
    box(ax, 0.2, ty - 0.2, 4.4, 2.2, "", "#ffffff")
    for k, caption in enumerate(captions):
        ax.text(0.45, ty + 1.65 - k * 0.5, f'{k + 1}. "{caption}"', fontsize=8.5, va="center")
    ax.text(2.4, ty + 2.35, f"{n} captions", ha="center", fontsize=10, style="italic")
    box(ax, 5.6, ty, 3.6, 1.8, "text encoder\n(Transformer,\n[CLS] token)", TEXT_COLOUR, 10)
    box(ax, 10.2, ty, 3.6, 1.8, "projection $W_t$\n+ L2 normalise", TEXT_COLOUR, 10, 0.6)
    arrow(ax, (4.6, ty + 0.9), (5.6, ty + 0.9))
    arrow(ax, (9.2, ty + 0.9), (10.2, ty + 0.9))
    for j in range(n):
        box(ax, mx + j * cell + 0.08, top + 0.35, cell - 0.16, 0.85, f"$T_{j + 1}$",
            TEXT_COLOUR, 11, 0.6)
    bracket(ax, (mx + 0.08, top + 1.4), (mx + n * cell - 0.08, top + 1.4), towards=(0, -1))
    arrow(ax, (13.8, ty + 0.9), (mx + n * cell / 2, top + 1.45), "angle,angleA=0,angleB=90,rad=0")

    # Image side (middle row): images -> image encoder -> projection -> I_1..I_n left of the matrix.
    iy = my + n * cell / 2 - 0.9
    tiles = [[("circle", "red", 0.3, 0.5, 0.2)],
             [("star", "green", 0.3, 0.3, 0.2), ("star", "purple", 0.7, 0.7, 0.22)],
             [("square", "blue", 0.35, 0.55, 0.3)],
             [("triangle", "yellow", 0.5, 0.45, 0.3)]][:n]
    side = 1.0
    for k, shapes in enumerate(tiles):          # a staggered stack of the n pictures
        shape_tile(ax, 0.5 + 0.55 * k, iy + 1.2 - 0.55 * k, side, shapes)
    ax.text(2.4, iy + 2.55, f"{n} images", ha="center", fontsize=10, style="italic")
    box(ax, 5.6, iy, 3.6, 1.8, "image encoder\n(CNN or ViT,\npooled features)", IMAGE_COLOUR, 10)
    box(ax, 10.2, iy, 3.6, 1.8, "projection $W_i$\n+ L2 normalise", IMAGE_COLOUR, 10, 0.6)
    arrow(ax, (0.5 + 0.55 * (n - 1) + side + 0.1, iy + 0.9), (5.6, iy + 0.9))
    arrow(ax, (9.2, iy + 0.9), (10.2, iy + 0.9))
    ix = mx - 1.35
    for i in range(n):
        box(ax, ix, top - (i + 1) * cell + 0.08, 1.05, cell - 0.16, f"$I_{i + 1}$",
            IMAGE_COLOUR, 11, 0.6)
    bracket(ax, (ix - 0.15, top - 0.08), (ix - 0.15, my + 0.08), towards=(1, 0))
    arrow(ax, (13.8, iy + 0.9), (ix - 0.2, iy + 0.9))

    # The similarity matrix: every image against every caption; the diagonal are the true pairs.
    for i in range(n):
        for j in range(n):
            match = i == j
            ax.add_patch(Rectangle((mx + j * cell, top - (i + 1) * cell), cell, cell,
                                   facecolor=MATCH_COLOUR if match else NEUTRAL_COLOUR,
                                   edgecolor="white", linewidth=2))
            ax.text(mx + (j + 0.5) * cell, top - (i + 0.5) * cell,
                    f"$I_{i + 1}\\!\\cdot\\!T_{j + 1}$", ha="center", va="center",
                    fontsize=10, fontweight="bold" if match else "normal")
    ax.text(mx + n * cell + 0.3, top - n * cell / 2,
            "row $i$: which caption\nmatches image $i$?\n\ncolumn $j$: which image\n"
            "matches caption $j$?", va="center", fontsize=9)

    # The loss, written under the matrix.
    ax.text(mx + n * cell / 2, my - 0.5,
            "logits $= s \\cdot I\\,T^{\\top}$   ($s = e^{t}$ learned, starts at 1/0.07)\n"
            "targets: the diagonal (green)\n"
            "loss = ½ (cross-entropy over rows + cross-entropy over columns)",
            ha="center", va="top", fontsize=9.5)
    ax.text(0.2, 0.9, "Both encoders are trained together: matching pairs are pulled together in "
            "the shared space,\nthe other $n^2 - n$ pairs of the batch are pushed apart.",
            fontsize=9.5, va="center")
    ax.set_title("CLIP: contrastive training on a batch of image-caption pairs", fontsize=13,
                 loc="left")


def patch_grid(ax: Axes, x: float, y: float, side: float, values: np.ndarray | None = None,
               colour: str = IMAGE_COLOUR, cmap: str = "magma") -> None:
    """A ``k x k`` grid of patch cells with its lower-left corner at (x, y); ``values`` in [0, 1]
    (row 0 = top) colour the cells with ``cmap``, else every cell is ``colour``."""
    k = 4 if values is None else len(values)
    cell = side / k
    colours = plt.get_cmap(cmap)
    for row in range(k):
        for col in range(k):
            face = colour if values is None else colours(0.15 + 0.8 * values[row, col])
            ax.add_patch(Rectangle((x + col * cell, y + side - (row + 1) * cell), cell, cell,
                                   facecolor=face, edgecolor="white", linewidth=1.5))


def circle_heat(k: int = 4, centre: tuple[float, float] = (1.0, 1.0), width: float = 1.1
                ) -> np.ndarray:
    """Made-up patch-text cosines, scaled to [0, 1], that peak at patch (row, col) = ``centre``:
    what a well-aligned patch map of "a red circle" looks like (illustration, not a measurement)."""
    rows, cols = np.mgrid[0:k, 0:k]
    heat = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * width ** 2))
    return (heat - heat.min()) / (heat.max() - heat.min())


def draw_pacl_architecture(ax: Axes, n: int = 3) -> None:
    """PACL's training step: a frozen CLIP, a trained vision embedder on its patch tokens, and the
    compatibility phi(x, y) (PACL Eq. 2-3) in place of CLIP's cosine; the loss over the
    ``n x n`` compatibilities of a batch."""
    side = 2.0                                   # patch grids are side x side

    # Image side (top row): image -> frozen encoder, not pooled -> P patch tokens -> the trained
    # vision embedder -> embedded patches e_v(patch_i).
    iy = 9.0
    shape_tile(ax, 0.6, iy, side, [("circle", "red", 0.3, 0.7, 0.17),
                                   ("square", "blue", 0.72, 0.3, 0.16)])
    ax.text(0.6 + side / 2, iy + side + 0.25, "image $x$", ha="center", fontsize=10,
            style="italic")
    box(ax, 3.6, iy + 0.1, 3.6, 1.8, "image encoder\n+ projection\n(frozen, not pooled)",
        IMAGE_COLOUR, 10, 0.45)
    patch_grid(ax, 8.0, iy, side, colour="#f8cfa6")
    ax.text(9.0, iy - 0.15, "$P$ patch tokens [P, D]", ha="center", va="top", fontsize=9.5)
    box(ax, 10.7, iy - 0.2, 5.6, 2.4, "vision embedder $e_v$ (trained)\n"
        "Linear$(x)$ + Linear-ReLU-Linear$(x)$\napplied to every patch\n"
        "≈0.8M parameters at D = 512", MATCH_COLOUR, 9)
    patch_grid(ax, 16.9, iy, side, colour=IMAGE_COLOUR)
    ax.text(17.9, iy - 0.15, "$e_v(\\mathrm{patch}_i)$ [P, D]", ha="center", va="top",
            fontsize=9.5)
    for start, end in [(0.6 + side + 0.1, 3.6), (7.2, 8.0), (10.0, 10.7), (16.3, 16.9)]:
        arrow(ax, (start, iy + 1.0), (end, iy + 1.0))

    # The compatibility phi(x, y) (middle row, framed): patch-text cosines -> softmax over the
    # patches -> weighted sum of the embedded patches -> cosine with the text.
    cy = 4.7                                     # bottom of the grids and boxes
    ax.add_patch(FancyBboxPatch((0.2, 3.75), 19.6, 3.95, boxstyle="round,pad=0.05",
                                facecolor="none", edgecolor=EDGE_COLOUR, linestyle="--"))
    ax.text(19.6, 7.3, "compatibility $\\varphi(x, y)$ (PACL Eq. 2-3)", ha="right",
            fontsize=10.5)
    heat = circle_heat()
    weights = np.exp(4 * heat) / np.exp(4 * heat).sum()   # sharper; sums to 1 over the patches
    patch_grid(ax, 1.3, cy, side, heat)
    ax.text(0.9, cy - 0.15, "① cosine per patch\n$s_i = \\cos(e_v(\\mathrm{patch}_i), e_t(y))$",
            va="top", fontsize=9.5)
    patch_grid(ax, 6.3, cy, side, weights / weights.max())
    ax.text(7.3, cy - 0.15, "② weights\n$a = \\mathrm{softmax}_i(s)$", ha="center", va="top",
            fontsize=9.5)
    box(ax, 9.6, cy + 0.2, 4.4, 1.6, "③ $v = \\sum_i a_i\\, e_v(\\mathrm{patch}_i)$\n"
        "text-specific image vector", IMAGE_COLOUR, 9.5, 0.6)
    box(ax, 14.8, cy + 0.2, 4.4, 1.6, "④ $\\varphi(x, y) = \\cos(v, e_t(y))$", MATCH_COLOUR, 10,
        0.8)
    arrow(ax, (3.4, cy + 1.0), (6.3, cy + 1.0))
    arrow(ax, (8.4, cy + 1.0), (9.6, cy + 1.0))
    arrow(ax, (14.0, cy + 1.0), (14.8, cy + 1.0))
    # The embedded patches feed ① and ③ (from above) ...
    bus = 8.05
    ax.plot([17.9, 17.9, 2.3], [iy - 0.7, bus, bus], color=EDGE_COLOUR, linewidth=1.4)
    arrow(ax, (2.3, bus), (2.3, cy + side))
    arrow(ax, (11.8, bus), (11.8, cy + 1.8))

    # Text side (bottom row): the caption -> frozen text encoder -> e_t(y), which feeds ① (from
    # the left) and ④ (from below).
    ty = 1.6
    box(ax, 0.9, ty, 3.6, 1.2, '"a red circle"', "#ffffff", 10)
    box(ax, 5.4, ty - 0.3, 3.8, 1.8, "text encoder\n+ projection\n(frozen)", TEXT_COLOUR, 10,
        0.45)
    box(ax, 10.1, ty, 2.2, 1.2, "$e_t(y)$ [D]", TEXT_COLOUR, 10, 0.6)
    arrow(ax, (4.5, ty + 0.6), (5.4, ty + 0.6))
    arrow(ax, (9.2, ty + 0.6), (10.1, ty + 0.6))
    bus = 3.3
    ax.plot([11.2, 11.2], [ty + 1.2, bus], color=EDGE_COLOUR, linewidth=1.4)
    ax.plot([0.55, 17.0], [bus, bus], color=EDGE_COLOUR, linewidth=1.4)
    ax.plot([0.55, 0.55], [bus, cy + 1.0], color=EDGE_COLOUR, linewidth=1.4)
    arrow(ax, (0.55, cy + 1.0), (1.3, cy + 1.0))
    arrow(ax, (17.0, bus), (17.0, cy + 0.2))

    # The loss: CLIP's, over the n x n compatibilities of a batch.
    cell, mx, top = 0.8, 20.9, 6.9
    for i in range(n):
        for j in range(n):
            ax.add_patch(Rectangle((mx + j * cell, top - (i + 1) * cell), cell, cell,
                                   facecolor=MATCH_COLOUR if i == j else NEUTRAL_COLOUR,
                                   edgecolor="white", linewidth=2))
            ax.text(mx + (j + 0.5) * cell, top - (i + 0.5) * cell, f"$\\varphi_{{{i + 1}{j + 1}}}$",
                    ha="center", va="center", fontsize=8.5)
    arrow(ax, (19.2, cy + 1.0), (mx - 0.1, cy + 1.0))
    ax.text(mx + n * cell / 2, top + 0.3, "a batch:\n$\\varphi(x_i, y_j)$", ha="center",
            fontsize=9.5)
    ax.text(mx + n * cell / 2, top - n * cell - 0.3,
            "loss: CLIP's\nsymmetric\ncross-entropy\nof $s \\cdot \\varphi$,\ntargets the\ndiagonal",
            ha="center", va="top", fontsize=9)

    ax.text(0.2, 0.6, "Only $e_v$ and the logit scale $s$ learn; both CLIP encoders stay frozen. "
            "No masks: the caption alone tells which patches\nshould match it, so at test time "
            "patch scores ① against class names become a segmentation.", fontsize=9.5,
            va="center")
    ax.set_title("PACL: aligning patch tokens with text through the compatibility function",
                 fontsize=13, loc="left")


def toy_scene(size: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A ``[size, size, 3]`` uint8 picture like the synthetic set's (a red circle, a blue square)
    and each shape's boolean footprint."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    footprints = {"circle": (rows - 0.3) ** 2 + (cols - 0.3) ** 2 < 0.17 ** 2,
                  "square": (abs(rows - 0.7) < 0.15) & (abs(cols - 0.72) < 0.15)}
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = (201, 198, 189)
    image[footprints["circle"]] = (215, 40, 40)
    image[footprints["square"]] = (40, 85, 215)
    return image, footprints


def toy_patch_scores(footprints: dict[str, np.ndarray], class_names: list[str],
                     grid: int = 8) -> torch.Tensor:
    """Made-up patch-text cosines ``[1, C, grid * grid]`` of a well-aligned model: 0.1 everywhere,
    plus 0.2 times the share of the patch a class covers (an illustration, not a measurement)."""
    size = next(iter(footprints.values())).shape[0]
    scores = np.full((len(class_names), grid, grid), 0.1)
    for c, name in enumerate(class_names):
        if name in footprints:
            cover = footprints[name].reshape(grid, size // grid, grid, size // grid).mean((1, 3))
            scores[c] += 0.2 * cover
    return torch.tensor(scores, dtype=torch.float32).reshape(1, len(class_names), -1)


def draw_scores_to_mask(ax: Axes, logit_scale: float = 40.0, threshold: float = 0.6) -> None:
    """From patch scores to a mask, computed by :mod:`utils.segmentation`'s own functions on
    made-up scores: upsample, softmax over the classes, argmax, entropy above a threshold ->
    background."""
    class_names = ["circle", "square", "star"]
    image, footprints = toy_scene()
    grid = 8                                                                 # 8 x 8 patches
    scores = toy_patch_scores(footprints, class_names, grid)                 # [1, C, 64]
    pixels = upsample_scores(scores, (grid, grid), image.shape[:2])          # [1, C, 64, 64]
    probabilities = (logit_scale * pixels).softmax(1)
    entropy = normalised_entropy(probabilities)[0].numpy()
    mask = masks_from_scores(pixels, logit_scale, "entropy", threshold)[0].numpy()
    palette = class_palette(len(class_names))

    def picture(array: np.ndarray, x: float, y: float, side: float, **style) -> None:
        ax.imshow(array, extent=(x, x + side, y, y + side), interpolation="nearest", **style)
        ax.add_patch(Rectangle((x, y), side, side, facecolor="none", edgecolor=EDGE_COLOUR))

    side, gap, base = 1.7, 0.45, 0.9        # one small panel per class, stacked
    rows_y = [base + (2 - c) * (side + gap) for c in range(3)]
    middle = rows_y[1] + side / 2
    picture(image, 0.2, middle - 1.5, 3.0)
    ax.text(1.7, middle + 1.75, "image", ha="center", fontsize=10, style="italic")
    columns = [(4.6, scores[0].reshape(3, grid, grid).numpy(), "① patch scores\n$\\cos$(patch, class)"),
               (7.5, pixels[0].numpy(), "② bilinear\nupsample"),
               (10.4, probabilities[0].numpy(), "③ softmax over\nclasses of $s \\cdot$ cos")]
    for k, (x, maps, title) in enumerate(columns):
        ax.text(x + side / 2, rows_y[0] + side + 0.25, title, ha="center", fontsize=9.5)
        # Scores share one colour scale; probabilities have their own, 0 to 1.
        low, high = (0, 1) if k == 2 else (float(scores.min()), float(scores.max()))
        for c in range(len(class_names)):
            picture(maps[c], x, rows_y[c], side, cmap="magma", vmin=low, vmax=high)
        if k:
            arrow(ax, (x - 1.1, middle), (x - 0.1, middle))
    for c, name in enumerate(class_names):
        ax.text(4.5, rows_y[c] + side / 2, name, ha="right", va="center", fontsize=9)

    big, bx = 2.6, 13.5
    picture(entropy, bx, rows_y[0] - 0.7, big, cmap="gray", vmin=0, vmax=1)
    ax.text(bx + big / 2, rows_y[0] + side + 0.25, f"④ entropy / log C\n(> {threshold}: "
            "background)", ha="center", fontsize=9.5)
    picture(overlay_mask(image, mask, palette), bx, base - 0.3, big)
    ax.text(bx + big / 2, base - 0.45, "⑤ argmax over classes,\nbackground where ④ is high",
            ha="center", va="top", fontsize=9.5)
    arrow(ax, (12.2, middle), (bx - 0.1, rows_y[0] + 0.6))
    arrow(ax, (12.2, middle), (bx - 0.1, base + 1.0))
    for c, name in enumerate(["background", *class_names]):
        y = middle + 0.9 - 0.6 * c
        ax.add_patch(Rectangle((16.6, y - 0.2), 0.4, 0.4, facecolor=palette[c] / 255,
                               edgecolor=EDGE_COLOUR))
        ax.text(17.2, y, name, va="center", fontsize=9)
    ax.text(0.2, -0.9, "Made-up scores (a red circle and a blue square; no star), turned into a "
            f"mask by utils.segmentation's own functions with $s$ = {logit_scale:g}.",
            fontsize=9, va="center")
    ax.set_title("From patch scores to a segmentation mask (no mask labels anywhere)",
                 fontsize=13, loc="left")


@dataclass(frozen=True)
class FigureSpec:
    draw: Callable[[Axes], None]
    size: tuple[float, float]         # inches
    extent: tuple[float, float]       # data units (x, y) of the canvas the drawing uses


FIGURES: dict[str, FigureSpec] = {
    "clip_architecture": FigureSpec(draw_clip_architecture, (13.0, 7.0), (23.0, 12.4)),
    "pacl_architecture": FigureSpec(draw_pacl_architecture, (13.0, 7.2), (24.0, 12.2)),
    "scores_to_mask": FigureSpec(draw_scores_to_mask, (11.0, 5.0), (19.0, 8.0)),
}


def render(name: str, out_dir: Path, dpi: int = 130) -> Path:
    """Draw one registered figure and save it as ``out_dir/<name>.png`` (atomically)."""
    spec = FIGURES[name]
    fig, ax = plt.subplots(figsize=spec.size)
    ax.set(xlim=(0, spec.extent[0]), ylim=(0, spec.extent[1]), aspect="equal")
    ax.axis("off")
    spec.draw(ax)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    with atomic_file(path) as tmp:
        # No "Software" entry: the PNG then only depends on what is drawn, not on the version.
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor="white",
                    metadata={"Software": None})
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Result figures of a `make demo` run (--results)
# --------------------------------------------------------------------------------------------

# Figures the demo draws itself, copied as they are: file in the demo folder -> file in Images/.
DEMO_FIGURES = {
    "training_curves.png": "demo_training_curves.png",
    "retrieval_gallery.png": "demo_retrieval_gallery.png",
    "segmentation_miou.png": "demo_segmentation_miou.png",
    "segmentation_example_0.png": "demo_segmentation_example_0.png",
    "segmentation_example_1.png": "demo_segmentation_example_1.png",
}
HEATMAPS_FIGURE = "demo_pacl_vs_clip_heatmaps.png"
METHOD_LABELS = {"raw": "raw CLIP patches", "pacl": "PACL"}


def read_demo_metrics(demo_dir: Path) -> dict:
    """``metrics.json`` of a finished demo run that went as far as segmentation."""
    path = demo_dir / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run `make demo` first (it writes outputs/demo/), "
                         "or pass the folder a demo run wrote with --results")
    metrics = json.loads(path.read_text())
    if "segmentation" not in metrics:
        raise SystemExit(f"{path} has no segmentation results: that run stopped after CLIP "
                         "(--clip-only). Run `make demo` in full.")
    return metrics


def images_with_several_shapes(files: DatasetFiles, count: int) -> list[str]:
    """The first ``count`` test images whose ground truth holds two or more shape classes: the
    ones where a heatmap has to tell shapes apart, not only find one."""
    names = []
    for name, _ in load_split(files, "test"):
        if len(set(np.unique(load_mask(files.root / "masks" / name)).tolist()) - {0}) >= 2:
            names.append(name)
            if len(names) == count:
                break
    return names


def plot_pacl_vs_clip(demo_dir: Path, metrics: dict, count: int = 2) -> plt.Figure:
    """For a few test images: each class's probability map and the mask, from the demo's frozen
    CLIP's raw patch tokens and from the same tokens through its trained PACL embedder (each with
    the background rule and threshold the demo chose for it on dev images), next to the ground
    truth."""
    model, tokenizer = load_clip(demo_dir / "clip")
    backbone = CourseCLIPBackbone(model, tokenizer)
    pacl, _ = load_pacl(demo_dir / "pacl", backbone=backbone)
    config = metrics["config"]
    files = locate_dataset(REPO_ROOT / config["data_root"])   # a relative root is the repo's
    classes = list(CLASS_NAMES[1:])
    chosen = metrics["segmentation"]["methods"]
    segmenters = {method: Segmenter(backbone, classes, method=method, pacl=pacl,
                                    background=chosen[method]["background"],
                                    threshold=chosen[method]["threshold"])
                  for method in METHOD_LABELS}
    palette = class_palette(len(classes))
    names = images_with_several_shapes(files, count)
    titles = ["image", *(f"p({c})" for c in classes), "mask", "ground truth"]
    fig, axes = plt.subplots(len(names) * len(segmenters), len(titles),
                             figsize=(1.6 * len(titles), 1.75 * len(names) * len(segmenters)),
                             squeeze=False)
    rows, masks = iter(axes), []
    for name in names:
        image = load_image(files.images_dir / name)
        truth = load_mask(files.root / "masks" / name)
        for method, segmenter in segmenters.items():
            row = next(rows)
            probabilities, mask = segmenter.segment_image(image, config["image_size"])
            row[0].imshow(image)
            row[0].set_ylabel(f"{METHOD_LABELS[method]}\n{name}", fontsize=8)
            for ax, probability in zip(row[1:-2], probabilities, strict=True):
                heat = ax.imshow(probability, cmap="magma", vmin=0, vmax=1)
            row[-2].imshow(overlay_mask(image, mask, palette))
            row[-1].imshow(overlay_mask(image, truth, palette))
            masks += [mask, truth]
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_title(title, fontsize=9)
    fig.colorbar(heat, ax=list(axes.flat), fraction=0.015, pad=0.01, label="class probability")
    fig.legend(handles=legend_handles(masks, classes, palette), loc="lower center", ncol=6,
               bbox_to_anchor=(0.45, 0.04), fontsize=8, frameon=False)
    fig.suptitle("Synthetic test images: where each class is found, from raw CLIP patches and "
                 "after PACL (make demo's models)", fontsize=10)
    return fig


def write_demo_figures(demo_dir: Path, out_dir: Path) -> list[Path]:
    """Copy the demo's own figures into ``out_dir`` and draw the PACL-vs-CLIP heatmaps."""
    metrics = read_demo_metrics(demo_dir)
    missing = [name for name in DEMO_FIGURES if not (demo_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{demo_dir} lacks {', '.join(missing)}: was that run finished? Run "
                         "`make demo` again.")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source, target in DEMO_FIGURES.items():
        with atomic_file(out_dir / target) as tmp:   # never a half-copied PNG in Images/
            shutil.copyfile(demo_dir / source, tmp)
        written.append(out_dir / target)
    fig = plot_pacl_vs_clip(demo_dir, metrics)
    written.append(save_figure(fig, out_dir / HEATMAPS_FIGURE))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"figures to draw (default: all of {', '.join(FIGURES)})")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "Images")
    parser.add_argument("--results", type=Path, metavar="DEMO_DIR",
                        help="instead: the result figures of a `make demo` folder (outputs/demo)")
    args = parser.parse_args(argv)
    if args.results:
        for path in write_demo_figures(args.results, args.out):
            print(f"wrote {path}")
        return
    unknown = [name for name in args.names if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    for name in args.names or FIGURES:
        print(f"wrote {render(name, args.out)}")


if __name__ == "__main__":
    main()
