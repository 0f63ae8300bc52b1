"""utils.course.grading and utils.course.exercises: the checks accept correct answers written
independently and reject realistic wrong ones (mutation tests), each with a message instead of a
traceback; the course's own functions score 0; the grader judges saved answers, not the kernel's
word."""

from __future__ import annotations

import functools
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.course import exercises, grading  # noqa: E402
from utils.course.exercises import EXERCISES  # noqa: E402
from utils.course.grading import check_exercise, check_experiment  # noqa: E402

# --------------------------------------------------------------------------------------------
# (a) CLIP's loss with several positives: a correct answer written here, and wrong ones
# --------------------------------------------------------------------------------------------


def _logits(image_emb, text_emb, logit_scale):
    return logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def _soft_loss(log_probs, targets):
    """Mean over rows of -sum_j targets[i, j] * log_probs[i, j]."""
    return -(targets * log_probs).sum(1).mean()


def loss_written_row_by_row(image_emb, text_emb, logit_scale, positives):
    logits = _logits(image_emb, text_emb, logit_scale)
    rows = [-(logits[i].log_softmax(0)[positives[i]]).mean() for i in range(len(logits))]
    columns = [-(logits[:, j].log_softmax(0)[positives[:, j]]).mean() for j in range(len(logits))]
    return (torch.stack(rows).mean() + torch.stack(columns).mean()) / 2


def _loss(image_emb, text_emb, logit_scale, positives, row_targets=None, column_targets=None,
          logits=None):
    logits = _logits(image_emb, text_emb, logit_scale) if logits is None else logits
    p = positives.to(logits.dtype)
    rows = p / p.sum(1, keepdim=True) if row_targets is None else row_targets
    columns = (p / p.sum(0, keepdim=True)).T if column_targets is None else column_targets
    return (_soft_loss(logits.log_softmax(1), rows) + _soft_loss(logits.T.log_softmax(1), columns)) / 2


def loss_diagonal_only(image_emb, text_emb, logit_scale, positives):
    eye = torch.eye(len(positives), dtype=torch.bool)
    return _loss(image_emb, text_emb, logit_scale, eye)


def loss_targets_not_spread(image_emb, text_emb, logit_scale, positives):
    p = positives.to(image_emb.dtype)                   # 1 on every positive: sums, not means
    return _loss(image_emb, text_emb, logit_scale, positives, p, p.T)


def loss_rows_counts_for_columns(image_emb, text_emb, logit_scale, positives):
    p = positives.to(image_emb.dtype)
    return _loss(image_emb, text_emb, logit_scale, positives, column_targets=(p / p.sum(1, keepdim=True)).T)


def loss_log_of_summed_probabilities(image_emb, text_emb, logit_scale, positives):
    logits = _logits(image_emb, text_emb, logit_scale)
    rows = -(logits.softmax(1) * positives).sum(1).log().mean()
    columns = -(logits.softmax(0) * positives).sum(0).log().mean()
    return (rows + columns) / 2


def loss_one_direction(image_emb, text_emb, logit_scale, positives):
    p = positives.to(image_emb.dtype)
    return _soft_loss(_logits(image_emb, text_emb, logit_scale).log_softmax(1), p / p.sum(1, keepdim=True))


def loss_without_normalisation(image_emb, text_emb, logit_scale, positives):
    return _loss(image_emb, text_emb, logit_scale, positives,
                 logits=logit_scale * image_emb @ text_emb.T)


def loss_without_logit_scale(image_emb, text_emb, logit_scale, positives):
    return _loss(image_emb, text_emb, 1.0, positives)


def loss_naive_exp(image_emb, text_emb, logit_scale, positives):
    logits = _logits(image_emb, text_emb, logit_scale)
    p = positives.to(logits.dtype)
    rows = (logits.exp() / logits.exp().sum(1, keepdim=True)).log()
    columns = (logits.exp() / logits.exp().sum(0, keepdim=True)).log()
    return -((p / p.sum(1, keepdim=True) * rows).sum(1).mean()
             + (p / p.sum(0, keepdim=True) * columns).sum(0).mean()) / 2


def loss_sum_instead_of_mean(image_emb, text_emb, logit_scale, positives):
    return _loss(image_emb, text_emb, logit_scale, positives) * len(positives)


