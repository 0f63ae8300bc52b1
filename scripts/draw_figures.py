"""Draw the course's explanatory figures into ``Images/`` with matplotlib (no data, no training).

    python scripts/draw_figures.py                  # every figure
    python scripts/draw_figures.py clip_architecture --out Images

Each figure is one ``draw_<name>(ax)`` function registered in ``FIGURES`` with its canvas size;
adding a figure (PACL's patch alignment, a results chart) means adding one function and one
entry. Output is byte-for-byte reproducible: no timestamps or version strings in the PNG.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Polygon, Rectangle  # noqa: E402

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


@dataclass(frozen=True)
class FigureSpec:
    draw: Callable[[Axes], None]
    size: tuple[float, float]         # inches
    extent: tuple[float, float]       # data units (x, y) of the canvas the drawing uses


FIGURES: dict[str, FigureSpec] = {
    "clip_architecture": FigureSpec(draw_clip_architecture, (13.0, 7.0), (23.0, 12.4)),
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
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    # No "Software" entry: the PNG then only depends on what is drawn, not on the library version.
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor="white", metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"figures to draw (default: all of {', '.join(FIGURES)})")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "Images")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    for name in args.names or FIGURES:
        print(f"wrote {render(name, args.out)}")


if __name__ == "__main__":
    main()
