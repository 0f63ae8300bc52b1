"""Instant checks for the "Your turn" cells of notebooks 01-03 (optional, ungraded).

Each ``check_*`` function takes the student's function, runs it on small seeded inputs it builds
itself, compares the answer with the course's own code (``utils.losses``, ``utils.pacl``,
``utils.segmentation``) or a rule computed by hand, and prints one verdict:

- ``PASS``: every input gave the expected answer;
- ``TODO``: the function is still a stub (it raises ``NotImplementedError`` or returns ``None``);
- ``FAIL``: the first input that went wrong, expected versus got in words, and a hint; when the
  answer is exactly what a common mistake gives, the hint names that mistake.

It returns True only for PASS, and never raises: the student's exceptions become a message. Unlike
the assignment's :mod:`utils.course.grading`, nothing is recorded or scored.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from utils.course.grading import compare_float, compare_tensor, tensors_in, where_it_raised
from utils.losses import clip_loss
from utils.pacl import patch_weights
from utils.segmentation import masks_from_scores

# --------------------------------------------------------------------------------------------
# The runner shared by every check
# --------------------------------------------------------------------------------------------

Compare = Callable[[object, object], "str | None"]


@dataclass
class _Case:
    """One input: what it is (for the message), fresh arguments, the expected answer, and what
    common mistakes return on it, each with the hint that explains that mistake."""

    describe: str
    make: Callable[[], tuple]
    expected: object
    mistakes: list[tuple[object, str]] = field(default_factory=list)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _is_placeholder(value: object) -> bool:
    """What an untouched stub returns: None, ``...``, or a tuple of those."""
    if value is None or value is Ellipsis:
        return True
    if isinstance(value, (tuple, list)) and value:
        return all(v is None or v is Ellipsis for v in value)
    return False


def _verdict(title: str, status: str, message: str, hints: Sequence[str] = ()) -> bool:
    lines = [f"{status} · {title}: {message}"]
    if len(hints) == 1:
        lines.append(f"  hint: {hints[0]}")
    elif hints:
        lines.append("  hint, one of:")
        lines += [f"  - {hint}" for hint in hints]
    print("\n".join(lines))
    return status == "PASS"


def _run_check(title: str, student: Callable | None, cases: Sequence[_Case], compare: Compare,
               hint: str, success: str) -> bool:
    """Run ``student`` on every case in order and print one verdict; True only on PASS."""
    if student is None or not callable(student):
        return _verdict(title, "TODO", "define the function in the cell above, then run this check")
    # A mistake that gives a wrong answer on a case the student got right is not theirs: its hint
    # is left out of later verdicts, so a FAIL names only the mistakes still possible.
    ruled_out: set[str] = set()
    for case in cases:
        args = case.make()
        before = [t.clone() for t in tensors_in(args)]
        try:
            got = student(*args)
        except NotImplementedError:
            return _verdict(title, "TODO", "your function still raises NotImplementedError: "
                            "replace that line with your code (skipping is fine: nothing depends "
                            "on it)")
        except Exception as error:  # the student's bug becomes a message, never a traceback
            return _verdict(title, "FAIL", f"{case.describe}, your function raised "
                            f"{type(error).__name__}: {error}{where_it_raised(error)}", [hint])
        if _is_placeholder(got):
            return _verdict(title, "TODO", "your function returned None: fill in its body, and "
                            "make sure it ends with `return`")
        try:
            problem = compare(case.expected, got)
        except Exception as error:  # an answer of a type the comparison cannot read
            problem = f"could not read your answer ({type(error).__name__}: {error})"
        if problem is not None:
            hints = [why for wrong, why in case.mistakes
                     if why not in ruled_out and _quietly_equal(compare, wrong, got)]
            return _verdict(title, "FAIL", f"{case.describe}, {problem}", hints or [hint])
        if any(not torch.equal(b, a) for b, a in zip(before, tensors_in(args), strict=True)):
            return _verdict(title, "FAIL", f"{case.describe}, the answer is right but your "
                            "function changed its inputs in place", ["work on copies (x = x / "
                            "norm, not x /= norm): the caller still needs its tensors"])
        ruled_out.update(why for wrong, why in case.mistakes
                         if not _quietly_equal(compare, wrong, case.expected))
    return _verdict(title, "PASS", success)


def _quietly_equal(compare: Compare, wrong: object, got: object) -> bool:
    try:
        return compare(wrong, got) is None
    except Exception:  # a comparison that cannot read the answer matches no mistake
        return False


# --------------------------------------------------------------------------------------------
# Notebook 01, section 5: the temperature's two limits
# --------------------------------------------------------------------------------------------

def _well_matched_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, 32]`` image and text embeddings (float64) where each image's own text is strictly the
    closest in its row and in its column: every true pair is the best one."""
    images = torch.randn(n, 32, generator=_generator(seed), dtype=torch.float64)
    texts = images + 0.05 * torch.randn(n, 32, generator=_generator(seed + 1), dtype=torch.float64)
    cosines = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    diagonal = torch.arange(n)
    assert (cosines.argmax(0) == diagonal).all() and (cosines.argmax(1) == diagonal).all()
    return images, texts


