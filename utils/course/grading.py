"""Automatic feedback for the assignment (notebook 04): the student's function against the course's.

Each exercise is a function the student writes. :func:`check_exercise` runs it on a list of
:class:`Case` inputs (random ones and edge cases: a batch of 1, ties, an ignore index,
non-contiguous tensors, float64, a class absent from the image), runs the reference
implementation from ``utils`` on fresh copies of the same inputs, and compares. It never lets an
assertion or the student's exception escape: it prints a verdict that explains the first
mismatch (which input, expected versus got, a hint) and returns a :class:`CheckResult`, which is
also machine-readable (``to_dict``). :func:`grade_namespace` grades every exercise a notebook
defines at once; the instructors' ``scripts/grade_submissions.py`` calls it in each submission.

What each student function must return (the references they are compared with):

(a) ``clip_loss(image_emb [N, D], text_emb [N, D], logit_scale) -> 0-dim tensor``, the input's
    dtype, differentiable: :func:`utils.losses.clip_loss`.
(b) ``image_to_text_recall(similarity [I, T], text_to_image [T], k) -> float``: the share of
    images with at least one of their captions among their ``k`` best-scored captions
    (:func:`utils.metrics.recall_at_k` over the image -> text direction).
(c) ``pacl_compatibility(patch_emb [B, P, D], text_emb [T, D]) -> [B, T] tensor``, the input's
    dtype: :func:`utils.pacl.pacl_compatibility` (PACL Eq. 2-3).
(d) ``mean_iou(pred, target, num_classes, ignore_index=255) -> float``: the ``"mIoU"`` of
    :func:`utils.metrics.mean_iou` (counts pooled over the batch; classes absent from both maps
    left out).
(e) an open experiment: ``run_experiment() -> matplotlib Figure`` and a paragraph
    ``EXPERIMENT_ANSWER``; only their form can be checked (:func:`check_experiment`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from utils.losses import clip_loss as reference_clip_loss
from utils.metrics import mean_iou as reference_mean_iou
from utils.metrics import recall_at_k
from utils.pacl import pacl_compatibility as reference_pacl_compatibility
from utils.positives import positives_from_text_to_image

GRADES_MARKER = "CLIP_PACL_GRADES"   # the line grade_namespace prints starts with it
MIN_ANSWER_WORDS = 50


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    """The outcome of one exercise's check.

    ``status`` is ``"passed"``, ``"failed"`` (a wrong value, shape or type, or an exception on some
    input), ``"not implemented"`` (the stub still raises ``NotImplementedError``) or ``"missing"``
    (no such function was defined). ``score`` is the share of checks passed, in ``[0, 1]``.
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
        return (f"FAIL  {head} {self.checks_passed} of {self.checks_total} checks pass.\n"
                + _indent(self.message))

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed, "score": self.score}


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# The latest result of each exercise in this Python session, for summary().
_LATEST: dict[str, CheckResult] = {}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One input of a check. ``make`` builds fresh arguments on every call (the student and the
    reference each get their own copy, so strides such as a transposed view survive)."""

    name: str
    make: Callable[[], tuple]
    hint: str
    kwargs: dict = field(default_factory=dict)
    gradients: bool = False   # also compare the gradients of the inputs that require them


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _randint(high: int, *shape: int, seed: int) -> torch.Tensor:
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


def _row_scaled(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows of very different lengths (0.1 to 10), directions unchanged."""
    scale = 10 ** (2 * torch.rand(*x.shape[:-1], 1, generator=torch.Generator().manual_seed(seed),
                                  dtype=x.dtype) - 1)
    return x * scale


def _requiring_grad(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().requires_grad_(True) for t in tensors)


# --------------------------------------------------------------------------------------------
# Comparing one answer with the expected one
# --------------------------------------------------------------------------------------------

