"""Grade a folder of submitted assignment notebooks (notebook 04) into one CSV.

    .venv/bin/python scripts/grade_submissions.py SUBMISSIONS_DIR --out grades.csv --timeout 300

Every ``*.ipynb`` under SUBMISSIONS_DIR is copied into its own temporary folder and executed there
top to bottom in a fresh kernel (cells that raise do not stop the run), with its own data and
outputs folders. A last cell, added by this script, re-checks every exercise with
``utils.course.grading.grade_namespace`` on the functions the notebook defined. The CSV has one row per
submission: the share of checks passed for each exercise (0 to 1; empty when the notebook never
reached the grading cell) and an ``errors`` column (cells that raised, a timeout, a dead kernel).

Each notebook runs in a child process of its own, which runs the kernel; a submission that loops
forever, calls ``sys.exit``, kills its parent or deletes files in its working folder only loses
its own row. This isolates submissions from one another; it is not a security sandbox (the code
runs as you): grade untrusted submissions inside a container or a throw-away account.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from utils.storage.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]

GRADING_CELL = ("from utils.course.grading import grade_namespace as _grade_namespace\n"
                "_grade_namespace(globals())")
GRADING_CELL_S = 120    # the grading cell's own allowance (it re-runs the experiment of (e))
WORKER_GRACE_S = GRADING_CELL_S + 60   # beyond the notebook's limit: the grading cell, start, stop


# --------------------------------------------------------------------------------------------
# The worker: one notebook, in a child process
# --------------------------------------------------------------------------------------------

def run_notebook(notebook_path: Path, timeout: float, kernel_pid_file: Path) -> dict:
    """Execute one notebook plus the grading cell; return ``{"grading_output": its printed text,
    "errors": [...]}`` (read by the parent: this child stays free of torch, seconds per notebook).

    The time limit covers the whole notebook: each cell gets what is left of it. A cell still
    running when time is up is interrupted; the cells after it get a second each, and the grading
    cell its own ``GRADING_CELL_S``, so the exercises written before an endless loop still count.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    try:
        notebook = nbformat.read(notebook_path, as_version=4)
    except Exception as error:  # a file that is not a notebook: report it, grade nothing
        return {"grading_output": "", "errors": [f"not a readable notebook: {error}"]}
    notebook.cells.append(nbformat.v4.new_code_cell(GRADING_CELL))
    deadline = time.monotonic() + timeout

    def record_kernel_pid(**_) -> None:
        # The kernel runs in its own session; the parent kills it by this pid if all else fails.
        kernel_pid_file.write_text(str(client.km.provisioner.process.pid))

    running = {"cell": 0}          # 1-based number of the cell being executed

    def note_running(cell_index: int, **_) -> None:
        running["cell"] = cell_index + 1

    def seconds_for(cell) -> int:
        return GRADING_CELL_S if cell.source == GRADING_CELL else max(
            1, int(deadline - time.monotonic()))

    client = NotebookClient(
        notebook, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        timeout_func=seconds_for,
        resources={"metadata": {"path": str(notebook_path.parent)}},
        on_notebook_start=record_kernel_pid, on_cell_execute=note_running)
    errors = []
    try:
        client.execute()
    except DeadKernelError:
        errors.append(f"the kernel died in cell {running['cell']} (sys.exit from a "
                      "thread, os._exit, a crash or out of memory)")
    except Exception as error:  # nbclient's own failures must not lose the row
        errors.append(f"could not run the notebook: {type(error).__name__}: {error}")
    errors[:0] = _cell_errors(notebook, timeout if time.monotonic() > deadline else None)
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].get("outputs", []))
    return {"grading_output": printed, "errors": errors}


