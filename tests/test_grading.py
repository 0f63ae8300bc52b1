"""utils.course.grading: the checks accept the reference and reject realistic wrong answers, each with a
message instead of a traceback."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.course import grading  # noqa: E402
from utils.course.grading import EXERCISES, check_exercise, check_experiment, grade_namespace  # noqa: E402

# --------------------------------------------------------------------------------------------
# (a) the CLIP loss: wrong answers students write
# --------------------------------------------------------------------------------------------


def _logits(image_emb, text_emb, logit_scale):
    return logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def _targets(logits):
    return torch.arange(logits.shape[0], device=logits.device)


def loss_one_direction(image_emb, text_emb, logit_scale):
    logits = _logits(image_emb, text_emb, logit_scale)
    return F.cross_entropy(logits, _targets(logits))


def loss_without_normalisation(image_emb, text_emb, logit_scale):
    logits = logit_scale * image_emb @ text_emb.T
    return (F.cross_entropy(logits, _targets(logits)) + F.cross_entropy(logits.T, _targets(logits))) / 2


def loss_softmax_over_wrong_axis(image_emb, text_emb, logit_scale):
    logits = _logits(image_emb, text_emb, logit_scale)
    log_probs = F.log_softmax(logits, dim=0)            # both directions normalised over images
    return -(log_probs.diagonal().mean() + log_probs.T.diagonal().mean()) / 2


def loss_sum_instead_of_mean(image_emb, text_emb, logit_scale):
    logits = _logits(image_emb, text_emb, logit_scale)
    targets = _targets(logits)
    return (F.cross_entropy(logits, targets, reduction="sum")
            + F.cross_entropy(logits.T, targets, reduction="sum")) / 2


def loss_without_logit_scale(image_emb, text_emb, logit_scale):
    logits = _logits(image_emb, text_emb, 1.0)
    return (F.cross_entropy(logits, _targets(logits)) + F.cross_entropy(logits.T, _targets(logits))) / 2


def loss_naive_exp(image_emb, text_emb, logit_scale):
    logits = _logits(image_emb, text_emb, logit_scale)
    probs_rows = logits.exp() / logits.exp().sum(1, keepdim=True)
    probs_cols = logits.exp() / logits.exp().sum(0, keepdim=True)
    return -(probs_rows.diagonal().log().mean() + probs_cols.diagonal().log().mean()) / 2


def loss_as_python_float(image_emb, text_emb, logit_scale):
    return grading.reference_clip_loss(image_emb, text_emb, logit_scale).item()


def loss_cast_to_float32(image_emb, text_emb, logit_scale):
    return grading.reference_clip_loss(image_emb.float(), text_emb.float(), logit_scale)


def loss_detached(image_emb, text_emb, logit_scale):
    return grading.reference_clip_loss(image_emb.detach(), text_emb.detach(), logit_scale)


def loss_normalising_in_place(image_emb, text_emb, logit_scale):
    with torch.no_grad():
        image_emb /= image_emb.norm(dim=-1, keepdim=True)
    return grading.reference_clip_loss(image_emb, text_emb, logit_scale)


# --------------------------------------------------------------------------------------------
# (b) recall@K
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
# (c) PACL compatibility
# --------------------------------------------------------------------------------------------

def _pacl(patch_emb, text_emb, softmax_dim=-1, pool="softmax", renormalise_patches=False,
          final_cosine=True, cosine_weights=True):
    patches, texts = F.normalize(patch_emb, dim=-1), F.normalize(text_emb, dim=-1)
    scores = (torch.einsum("bpd,td->btp", patches, texts) if cosine_weights
              else torch.einsum("bpd,td->btp", patch_emb, text_emb))
    weights = scores.softmax(dim=softmax_dim) if pool == "softmax" else \
        torch.full_like(scores, 1 / scores.shape[-1])
    pooled = torch.einsum("btp,bpd->btd", weights, patches if renormalise_patches else patch_emb)
    if final_cosine:
        return torch.einsum("btd,td->bt", F.normalize(pooled, dim=-1), texts)
    return torch.einsum("btd,td->bt", pooled, texts)


def pacl_softmax_over_texts(patch_emb, text_emb):
    return _pacl(patch_emb, text_emb, softmax_dim=1)


def pacl_mean_pooling(patch_emb, text_emb):
    return _pacl(patch_emb, text_emb, pool="mean")


def pacl_renormalised_patches(patch_emb, text_emb):
    return _pacl(patch_emb, text_emb, renormalise_patches=True)


def pacl_dot_product_at_the_end(patch_emb, text_emb):
    return _pacl(patch_emb, text_emb, final_cosine=False)


def pacl_dot_product_weights(patch_emb, text_emb):
    return _pacl(patch_emb, text_emb, cosine_weights=False)


def pacl_squeezed(patch_emb, text_emb):
    return _pacl(patch_emb, text_emb).squeeze()


def pacl_transposed(patch_emb, text_emb):
    return _pacl(patch_emb, text_emb).T


# --------------------------------------------------------------------------------------------
# (d) mean IoU
# --------------------------------------------------------------------------------------------

def _per_class(pred, target, num_classes, ignore_index=255):
    pred, target = torch.as_tensor(pred).reshape(-1).long(), torch.as_tensor(target).reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    inter = torch.stack([((pred == c) & (target == c)).sum() for c in range(num_classes)]).double()
    union = torch.stack([((pred == c) | (target == c)).sum() for c in range(num_classes)]).double()
    return inter, union


def miou_reference_like(pred, target, num_classes, ignore_index=255):
    inter, union = _per_class(pred, target, num_classes, ignore_index)
    return (inter[union > 0] / union[union > 0]).mean().item()


def miou_over_absent_classes(pred, target, num_classes, ignore_index=255):
    inter, union = _per_class(pred, target, num_classes, ignore_index)
    return (inter / union.clamp(min=1)).mean().item()      # absent classes count as IoU 0


def miou_not_ignoring(pred, target, num_classes, ignore_index=255):
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    inter, union = _per_class(pred, target, num_classes, ignore_index=-12345)
    return (inter[union > 0] / union[union > 0]).mean().item()


def miou_hard_coded_255(pred, target, num_classes, ignore_index=255):
    return miou_reference_like(pred, target, num_classes, 255)


def miou_target_classes_only(pred, target, num_classes, ignore_index=255):
    inter, union = _per_class(pred, target, num_classes, ignore_index)
    present = torch.stack([(torch.as_tensor(target) == c).any() for c in range(num_classes)])
    return (inter[present] / union[present]).mean().item()


def miou_per_image_average(pred, target, num_classes, ignore_index=255):
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.ndim == 2:
        return miou_reference_like(pred, target, num_classes, ignore_index)
    return float(np.mean([miou_reference_like(p, t, num_classes, ignore_index)
                          for p, t in zip(pred, target, strict=True)]))


def miou_with_view(pred, target, num_classes, ignore_index=255):
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    return miou_reference_like(pred.view(-1), target.view(-1), num_classes, ignore_index)


def miou_returning_the_dict(pred, target, num_classes, ignore_index=255):
    return grading.reference_mean_iou(pred, target, num_classes, ignore_index)


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

REFERENCES = {"a": grading.reference_clip_loss, "b": recall_reference_like,
              "c": grading.reference_pacl_compatibility, "d": miou_reference_like}

WRONG_ANSWERS = [
    ("a", loss_one_direction), ("a", loss_without_normalisation),
    ("a", loss_softmax_over_wrong_axis), ("a", loss_sum_instead_of_mean),
    ("a", loss_without_logit_scale), ("a", loss_naive_exp), ("a", loss_as_python_float),
    ("a", loss_cast_to_float32), ("a", loss_detached), ("a", loss_normalising_in_place),
    ("b", recall_top_k_minus_one), ("b", recall_top_k_plus_one), ("b", recall_first_caption_only),
    ("b", recall_assuming_five_contiguous), ("b", recall_without_capping_k), ("b", recall_as_tensor),
    ("c", pacl_softmax_over_texts), ("c", pacl_mean_pooling), ("c", pacl_renormalised_patches),
    ("c", pacl_dot_product_at_the_end), ("c", pacl_dot_product_weights), ("c", pacl_squeezed),
    ("c", pacl_transposed),
    ("d", miou_over_absent_classes), ("d", miou_not_ignoring), ("d", miou_hard_coded_255),
    ("d", miou_target_classes_only), ("d", miou_per_image_average), ("d", miou_returning_the_dict),
    ("d", miou_with_view),
]


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_the_reference_passes(key: str) -> None:
    result = check_exercise(key, EXERCISES[key].reference, verbose=False)
    assert result.passed, result.report()
    assert result.score == 1.0


@pytest.mark.parametrize("key", ["b", "d"])
def test_an_independent_correct_answer_passes(key: str) -> None:
    # Written here from the definitions, not by calling the reference the check compares with.
    result = check_exercise(key, REFERENCES[key], verbose=False)
    assert result.passed, result.report()


@pytest.mark.parametrize(("key", "wrong"), WRONG_ANSWERS,
                         ids=[f"{key}-{fn.__name__}" for key, fn in WRONG_ANSWERS])
def test_a_wrong_answer_is_rejected_with_an_explanation(key: str, wrong, capsys) -> None:
    result = check_exercise(key, wrong)
    printed = capsys.readouterr().out
    assert result.status == "failed"
    assert result.checks_passed < result.checks_total
    assert printed.startswith("FAIL") and "First mismatch, on input" in printed and "Hint:" in printed


def test_loss_messages_name_the_input_and_both_values() -> None:
    result = check_exercise("a", loss_one_direction, verbose=False)
    assert 'on input "unit-length embeddings' in result.message
    assert "expected" in result.message and "got" in result.message


def test_a_crashing_function_gets_a_message_naming_the_line() -> None:
    def crashes(image_emb, text_emb, logit_scale):
        return image_emb @ text_emb          # [N, D] @ [N, D]: a shape error

    result = check_exercise("a", crashes, verbose=False)
    assert result.status == "failed" and result.checks_passed == 0
    assert "raised RuntimeError" in result.message and "return image_emb @ text_emb" in result.message


def test_an_error_inside_torch_is_traced_back_to_the_students_line() -> None:
    def wrong_targets(image_emb, text_emb, logit_scale):
        logits = _logits(image_emb, text_emb, logit_scale)
        return F.cross_entropy(logits, torch.ones(len(logits)))   # float targets of the wrong kind

    message = check_exercise("a", wrong_targets, verbose=False).message
    assert "raised in wrong_targets" in message and "F.cross_entropy(logits" in message


def test_returning_none_is_explained() -> None:
    def forgets_return(patch_emb, text_emb):
        grading.reference_pacl_compatibility(patch_emb, text_emb)

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
# (e) and grading a whole namespace
# --------------------------------------------------------------------------------------------

def _labelled_plot() -> plt.Figure:
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 1, 2])
    ax.set(xlabel="logit scale", ylabel="loss")
    return fig


PARAGRAPH = " ".join(["word"] * grading.MIN_ANSWER_WORDS)


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


def test_grade_namespace_prints_one_machine_readable_line(capsys) -> None:
    import json

    namespace = {"clip_loss": grading.reference_clip_loss, "pacl_compatibility": pacl_transposed,
                 "run_experiment": _labelled_plot, "EXPERIMENT_ANSWER": PARAGRAPH}
    grades = grade_namespace(namespace)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(grading.GRADES_MARKER)
    assert json.loads(line.removeprefix(grading.GRADES_MARKER)) == grades
    assert {k: g["status"] for k, g in grades.items()} == {
        "a": "passed", "b": "missing", "c": "failed", "d": "missing", "e": "passed"}