def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if value.numel() == 1:
            return f"a tensor {value.item():.6g} (shape {list(value.shape)}, {dtype})"
        return f"a tensor of shape {list(value.shape)} ({dtype})"
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
    if isinstance(got, bool) or not isinstance(got, numbers.Real):
        return f"expected a Python float ({expected:.6g}), got {_describe(got)}"
    if math.isclose(float(got), expected, rel_tol=1e-6, abs_tol=1e-6):
        return None
    return f"expected {expected:.6g}, got {float(got):.6g}"


def _tensors(values: Sequence[object]) -> list[torch.Tensor]:
    return [v for v in values if isinstance(v, torch.Tensor)]


# Frames in these files are not the student's: this module, and torch's internals.
_NOT_STUDENT_CODE = (__file__, os.path.dirname(torch.__file__))


def _where_it_raised(error: BaseException) -> str:
    """`` (raised in f, line n: `code`)`` for the last frame of the student's own code."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith(_NOT_STUDENT_CODE)]
    if not frames:
        return ""
    last = frames[-1]
    return f" (raised in {last.name}, line {last.lineno}: `{(last.line or '').strip()}`)"


def _run_case(student: Callable, reference: Callable, compare: Callable, case: Case) -> str | None:
    """None when the student's answer on ``case`` matches the reference's; else the explanation.
    A ``NotImplementedError`` is let through: it means the whole exercise is still a stub."""
    expected_args = case.make()
    expected = reference(*expected_args, **case.kwargs)
    args = case.make()
    before = [t.detach().clone() for t in _tensors(args)]
    try:
        got = student(*args, **case.kwargs)
    except NotImplementedError:
        raise
    except Exception as error:  # the student's bug becomes a message, never a traceback
        return f"your function raised {type(error).__name__}: {error}{_where_it_raised(error)}"
    problem = compare(expected, got)
    if problem is None and any(not torch.equal(b, a.detach())
                               for b, a in zip(before, _tensors(args), strict=True)):
        problem = "the answer is right, but your function changed its inputs in place"
    if problem is None and case.gradients:
        problem = _compare_gradients(expected, expected_args, got, args)
    return problem


def _compare_gradients(expected: torch.Tensor, expected_args: tuple, got: torch.Tensor,
                       args: tuple) -> str | None:
    if not got.requires_grad:
        return ("the value is right but carries no gradient: keep every step in torch (no "
                ".item(), .numpy(), .detach() or torch.no_grad()) so that training can backpropagate")
    expected.backward()
    got.backward()
    for name, want, have in zip(("image_emb", "text_emb"), _tensors(expected_args), _tensors(args),
                                strict=False):
        problem = compare_tensor(want.grad, have.grad)
        if problem:
            return f"the gradient with respect to {name} differs: {problem}"
    return None


# --------------------------------------------------------------------------------------------
# The exercises
# --------------------------------------------------------------------------------------------

@dataclass
class Exercise:
    key: str
    title: str
    function_name: str
    reference: Callable
    compare: Callable[[object, object], str | None]
    cases: list[Case]


def _clip_loss_cases() -> list[Case]:
    recipe = ("logits = s * normalize(I) @ normalize(T).T; loss = (cross-entropy over rows + "
              "cross-entropy over columns) / 2, targets torch.arange(N), each a mean over the batch")
    return [
        Case("unit-length embeddings, N=8, D=16, logit_scale=10",
             lambda: (torch.nn.functional.normalize(_randn(8, 16, seed=1), dim=-1),
                      torch.nn.functional.normalize(_randn(8, 16, seed=2), dim=-1), 10.0),
             f"recipe: {recipe}. Both directions count, and the loss is a mean, not a sum."),
        Case("embeddings of very different lengths, N=8, D=16, logit_scale=10",
             lambda: (_row_scaled(_randn(8, 16, seed=3), 4), _row_scaled(_randn(8, 16, seed=5), 6),
                      10.0),
             "L2-normalise both embeddings along D before the dot product (F.normalize(x, dim=-1))."),
        Case("logit_scale as a 0-dim tensor (1 / 0.07)",
             lambda: (_randn(6, 8, seed=7), _randn(6, 8, seed=8), torch.tensor(1 / 0.07)),
             "multiply the cosine similarities by logit_scale: it is already exponentiated."),
        Case("a batch of one pair (N=1): the loss is 0",
             lambda: (_randn(1, 8, seed=9), _randn(1, 8, seed=10), 10.0),
             "with one pair, each cross-entropy has a single class; use targets torch.arange(N)."),
        Case("tied scores: two identical captions in the batch",
             lambda: (_randn(5, 4, seed=11), _randn(5, 4, seed=12)[[0, 1, 1, 3, 4]], 5.0),
             f"recipe: {recipe}."),
        Case("the largest logit scale CLIP allows (100), N=32",
             lambda: (_randn(32, 16, seed=13), _randn(32, 16, seed=14), 100.0),
             "exp(100) overflows float32: use F.cross_entropy or log_softmax, never exp yourself."),
        Case("non-contiguous inputs (transposed views of [D, N] tensors)",
             lambda: (_randn(16, 8, seed=15).T, _randn(16, 8, seed=16).T, 10.0),
             "use operations that accept any memory layout: `@`, F.normalize, .reshape (not .view)."),
        Case("float64 embeddings",
             lambda: (_randn(8, 16, seed=17, dtype=torch.float64),
                      _randn(8, 16, seed=18, dtype=torch.float64), 10.0),
             "the loss must keep the inputs' dtype; build the targets on the logits' device."),
        Case("inputs that require gradients: the loss must backpropagate",
             lambda: (*_requiring_grad(_randn(8, 16, seed=19), _randn(8, 16, seed=20)), 10.0),
             "return a tensor computed with torch operations only.", gradients=True),
    ]


def _reference_image_to_text_recall(similarity: torch.Tensor, text_to_image: torch.Tensor,
                                    k: int) -> float:
    positives = positives_from_text_to_image(text_to_image, similarity.shape[0]).T   # [I, T]
    return recall_at_k(similarity, positives, [k])[k]


def _grouped(num_images: int, per_image: int) -> torch.Tensor:
    return torch.arange(num_images).repeat_interleave(per_image)


def _recall_cases() -> list[Case]:
    rule = ("image i is a hit when ANY caption j with text_to_image[j] == i is among the k "
            "highest-scoring columns of row i (torch.topk(k), ranks 1..k)")
    best_not_first = torch.full((3, 6), -1.0)
    best_not_first[0, [0, 1]] = torch.tensor([0.1, 0.9])     # image 0's second caption wins
    best_not_first[1, [2, 3]] = torch.tensor([0.2, 0.8])
    best_not_first[2, [4, 5]] = torch.tensor([0.3, 0.7])
    best_not_first[0, 4] = 0.5                                # image 0's first caption is 3rd
    duplicate = _randn(4, 8, seed=31)
    duplicate[:, 3] = duplicate[:, 2]                         # captions 2 and 3 (both image 1) tie
    return [
        Case("4 images with 5 captions each (captions 5i..5i+4 belong to image i), k=1",
             lambda: (_randn(4, 20, seed=21), _grouped(4, 5), 1), rule),
        Case("the same kind of input, k=5",
             lambda: (_randn(4, 20, seed=22), _grouped(4, 5), 5),
             f"{rule}; k=5 means the top 5, not 4 or 6."),
        Case("an image's best caption is not its first one, k=1",
             lambda: (best_not_first.clone(), _grouped(3, 2), 1),
             "every caption of an image counts, not only its first one."),
        Case("captions in shuffled order, k=3",
             lambda: (_randn(5, 15, seed=23), _grouped(5, 3)[torch.randperm(
                 15, generator=torch.Generator().manual_seed(24))], 3),
             "find an image's captions with text_to_image, not by their position."),
        Case("images with different numbers of captions (1 to 4), k=2",
             lambda: (_randn(4, 10, seed=25), torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]), 2),
             "do not assume five captions per image."),
        Case("a single image (batch of 1), k=1",
             lambda: (_randn(1, 5, seed=26), torch.zeros(5, dtype=torch.long), 1),
             "with one image, all captions are its own: the recall is 1."),
        Case("k larger than the number of captions (k=10, 6 captions)",
             lambda: (_randn(3, 6, seed=27), _grouped(3, 2), 10),
             "cap k at the number of captions: torch.topk raises when k > T."),
        Case("tied scores: two captions of image 1 are duplicates, k=1",
             lambda: (duplicate.clone(), _grouped(4, 2), 1), rule),
        Case("non-contiguous similarity (a transposed [T, I] tensor), k=2",
             lambda: (_randn(12, 4, seed=28).T, _grouped(4, 3), 2),
             "use operations that accept any memory layout (.reshape, not .view)."),
        Case("float64 similarity, k=2",
             lambda: (_randn(6, 18, seed=29, dtype=torch.float64), _grouped(6, 3), 2), rule),
    ]


def _pacl_cases() -> list[Case]:
    recipe = ("a = softmax over the P patches of cos(patch, text); v = sum_p a_p * patch_p (the "
              "patches as given, not normalised); result [b, t] = cos(v, text_t)")
    return [
        Case("B=2 images, P=9 patches, T=3 texts, D=8",
             lambda: (_randn(2, 9, 8, seed=41), _randn(3, 8, seed=42)), recipe),
        Case("patches of very different lengths",
             lambda: (_row_scaled(_randn(2, 9, 8, seed=43), 44), _randn(3, 8, seed=45)),
             "the softmax weights use cosines, but the weighted sum uses the patches as given."),
        Case("texts of very different lengths",
             lambda: (_randn(2, 9, 8, seed=46), _row_scaled(_randn(4, 8, seed=47), 48)),
             "normalise the text embeddings for both cosines."),
        Case("more texts than images (B=2, T=5)",
             lambda: (_randn(2, 6, 8, seed=49), _randn(5, 8, seed=50)),
             "the softmax runs over the patches (one distribution per image and text), "
             "not over the texts or the images."),
        Case("one patch per image (P=1): the compatibility is that patch's cosine with the text",
             lambda: (_randn(3, 1, 8, seed=51), _randn(2, 8, seed=52)), recipe),
        Case("one image and one text (B=1, T=1)",
             lambda: (_randn(1, 9, 8, seed=53), _randn(1, 8, seed=54)),
             "keep the output 2-D, [B, T], even when B or T is 1 (no .squeeze())."),
        Case("tied scores: all patches of an image identical",
             lambda: (_randn(2, 1, 8, seed=55).expand(2, 9, 8).clone(), _randn(3, 8, seed=56)),
             recipe),
        Case("non-contiguous patches (a transposed [B, D, P] tensor)",
             lambda: (_randn(2, 8, 9, seed=57).transpose(1, 2), _randn(3, 8, seed=58)),
             "use operations that accept any memory layout: einsum, `@`, .reshape (not .view)."),
        Case("float64 inputs",
             lambda: (_randn(2, 9, 8, seed=59, dtype=torch.float64),
                      _randn(3, 8, seed=60, dtype=torch.float64)),
             "keep the inputs' dtype."),
    ]


def _reference_mean_iou(pred, target, num_classes: int, ignore_index: int = 255) -> float:
    return reference_mean_iou(pred, target, num_classes, ignore_index)["mIoU"]


def _masks(num_classes: int, *shape: int, seed: int, agree: float = 0.6
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A target map and a prediction that agrees with it on about ``agree`` of the pixels."""
    target = _randint(num_classes, *shape, seed=seed)
    noise = _randint(num_classes, *shape, seed=seed + 1)
    keep = torch.rand(*shape, generator=torch.Generator().manual_seed(seed + 2)) < agree
    return torch.where(keep, target, noise), target


