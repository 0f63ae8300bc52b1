"""The assignment (notebook 04): student and solution versions from one source, and the
instructors' grader on real and fake submissions."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import nbformat
import pytest
from repo_scripts import load_script

REPO = Path(__file__).resolve().parents[1]
sync = load_script("scripts/sync_notebooks.py")
grade_submissions = load_script("scripts/grade_submissions.py")

FAKE_TIMEOUT_S = 30      # a fake submission only imports utils.course.grading: seconds, even when busy


def _cells(notebook: nbformat.NotebookNode) -> list[tuple]:
    return [(c.cell_type, c.source, dict(c.metadata)) for c in notebook.cells]


def student_notebook() -> nbformat.NotebookNode:
    return sync.notebook_for(sync.ASSIGNMENT_SOURCE, student=True)


def test_committed_student_notebook_is_up_to_date_with_its_source() -> None:
    committed = nbformat.read(REPO / "notebooks" / "04_assignment.ipynb", as_version=4)
    assert _cells(committed) == _cells(student_notebook()), (
        "notebooks/04_assignment.ipynb differs from notebooks/04_assignment.py: run "
        "`.venv/bin/python scripts/sync_notebooks.py` and commit the notebook")


def _solution_lines(source: str) -> list[str]:
    """The lines of a solution cell that are solution, not signature or docstring."""
    node = ast.parse(source.strip("\n")).body[0]
    lines = source.strip("\n").splitlines()
    start = node.body[0].end_lineno if isinstance(node, ast.FunctionDef) else 1
    return [line.strip() for line in lines[start:] if len(line.strip()) > 8]


def test_no_solution_text_in_the_student_notebook() -> None:
    student = nbformat.writes(student_notebook())
    solutions = sync.solution_sources()
    assert len(solutions) == 6
    leaked = [line for text in solutions for line in _solution_lines(text) if line in student]
    assert not leaked, f"solution lines in the student notebook: {leaked}"


def test_every_exercise_cell_is_a_stub_with_the_solution_signature() -> None:
    exercises = [c for c in student_notebook().cells
                 if "exercise" in c.metadata.get("tags", [])]
    functions = [c for c in exercises if c.source.startswith("def ")]
    assert len(functions) == 5
    for cell in functions:
        namespace: dict = {}
        exec(cell.source, namespace)   # noqa: S102 - the stub's own code, from this repository
        name = cell.source.split("(", 1)[0].removeprefix("def ")
        with pytest.raises(NotImplementedError):
            namespace[name](*[None] * namespace[name].__code__.co_argcount)


def test_a_solution_cell_with_extra_code_is_refused() -> None:
    with pytest.raises(ValueError, match="one function"):
        sync.student_version('def f():\n    """Doc."""\n    return 1\n\nprint(f())\n')


# --------------------------------------------------------------------------------------------
# The grader
# --------------------------------------------------------------------------------------------

def _notebook(*sources: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return notebook


WRONG_LOSS = """
import torch
import torch.nn.functional as F

def clip_loss(image_emb, text_emb, logit_scale):
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    return F.cross_entropy(logits, torch.arange(len(logits)))   # one direction only
"""
GOOD_LOSS = "from utils.losses import clip_loss"

FAKE_SUBMISSIONS = {
    "wrong.ipynb": _notebook(WRONG_LOSS),
    "endless.ipynb": _notebook(GOOD_LOSS, "while True:\n    pass"),
    "exits.ipynb": _notebook(GOOD_LOSS, "import sys\nsys.exit(1)"),
    "kills_kernel.ipynb": _notebook(GOOD_LOSS, "import os\nos._exit(3)"),
    "deletes_files.ipynb": _notebook(
        "import os\nfor name in os.listdir('.'):\n    os.remove(name)", GOOD_LOSS),
    "late/syntax_error.ipynb": _notebook("def clip_loss(:\n    pass", GOOD_LOSS),  # a subfolder
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], Path]:
    folder = tmp_path_factory.mktemp("submissions")
    for name, notebook in FAKE_SUBMISSIONS.items():
        (folder / name).parent.mkdir(exist_ok=True)
        nbformat.write(notebook, folder / name)
    (folder / "not_a_notebook.ipynb").write_text("{ this is not json")
    out = folder.parent / "grades.csv"
    grade_submissions.grade_folder(folder, out, timeout=FAKE_TIMEOUT_S, jobs=2)
    with out.open(newline="") as handle:
        return {row["submission"]: row for row in csv.DictReader(handle)}, folder


def test_one_row_per_submission_and_one_column_per_exercise(graded) -> None:
    rows, _ = graded
    assert set(rows) == {*FAKE_SUBMISSIONS, "not_a_notebook.ipynb"}
    assert list(next(iter(rows.values()))) == ["submission", "a", "b", "c", "d", "e", "total",
                                               "errors"]


def test_a_wrong_answer_gets_partial_credit_and_no_error(graded) -> None:
    row = graded[0]["wrong.ipynb"]
    assert 0 <= float(row["a"]) < 1 and row["b"] == "0.00" and row["errors"] == ""


def test_an_endless_loop_is_stopped_and_what_came_before_still_counts(graded) -> None:
    row = graded[0]["endless.ipynb"]
    assert f"cell 2: stopped at the time limit ({FAKE_TIMEOUT_S} s" in row["errors"]
    assert row["a"] == "1.00"


def test_sys_exit_is_an_error_of_that_cell_only(graded) -> None:
    row = graded[0]["exits.ipynb"]
    assert "cell 2: SystemExit" in row["errors"] and row["a"] == "1.00"


def test_a_dead_kernel_is_recorded(graded) -> None:
    row = graded[0]["kills_kernel.ipynb"]
    assert "kernel died in cell 2" in row["errors"] and row["a"] == ""


def test_deleting_files_touches_only_its_own_copy(graded) -> None:
    rows, folder = graded
    assert rows["deletes_files.ipynb"]["a"] == "1.00"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ipynb")) == sorted(
        [*FAKE_SUBMISSIONS, "not_a_notebook.ipynb"])
    assert nbformat.read(folder / "deletes_files.ipynb", as_version=4).cells


def test_a_syntax_error_and_an_unreadable_file_are_reported(graded) -> None:
    rows, _ = graded
    assert "cell 1: SyntaxError" in rows["late/syntax_error.ipynb"]["errors"]
    assert rows["late/syntax_error.ipynb"]["a"] == "1.00"
    assert "not a readable notebook" in rows["not_a_notebook.ipynb"]["errors"]


def test_the_solution_notebook_runs_cleanly_and_passes_every_check(tmp_path: Path) -> None:
    folder = tmp_path / "solution"
    folder.mkdir()
    nbformat.write(sync.notebook_for(sync.ASSIGNMENT_SOURCE, student=False),
                   folder / sync.SOLUTION_FILE)
    rows = grade_submissions.grade_folder(folder, tmp_path / "grades.csv", timeout=240)
    assert rows[0]["errors"] == ""
    assert [rows[0][key] for key in ("a", "b", "c", "d", "e")] == ["1.00"] * 5


def test_grades_come_from_the_graders_own_last_line() -> None:
    from utils.course.grading import GRADES_MARKER

    printed = (f'{GRADES_MARKER} {{"a": {{"score": 1.0}}}}\nstudent output\n'
               f'{GRADES_MARKER} {{"a": {{"score": 0.25}}}}\n')
    assert grade_submissions._grades(printed) == {"a": {"score": 0.25}}
    assert grade_submissions._grades(f"{GRADES_MARKER} not json") == {}
