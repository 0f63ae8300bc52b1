"""utils.course.practice: each check passes the right answer, fails realistic wrong ones with the
mistake named, says TODO for an untouched stub, and turns the student's exception into a message."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils.course import practice
from utils.losses import clip_loss

# --------------------------------------------------------------------------------------------
# Answers: the right one first, then what students get wrong
# --------------------------------------------------------------------------------------------


def limits(n):
    return math.log(n), 0.0


def zero_shot(image_emb, class_emb):
    return (F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).T).argmax(1)


def weights(patches, text, temperature):
    cosines = F.normalize(patches, dim=-1) @ F.normalize(text, dim=0)
    return (cosines / temperature).softmax(0)


def ratio(temperature):
    return math.exp(2 / temperature)


def ensemble(prompt_emb):
    return F.normalize(F.normalize(prompt_emb, dim=-1).mean(0), dim=0)


def _entropy_label(cosines, logit_scale, threshold, scale=True, by_ln_c=True, above=True, shift=1):
    p = ((logit_scale if scale else 1.0) * cosines).softmax(0)
    entropy = -(p * p.log()).sum().item() / (math.log(len(cosines)) if by_ln_c else 1.0)
    return 0 if (entropy > threshold) == above else int(cosines.argmax()) + shift


def label(cosines, logit_scale, threshold):
    return _entropy_label(cosines, logit_scale, threshold)


RIGHT = {
    practice.check_temperature_limits: limits,
    practice.check_zero_shot: zero_shot,
    practice.check_patch_weights: weights,
    practice.check_weight_ratio: ratio,
    practice.check_prompt_ensemble: ensemble,
    practice.check_entropy_rule: label,
}
CHECKS = list(RIGHT)


def _ids(check) -> str:
    return check.__name__


def _in_place_weights(patches, text, temperature):
    patches /= patches.norm(dim=-1, keepdim=True)        # right value, but the caller's tensor changed
    return (patches @ F.normalize(text, dim=0) / temperature).softmax(0)


# (check, wrong answer, a phrase its message or hint must hold)
WRONG = [
    (practice.check_temperature_limits, lambda n: (0.0, math.log(n)), "swapped"),
    (practice.check_temperature_limits, lambda n: (math.log(n) / 2, 0.0), "*mean* of the two"),
    (practice.check_temperature_limits, lambda n: (math.log2(n), 0.0), "natural logarithm"),
    (practice.check_temperature_limits, lambda n: (1 / n, 0.0), "minus the log"),
    (practice.check_temperature_limits, lambda n: (math.log(n), math.log(n)), "-ln(1) = 0"),
    (practice.check_temperature_limits, lambda n: (math.log(n), math.inf), "without bound only"),
    (practice.check_temperature_limits, lambda n: math.log(n), "expected two numbers"),
    (practice.check_temperature_limits, lambda n: (torch.tensor(math.log(n)), 0.0), ".item()"),
    (practice.check_zero_shot, lambda i, c: (i @ c.T).argmax(1), "normalise the class vectors"),
    (practice.check_zero_shot, lambda i, c: (F.normalize(i, dim=-1) @ F.normalize(c, dim=-1).T)
     .argmax(0), "dim=1"),
    (practice.check_zero_shot, lambda i, c: (i @ F.normalize(c, dim=-1).T).softmax(1),
     "a score for every class"),
    (practice.check_zero_shot, lambda i, c: zero_shot(i, c).float(), "class indices"),
    (practice.check_zero_shot, lambda i, c: (F.normalize(i, dim=-1) @ F.normalize(c, dim=-1).T)
     .argmin(1), "*largest* cosine"),
    (practice.check_patch_weights, lambda p, t, tau: (p @ t / tau).softmax(0), "not dot products"),
    (practice.check_patch_weights, lambda p, t, tau: (p @ F.normalize(t, dim=0) / tau).softmax(0),
     "normalise the patches too"),
    (practice.check_patch_weights, lambda p, t, tau: weights(p, t, 1 / tau), "multiplying"),
    (practice.check_patch_weights, lambda p, t, tau: weights(p, t, 1.0), "temperature is missing"),
    (practice.check_patch_weights, lambda p, t, tau: F.normalize(p, dim=-1) @ F.normalize(t, dim=0)
     / tau, "sum to 1"),
    (practice.check_patch_weights, lambda p, t, tau: weights(p, t, tau).double(), "dtype"),
    (practice.check_patch_weights, _in_place_weights, "changed its inputs in place"),
    (practice.check_weight_ratio, lambda tau: math.exp(2), "temperature is missing"),
    (practice.check_weight_ratio, lambda tau: math.exp(1 / tau), "differ by 2, not 1"),
    (practice.check_weight_ratio, lambda tau: math.exp(2 * tau), "*divided*"),
    (practice.check_weight_ratio, lambda tau: 2 / tau, "exponentiates"),
    (practice.check_prompt_ensemble, lambda e: F.normalize(e.mean(0), dim=0), "before averaging"),
    (practice.check_prompt_ensemble, lambda e: F.normalize(e, dim=-1).mean(0), "normalise the mean"),
    (practice.check_prompt_ensemble, lambda e: e.mean(0), "both normalisations"),
    (practice.check_prompt_ensemble, lambda e: F.normalize(F.normalize(e, dim=-1).mean(-1), dim=0),
     "expected shape [16]"),
    (practice.check_entropy_rule, lambda c, s, t: _entropy_label(c, s, t, above=False), "*above*"),
    (practice.check_entropy_rule, lambda c, s, t: _entropy_label(c, s, t, scale=False),
     "multiply the cosines by the logit scale"),
    (practice.check_entropy_rule, lambda c, s, t: _entropy_label(c, s, t, by_ln_c=False),
     "divide the entropy by ln C"),
    (practice.check_entropy_rule, lambda c, s, t: _entropy_label(c, s, t, shift=0), "c + 1"),
    (practice.check_entropy_rule, lambda c, s, t: float(_entropy_label(c, s, t)), "an int label"),
]


# --------------------------------------------------------------------------------------------
# The four outcomes
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("check", CHECKS, ids=_ids)
def test_the_right_answer_passes(check, capsys):
    assert check(RIGHT[check]) is True
    out = capsys.readouterr().out
    assert out.startswith("PASS · ") and out.count("\n") == 1, out


@pytest.mark.parametrize(("check", "answer", "phrase"), WRONG,
                         ids=[f"{check.__name__}-{i}" for i, (check, _, _) in enumerate(WRONG)])
def test_a_wrong_answer_fails_and_says_why(check, answer, phrase, capsys):
    assert check(answer) is False
    out = capsys.readouterr().out
    assert out.startswith("FAIL · "), out
    assert phrase in out, out
    assert "hint" in out, out


def test_a_mistake_that_an_earlier_input_ruled_out_is_not_suggested(capsys):
    # Forgetting the logit scale passes the undecided pixel (background either way) and fails the
    # clear one, where an inverted rule would give the same 0; the inverted rule already failed the
    # first pixel, so only the scale is named.
    practice.check_entropy_rule(lambda c, s, t: _entropy_label(c, s, t, scale=False))
    out = capsys.readouterr().out
    assert "logit scale" in out and "*above*" not in out and "one of" not in out, out


@pytest.mark.parametrize("check", CHECKS, ids=_ids)
def test_a_stub_prints_todo_and_does_not_raise(check, capsys):
    def stub(*args):
        raise NotImplementedError  # your code here

    assert check(stub) is False
    assert capsys.readouterr().out.startswith("TODO · ")


@pytest.mark.parametrize("check", CHECKS, ids=_ids)
@pytest.mark.parametrize("placeholder", [None, "returns None", "returns ..."])
def test_a_placeholder_prints_todo(check, placeholder, capsys):
    student = {None: None, "returns None": lambda *args: None,
               "returns ...": lambda *args: ...}[placeholder]
    assert check(student) is False
    assert capsys.readouterr().out.startswith("TODO · ")


@pytest.mark.parametrize("check", CHECKS, ids=_ids)
def test_the_students_exception_is_reported_not_raised(check, capsys):
    def broken(*args):
        return {}["no such key"]

    assert check(broken) is False
    out = capsys.readouterr().out
    assert out.startswith("FAIL · ") and "KeyError" in out, out
    assert "return {}[\"no such key\"]" in out, out   # the student's own line, not ours
    assert "Traceback" not in out


def test_limits_pair_of_nones_is_still_a_stub(capsys):
    assert practice.check_temperature_limits(lambda n: (None, None)) is False
    assert capsys.readouterr().out.startswith("TODO · ")


# --------------------------------------------------------------------------------------------
# The inputs can tell the mistakes apart
# --------------------------------------------------------------------------------------------

def test_zero_shot_inputs_rank_classes_differently_by_dot_product_and_cosine():
    images, classes = practice._zero_shot_inputs()
    cosine = (F.normalize(images, dim=-1) @ F.normalize(classes, dim=-1).T).argmax(1)
    assert not torch.equal((images @ classes.T).argmax(1), cosine)


def test_the_expected_limits_are_ln_n_and_zero():
    for n in (2, 8, 64):
        images, texts = practice._well_matched_batch(n, seed=n)
        assert clip_loss(images, texts, 0.0).item() == pytest.approx(math.log(n), abs=1e-12)
        assert clip_loss(images, texts, 1e4).item() == pytest.approx(0.0, abs=1e-12)