def _compare_limits(expected: object, got: object) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return (f"expected two numbers, (at_zero, at_infinity), got a {type(got).__name__}"
                + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
    for label, want, have in zip(("as s -> 0", "as s -> infinity"), expected, got, strict=True):
        problem = compare_float(want, have)
        if problem:
            return f"{label}: {problem}"
    return None


def check_temperature_limits(loss_limits: Callable[[int], tuple[float, float]] | None) -> bool:
    """Check ``loss_limits(n) -> (at_zero, at_infinity)``: CLIP's loss of a batch of ``n`` pairs in
    which every image's own caption is its best match (and every caption's own image), as the
    logit scale ``s`` goes to 0 and as it grows without bound. Two Python floats.

    The expected values are :func:`utils.losses.clip_loss` itself on such a batch, at ``s = 0``
    and at ``s = 10_000`` (by then every off-diagonal softmax weight underflows to 0).
    """
    cases = []
    for n in (2, 8, 64):
        images, texts = _well_matched_batch(n, seed=n)
        expected = (clip_loss(images, texts, 0.0).item(), clip_loss(images, texts, 1e4).item())
        ln = math.log(n)
        cases.append(_Case(
            f"for a batch of n = {n} pairs", lambda n=n: (n,), expected, mistakes=[
                ((0.0, ln), "the two are swapped: at s = 0 every logit is 0, whatever the "
                            "embeddings, so each softmax is uniform; as s grows, the true pair's "
                            "lead is multiplied without bound"),
                ((ln / 2, 0.0), "the loss is the *mean* of the two directions, not half of one: "
                                "each direction costs ln n, so their mean is ln n too"),
                ((math.log2(n), 0.0), "cross-entropy uses the natural logarithm (math.log)"),
                ((1 / n, 0.0), "1/n is the probability the uniform softmax gives the right caption; "
                               "the loss is minus the log of that probability"),
                ((ln, ln), "as s grows the softmax of each row puts all its weight on the true "
                           "pair (it has the largest cosine), and -ln(1) = 0"),
                ((ln, math.inf), "the loss grows without bound only when some wrong pair beats a "
                                 "true one; here every true pair is the best in its row and column"),
            ]))
    return _run_check(
        "the temperature's two limits", loss_limits, cases, _compare_limits,
        hint="write out the logits s * cos for s = 0, then think of the softmax of a row whose "
             "largest entry is on the diagonal when s is huge",
        success="at s = 0 the embeddings do not matter and the loss is ln n (a uniform guess); "
                "with a large s only the ranking matters, and a batch ranked right costs nothing. "
                "Training a learnable s moves between the two.")


# --------------------------------------------------------------------------------------------
# Notebook 01, section 10: zero-shot classification from class vectors
# --------------------------------------------------------------------------------------------

def _zero_shot_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """10 images and 4 class vectors of very different lengths (0.2 to 5), so that scoring with
    plain dot products ranks the classes differently from cosines."""
    images = torch.randn(10, 16, generator=_generator(10))
    classes = torch.randn(4, 16, generator=_generator(11))
    classes = classes / classes.norm(dim=-1, keepdim=True) * torch.tensor([[0.2], [5.0], [1.0], [0.5]])
    return images, classes


def _compare_labels(expected: torch.Tensor, got: object) -> str | None:
    # Class indices are integers: accept any integer dtype, name the float case in words.
    if isinstance(got, torch.Tensor) and got.ndim == 2 and got.shape[0] == expected.shape[0]:
        return (f"got a tensor of shape {list(got.shape)}, a score for every class; return only "
                "each image's best class")
    if isinstance(got, torch.Tensor) and got.shape == expected.shape:
        if got.is_floating_point():
            return ("got floating-point numbers; return class indices (what argmax gives, an "
                    "integer tensor), not scores")
        got = got.long()
    return compare_tensor(expected, got)


def check_zero_shot(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> bool:
    """Check ``predict(image_emb [N, D], class_emb [C, D]) -> [N]`` integer tensor: for each image,
    the index of the class whose vector has the largest *cosine* with it. Neither input is
    normalised; the expected answer is the argmax of their cosines (CLIP multiplies the cosines by
    its logit scale first, which changes no argmax)."""
    images, classes = _zero_shot_inputs()
    cosines = F.normalize(images, dim=-1) @ F.normalize(classes, dim=-1).T
    dot = images @ classes.T
    # The check must be able to tell cosines from dot products on these inputs.
    assert not torch.equal(dot.argmax(1), cosines.argmax(1))
    case = _Case("for 10 images and 4 classes", _zero_shot_inputs, cosines.argmax(1), mistakes=[
        (dot.argmax(1), "the scores must be cosines: normalise the class vectors (an image's own "
                        "length scales its whole row and changes nothing, a class vector's "
                        "length favours that class)"),
        (cosines.argmax(0), "take the argmax over the classes (dim=1): one answer per image"),
        (cosines.argmin(1), "the best class has the *largest* cosine"),
    ])
    return _run_check(
        "zero-shot prediction", predict, [case], _compare_labels,
        hint="score = cosine(image, class vector) for every pair ([N, C]), then the best class of "
             "each row",
        success="the class vectors are the weights of a linear classifier that no one trained: "
                "the text encoder wrote them.")


# --------------------------------------------------------------------------------------------
# Notebook 02, section 3: PACL's weights over the patches, and how sharp they can get
# --------------------------------------------------------------------------------------------

def _patches_and_text(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16 patches ``[16, 8]`` and a text ``[8]``, of lengths far from 1 (as embeddings are)."""
    patches = torch.randn(16, 8, generator=_generator(seed))
    patches = patches * torch.linspace(0.3, 4.0, 16)[:, None]
    text = 3.0 * torch.randn(8, generator=_generator(seed + 1))
    return patches, text


def check_patch_weights(weights: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None
                        ) -> bool:
    """Check ``weights(patches [P, D], text [D], temperature) -> [P]``: PACL's weights ``a`` over
    the ``P`` patches of one image for one text, the softmax of the patch-text cosines divided by
    ``temperature``. Expected: :func:`utils.pacl.patch_weights` on the same inputs."""
    cases = []
    for seed, tau in ((20, 1.0), (22, 0.1)):
        patches, text = _patches_and_text(seed)
        cosines = F.normalize(patches, dim=-1) @ F.normalize(text, dim=-1)           # [P]
        dots = patches @ text
        cases.append(_Case(
            f"for 16 patches and temperature {tau}",
            lambda tau=tau, seed=seed: (*_patches_and_text(seed), tau),
            patch_weights(patches[None], text[None], tau)[0, 0], mistakes=[
                ((dots / tau).softmax(0), "use cosines, not dot products: normalise the patches "
                                          "and the text first (F.normalize(..., dim=-1))"),
                ((patches @ F.normalize(text, dim=0) / tau).softmax(0),
                 "normalise the patches too, each one over its D entries (dim=-1)"),
                ((F.normalize(patches, dim=-1) @ text / tau).softmax(0),
                 "normalise the text too"),
                ((cosines * tau).softmax(0), "divide the cosines by the temperature; multiplying "
                                             "makes the softmax flatter, not sharper"),
                (cosines.softmax(0), "the temperature is missing: softmax of cosines / temperature"),
                (cosines / tau, "the weights are the softmax of the scaled cosines; they sum to 1"),
            ]))
    return _run_check(
        "PACL's weights over the patches", weights, cases, compare_tensor,
        hint="cosine of every patch with the text ([P]), divided by the temperature, then a "
             "softmax over the patches (dim 0)",
        success="the patches that look most like the text get the largest weights, and the "
                "temperature decides how much more than the rest.")


def check_weight_ratio(largest_ratio: Callable[[float], float] | None) -> bool:
    """Check ``largest_ratio(temperature) -> float``: the largest possible ratio between two
    patches' weights in PACL's softmax over ``cos / temperature``, whatever the embeddings.

    Expected: :func:`utils.pacl.patch_weights` on the extreme case, one patch equal to the text
    (cosine 1) and one opposite to it (cosine -1), in float64: ``exp(2 / temperature)``.
    """
    cases = []
    for tau in (1.0, 0.5, 0.1):
        text = torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
        weights = patch_weights(torch.cat([text, -text])[None], text, tau)[0, 0]    # [2]
        cases.append(_Case(f"for temperature {tau}", lambda tau=tau: (tau,),
                           (weights[0] / weights[1]).item(), mistakes=[
            (math.exp(2.0), "the temperature is missing: the cosines are divided by it before "
                            "the softmax"),
            (math.exp(1 / tau), "cosines range over [-1, 1], so two of them can differ by 2, not 1"),
            (math.exp(2 * tau), "the cosines are *divided* by the temperature"),
            (2 / tau, "the softmax exponentiates: weight_i is proportional to exp(s_i / temperature)"),
            (math.exp(2 / tau) / 2, "the ratio of two softmax weights is exp of the difference of "
                                    "their scaled scores: the normalising sum cancels"),
        ]))
    return _run_check(
        "how sharp the softmax over patches can be", largest_ratio, cases, compare_float,
        hint="weight_i / weight_j = exp((s_i - s_j) / temperature); how far apart can two cosines be?",
        success="with plain cosines (temperature 1) no patch can outweigh another by more than "
                "e^2 = 7.4, so the pooled vector stays close to the average patch; at 0.1 the "
                "factor can reach e^20.")


# --------------------------------------------------------------------------------------------
# Notebook 03, section 2: a prompt ensemble, and the entropy rule for background
# --------------------------------------------------------------------------------------------

def _prompt_vectors(num_prompts: int, seed: int) -> tuple[torch.Tensor]:
    """``[num_prompts, 16]`` embeddings of one class's prompts, of lengths 0.1 to 10 (so that the
    plain mean is led by the longest, and differs from the mean of the unit vectors)."""
    emb = torch.randn(num_prompts, 16, generator=_generator(seed))
    return (emb * torch.logspace(-1, 1, num_prompts)[:, None],)


def check_prompt_ensemble(ensemble: Callable[[torch.Tensor], torch.Tensor] | None) -> bool:
    """Check ``ensemble(prompt_emb [T, D]) -> [D]``: one class's vector from the embeddings of its
    ``T`` prompts, each normalised to unit length, averaged, and the mean normalised again (the
    rule of :func:`utils.segmentation.class_embeddings`, computed here by hand)."""
    cases = []
    for num_prompts, seed in ((5, 30), (8, 31), (1, 32)):
        (emb,) = _prompt_vectors(num_prompts, seed)
        unit = F.normalize(emb, dim=-1)
        cases.append(_Case(
            f"for {num_prompts} prompt{'s' if num_prompts > 1 else ''} of one class",
            lambda n=num_prompts, seed=seed: _prompt_vectors(n, seed),
            F.normalize(unit.mean(0), dim=0), mistakes=[
                (F.normalize(emb.mean(0), dim=0), "normalise each prompt's vector before "
                 "averaging: otherwise the longest vector decides the class vector"),
                (unit.mean(0), "normalise the mean again: an average of unit vectors is shorter "
                               "than 1, and cosines need unit length"),
                (emb.mean(0), "both normalisations are missing: each prompt's vector before the "
                              "mean, and the mean itself"),
                (F.normalize(unit.sum(0), dim=0) * num_prompts, "the class vector must have "
                                                                 "length 1"),
            ]))
    return _run_check(
        "a prompt ensemble", ensemble, cases, compare_tensor,
        hint="F.normalize(prompt_emb, dim=-1), then .mean(0) over the prompts, then normalise "
             "the mean (a [D] vector, dim=0)",
        success="every template now counts the same, however long its embedding came out; the "
                "average keeps what the prompts agree on, the class.")


def _pixel(cosines: Sequence[float], logit_scale: float, threshold: float
           ) -> Callable[[], tuple]:
    return lambda: (torch.tensor(cosines), logit_scale, threshold)


def _compare_label(expected: int, got: object) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = int(got.item())               # a 0-dim integer tensor is an int too
    if isinstance(got, bool) or not isinstance(got, numbers.Integral):
        return f"expected an int label ({expected}), got a {type(got).__name__} {got!r}"
    if int(got) == expected:
        return None
    return f"expected label {expected}, got {int(got)}"


def check_entropy_rule(pixel_label: Callable[[torch.Tensor, float, float], int] | None) -> bool:
    """Check ``pixel_label(cosines [C], logit_scale, threshold) -> int``: the entropy rule for one
    pixel. 0 (background) where the normalised entropy of ``softmax(logit_scale * cosines)`` is
    above ``threshold``, else ``c + 1`` for the best class ``c``. Expected:
    :func:`utils.segmentation.masks_from_scores` on a ``[1, C, 1, 1]`` score map."""
    pixels = [
        # In this order each common mistake is the only one left when its first wrong label shows.
        ("for a pixel where no class stands out", [0.20, 0.21, 0.19, 0.20], 50.0, 0.5),
        ("for a pixel where class 2 clearly leads", [0.02, 0.05, 0.30, 0.00], 50.0, 0.5),
        ("for a pixel just below the threshold", [0.02, 0.32, 0.02, 0.02], 10.0, 0.45),
    ]
    cases = []
    for describe, cosines, scale, threshold in pixels:
        scores = torch.tensor(cosines)
        expected = int(masks_from_scores(scores.view(1, -1, 1, 1), scale, "entropy", threshold))
        best = int(scores.argmax()) + 1

        def rule(entropy: float, background_if_above: bool = True, best: int = best,
                 threshold: float = threshold) -> int:
            # What a variant of the rule labels this pixel, given the entropy it computed.
            return 0 if (entropy > threshold) == background_if_above else best

        probabilities = (scale * scores).softmax(0)
        entropy = -(probabilities * probabilities.log()).sum().item()
        plain = (-(scores.softmax(0) * scores.softmax(0).log()).sum() / math.log(len(cosines))).item()
        normalised = entropy / math.log(len(cosines))
        cases.append(_Case(describe, _pixel(cosines, scale, threshold), expected, mistakes=[
            (rule(normalised, background_if_above=False), "background goes where the entropy is "
             "*above* the threshold (the classes are unsure), not below"),
            (rule(plain), "multiply the cosines by the logit scale before the softmax: cosines "
                          "are close together, and their plain softmax is nearly uniform"),
            (rule(entropy), "divide the entropy by ln C, its largest value, so that it lies in "
                            "[0, 1] like the threshold"),
            (0 if normalised > threshold else best - 1, "label c + 1 for class c: label 0 is the "
                                                        "background"),
        ]))
    return _run_check(
        "the entropy rule for background", pixel_label, cases, _compare_label,
        hint="p = softmax(logit_scale * cosines); entropy = -sum(p * ln p) / ln C; background (0) "
             "if it is above the threshold, else argmax + 1",
        success="a pixel is background when the classes cannot decide between each other there; "
                "note the rule never asks whether any class matches well.")
