"""Run the numbered notebooks top to bottom, as a reader would, and keep what they printed.

Each notebook runs with nbclient in ``notebooks/`` (kernel ``python3``, i.e. this interpreter), in
numeric order, because later notebooks start from what earlier ones saved under ``outputs/``.
Full mode by default: the offline numbers that the notebooks' text quotes come from such a run.
For each notebook it writes the executed copy and its printed text under ``--out`` and reports the
wall time. ``tests/test_notebooks.py`` does the same in FAST mode, in a temporary folder.

    .venv/bin/python scripts/run_notebooks.py [--fast] [--only 02 03] [--out outputs/executed]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"


def printed_text(notebook: nbformat.NotebookNode) -> str:
    """Every cell's printed output (streams and plain-text results), cell by cell."""
    parts = []
    for number, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            if text:
                parts.append(f"--- cell {number}\n{text.rstrip()}")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="CLIP_PACL_FAST=1: smoke runs")
    parser.add_argument("--only", nargs="*", default=None, help="notebook numbers, e.g. 02 03")
    parser.add_argument("--out", default=str(REPO / "outputs" / "executed"))
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()

    # The kernel is a child process: it inherits this environment. Jupyter's inline backend, as
    # a reader has it: the executed copies then hold every figure as an image.
    os.environ.update({"CLIP_PACL_FAST": "1" if args.fast else "0", "HF_HUB_OFFLINE": "1",
                       "TRANSFORMERS_OFFLINE": "1",
                       "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                       "NO_ALBUMENTATIONS_UPDATE": "1"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        if args.only and path.name[:2] not in args.only:
            continue
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(notebook, timeout=args.cell_timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
        started = time.perf_counter()
        try:
            client.execute()
        finally:   # keep what ran, also when a cell failed
            nbformat.write(notebook, out / path.name)
            (out / f"{path.stem}.txt").write_text(printed_text(notebook))
        print(f"{path.name}: {time.perf_counter() - started:.0f} s "
              f"({'FAST' if args.fast else 'full'} mode) -> {out / path.name}", flush=True)


if __name__ == "__main__":
    main()
