"""Keep each notebook's source and the ``.ipynb`` that users open in step.

Every notebook is written as a Python script, ``notebooks/NN_name.py``, in jupytext's *percent*
format: ``# %%`` starts a code cell, ``# %% [markdown]`` a text cell whose lines are comments.
Edit those files like any code (ruff lints them), then write the notebooks:

    .venv/bin/python scripts/sync_notebooks.py                # every .ipynb from its .py
    .venv/bin/python scripts/sync_notebooks.py --check        # exit 1 if any .ipynb is stale
    .venv/bin/python scripts/sync_notebooks.py --from-ipynb 02  # edited 02's .ipynb? back to .py
    .venv/bin/python scripts/sync_notebooks.py --solution     # the assignment with its solutions
    .venv/bin/python scripts/sync_notebooks.py --student-copy DEST   # the course without them

Two cells are written by this script rather than by hand:

- **the set-up cell**, the first code cell of every notebook: it must run before the course can
  be imported, so each notebook carries a copy of ``notebooks/setup_cell.py``. Writing the
  notebooks first puts that file's current text into every source.
- **the assignment's exercises.** ``04_assignment.py`` is the instructors' source: its cells
  tagged ``solution`` hold one function (or one answer string) each. The student notebook,
  ``04_assignment.ipynb``, keeps only each function's signature and docstring, then ``raise
  NotImplementedError``; ``--solution`` writes ``solution_04_assignment.ipynb`` (ignored by git).
  ``--student-copy DEST`` writes the repository's tracked files to DEST with the assignment's
  source reduced to those stubs and without ``tests/`` (whose graders' tests hold correct
  answers): a course to publish for students, with no solution in it.

The ``.ipynb`` files are committed without outputs, with stable cell ids, so writing them again
gives the same bytes; ``tests/test_notebooks.py`` fails when one disagrees with its source.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
SETUP_SOURCE = NOTEBOOK_DIR / "setup_cell.py"
SETUP_TAG = "setup"
ASSIGNMENT_SOURCE = NOTEBOOK_DIR / "04_assignment.py"
SOLUTION_FILE = "solution_04_assignment.ipynb"
SOLUTION_TAG, EXERCISE_TAG = "solution", "exercise"
ANSWER_PLACEHOLDER = "Replace this text with your paragraph (at least 50 words)."
COLAB_NOTEBOOKS = "https://colab.research.google.com/github/clip-pacl/clip-pacl/blob/main/notebooks/"
# What the .ipynb carries besides its cells: Colab opens it with a GPU runtime, and Jupyter with
# jupytext installed keeps the .py in step when the .ipynb is edited there.
NOTEBOOK_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",
    "colab": {"provenance": []},
}
PAIRED = {"jupytext": {"formats": "ipynb,py:percent", "notebook_metadata_filter": "-all"}}


def sources() -> list[Path]:
    """``notebooks/NN_*.py``, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def setup_source() -> str:
    """The set-up cell's code, as every notebook carries it."""
    return SETUP_SOURCE.read_text(encoding="utf-8").strip("\n")


def setup_cell(notebook: nbformat.NotebookNode, path: Path) -> nbformat.NotebookNode:
    """The one cell of ``notebook`` (read from ``path``) tagged as the set-up cell."""
    cells = [cell for cell in notebook.cells if SETUP_TAG in cell.metadata.get("tags", [])]
    if len(cells) != 1:
        raise SystemExit(f"{path}: expected one code cell tagged {SETUP_TAG!r} (the set-up "
                         f"cell), found {len(cells)}")
    return cells[0]


def read_source(path: Path) -> nbformat.NotebookNode:
    """A percent-format source as a notebook, its set-up cell replaced by ``setup_cell.py``."""
    notebook = jupytext.read(path, fmt="py:percent")
    setup_cell(notebook, path).source = setup_source()
    return notebook


def write_source(notebook: nbformat.NotebookNode, path: Path) -> None:
    """Write ``notebook``'s cells as a percent-format script (no notebook metadata header)."""
    notebook = nbformat.from_dict({**notebook, "metadata": dict(PAIRED)})
    for cell in notebook.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
    jupytext.write(notebook, path, fmt="py:percent")


def student_version(source: str) -> str:
    """A solution cell as students get it: the signature and docstring, then a stub.

    A solution cell holds exactly one function with a docstring, or one ``NAME = "..."`` answer;
    anything else is refused, so that no solution line can slip through unreplaced.
    """
    source = source.strip("\n")
    tree = ast.parse(source)
    node = tree.body[0] if len(tree.body) == 1 else None
    if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
        docstring = node.body[0]
        indent = " " * docstring.col_offset
        kept = source.splitlines()[:docstring.end_lineno]
        return "\n".join([*kept, f"{indent}# YOUR CODE HERE",
                          f'{indent}raise NotImplementedError("{node.name} is not written yet")'])
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)):
        return f'{node.targets[0].id} = """\n{ANSWER_PLACEHOLDER}\n"""'
    raise ValueError("a solution cell must hold one function with a docstring, or one string "
                     f"answer NAME = '...'; this one starts with:\n{source.strip()[:200]}")


