"""Shared by the ``build_NN.py`` scripts: collect cells as plain strings, write a clean notebook.

The cells of each notebook live in its build script (code cells as raw strings: what you read is
what the cell holds) so that a change reads as a normal diff; the ``.ipynb`` is the artefact users
open, written without outputs and with stable cell ids, so rebuilding gives an identical file.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

COLAB_NOTEBOOKS = "https://colab.research.google.com/github/clip-pacl/clip-pacl/blob/main/notebooks/"

# The first code cell of every notebook: it cannot import anything of the course yet, so each
# notebook carries its own copy, written from this one source.
SETUP_CELL = r"""
import importlib
import subprocess
import sys
from pathlib import Path

# Placeholder until the course has its public home (see the README): change it in this one place.
REPO_URL = "https://github.com/clip-pacl/clip-pacl"

if "google.colab" in sys.modules:
    repo = Path("/content") / REPO_URL.rstrip("/").rsplit("/", 1)[-1]
    if not repo.exists():
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(repo)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                    str(repo / "requirements.txt")], check=True)
    importlib.invalidate_caches()  # let this running kernel find what pip just installed
else:
    repo = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
if str(repo) not in sys.path:
    sys.path.insert(0, str(repo))"""


class NotebookBuilder:
    """``nb = NotebookBuilder("01_x.ipynb"); nb.md("..."); nb.code("..."); nb.write()``."""

    def __init__(self, file_name: str):
        self.path = Path(__file__).with_name(file_name)
        self.badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                      f"({COLAB_NOTEBOOKS}{file_name})")
        self.cells: list[nbformat.NotebookNode] = []

    def md(self, text: str) -> None:
        self.cells.append(nbformat.v4.new_markdown_cell(text.strip("\n")))

    def code(self, text: str, tags: tuple[str, ...] = ()) -> None:
        cell = nbformat.v4.new_code_cell(text.strip("\n"))
        if tags:
            cell.metadata["tags"] = list(tags)
        self.cells.append(cell)

    def build(self) -> nbformat.NotebookNode:
        notebook = nbformat.v4.new_notebook()
        notebook.metadata = {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "accelerator": "GPU",        # Colab opens it with a GPU runtime
            "colab": {"provenance": []},
        }
        for index, cell in enumerate(self.cells):
            cell.id = f"cell-{index:02d}"
            notebook.cells.append(cell)
        nbformat.validate(notebook)
        return notebook

    def write(self) -> None:
        nbformat.write(self.build(), self.path)
        print(f"wrote {self.path} ({len(self.cells)} cells)")