def loss_as_python_float(image_emb, text_emb, logit_scale, positives):
    return _loss(image_emb, text_emb, logit_scale, positives).item()


def loss_targets_in_float32(image_emb, text_emb, logit_scale, positives):
    logits = _logits(image_emb, text_emb, logit_scale)
    p = positives.float()
    return ((-(p / p.sum(1, keepdim=True)) * logits.log_softmax(1).float()).sum(1).mean()
            + (-(p / p.sum(0, keepdim=True)) * logits.log_softmax(0).float()).sum(0).mean()) / 2


def loss_detached(image_emb, text_emb, logit_scale, positives):
    return _loss(image_emb.detach(), text_emb.detach(), logit_scale, positives)


def loss_normalising_in_place(image_emb, text_emb, logit_scale, positives):
    with torch.no_grad():
        image_emb /= image_emb.norm(dim=-1, keepdim=True)
    return _loss(image_emb, text_emb, logit_scale, positives)


# --------------------------------------------------------------------------------------------
# (b) recall@K (unchanged from the first version of the assignment)
# --------------------------------------------------------------------------------------------

def _hits(similarity, is_positive, k):
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return is_positive.gather(1, top).any(1).float().mean().item()


def _positives(similarity, text_to_image):
    return text_to_image[None, :] == torch.arange(similarity.shape[0])[:, None]


def recall_reference_like(similarity, text_to_image, k):
    return _hits(similarity, _positives(similarity, text_to_image), k)


def recall_top_k_minus_one(similarity, text_to_image, k):
    return _hits(similarity, _positives(similarity, text_to_image), k - 1)


def recall_top_k_plus_one(similarity, text_to_image, k):
    return _hits(similarity, _positives(similarity, text_to_image), k + 1)


def recall_first_caption_only(similarity, text_to_image, k):
    positives = torch.zeros_like(_positives(similarity, text_to_image))
    for image in range(similarity.shape[0]):
        positives[image, (text_to_image == image).nonzero()[0]] = True
    return _hits(similarity, positives, k)


def recall_assuming_five_contiguous(similarity, text_to_image, k):
    per_image = similarity.shape[1] // similarity.shape[0]
    grouped = torch.arange(similarity.shape[0]).repeat_interleave(per_image)
    return _hits(similarity, _positives(similarity, grouped), k)


def recall_without_capping_k(similarity, text_to_image, k):
    top = similarity.topk(k, dim=1).indices
    return _positives(similarity, text_to_image).gather(1, top).any(1).float().mean().item()


def recall_as_tensor(similarity, text_to_image, k):
    return torch.tensor(recall_reference_like(similarity, text_to_image, k))


# --------------------------------------------------------------------------------------------
# (c) PACL's compatibility with padded patches
# --------------------------------------------------------------------------------------------

def _pacl(patch_emb, text_emb, patch_mask, masking="-inf", softmax_dim=-1, pool="softmax",
          renormalise_patches=False, final_cosine=True):
    patches, texts = F.normalize(patch_emb, dim=-1), F.normalize(text_emb, dim=-1)
    scores = torch.einsum("bpd,td->btp", patches, texts)
    padding = ~patch_mask[:, None, :]
    if masking == "-inf":
        scores = scores.masked_fill(padding, -math.inf)
    elif masking == "zero":
        scores = scores.masked_fill(padding, 0.0)
    weights = scores.softmax(dim=softmax_dim)
    if masking == "renormalise":         # softmax over all, then drop the padding's share
        weights = weights * patch_mask[:, None, :]
        weights = weights / weights.sum(-1, keepdim=True)
    if masking == "multiply":            # drop the padding's share without renormalising:
        weights = weights * patch_mask[:, None, :]   # right too, the final cosine ignores scale
    if pool == "mean":
        weights = patch_mask[:, None, :].to(scores.dtype).expand_as(scores)
        weights = weights / weights.sum(-1, keepdim=True)
    pooled = torch.einsum("btp,bpd->btd", weights, patches if renormalise_patches else patch_emb)
    if final_cosine:
        return torch.einsum("btd,td->bt", F.normalize(pooled, dim=-1), texts)
    return torch.einsum("btd,td->bt", pooled, texts)


