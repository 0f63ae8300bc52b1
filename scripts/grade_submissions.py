"""Grade a folder of submitted assignment notebooks (notebook 04) into one CSV.

    .venv/bin/python scripts/grade_submissions.py SUBMISSIONS_DIR --out grades.csv --timeout 300

Every ``*.ipynb`` under SUBMISSIONS_DIR is copied into its own temporary folder and executed there
top to bottom in a fresh kernel (cells that raise do not stop the run), with its own data and
outputs folders. Right after each cell that defines an exercise, and once at the end, the kernel
runs that exercise's inputs through the student's function and saves what came back (tensors and
plain values) to a file. The grade is computed here, in this process, from those files
(``utils.course.grading.grade_saved_answers``): nothing a notebook does in its kernel can change
how its answers are scored, and what it answered before a cell hangs still counts.

The source is read too (``utils.course.submissions``): an exercise whose function is imported from
the course, aliased, or calls the course's code scores 0, and the ``same_code_as`` column flags
exercise code identical (up to names, comments and layout) to another submission's or to the
reference solution's.

Each notebook runs in a child process of its own, which runs the kernel; a submission that loops
forever (even swallowing the interrupt: its kernel is killed a few seconds after its time is up),
calls ``sys.exit``, kills its parent or deletes files in its working folder only loses its own
row. This isolates submissions from one another; it is not a security sandbox (the code runs as
you): grade untrusted submissions inside a container or a throw-away account, one at a time
(``--jobs 1``, the default) so that no two are on the machine together.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from utils.storage.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
REFERENCE_SOURCE = REPO / "notebooks" / "04_assignment.py"   # the solutions, where they exist

CAPTURE_S = 120        # one save of answers (it re-runs the experiment of (e) when it saves it)
KILL_GRACE_S = 10      # after an interrupt, this long to stop before the kernel is killed
WORKER_SLACK_S = 60    # the worker's own start and stop


# --------------------------------------------------------------------------------------------
# The worker: one notebook, in a child process
# --------------------------------------------------------------------------------------------

def _capture_source(keys: list[str], answers: Path, token: str) -> str:
    return ("import utils.course.grading as _clip_pacl_grading\n"
            f"_clip_pacl_grading.save_answers(globals(), {keys!r}, {str(answers)!r}, {token!r})")


class _Kernel:
    """Runs cells in one kernel; kills it when a cell outlives its allowance by KILL_GRACE_S."""

    def __init__(self, client) -> None:
        self.client, self.killed = client, False

    def pid(self) -> int:
        return self.client.km.provisioner.process.pid

    def _kill(self) -> None:
        self.killed = True
        try:
            os.killpg(self.pid(), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass

    def run(self, cell, index: int, allowance: float) -> str:
        """Execute ``cell``: ``"ok"``, ``"killed"`` (it would not stop) or ``"died"``."""
        from nbclient.exceptions import DeadKernelError

        self.client.timeout = max(1, math.ceil(allowance))   # nbclient interrupts the kernel then
        watchdog = threading.Timer(max(1.0, allowance) + KILL_GRACE_S, self._kill)
        watchdog.start()
        try:
            self.client.execute_cell(cell, index)
            return "ok"
        except DeadKernelError:
            return "killed" if self.killed else "died"
        finally:
            watchdog.cancel()


def run_notebook(notebook_path: Path, timeout: float, answers: Path, token: str,
                 plan: dict[int, list[str]], kernel_pid_file: Path) -> dict:
    """Execute one notebook, saving answers after the cells ``plan`` names (cell number -> the
    exercises it defines) and at the end; return ``{"errors": [...]}``.

    The time limit covers the notebook's own cells: a cell still running when it is used up is
    interrupted, and killed with its kernel ``KILL_GRACE_S`` later if it will not stop; the cells
    after it do not run. Saving answers has its own allowance (``CAPTURE_S``) each time.
    """
    import nbformat
    from nbclient import NotebookClient

    try:
        notebook = nbformat.read(notebook_path, as_version=4)
    except Exception as error:  # a file that is not a notebook: report it, grade nothing
        return {"errors": [f"not a readable notebook: {error}"]}
    client = NotebookClient(notebook, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True,
                            resources={"metadata": {"path": str(notebook_path.parent)}})
    errors: list[str] = []
    used = 0.0                         # seconds spent in the notebook's own cells
    code_cells = [(i, c) for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
    notebook.cells.append(nbformat.v4.new_code_cell())   # where nbclient puts each save's cell
    with client.setup_kernel():
        kernel = _Kernel(client)
        kernel_pid_file.write_text(str(kernel.pid()))

        def save(keys: list[str], after: str) -> bool:
            capture = nbformat.v4.new_code_cell(_capture_source(keys, answers, token))
            outcome = kernel.run(capture, len(notebook.cells) - 1, CAPTURE_S)
            names = ", ".join(f"({k})" for k in keys)
            if outcome != "ok":
                errors.append(f"saving the answers of {names} {after} did not stop within "
                              f"{CAPTURE_S} s and was killed: does a function loop forever?")
            failed = [o for o in capture.get("outputs", []) if o.get("output_type") == "error"]
            if failed:
                errors.append(f"saving the answers of {names} {after} failed: "
                              f"{failed[0]['ename']}: {failed[0]['evalue']}"[:300])
            return outcome == "ok"

        alive = True
        for position, (index, cell) in enumerate(code_cells):
            if used >= timeout:
                left = [i + 1 for i, _ in code_cells[position:]]
                errors.append(f"cells {left[0]}-{left[-1]} did not run: the time limit "
                              f"({timeout:.0f} s) was used up" if len(left) > 1 else
                              f"cell {left[0]} did not run: the time limit ({timeout:.0f} s) "
                              "was used up")
                break
            start = time.monotonic()
            outcome = kernel.run(cell, index, timeout - used)
            used += time.monotonic() - start
            if outcome == "killed":
                errors.append(f"cell {index + 1} did not stop within {timeout:.0f} s (the "
                              "notebook's time limit) and was killed; the cells after it did "
                              "not run")
            elif outcome == "died":
                errors.append(f"the kernel died in cell {index + 1} (sys.exit from a thread, "
                              "os._exit, a crash or out of memory)")
            elif index + 1 in plan:
                alive = save(plan[index + 1], f"after cell {index + 1}")
            alive = alive and outcome == "ok"
            if not alive:
                break
        if alive:   # the final state counts: later cells may have changed what a function uses
            save(sorted({k for keys in plan.values() for k in keys}), "at the end")
    notebook.cells.pop()
    errors[:0] = _cell_errors(notebook, timeout if used >= timeout else None)
    return {"errors": errors}


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


# --------------------------------------------------------------------------------------------
# Reading the source (in the parent: what the kernel reports could be forged)
# --------------------------------------------------------------------------------------------

def read_code(path: Path):
    """:func:`utils.course.submissions.read_submission` of a notebook file (None if unreadable)."""
    import nbformat

    from utils.course.submissions import read_submission

    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception:  # the worker reports it
        return None
    return read_submission([(number, cell.source) for number, cell in
                            enumerate(notebook.cells, start=1) if cell.cell_type == "code"])


def reference_fingerprints(source: Path = REFERENCE_SOURCE) -> dict[str, str]:
    """Exercise -> fingerprint of the reference solution's code (a notebook source in jupytext's
    percent format is a Python file: its markdown cells are comments)."""
    from utils.course.submissions import read_submission

    if not source.is_file():
        return {}
    code = read_submission([(1, source.read_text())])
    return {key: exercise.fingerprint for key, exercise in code.exercises.items()
            if exercise.fingerprint}


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


def _own_code_overrides(code) -> dict[str, str]:
    """Exercise -> why the source says it is not the student's own code."""
    from utils.course.exercises import EXERCISES

    if code is None:
        return {}
    if code.hides_code:
        return dict.fromkeys(EXERCISES, code.hides_code)
    return {key: exercise.not_own_code for key, exercise in code.exercises.items()
            if exercise.not_own_code}