def solution_sources() -> list[str]:
    """The assignment's solution cells, in order."""
    return [cell.source for cell in read_source(ASSIGNMENT_SOURCE).cells
            if SOLUTION_TAG in cell.metadata.get("tags", [])]


def notebook_for(path: Path, *, student: bool = True) -> nbformat.NotebookNode:
    """The ``.ipynb`` that ``path`` makes: clean, stable ids; the assignment's student or
    solution version."""
    notebook = nbformat.v4.new_notebook(metadata={**NOTEBOOK_METADATA, **PAIRED})
    for index, cell in enumerate(read_source(path).cells):
        tags = [tag for tag in cell.metadata.get("tags", []) if tag != SETUP_TAG]
        if cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source)
        elif SOLUTION_TAG in tags and student:
            new = nbformat.v4.new_code_cell(student_version(cell.source))
            tags = [EXERCISE_TAG if tag == SOLUTION_TAG else tag for tag in tags]
        else:
            new = nbformat.v4.new_code_cell(cell.source)
        if tags:
            new.metadata["tags"] = tags
        new.id = f"cell-{index:02d}"
        notebook.cells.append(new)
    if path == ASSIGNMENT_SOURCE:
        del notebook.metadata["jupytext"]   # the student notebook is not the source's pair
    nbformat.validate(notebook)
    return notebook


def ipynb_path(path: Path) -> Path:
    return path.with_suffix(".ipynb")


def stale_notebooks() -> list[str]:
    """Names of the ``.ipynb`` files that differ from what their source makes (or are missing)."""
    stale = []
    for path in sources():
        target = ipynb_path(path)
        expected = nbformat.writes(notebook_for(path))
        if not target.is_file() or nbformat.writes(nbformat.read(target, 4)) != expected:
            stale.append(target.name)
    return stale


def write_all() -> None:
    setup = setup_source()
    for path in sources():
        source = jupytext.read(path, fmt="py:percent")
        cell = setup_cell(source, path)
        if cell.source != setup:                      # bring the source's copy up to date
            cell.source = setup
            write_source(source, path)
        nbformat.write(notebook_for(path), ipynb_path(path))
        print(f"wrote {ipynb_path(path).relative_to(REPO)}")


def source_from_ipynb(number: str) -> Path:
    """Write ``NN_*.py`` from its edited ``.ipynb`` (outputs dropped); not for the assignment,
    whose notebook holds stubs instead of the solutions."""
    matches = [path for path in sources() if path.name.startswith(f"{number}_")]
    if len(matches) != 1:
        raise SystemExit(f"no notebook numbered {number!r} in {NOTEBOOK_DIR}")
    path = matches[0]
    if path == ASSIGNMENT_SOURCE:
        raise SystemExit(f"{ipynb_path(path).name} holds stubs, not the solutions: edit "
                         f"{path.name} instead")
    notebook = nbformat.read(ipynb_path(path), 4)
    setup = setup_source()
    for cell in notebook.cells:                       # the source keeps the set-up cell's tag
        if cell.source.strip("\n") == setup:
            cell.metadata["tags"] = [*cell.metadata.get("tags", []), SETUP_TAG]
    write_source(notebook, path)
    return path


STUDENT_COPY_LEAVES_OUT = ("tests/",)   # the graders' tests hold correct answers to the exercises


def write_student_copy(destination: Path) -> None:
    """Copy the repository's tracked files to ``destination`` (a new folder), with
    ``04_assignment.py``'s solution cells replaced by the stubs students get, and without
    ``STUDENT_COPY_LEAVES_OUT``."""
    if destination.exists():
        raise SystemExit(f"{destination} exists: give a new folder for the student copy")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                             text=True).stdout.split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file() and not name.startswith(STUDENT_COPY_LEAVES_OUT):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    notebook = read_source(ASSIGNMENT_SOURCE)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if SOLUTION_TAG in tags:
            cell.source = student_version(cell.source)
            cell.metadata["tags"] = [EXERCISE_TAG if tag == SOLUTION_TAG else tag for tag in tags]
    write_source(notebook, destination / ASSIGNMENT_SOURCE.relative_to(REPO))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if any .ipynb is stale")
    mode.add_argument("--from-ipynb", metavar="NN", help="write notebook NN's .py from its .ipynb")
    mode.add_argument("--solution", action="store_true",
                      help=f"write notebooks/{SOLUTION_FILE} (instructors only)")
    mode.add_argument("--student-copy", type=Path, metavar="DEST",
                      help="copy the course to DEST without the assignment's solutions")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_notebooks()
        if stale:
            sys.exit(f"stale: {', '.join(stale)}. Run `.venv/bin/python scripts/sync_notebooks.py`"
                     " (or, after editing an .ipynb, `--from-ipynb NN`).")
        print("every notebook matches its source")
    elif args.from_ipynb:
        print(f"wrote {source_from_ipynb(args.from_ipynb).relative_to(REPO)}")
    elif args.solution:
        nbformat.write(notebook_for(ASSIGNMENT_SOURCE, student=False), NOTEBOOK_DIR / SOLUTION_FILE)
        print(f"wrote notebooks/{SOLUTION_FILE}")
    elif args.student_copy:
        write_student_copy(args.student_copy)
        print(f"wrote the student copy to {args.student_copy}")
    else:
        write_all()


if __name__ == "__main__":
    main()