def pacl_renormalising_after_the_softmax(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, masking="renormalise")


def pacl_loop_over_real_patches(patch_emb, text_emb, patch_mask):
    rows = []
    for patches, keep in zip(patch_emb, patch_mask, strict=True):
        real = patches[keep]                                            # [P_b, D]
        weights = (F.normalize(real, dim=-1) @ F.normalize(text_emb, dim=-1).T).softmax(0)
        rows.append(F.cosine_similarity(weights.T @ real, text_emb, dim=-1))
    return torch.stack(rows)


def pacl_no_mask(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, masking="none")


def pacl_padding_scored_zero(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, masking="zero")


def pacl_padding_weights_dropped_not_renormalised(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, masking="multiply")


def pacl_first_real_patches_assumed(patch_emb, text_emb, patch_mask):
    counts = patch_mask.sum(1)
    first = torch.arange(patch_mask.shape[1])[None, :] < counts[:, None]
    return _pacl(patch_emb, text_emb, first)


def pacl_softmax_over_texts(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, softmax_dim=1)


def pacl_mean_pooling(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, pool="mean")


def pacl_renormalised_patches(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, renormalise_patches=True)


def pacl_dot_product_at_the_end(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask, final_cosine=False)


def pacl_squeezed(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask).squeeze()


def pacl_transposed(patch_emb, text_emb, patch_mask):
    return _pacl(patch_emb, text_emb, patch_mask).T


# --------------------------------------------------------------------------------------------
# (d) mIoU under the VOC-20 rule
# --------------------------------------------------------------------------------------------

def _miou(pred, target, classes, ignore=(), per_image=False, absent_count=False):
    """mIoU of integer maps over ``classes``, leaving out target pixels whose value is in
    ``ignore``; pooled over the batch unless ``per_image``."""
    if per_image and pred.ndim == 3:
        return float(np.mean([_miou(p, t, classes, ignore) for p, t in zip(pred, target, strict=True)]))
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = torch.ones_like(target, dtype=torch.bool)
    for value in ignore:
        keep &= target != value
    pred, target = pred[keep], target[keep]
    ious = []
    for c in classes:
        union = ((pred == c) | (target == c)).sum().item()
        if union or absent_count:
            ious.append(((pred == c) & (target == c)).sum().item() / max(union, 1))
    return sum(ious) / len(ious)


def _objects(scores):
    return scores[:, 1:].argmax(1) + 1


def voc20_written_with_a_confusion_matrix(scores, target, ignore_index=255):
    num = scores.shape[1]
    pred, target = _objects(scores).flatten(), target.flatten().long()
    keep = (target > 0) & (target != ignore_index)
    confusion = torch.bincount(target[keep] * num + pred[keep], minlength=num * num).reshape(num, num)
    inter = confusion.diag().double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return (inter[union > 0] / union[union > 0]).mean().item()


def voc20_predicting_background(scores, target, ignore_index=255):
    return _miou(scores.argmax(1), target, range(scores.shape[1]), (0, ignore_index))


def voc20_classes_off_by_one(scores, target, ignore_index=255):
    return _miou(scores[:, 1:].argmax(1), target, range(scores.shape[1]), (0, ignore_index))


def voc20_counting_background_pixels(scores, target, ignore_index=255):
    return _miou(_objects(scores), target, range(scores.shape[1]), (ignore_index,))


def voc20_dropping_pixels_predicted_background(scores, target, ignore_index=255):
    pred = scores.argmax(1)
    target = target.long().masked_fill(pred == 0, ignore_index)
    return _miou(pred, target, range(1, scores.shape[1]), (0, ignore_index))


def voc20_not_ignoring(scores, target, ignore_index=255):
    return _miou(_objects(scores), target, range(1, scores.shape[1]) , (0,))


def voc20_hard_coded_255(scores, target, ignore_index=255):
    return _miou(_objects(scores), target, range(1, scores.shape[1]), (0, 255))


def voc20_over_absent_classes(scores, target, ignore_index=255):
    return _miou(_objects(scores), target, range(1, scores.shape[1]), (0, ignore_index),
                 absent_count=True)