def grade_submission(path: Path, timeout: float, fast: bool = True, label: str | None = None
                     ) -> dict:
    """Run one submission in a temporary copy; return its CSV row (named ``label`` or the
    file's name) and, under ``"_fingerprints"``, its exercises' code fingerprints."""
    from utils.course.grading import GRADED_KEYS, CheckResult, grade_saved_answers

    row = {"submission": label or path.name}
    code = read_code(path)
    plan = {} if code is None else code.defining_cells
    token = secrets.token_hex(16)
    scratch = Path(tempfile.mkdtemp(prefix="clip_pacl_grade_"))
    try:
        work, answers = scratch / "work", scratch / "answers"
        work.mkdir()
        answers.mkdir()
        shutil.copy2(path, work / "submission.ipynb")
        (scratch / "plan.json").write_text(json.dumps(plan))
        result_file, pid_file = scratch / "result.json", scratch / "kernel.pid"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker",
                   str(work / "submission.ipynb"), "--timeout", str(timeout),
                   "--answers", str(answers), "--token", token, "--plan", str(scratch / "plan.json"),
                   "--result", str(result_file), "--kernel-pid", str(pid_file)]
        limit = timeout + (len(plan) + 1) * (CAPTURE_S + KILL_GRACE_S) + WORKER_SLACK_S
        # Output goes to a file, not a pipe: a kernel left behind cannot keep us waiting on it.
        with open(scratch / "worker.log", "wb") as log:
            worker = subprocess.Popen(command, cwd=work, env=_kernel_environment(scratch, fast),
                                      stdout=log, stderr=log, start_new_session=True)
            try:
                worker.wait(timeout=limit)
            except subprocess.TimeoutExpired:   # the worker hung: end it and its kernel
                _kill(worker.pid)
                worker.wait()
        if pid_file.exists() and pid_file.read_text().strip().isdigit():
            _kill(int(pid_file.read_text()))    # a kernel left running by a killed worker
        errors = _read_result(result_file, worker.returncode, scratch / "worker.log")["errors"]
        results = grade_saved_answers(answers, token)
    except Exception as error:  # whatever goes wrong with one submission stays in its row
        errors, results = [f"grader error: {type(error).__name__}: {error}"], {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for key, why in _own_code_overrides(code).items():
        old = results.get(key)
        results[key] = CheckResult(key, old.title if old else key, "not own code", 0,
                                   old.checks_total if old else 1, why)
    for key in GRADED_KEYS:
        row[key] = f"{results[key].score:.2f}" if key in results else ""
    row["total"] = f"{sum(r.score for r in results.values()):.2f}" if results else ""
    row["own_code"] = " | ".join(f"({key}) {results[key].message}" for key in GRADED_KEYS
                                 if key in results and results[key].status == "not own code")
    row["same_code_as"] = ""
    row["errors"] = " | ".join(errors)
    row["_fingerprints"] = {key: exercise.fingerprint for key, exercise in
                            (code.exercises.items() if code else [])
                            if exercise.fingerprint and key in results
                            and results[key].score > 0}
    return row


def _read_result(result_file: Path, returncode: int | None, log: Path) -> dict:
    try:
        return json.loads(result_file.read_text())
    except (OSError, ValueError):
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
        return {"errors": [f"the grading process ended (exit code {returncode}): {last[0]}"]}


def mark_same_code(rows: list[dict], reference: dict[str, str]) -> None:
    """Fill each row's ``same_code_as``: for every exercise whose code (up to names, comments
    and layout) equals the reference's or another submission's, who else has it."""
    holders: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        for key, print_ in row["_fingerprints"].items():
            holders.setdefault((key, print_), []).append(row["submission"])
    for row in rows:
        notes = []
        for key, print_ in sorted(row["_fingerprints"].items()):
            others = [name for name in holders[(key, print_)] if name != row["submission"]]
            if reference.get(key) == print_:
                others.insert(0, "the reference solution")
            if others:
                notes.append(f"({key}) {', '.join(others)}")
        row["same_code_as"] = "; ".join(notes)


COLUMNS = ["submission", "a", "b", "c", "d", "e", "total", "own_code", "same_code_as", "errors"]


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
    mark_same_code(rows, reference_fingerprints())
    for row in rows:
        del row["_fingerprints"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
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
    for hidden in ("--result", "--kernel-pid", "--answers", "--plan"):
        parser.add_argument(hidden, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        plan = {int(cell): keys for cell, keys in json.loads(args.plan.read_text()).items()}
        result = run_notebook(args.worker, args.timeout, args.answers, args.token, plan,
                              args.kernel_pid)
        args.result.write_text(json.dumps(result))
        return
    if args.submissions is None or not args.submissions.is_dir():
        parser.error(f"SUBMISSIONS_DIR must be an existing folder, got {args.submissions}")
    rows = grade_folder(args.submissions, args.out, args.timeout, not args.full, args.jobs)
    failed = sum(bool(row["errors"]) for row in rows)
    print(f"graded {len(rows)} submissions ({failed} with errors) -> {args.out}")


if __name__ == "__main__":
    main()
