"""Checking the assignment's functions (notebook 04): instant feedback, and the grader's verdicts.

A check has two halves, so that a grade never rests on code the student controls:

- **answering** (:func:`answer_exercise`) runs the student's function on every input of an
  exercise (:mod:`utils.course.exercises`) and records what came back as plain data: the value,
  whether the inputs were changed, the gradients, the exception. It also refuses a function that
  is not the student's own: one imported from the course (or an alias of it), or one that calls
  into the course's package while it runs. It runs where the function lives, in the notebook.
- **judging** (:func:`judge_exercise`) builds the same inputs itself, runs the reference on them
  and compares. The notebook's check cells do both at once (:func:`check_exercise`); the
  instructors' grader judges in its own process the answers the kernel saved
  (:func:`save_answers`, :func:`grade_saved_answers`), so nothing a notebook does in its kernel
  can change how its answers are scored.

Every verdict is a :class:`CheckResult`: PASS, TODO or FAIL, the first mismatch explained (which
input, expected versus got, a hint).
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from utils.course.exercises import (
    EXERCISES,
    EXPERIMENT_NAMES,
    EXPERIMENT_TITLE,
    MIN_ANSWER_WORDS,
    Case,
    Exercise,
)
from utils.storage.atomic import atomic_file

COURSE_PACKAGE = str(Path(__file__).resolve().parents[1])   # the `utils` folder

# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    """The outcome of one exercise's check.

    ``status`` is ``"passed"``, ``"failed"`` (a wrong value, shape or type, or an exception on some
    input), ``"not own code"`` (the course's function, or a wrapper around it: scores 0),
    ``"not implemented"`` (the stub still raises ``NotImplementedError``) or ``"missing"`` (no
    such function was defined). ``score`` is the share of checks passed, in ``[0, 1]``.
    """

    exercise: str
    title: str
    status: str
    checks_passed: int
    checks_total: int
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def score(self) -> float:
        return self.checks_passed / self.checks_total if self.checks_total else 0.0

    def report(self) -> str:
        """What the student reads under the check cell."""
        head = f"Exercise ({self.exercise}) · {self.title}:"
        if self.status == "passed":
            return f"PASS  {head} all {self.checks_total} checks pass."
        if self.status == "not implemented":
            return (f"TODO  {head} not implemented yet. Replace the `raise NotImplementedError` "
                    "in the cell marked YOUR CODE HERE, run that cell, then this one.")
        if self.status == "missing":
            return f"TODO  {head} {self.message}"
        if self.status == "not own code":
            return f"FAIL  {head} scores 0.\n" + _indent(self.message)
        return (f"FAIL  {head} {self.checks_passed} of {self.checks_total} checks pass.\n"
                + _indent(self.message))

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed, "score": self.score}


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# The latest result of each exercise in this Python session, for summary().
_LATEST: dict[str, CheckResult] = {}


# --------------------------------------------------------------------------------------------
# Comparing one answer with the expected one
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OtherValue:
    """Stands for a returned value that is neither a tensor nor a number (only its type is kept)."""

    type_name: str


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if value.numel() == 1:
            return f"a tensor {value.item():.6g} (shape {list(value.shape)}, {dtype})"
        return f"a tensor of shape {list(value.shape)} ({dtype})"
    if isinstance(value, OtherValue):
        return f"a {value.type_name}"
    if isinstance(value, numbers.Real):
        return f"a Python {type(value).__name__} {float(value):.6g}"
    return f"a {type(value).__name__}"


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol): float64 answers must agree far more closely than float32 ones."""
    return (1e-9, 1e-11) if dtype == torch.float64 else (1e-4, 1e-5)


def compare_tensor(expected: torch.Tensor, got: object) -> str | None:
    """None when ``got`` matches; otherwise what differs, in words."""
    if got is None:
        return "your function returned None: did it forget to `return` its result?"
    if not isinstance(got, torch.Tensor):
        return f"expected {_describe(expected)}, got {_describe(got)}"
    if got.shape != expected.shape:
        return f"expected shape {list(expected.shape)}, got shape {list(got.shape)}"
    if got.dtype != expected.dtype:
        return (f"expected dtype {expected.dtype}, got {got.dtype}: keep the dtype of the inputs "
                "(no .float() or torch.tensor(..., dtype=...) on the way)")
    got, expected = got.detach(), expected.detach()
    if not torch.isfinite(got).all():
        return f"your result holds inf or nan values ({_describe(got)}); expected finite values"
    rtol, atol = _tolerance(expected.dtype)
    if torch.allclose(got, expected, rtol=rtol, atol=atol):
        return None
    if expected.ndim == 0:
        return f"expected {expected.item():.6g}, got {got.item():.6g}"
    difference = (got - expected).abs()
    where = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
    return (f"values differ; the largest difference is at index {list(where)}: expected "
            f"{expected[where].item():.6g}, got {got[where].item():.6g}")


def compare_float(expected: float, got: object) -> str | None:
    """None when ``got`` is a real number equal to ``expected`` (up to 1e-6)."""
    if got is None:
        return "your function returned None: did it forget to `return` its result?"
    if isinstance(got, torch.Tensor):
        return (f"expected a Python float, got {_describe(got)}: convert it with .item()")
    if isinstance(got, bool | OtherValue) or not isinstance(got, numbers.Real):
        return f"expected a Python float ({expected:.6g}), got {_describe(got)}"
    if math.isclose(float(got), expected, rel_tol=1e-6, abs_tol=1e-6):
        return None
    return f"expected {expected:.6g}, got {float(got):.6g}"


COMPARE = {"tensor": compare_tensor, "float": compare_float}


def tensors_in(values: tuple) -> list[torch.Tensor]:
    """The tensors among ``values`` (a function's arguments), in order."""
    return [v for v in values if isinstance(v, torch.Tensor)]


# --------------------------------------------------------------------------------------------
# Answering: the student's function on every input, as plain data
# --------------------------------------------------------------------------------------------

# Frames in these places are not the student's: the course's package, and torch's internals.
_NOT_STUDENT_CODE = (COURSE_PACKAGE, os.path.dirname(torch.__file__))


def where_it_raised(error: BaseException) -> str:
    """`` (raised in f, line n: `code`)`` for the last frame of the student's own code."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith(_NOT_STUDENT_CODE)]
    if not frames:
        return ""
    last = frames[-1]
    return f" (raised in {last.name}, line {last.lineno}: `{(last.line or '').strip()}`)"


def _is_course_code(filename: str) -> bool:
    return os.path.abspath(filename).startswith(COURSE_PACKAGE + os.sep)


def not_own_code(function: Callable, name: str) -> str | None:
    """Why ``function`` is not a function the student wrote, or None when it is one.

    A function imported from the course, or assigned from one, keeps the course's code object; a
    ``functools.partial`` or any other callable that is not a plain function has no code of its
    own to check.
    """
    code = getattr(function, "__code__", None)
    if code is None:
        return (f"`{name}` is a {type(function).__name__}, not a function defined with `def` in "
                "your notebook.")
    if _is_course_code(code.co_filename):
        where = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', name)}"
        return (f"`{name}` is the course's own {where}, not your code: write the function "
                "yourself with torch.")
    return None


def _call_watching_course(function: Callable, args: tuple, kwargs: dict
                          ) -> tuple[object, Exception | None, str | None]:
    """``function(*args, **kwargs)``: its value (or the exception it raised), and the first
    function of the course's package that ran meanwhile (as ``module.function``), or None.
    A wrapper around the course's implementation is the student's function on paper; what it
    calls while it runs gives it away. ``NotImplementedError`` (a stub) is raised through."""
    seen: list[str] = []

    def watch(frame, event, _arg) -> None:
        if event == "call" and not seen and _is_course_code(frame.f_code.co_filename):
            seen.append(f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}")

    previous = sys.getprofile()
    sys.setprofile(watch)
    value, raised = None, None
    try:
        value = function(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as error:  # the student's bug becomes a message, never a traceback
        raised = error
    finally:
        sys.setprofile(previous)
    return value, raised, seen[0] if seen else None


@dataclass
class Answer:
    """What a student's function did on one input, as data a grader can load without running code.

    ``kind``: ``"tensor"`` (``value`` holds it, detached), ``"number"`` (a Python float), ``"none"``,
    ``"other"`` (``type_name`` says what), ``"raised"`` (``error`` says what and where).
    """

    kind: str
    value: object = None
    type_name: str = ""
    requires_grad: bool = False
    changed_inputs: bool = False
    gradients: list | None = None        # the inputs' gradients after backward(), in order
    gradient_error: str = ""


def _record(value: object) -> Answer:
    if isinstance(value, torch.Tensor):
        return Answer("tensor", value.detach().cpu().clone(), requires_grad=value.requires_grad)
    if value is None:
        return Answer("none")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return Answer("number", float(value), type_name=type(value).__name__)
    return Answer("other", type_name=type(value).__name__)


def _answer_case(student: Callable, case: Case) -> tuple[Answer, str | None]:
    """Run ``student`` on ``case``: its :class:`Answer`, and the first course function it called.
    A ``NotImplementedError`` is let through: it means the whole exercise is still a stub."""
    args = case.make()
    before = [t.detach().clone() for t in tensors_in(args)]
    value, error, course_call = _call_watching_course(student, args, case.kwargs)
    if error is not None:
        return (Answer("raised", type_name=type(error).__name__,
                       value=f"{type(error).__name__}: {error}{where_it_raised(error)}"),
                course_call)
    answer = _record(value)
    answer.changed_inputs = any(not torch.equal(b, a.detach())
                                for b, a in zip(before, tensors_in(args), strict=True))
    if case.gradients and answer.requires_grad:
        try:
            value.backward()
            answer.gradients = [None if t.grad is None else t.grad.clone()
                                for t in tensors_in(args) if t.requires_grad]
        except Exception as error:  # e.g. a non-scalar result: reported when judged
            answer.gradient_error = f"{type(error).__name__}: {error}"
    return answer, course_call


def answer_exercise(key: str, student: object) -> dict:
    """Run exercise ``key``'s inputs through ``student``; plain data for :func:`judge_exercise`.

    ``{"status": "answered", "answers": [asdict(Answer), ...]}``, or a status with no answers:
    ``"missing"``, ``"not implemented"``, ``"not own code"`` (with a ``"message"``).
    """
    exercise = EXERCISES[key]
    if not callable(student):
        return {"status": "missing"}
    problem = not_own_code(student, exercise.function_name)
    if problem:
        return {"status": "not own code", "message": problem}
    answers = []
    for case in exercise.cases:
        try:
            answer, course_call = _answer_case(student, case)
        except NotImplementedError:
            return {"status": "not implemented"}
        if course_call:
            return {"status": "not own code",
                    "message": f"`{exercise.function_name}` calls the course's {course_call} "
                               "while it runs: the exercise asks for your own code, with torch."}
        answers.append(asdict(answer))
    return {"status": "answered", "answers": answers}


# --------------------------------------------------------------------------------------------
# Judging: the same inputs through the reference, and the comparison
# --------------------------------------------------------------------------------------------

def _got(answer: Answer) -> object:
    """The returned value as the comparisons expect it."""
    if answer.kind == "other":
        return OtherValue(answer.type_name)
    return answer.value


def _judge_case(exercise: Exercise, case: Case, answer: Answer) -> str | None:
    """None when ``answer`` matches the reference on ``case``; otherwise the explanation."""
    if answer.kind == "raised":
        return f"your function raised {answer.value}"
    expected_args = case.make()
    expected = exercise.reference(*expected_args, **case.kwargs)
    problem = COMPARE[exercise.answer_kind](expected, _got(answer))
    if problem is None and answer.changed_inputs:
        problem = "the answer is right, but your function changed its inputs in place"
    if problem is None and case.gradients:
        problem = _judge_gradients(expected, expected_args, answer)
    return problem


def _judge_gradients(expected: torch.Tensor, expected_args: tuple, answer: Answer) -> str | None:
    if not answer.requires_grad:
        return ("the value is right but carries no gradient: keep every step in torch (no "
                ".item(), .numpy(), .detach() or torch.no_grad()) so that training can backpropagate")
    if answer.gradient_error or answer.gradients is None:
        return f"backpropagating through your result failed: {answer.gradient_error}"
    expected.backward()
    wanted = [t.grad for t in tensors_in(expected_args) if t.requires_grad]
    if len(answer.gradients) != len(wanted):
        return "the gradients of your result could not be read"
    for name, want, have in zip(("image_emb", "text_emb"), wanted, answer.gradients, strict=False):
        problem = compare_tensor(want, have)
        if problem:
            return f"the gradient with respect to {name} differs: {problem}"
    return None


def _answer_from(data: object) -> Answer:
    """An :class:`Answer` from loaded data, refusing anything that is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise ValueError("not an answer")
    return Answer(**data)


def judge_exercise(key: str, answered: dict) -> CheckResult:
    """The verdict on :func:`answer_exercise`'s data for exercise ``key``.

    The first failing input is explained: its name, expected versus got, and a hint.
    """
    exercise = EXERCISES[key]
    total = len(exercise.cases)
    status = answered.get("status") if isinstance(answered, dict) else None
    if status == "missing":
        return CheckResult(key, exercise.title, "missing", 0, total,
                           f"no function `{exercise.function_name}` is defined: run its cell "
                           "first.")
    if status in ("not implemented", "not own code"):
        return CheckResult(key, exercise.title, status, 0, total, str(answered.get("message", "")))
    answers = answered.get("answers") if status == "answered" else None
    if not isinstance(answers, list) or len(answers) != total:
        return CheckResult(key, exercise.title, "failed", 0, total,
                           "the answers saved for this exercise could not be read.")
    failures = []
    for case, data in zip(exercise.cases, answers, strict=True):
        try:
            problem = _judge_case(exercise, case, _answer_from(data))
        except Exception as error:  # malformed data from the kernel is a wrong answer, no crash
            problem = f"your answer could not be read ({type(error).__name__})"
        if problem:
            failures.append((case, problem))
    if not failures:
        return CheckResult(key, exercise.title, "passed", total, total)
    case, problem = failures[0]
    message = f"First mismatch, on input \"{case.name}\":\n  {problem}\nHint: {case.hint}"
    if len(failures) > 1:
        message += "\nAlso failing: " + "; ".join(f'"{c.name}"' for c, _ in failures[1:]) + "."
    return CheckResult(key, exercise.title, "failed", total - len(failures), total, message)


def _finish(result: CheckResult, verbose: bool) -> CheckResult:
    _LATEST[result.exercise] = result
    if verbose:
        print(result.report())
    return result


def check_exercise(key: str, student: Callable | None, verbose: bool = True) -> CheckResult:
    """Run exercise ``key``'s inputs through ``student`` and judge them: print the verdict (if
    ``verbose``) and return it."""
    return _finish(judge_exercise(key, answer_exercise(key, student)), verbose)


# --------------------------------------------------------------------------------------------
# (e) the open experiment: only its form can be checked
# --------------------------------------------------------------------------------------------

def _has_data(fig: Figure) -> bool:
    return any(ax.lines or ax.collections or ax.images or ax.patches for ax in fig.axes)


def answer_experiment(run_experiment: object, answer: object,
                      figure_path: Path | None = None) -> tuple[dict, Figure | None]:
    """Call ``run_experiment()`` and describe its figure and the ``answer`` paragraph as data
    (and the figure itself, for showing); with ``figure_path`` the figure is saved there too."""
    record = {"status": "answered", "answer": answer if isinstance(answer, str) else "",
              "is_figure": False, "has_data": False, "labelled": False, "error": ""}
    if not callable(run_experiment):
        return {"status": "missing"}, None
    try:
        fig = run_experiment()
    except NotImplementedError:
        return {"status": "not implemented"}, None
    except Exception as error:  # the student's bug becomes a message, never a traceback
        record["error"] = f"run_experiment() raised {type(error).__name__}: {error}" \
                          f"{where_it_raised(error)}"
        return record, None
    if not isinstance(fig, Figure):
        return record, None
    record.update(is_figure=True, has_data=_has_data(fig),
                  # "any": a colorbar's axes hold data too, and need no labels
                  labelled=any(ax.get_xlabel() and ax.get_ylabel()
                               for ax in fig.axes if ax.has_data()))
    if figure_path is not None:
        with atomic_file(figure_path) as tmp:
            fig.savefig(tmp, dpi=80)
    return record, fig


EXPERIMENT_CHECKS = ("run_experiment() returns a matplotlib Figure", "the figure shows data",
                     "a plot has labelled x and y axes",
                     f"EXPERIMENT_ANSWER is a paragraph of at least {MIN_ANSWER_WORDS} words")


def judge_experiment(record: dict) -> CheckResult:
    """The form checks of (e) on :func:`answer_experiment`'s data; an instructor reads the rest."""
    names = EXPERIMENT_CHECKS
    status = record.get("status") if isinstance(record, dict) else None
    if status == "missing":
        return CheckResult("e", EXPERIMENT_TITLE, "missing", 0, len(names),
                           "no function `run_experiment` is defined: run its cell first.")
    if status == "not implemented":
        return CheckResult("e", EXPERIMENT_TITLE, "not implemented", 0, len(names))
    if status != "answered":
        return CheckResult("e", EXPERIMENT_TITLE, "failed", 0, len(names),
                           "the experiment's record could not be read.")
    answer = record.get("answer")
    words = len(answer.split()) if isinstance(answer, str) else 0
    figure = record.get("is_figure") is True
    outcomes = [figure, figure and record.get("has_data") is True,
                figure and record.get("labelled") is True, words >= MIN_ANSWER_WORDS]
    failed = [name for name, ok in zip(names, outcomes, strict=True) if not ok]
    error = f" {record['error']}" if isinstance(record.get("error"), str) and record["error"] else ""
    message = f"Not yet: {'; '.join(failed)} (the answer has {words} words).{error}" if failed else ""
    return CheckResult("e", EXPERIMENT_TITLE, "failed" if failed else "passed", sum(outcomes),
                       len(names), message)


def check_experiment(run_experiment: Callable[[], Figure] | None, answer: str | None,
                     verbose: bool = True, display: bool = True) -> CheckResult:
    """Exercise (e): checks that ``run_experiment()`` returns a matplotlib Figure with plotted data
    and labelled axes, and that ``answer`` is a paragraph of at least ``MIN_ANSWER_WORDS`` words.
    With ``display`` the figure is shown under the cell."""
    record, fig = answer_experiment(run_experiment, answer)
    if fig is not None and display:
        from utils.course.notebook import show

        show(fig)
    elif fig is not None:
        plt.close(fig)
    return _finish(judge_experiment(record), verbose)


def summary() -> str:
    """One line per exercise checked in this session: its status and checks passed."""
    lines = [f"({r.exercise}) {r.title:<30} {r.status:<16} {r.checks_passed}/{r.checks_total}"
             for _, r in sorted(_LATEST.items())]
    return "\n".join(lines) or "No exercise checked yet."


# --------------------------------------------------------------------------------------------
# The instructors' grader: answers saved by the kernel, judged in the grader's own process
# --------------------------------------------------------------------------------------------

GRADED_KEYS = [*EXERCISES, "e"]          # the checked functions, then the open experiment


def answer_file(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}.pt"


def save_answers(namespace: dict, keys: list[str], folder: str | os.PathLike[str],
                 token: str) -> None:
    """In the student's kernel: answer exercises ``keys`` with the functions ``namespace`` defines
    and save each as ``folder/<key>.pt`` (tensors and plain values only, tagged with ``token``);
    (e) also saves its figure as ``folder/e.png``."""
    folder = Path(folder)
    for key in keys:
        if key == "e":
            record, fig = answer_experiment(*(namespace.get(name) for name in EXPERIMENT_NAMES),
                                            figure_path=folder / "e.png")
            if fig is not None:
                plt.close(fig)
        else:
            record = answer_exercise(key, namespace.get(EXERCISES[key].function_name))
        with atomic_file(answer_file(folder, key)) as tmp:
            torch.save({"token": token, "record": record}, tmp)


def grade_saved_answers(folder: str | os.PathLike[str], token: str) -> dict[str, CheckResult]:
    """In the grader's process: every exercise's verdict from what :func:`save_answers` left in
    ``folder``. Files are loaded with ``weights_only=True``: tensors and plain values, no code."""
    results = {}
    for key in GRADED_KEYS:
        title = EXPERIMENT_TITLE if key == "e" else EXERCISES[key].title
        total = len(EXPERIMENT_CHECKS) if key == "e" else len(EXERCISES[key].cases)
        try:
            saved = torch.load(answer_file(folder, key), weights_only=True)
            if not isinstance(saved, dict) or saved.get("token") != token:
                raise ValueError("not this submission's answers")
        except FileNotFoundError:
            results[key] = CheckResult(key, title, "missing", 0, total,
                                       "no answers: the notebook never defined it, or was "
                                       "stopped before.")
            continue
        except Exception:  # a damaged or foreign file is no answer
            results[key] = CheckResult(key, title, "failed", 0, total,
                                       "the saved answers could not be read.")
            continue
        judge = judge_experiment if key == "e" else (lambda data, k=key: judge_exercise(k, data))
        results[key] = judge(saved["record"])
    return results

