"""Small helpers the numbered notebooks share: where things live, fast mode, showing figures.

Nothing here is course content; it keeps the notebooks' cells short and their paths consistent:

- ``IN_COLAB``: whether the code runs on Google Colab.
- ``fast_mode()``: ``CLIP_PACL_FAST=1`` asks for a smoke run (small data, very few epochs).
- ``repo_root()``, ``data_dir()``, ``outputs_dir(name)``: ``data/`` and ``outputs/<name>/`` under
  the repository root, moved elsewhere by ``CLIP_PACL_DATA`` / ``CLIP_PACL_OUTPUTS``.
- ``synthetic_dataset(fast)``: the captioned-shapes set every notebook uses offline (one folder
  for the full size, one for the fast size, so switching never regenerates the other).
- ``show(fig)``, ``format_table``: display helpers (the figures themselves are in
  :mod:`utils.plots`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
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



def fast_mode() -> bool:
    """True when the environment variable ``CLIP_PACL_FAST`` is ``"1"`` (tests set it)."""
    return os.environ.get(FAST_ENV, "").strip() == "1"


def repo_root() -> Path:
    """The repository's root folder (the one holding ``utils/`` and ``notebooks/``)."""
    return Path(__file__).resolve().parents[2]


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