def voc20_per_image_average(scores, target, ignore_index=255):
    return _miou(_objects(scores), target, range(1, scores.shape[1]), (0, ignore_index),
                 per_image=True)


def voc20_with_view(scores, target, ignore_index=255):
    return _miou(scores[:, 1:].view(len(scores), scores.shape[1] - 1, -1).argmax(1) + 1,
                 target.view(len(target), -1), range(1, scores.shape[1]), (0, ignore_index))


def voc20_as_tensor(scores, target, ignore_index=255):
    return torch.tensor(voc20_written_with_a_confusion_matrix(scores, target, ignore_index))


# --------------------------------------------------------------------------------------------
# Mutation tests: every independent correct answer passes, every wrong one fails with a reason
# --------------------------------------------------------------------------------------------

CORRECT_ANSWERS = [
    ("a", loss_written_row_by_row), ("b", recall_reference_like),
    ("c", pacl_renormalising_after_the_softmax), ("c", pacl_loop_over_real_patches),
    ("c", pacl_padding_weights_dropped_not_renormalised),
    ("d", voc20_written_with_a_confusion_matrix),
]

WRONG_ANSWERS = [
    ("a", loss_diagonal_only), ("a", loss_targets_not_spread), ("a", loss_rows_counts_for_columns),
    ("a", loss_log_of_summed_probabilities), ("a", loss_one_direction),
    ("a", loss_without_normalisation), ("a", loss_without_logit_scale), ("a", loss_naive_exp),
    ("a", loss_sum_instead_of_mean), ("a", loss_as_python_float), ("a", loss_targets_in_float32),
    ("a", loss_detached), ("a", loss_normalising_in_place),
    ("b", recall_top_k_minus_one), ("b", recall_top_k_plus_one), ("b", recall_first_caption_only),
    ("b", recall_assuming_five_contiguous), ("b", recall_without_capping_k), ("b", recall_as_tensor),
    ("c", pacl_no_mask), ("c", pacl_padding_scored_zero),
    ("c", pacl_first_real_patches_assumed),
    ("c", pacl_softmax_over_texts), ("c", pacl_mean_pooling), ("c", pacl_renormalised_patches),
    ("c", pacl_dot_product_at_the_end), ("c", pacl_squeezed), ("c", pacl_transposed),
    ("d", voc20_predicting_background), ("d", voc20_classes_off_by_one),
    ("d", voc20_counting_background_pixels), ("d", voc20_dropping_pixels_predicted_background),
    ("d", voc20_not_ignoring), ("d", voc20_hard_coded_255), ("d", voc20_over_absent_classes),
    ("d", voc20_per_image_average), ("d", voc20_with_view), ("d", voc20_as_tensor),
]


@pytest.mark.parametrize(("key", "correct"), CORRECT_ANSWERS,
                         ids=[f"{key}-{fn.__name__}" for key, fn in CORRECT_ANSWERS])
def test_a_correct_answer_written_independently_passes(key: str, correct) -> None:
    result = check_exercise(key, correct, verbose=False)
    assert result.passed, result.report()
    assert result.score == 1.0


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_the_references_agree_with_the_independent_answers(key: str) -> None:
    # The references live in the course's package, so check_exercise refuses them as borrowed;
    # compared directly, they give what the independent answers give.
    exercise = EXERCISES[key]
    correct = next(fn for k, fn in CORRECT_ANSWERS if k == key)
    for case in exercise.cases:
        expected = exercise.reference(*case.make(), **case.kwargs)
        got = correct(*case.make(), **case.kwargs)
        assert grading.COMPARE[exercise.answer_kind](expected, got) is None, case.name


@pytest.mark.parametrize(("key", "wrong"), WRONG_ANSWERS,
                         ids=[f"{key}-{fn.__name__}" for key, fn in WRONG_ANSWERS])
def test_a_wrong_answer_is_rejected_with_an_explanation(key: str, wrong, capsys) -> None:
    result = check_exercise(key, wrong)
    printed = capsys.readouterr().out
    assert result.status == "failed"
    assert result.checks_passed < result.checks_total
    assert printed.startswith("FAIL") and "First mismatch, on input" in printed and "Hint:" in printed


