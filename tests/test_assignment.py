"""The assignment (notebook 04): student and solution versions from one source, and the
instructors' grader on real and fake submissions."""

from __future__ import annotations

import ast
import csv
import subprocess
from pathlib import Path

import jupytext
import nbformat
import pytest
from assignment_sources import OWN_LOSS, RENAMED_LOSS
from repo_scripts import load_script

REPO = Path(__file__).resolve().parents[1]
sync = load_script("scripts/sync_notebooks.py")
grade_submissions = load_script("scripts/grade_submissions.py")

FAKE_TIMEOUT_S = 30      # a fake submission runs in seconds, even on a busy machine


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


def test_the_student_copy_holds_no_solution_and_the_same_student_notebook(tmp_path: Path) -> None:
    copy = tmp_path / "course"
    sync.write_student_copy(copy)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    kept = sorted(name for name in tracked if not name.startswith("tests/")
                  and (REPO / name).is_file())
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == kept
    assignment = "notebooks/04_assignment.py"
    changed = [name for name in kept if (copy / name).read_bytes() != (REPO / name).read_bytes()]
    assert changed == [assignment]
    text = (copy / assignment).read_text()
    leaked = [line for source in sync.solution_sources() for line in _solution_lines(source)
              if line in text]
    assert not leaked, f"solution lines in the student copy: {leaked}"
    source = jupytext.read(copy / assignment, fmt="py:percent")
    exercises = [c.source for c in source.cells if "exercise" in c.metadata.get("tags", [])]
    assert exercises == [c.source for c in student_notebook().cells
                         if "exercise" in c.metadata.get("tags", [])]


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

def clip_loss(image_emb, text_emb, logit_scale, positives):
    logits = logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    return F.cross_entropy(logits, torch.arange(len(logits)))   # one direction, the diagonal
"""
FORGED_GRADES = """
import utils.course.grading as grading
grading.save_answers = lambda *args, **kwargs: None
print('CLIP_PACL_GRADES {"a": {"score": 1.0}, "b": {"score": 1.0}}')
"""
SWALLOWS_INTERRUPTS = """
import time
while True:
    try:
        time.sleep(0.2)
    except:          # a bare except also catches the grader's interrupt
        pass
"""

FAKE_SUBMISSIONS = {
    "own.ipynb": _notebook(OWN_LOSS),
    "copied.ipynb": _notebook(RENAMED_LOSS),
    "wrong.ipynb": _notebook(WRONG_LOSS),
    "imports.ipynb": _notebook("from utils.losses import clip_loss"),
    "aliases.ipynb": _notebook("import utils.pacl\npacl_compatibility = utils.pacl.pacl_compatibility"),
    "wraps.ipynb": _notebook("from utils.metrics import mean_iou\n\n"
                             "def voc20_mean_iou(scores, target, ignore_index=255):\n"
                             "    target = target.masked_fill(target == 0, ignore_index)\n"
                             "    return mean_iou(scores[:, 1:].argmax(1) + 1, target,\n"
                             "                    scores.shape[1], ignore_index)['mIoU']"),
    "uses_the_graders_reference.ipynb": _notebook(
        "from utils.course.exercises import reference_image_to_text_recall as r\n\n"
        "def image_to_text_recall(similarity, text_to_image, k):\n"
        "    return r(similarity, text_to_image, k)"),
    "forges.ipynb": _notebook(OWN_LOSS, FORGED_GRADES),
    "endless.ipynb": _notebook(OWN_LOSS, "while True:\n    pass"),
    "swallows_interrupts.ipynb": _notebook(OWN_LOSS, SWALLOWS_INTERRUPTS, "print('never runs')"),
    "exits.ipynb": _notebook(OWN_LOSS, "import sys\nsys.exit(1)"),
    "kills_kernel.ipynb": _notebook(OWN_LOSS, "import os\nos._exit(3)"),
    "deletes_files.ipynb": _notebook(
        "import os\nfor name in os.listdir('.'):\n    os.remove(name)", OWN_LOSS),
    "late/syntax_error.ipynb": _notebook("def clip_loss(:\n    pass", OWN_LOSS),  # a subfolder
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
                                               "own_code", "same_code_as", "errors"]


def test_own_code_scores_and_a_wrong_answer_gets_partial_credit(graded) -> None:
    rows, _ = graded
    assert rows["own.ipynb"]["a"] == "1.00" and rows["own.ipynb"]["errors"] == ""
    assert rows["own.ipynb"]["b"] == "0.00" and rows["own.ipynb"]["own_code"] == ""
    assert 0 <= float(rows["wrong.ipynb"]["a"]) < 1 and rows["wrong.ipynb"]["errors"] == ""


@pytest.mark.parametrize(("name", "key", "why"), [
    ("imports.ipynb", "a", "imported from utils.losses"),
    ("aliases.ipynb", "c", "uses utils"),
    ("wraps.ipynb", "d", "uses utils.metrics"),
    ("uses_the_graders_reference.ipynb", "b", "uses utils.course.exercises"),
])
def test_borrowed_answers_score_zero_with_the_reason(graded, name: str, key: str, why: str) -> None:
    row = graded[0][name]
    assert row[key] == "0.00" and row["total"] == "0.00"
    assert f"({key})" in row["own_code"] and why in row["own_code"]


def test_a_notebook_cannot_forge_its_grade(graded) -> None:
    row = graded[0]["forges.ipynb"]
    assert row["total"] == "0.00" and "changes the course's code" in row["own_code"]


def test_the_same_code_under_other_names_is_flagged(graded) -> None:
    rows, _ = graded
    assert rows["own.ipynb"]["same_code_as"].startswith("(a) ")
    assert "copied.ipynb" in rows["own.ipynb"]["same_code_as"]
    assert "own.ipynb" in rows["copied.ipynb"]["same_code_as"]
    assert rows["wrong.ipynb"]["same_code_as"] == ""


def test_an_endless_loop_is_stopped_and_what_came_before_still_counts(graded) -> None:
    row = graded[0]["endless.ipynb"]
    assert f"cell 2: stopped at the time limit ({FAKE_TIMEOUT_S} s" in row["errors"]
    assert row["a"] == "1.00"


def test_a_cell_that_swallows_the_interrupt_is_killed_and_what_came_before_counts(graded) -> None:
    row = graded[0]["swallows_interrupts.ipynb"]
    assert f"cell 2 did not stop within {FAKE_TIMEOUT_S} s" in row["errors"]
    assert "was killed" in row["errors"] and row["a"] == "1.00"


def test_sys_exit_is_an_error_of_that_cell_only(graded) -> None:
    row = graded[0]["exits.ipynb"]
    assert "cell 2: SystemExit" in row["errors"] and row["a"] == "1.00"


def test_a_dead_kernel_is_recorded_and_earlier_answers_count(graded) -> None:
    row = graded[0]["kills_kernel.ipynb"]
    assert "kernel died in cell 2" in row["errors"] and row["a"] == "1.00"


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
    assert rows[0]["errors"] == "" and rows[0]["own_code"] == ""
    assert [rows[0][key] for key in ("a", "b", "c", "d", "e")] == ["1.00"] * 5
    assert rows[0]["same_code_as"].count("the reference solution") == 5