def _cell_errors(notebook, time_limit: float | None) -> list[str]:
    """``cell N: error`` for every error output; with ``time_limit`` (it was exceeded) the
    interrupt that stopped a cell reads as what it was."""
    found = []
    for number, cell in enumerate(notebook.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") != "error":
                continue
            if time_limit is not None and output["ename"] == "KeyboardInterrupt":
                found.append(f"cell {number}: stopped at the time limit ({time_limit:.0f} s for "
                             "the notebook)")
            else:
                found.append(f"cell {number}: {output['ename']}: {output['evalue']}"[:300])
    return found


def _grades(grading_output: str) -> dict:
    """The grading cell's ``CLIP_PACL_GRADES {json}`` line as a dictionary ({} if absent)."""
    from utils.course.grading import GRADES_MARKER

    # The last such line: the grader's own, printed after anything the student's code printed.
    for line in reversed(grading_output.splitlines()):
        if line.startswith(GRADES_MARKER):
            try:
                return json.loads(line.removeprefix(GRADES_MARKER))
            except ValueError:
                return {}
    return {}


def _exercise_keys() -> list[str]:
    from utils.course.grading import EXERCISES

    return [*EXERCISES, "e"]       # the checked functions, then the open experiment


# --------------------------------------------------------------------------------------------
# The parent: one temporary folder and one child process per submission
# --------------------------------------------------------------------------------------------

def _kernel_environment(scratch: Path, fast: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "CLIP_PACL_FAST": "1" if fast else "0",
        "CLIP_PACL_DATA": str(scratch / "data"), "CLIP_PACL_OUTPUTS": str(scratch / "outputs"),
        "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    return env


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def grade_submission(path: Path, timeout: float, fast: bool = True, label: str | None = None
                     ) -> dict:
    """Run one submission in a temporary copy; return its CSV row (named ``label`` or the
    file's name)."""
    row = {"submission": label or path.name}
    scratch = Path(tempfile.mkdtemp(prefix="clip_pacl_grade_"))
    try:
        work = scratch / "work"
        work.mkdir()
        shutil.copy2(path, work / "submission.ipynb")
        result_file, pid_file = scratch / "result.json", scratch / "kernel.pid"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker",
                   str(work / "submission.ipynb"), "--timeout", str(timeout),
                   "--result", str(result_file), "--kernel-pid", str(pid_file)]
        # Output goes to a file, not a pipe: a kernel left behind cannot keep us waiting on it.
        with open(scratch / "worker.log", "wb") as log:
            worker = subprocess.Popen(command, cwd=work, env=_kernel_environment(scratch, fast),
                                      stdout=log, stderr=log, start_new_session=True)
            try:
                worker.wait(timeout=timeout + WORKER_GRACE_S)
            except subprocess.TimeoutExpired:   # the worker hung: end it and its kernel
                _kill(worker.pid)
                worker.wait()
                if pid_file.exists() and pid_file.read_text().strip().isdigit():
                    _kill(int(pid_file.read_text()))
        result = _read_result(result_file, worker.returncode, scratch / "worker.log")
    except Exception as error:  # whatever goes wrong with one submission stays in its row
        result = {"grading_output": "", "errors": [f"grader error: {type(error).__name__}: {error}"]}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    grades = _grades(result["grading_output"])
    for key in _exercise_keys():
        row[key] = f"{grades[key]['score']:.2f}" if key in grades else ""
    row["total"] = f"{sum(g['score'] for g in grades.values()):.2f}" if grades else ""
    errors = result["errors"] + ([] if grades else ["no grades: the grading cell did not run"])
    row["errors"] = " | ".join(errors)
    return row


def _read_result(result_file: Path, returncode: int | None, log: Path) -> dict:
    try:
        return json.loads(result_file.read_text())
    except (OSError, ValueError):
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
        return {"grading_output": "",
                "errors": [f"the grading process ended (exit code {returncode}): {last[0]}"]}


def find_submissions(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def grade_folder(folder: Path, out: Path, timeout: float, fast: bool = True, jobs: int = 1
                 ) -> list[dict]:
    """Grade every notebook under ``folder`` (``jobs`` at a time) and write the CSV ``out``
    (atomically)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    submissions = find_submissions(folder)
    if not submissions:
        raise SystemExit(f"no .ipynb files under {folder}: point SUBMISSIONS_DIR at the folder "
                         "holding the submitted notebooks")
    with ThreadPoolExecutor(max_workers=jobs) as pool:   # threads only wait on child processes
        # Named by their path under the folder: student1/04.ipynb and student2/04.ipynb differ.
        rows = list(tqdm(pool.map(lambda path: grade_submission(
            path, timeout, fast, str(path.relative_to(folder))), submissions),
                         total=len(submissions), desc="grading", unit="notebook"))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["submission", *_exercise_keys(), "total", "errors"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, text.getvalue())
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path, nargs="?", help="folder of submitted notebooks")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="CSV to write")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds allowed for one whole notebook (default 300)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks run at the same time (each needs a CPU core and ~1 GB)")
    parser.add_argument("--full", action="store_true",
                        help="run the notebooks at full size instead of CLIP_PACL_FAST=1")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kernel-pid", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = run_notebook(args.worker, args.timeout, args.kernel_pid)
        args.result.write_text(json.dumps(result))
        return
    if args.submissions is None or not args.submissions.is_dir():
        parser.error(f"SUBMISSIONS_DIR must be an existing folder, got {args.submissions}")
    rows = grade_folder(args.submissions, args.out, args.timeout, not args.full, args.jobs)
    failed = sum(bool(row["errors"]) for row in rows)
    print(f"graded {len(rows)} submissions ({failed} with errors) -> {args.out}")


if __name__ == "__main__":
    main()