def test_messages_name_the_input_and_both_values() -> None:
    result = check_exercise("a", loss_diagonal_only, verbose=False)
    assert 'on input "pairs 0-1, 2-4 and 5 show the same image' in result.message
    assert "expected" in result.message and "got" in result.message


def test_a_crashing_function_gets_a_message_naming_the_line() -> None:
    def crashes(image_emb, text_emb, logit_scale, positives):
        return image_emb @ text_emb          # [N, D] @ [N, D]: a shape error

    result = check_exercise("a", crashes, verbose=False)
    assert result.status == "failed" and result.checks_passed == 0
    assert "raised RuntimeError" in result.message and "return image_emb @ text_emb" in result.message


def test_an_error_inside_torch_is_traced_back_to_the_students_line() -> None:
    def wrong_targets(image_emb, text_emb, logit_scale, positives):
        logits = _logits(image_emb, text_emb, logit_scale)
        return F.cross_entropy(logits, torch.ones(len(logits)))   # float targets of the wrong kind

    message = check_exercise("a", wrong_targets, verbose=False).message
    assert "raised in wrong_targets" in message and "F.cross_entropy(logits" in message


def test_returning_none_is_explained() -> None:
    def forgets_return(patch_emb, text_emb, patch_mask):
        _pacl(patch_emb, text_emb, patch_mask)

    assert "forget to `return`" in check_exercise("c", forgets_return, verbose=False).message


def test_a_stub_is_reported_as_not_implemented(capsys) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError

    result = check_exercise("d", stub)
    assert result.status == "not implemented" and result.score == 0.0
    assert capsys.readouterr().out.startswith("TODO")


def test_a_missing_function_is_reported() -> None:
    result = check_exercise("b", None, verbose=False)
    assert result.status == "missing" and "image_to_text_recall" in result.message


# --------------------------------------------------------------------------------------------
# Borrowed answers score 0
# --------------------------------------------------------------------------------------------

def _wrapper_of_the_course_loss(image_emb, text_emb, logit_scale, positives):
    from utils.losses import clip_loss

    return clip_loss(image_emb, text_emb, logit_scale, positives)


def _wrapper_of_the_graders_reference(patch_emb, text_emb, patch_mask):
    return exercises.reference_masked_compatibility(patch_emb, text_emb, patch_mask)


def _wrapper_of_the_course_metric(scores, target, ignore_index=255):
    from utils.metrics import mean_iou

    target = target.long().masked_fill(target == 0, ignore_index)
    return mean_iou(_objects(scores), target, scores.shape[1], ignore_index)["mIoU"]


def _helper_calling_the_course(logits, positives):
    from utils.losses import contrastive_loss_from_logits

    return contrastive_loss_from_logits(logits, positives)


def _own_looking_function_with_a_borrowing_helper(image_emb, text_emb, logit_scale, positives):
    return _helper_calling_the_course(_logits(image_emb, text_emb, logit_scale), positives)


BORROWED = [
    ("a", EXERCISES["a"].reference, "is the course's own utils.losses.clip_loss"),
    ("c", exercises.reference_masked_compatibility, "is the course's own"),
    ("d", exercises.reference_voc20_mean_iou, "is the course's own"),
    ("a", functools.partial(EXERCISES["a"].reference), "not a function defined with `def`"),
    ("a", _wrapper_of_the_course_loss, "calls the course's utils.losses"),
    ("a", _own_looking_function_with_a_borrowing_helper, "calls the course's utils.losses"),
    ("c", _wrapper_of_the_graders_reference, "calls the course's utils.course.exercises"),
    ("d", _wrapper_of_the_course_metric, "calls the course's utils.metrics"),
    ("b", lambda s, t, k: exercises.reference_image_to_text_recall(s, t, k), "calls the course's"),
]


@pytest.mark.parametrize(("key", "borrowed", "why"), BORROWED)
def test_the_courses_own_code_scores_zero_with_the_reason(key: str, borrowed, why: str,
                                                          capsys) -> None:
    result = check_exercise(key, borrowed)
    assert result.status == "not own code" and result.score == 0.0
    assert why in result.message
    assert capsys.readouterr().out.startswith("FAIL")


# --------------------------------------------------------------------------------------------
# The grader's half: answers saved as data, judged elsewhere
# --------------------------------------------------------------------------------------------