def _with_ignored(seed: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Classes 0-3; the top two rows of the target are ``ignore_index`` and predicted wrongly."""
    pred, target = _masks(4, 6, 6, seed=seed)
    target[:2] = ignore_index
    pred[:2] = 0
    return pred, target, 4


def _false_positive_class(seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    pred, target = _masks(3, 6, 6, seed=seed)
    pred[0, :3] = 3                           # class 3 is predicted but never in the target
    return pred, target, 4


def _mean_iou_cases() -> list[Case]:
    rule = ("IoU_c = |pred==c and target==c| / |pred==c or target==c| over all non-ignored pixels "
            "of the batch; mIoU = mean over the classes present in pred or target")
    return [
        Case("one 6x6 image, 3 classes", lambda: (*_masks(3, 6, 6, seed=61), 3), rule),
        Case("a perfect prediction: mIoU = 1",
             lambda: (_randint(4, 5, 5, seed=62), _randint(4, 5, 5, seed=62), 4), rule),
        Case("a class absent from the image (num_classes=6, classes 0-2 only)",
             lambda: (*_masks(3, 6, 6, seed=63), 6),
             "leave classes that appear neither in pred nor in target out of the mean."),
        Case("a class that is predicted but absent from the target",
             lambda: _false_positive_class(64),
             "a class only the prediction contains has IoU 0 and counts in the mean."),
        Case("pixels marked ignore_index=255, predicted wrongly", lambda: _with_ignored(65, 255),
             "drop the pixels whose target is ignore_index before counting anything."),
        Case("another ignore index (ignore_index=4, num_classes=4)", lambda: _with_ignored(66, 4),
             "use the ignore_index argument, not a hard-coded 255.", kwargs={"ignore_index": 4}),
        Case("a batch of 3 images [3, 6, 6]: counts pooled over the batch",
             lambda: (*_masks(4, 3, 6, 6, seed=68, agree=0.4), 4),
             "pool the pixel counts over the whole batch, then divide; do not average per-image "
             "IoUs."),
        Case("a batch of one image [1, 6, 6]",
             lambda: (*_masks(3, 1, 6, 6, seed=69), 3), rule),
        Case("non-contiguous maps (transposed views)",
             lambda: (*(m.T for m in _masks(3, 7, 5, seed=70)), 3),
             "use operations that accept any memory layout (.reshape or .flatten, not .view)."),
        Case("int32 maps", lambda: (*(m.int() for m in _masks(3, 6, 6, seed=71)), 3),
             "do not rely on the maps being int64."),
    ]


EXERCISES = {
    "a": Exercise("a", "the CLIP loss", "clip_loss", reference_clip_loss, compare_tensor,
                  _clip_loss_cases()),
    "b": Exercise("b", "image -> text recall@K", "image_to_text_recall",
                  _reference_image_to_text_recall, compare_float, _recall_cases()),
    "c": Exercise("c", "the PACL compatibility", "pacl_compatibility",
                  reference_pacl_compatibility, compare_tensor, _pacl_cases()),
    "d": Exercise("d", "mean IoU", "mean_iou", _reference_mean_iou, compare_float,
                  _mean_iou_cases()),
}
EXPERIMENT_TITLE = "the open experiment"


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

def _finish(result: CheckResult, verbose: bool) -> CheckResult:
    _LATEST[result.exercise] = result
    if verbose:
        print(result.report())
    return result


def check_exercise(key: str, student: Callable | None, verbose: bool = True) -> CheckResult:
    """Run exercise ``key``'s cases on ``student``; print the verdict (if ``verbose``), return it.

    The first failing case is explained: its name, expected versus got, and a hint.
    """
    exercise = EXERCISES[key]
    total = len(exercise.cases)
    if not callable(student):
        return _finish(CheckResult(key, exercise.title, "missing", 0, total,
                                   f"no function `{exercise.function_name}` is defined: run its "
                                   "cell first."), verbose)
    failures = []
    for case in exercise.cases:
        try:
            problem = _run_case(student, exercise.reference, exercise.compare, case)
        except NotImplementedError:
            return _finish(CheckResult(key, exercise.title, "not implemented", 0, total), verbose)
        if problem:
            failures.append((case, problem))
    if not failures:
        return _finish(CheckResult(key, exercise.title, "passed", total, total), verbose)
    case, problem = failures[0]
    message = f"First mismatch, on input \"{case.name}\":\n  {problem}\nHint: {case.hint}"
    if len(failures) > 1:
        message += "\nAlso failing: " + "; ".join(f'"{c.name}"' for c, _ in failures[1:]) + "."
    return _finish(CheckResult(key, exercise.title, "failed", total - len(failures), total,
                               message), verbose)


def _has_data(fig: Figure) -> bool:
    return any(ax.lines or ax.collections or ax.images or ax.patches for ax in fig.axes)


def check_experiment(run_experiment: Callable[[], Figure] | None, answer: str | None,
                     verbose: bool = True, display: bool = True) -> CheckResult:
    """Exercise (e): only the form can be checked automatically; an instructor reads the rest.

    Calls ``run_experiment()`` and checks that it returns a matplotlib Figure with plotted data
    and labelled axes, and that ``answer`` is a paragraph of at least ``MIN_ANSWER_WORDS`` words.
    With ``display`` the figure is shown under the cell.
    """
    names = ["run_experiment() returns a matplotlib Figure", "the figure shows data",
             "a plot has labelled x and y axes",
             f"EXPERIMENT_ANSWER is a paragraph of at least {MIN_ANSWER_WORDS} words"]
    if not callable(run_experiment):
        return _finish(CheckResult("e", EXPERIMENT_TITLE, "missing", 0, len(names),
                                   "no function `run_experiment` is defined: run its cell first."),
                       verbose)
    fig, raised = None, ""
    try:
        fig = run_experiment()
    except NotImplementedError:
        return _finish(CheckResult("e", EXPERIMENT_TITLE, "not implemented", 0, len(names)),
                       verbose)
    except Exception as error:  # the student's bug becomes a message, never a traceback
        raised = f" run_experiment() raised {type(error).__name__}: {error}{_where_it_raised(error)}"
    is_figure = isinstance(fig, Figure)
    words = len(answer.split()) if isinstance(answer, str) else 0
    outcomes = [is_figure, is_figure and _has_data(fig),
                # "any": a colorbar's axes hold data too, and need no labels
                is_figure and any(ax.get_xlabel() and ax.get_ylabel()
                                  for ax in fig.axes if ax.has_data()),
                words >= MIN_ANSWER_WORDS]
    if is_figure and display:
        from utils.course.notebook import show

        show(fig)
    elif is_figure:
        plt.close(fig)
    failed = [name for name, ok in zip(names, outcomes, strict=True) if not ok]
    message = (f"Not yet: {'; '.join(failed)} (the answer has {words} words).{raised}"
               if failed else "")
    return _finish(CheckResult("e", EXPERIMENT_TITLE, "failed" if failed else "passed",
                               sum(outcomes), len(names), message), verbose)


def summary() -> str:
    """One line per exercise checked in this session: its status and checks passed."""
    lines = [f"({r.exercise}) {r.title:<26} {r.status:<16} {r.checks_passed}/{r.checks_total}"
             for _, r in sorted(_LATEST.items())]
    return "\n".join(lines) or "No exercise checked yet."


def grade_namespace(namespace: dict, verbose: bool = False) -> dict[str, dict]:
    """Grade every exercise from the functions a notebook defined (``globals()``).

    Prints one line ``CLIP_PACL_GRADES {json}`` for the instructors' grader and returns the same
    dictionary: exercise key -> :meth:`CheckResult.to_dict`.
    """
    results = {key: check_exercise(key, namespace.get(exercise.function_name), verbose)
               for key, exercise in EXERCISES.items()}
    results["e"] = check_experiment(namespace.get("run_experiment"),
                                     namespace.get("EXPERIMENT_ANSWER"), verbose, display=False)
    grades = {key: result.to_dict() for key, result in results.items()}
    print(GRADES_MARKER, json.dumps(grades))
    return grades