def _labelled_plot() -> plt.Figure:
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 1, 2])
    ax.set(xlabel="logit scale", ylabel="loss")
    return fig


PARAGRAPH = " ".join(["word"] * exercises.MIN_ANSWER_WORDS)


def test_saved_answers_are_judged_like_the_notebook_judges_them(tmp_path) -> None:
    namespace = {"clip_loss": loss_written_row_by_row, "pacl_compatibility": pacl_transposed,
                 "voc20_mean_iou": EXERCISES["d"].reference,
                 "run_experiment": _labelled_plot, "EXPERIMENT_ANSWER": PARAGRAPH}
    grading.save_answers(namespace, grading.GRADED_KEYS, tmp_path, "token")
    results = grading.grade_saved_answers(tmp_path, "token")
    assert {k: r.status for k, r in results.items()} == {
        "a": "passed", "b": "missing", "c": "failed", "d": "not own code", "e": "passed"}
    assert results["c"].message == check_exercise("c", pacl_transposed, verbose=False).message
    assert (tmp_path / "e.png").stat().st_size > 0


def test_answers_under_another_token_or_damaged_count_for_nothing(tmp_path) -> None:
    grading.save_answers({"clip_loss": loss_written_row_by_row}, ["a"], tmp_path, "theirs")
    assert grading.grade_saved_answers(tmp_path, "ours")["a"].score == 0.0
    grading.answer_file(tmp_path, "a").write_bytes(b"not a torch file")
    assert grading.grade_saved_answers(tmp_path, "ours")["a"].status == "failed"


class _RunsCodeWhenLoaded:
    def __reduce__(self):
        return (open, ("/nonexistent-folder/ran", "w"))


def test_a_saved_file_cannot_run_code_in_the_grader(tmp_path) -> None:
    torch.save({"token": "t", "record": _RunsCodeWhenLoaded()}, grading.answer_file(tmp_path, "a"))
    result = grading.grade_saved_answers(tmp_path, "t")["a"]
    assert result.status == "failed" and "could not be read" in result.message


def test_forged_answers_are_judged_against_the_graders_own_expectations() -> None:
    # A kernel can write whatever answers it likes; they still have to be right.
    forged = {"status": "answered", "answers": [
        {"kind": "tensor", "value": torch.tensor(0.0)} for _ in EXERCISES["a"].cases]}
    result = grading.judge_exercise("a", forged)
    assert result.status == "failed" and result.checks_passed < result.checks_total
    wrong_length = {"status": "answered", "answers": []}
    assert grading.judge_exercise("a", wrong_length).score == 0.0
    assert grading.judge_exercise("a", {"status": "answered", "answers": ["x"] * 10}).score == 0.0


# --------------------------------------------------------------------------------------------
# (e) the open experiment
# --------------------------------------------------------------------------------------------

def test_experiment_accepts_a_labelled_plot_and_a_paragraph() -> None:
    result = check_experiment(_labelled_plot, PARAGRAPH, verbose=False, display=False)
    assert result.passed, result.report()


def test_experiment_accepts_a_heatmap_with_an_unlabelled_colorbar() -> None:
    def heatmap() -> plt.Figure:
        fig, ax = plt.subplots()
        fig.colorbar(ax.imshow(np.eye(3)), ax=ax)
        ax.set(xlabel="text", ylabel="image")
        return fig

    assert check_experiment(heatmap, PARAGRAPH, verbose=False, display=False).passed


@pytest.mark.parametrize(("make_figure", "answer", "failing"), [
    (lambda: plt.subplots()[0], PARAGRAPH, "the figure shows data"),
    (lambda: plt.figure().add_subplot().plot([0, 1]) and plt.gcf(), PARAGRAPH, "labelled"),
    (lambda: None, PARAGRAPH, "returns a matplotlib Figure"),
    (_labelled_plot, "Too short.", "paragraph"),
    (lambda: 1 / 0, PARAGRAPH, "ZeroDivisionError"),
])
def test_experiment_rejects_what_is_missing(make_figure, answer, failing: str) -> None:
    result = check_experiment(make_figure, answer, verbose=False, display=False)
    assert result.status == "failed" and failing in result.message
