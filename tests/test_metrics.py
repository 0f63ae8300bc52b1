"""retrieval_metrics and mean_iou on hand-computed cases and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.metrics import (
    iou_from_confusion,
    mean_iou,
    recall_at_k,
    retrieval_metrics,
    segmentation_confusion,
)
from utils.positives import positives_from_text_to_image


def test_perfect_embeddings_give_recall_one():
    images = torch.eye(4)
    captions = images.repeat_interleave(5, dim=0)  # 5 captions per image
    text_to_image = torch.arange(4).repeat_interleave(5)
    metrics = retrieval_metrics(images, captions, text_to_image)
    assert all(v == 1.0 for v in metrics.values())
    assert set(metrics) == {
        f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
    }


def test_hand_computed_five_captions_per_image():
    # 3 images on the axes of R^3; 15 captions, 5 per image (caption j belongs to image j // 5).
    images = torch.eye(3)
    text_to_image = torch.arange(3).repeat_interleave(5)
    own_0 = [1.0, 0.0, 0.0]  # image 0's good captions
    stray = [0.2, 1.0, 0.0]  # image 0's captions that look like image 1 (image 0 ranks second)
    vague = [0.0, 0.5, 1.0]  # image 1's captions: nearer image 2 (0.89) than image 1 (0.45)
    own_2 = [0.0, 0.0, 1.0]
    captions = torch.tensor([own_0] * 3 + [stray] * 2 + [vague] * 5 + [own_2] * 5)
    m = retrieval_metrics(images, captions, text_to_image, ks=(1, 2, 3))
    # text->image: 3 + 0 + 5 of 15 captions rank their image first; every caption has it second.
    assert m["text_to_image_R@1"] == pytest.approx(8 / 15)
    assert m["text_to_image_R@2"] == pytest.approx(1.0)
    # image->text: image 0 -> own_0 (hit); image 1 -> the two strays, then vague (hit at rank 3);
    # image 2 -> own_2 (hit).
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@2"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@3"] == pytest.approx(1.0)


def test_any_caption_of_the_image_is_a_hit_for_image_to_text():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Image 0's only good caption is its LAST one (index 4): still a hit at R@1.
    captions = torch.tensor([[0.0, 1.0]] * 4 + [[1.0, 0.0]] + [[0.0, 1.0]] * 5)
    text_to_image = torch.arange(2).repeat_interleave(5)
    m = retrieval_metrics(images, captions, text_to_image, ks=(1,))
    assert m["image_to_text_R@1"] == 1.0
    assert m["text_to_image_R@1"] == pytest.approx(6 / 10)


def test_positives_matrix_counts_shared_caption_text():
    # Caption 0 ("a circle") fits both images: retrieving image 1 first is still a hit.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    positives = torch.tensor([[True, True], [True, False]])
    strict = retrieval_metrics(images, captions, torch.tensor([0, 0]), ks=(1,))
    shared = retrieval_metrics(images, captions, positives, ks=(1,))
    assert strict["text_to_image_R@1"] == 0.0
    assert shared["text_to_image_R@1"] == 0.5


def test_k_larger_than_candidates_is_capped():
    images = torch.randn(3, 4)
    captions = torch.randn(6, 4)
    m = retrieval_metrics(images, captions, torch.tensor([0, 0, 1, 1, 2, 2]), ks=(1, 10))
    assert m["text_to_image_R@10"] == 1.0 and m["image_to_text_R@10"] == 1.0


def test_recall_monotone_in_k_on_random_data():
    torch.manual_seed(0)
    images, captions = torch.randn(50, 8), torch.randn(250, 8)
    m = retrieval_metrics(images, captions, torch.arange(50).repeat_interleave(5))
    for direction in ("image_to_text", "text_to_image"):
        r1, r5, r10 = (m[f"{direction}_R@{k}"] for k in (1, 5, 10))
        assert 0 <= r1 <= r5 <= r10 <= 1


def test_invariant_to_embedding_scale():
    torch.manual_seed(1)
    images, captions = torch.randn(10, 4), torch.randn(50, 4)
    ids = torch.arange(10).repeat_interleave(5)
    assert retrieval_metrics(images, captions, ids) == retrieval_metrics(
        images * 7, captions / 3, ids
    )


def test_recall_at_k_direct():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    positives = torch.tensor([[False, False, True], [False, False, True]])
    # Row 0 finds its positive at rank 2, row 1 at rank 3.
    assert recall_at_k(similarity, positives, (1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}


def test_bad_inputs_rejected():
    images, captions = torch.randn(2, 3), torch.randn(4, 3)
    with pytest.raises(ValueError):
        retrieval_metrics(images, captions, torch.tensor([0, 1]))  # too few labels
    with pytest.raises(ValueError):
        retrieval_metrics(images, captions, torch.tensor([0, 1, 2, 0]))  # image 2 missing
    with pytest.raises(ValueError):
        retrieval_metrics(images, captions, torch.ones(2, 4, dtype=torch.bool))  # transposed
    assert positives_from_text_to_image(torch.tensor([1, 0]), 2).tolist() == [
        [False, True],
        [True, False],
    ]


# --------------------------------------------------------------------------------------------
# Segmentation: mean_iou and pixel accuracy
# --------------------------------------------------------------------------------------------

def test_mean_iou_hand_computed():
    # target: class 0 on the left column, 1 in the middle, 2 on the right; pred gets one 1 wrong.
    target = torch.tensor([[0, 1, 2], [0, 1, 2]])
    pred = torch.tensor([[0, 1, 2], [0, 2, 2]])
    m = mean_iou(pred, target, num_classes=3)
    # class 0: 2/2; class 1: 1 / (1 + 1) = 0.5; class 2: 2 / 3.
    assert m["per_class_iou"] == pytest.approx([1.0, 0.5, 2 / 3])
    assert m["mIoU"] == pytest.approx((1.0 + 0.5 + 2 / 3) / 3)
    assert m["pixel_accuracy"] == pytest.approx(5 / 6)


def test_mean_iou_ignore_index_counts_for_nothing():
    target = torch.tensor([[0, 255], [1, 1]])
    good = torch.tensor([[0, 1], [1, 1]])
    also_good = torch.tensor([[0, 0], [1, 1]])  # differs only where the target is ignored
    assert mean_iou(good, target, 2) == mean_iou(also_good, target, 2)
    assert mean_iou(good, target, 2)["mIoU"] == pytest.approx(1.0)


def test_mean_iou_leaves_out_classes_absent_from_both():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    m = mean_iou(pred, target, num_classes=5)  # classes 2-4 appear nowhere
    assert m["present_classes"] == [0, 1]
    assert all(math.isnan(v) for v in m["per_class_iou"][2:])
    assert m["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_mean_iou_counts_a_class_only_predicted_as_zero():
    # A false-positive class (predicted, absent from the target) is present with IoU 0.
    m = mean_iou(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]), num_classes=3)
    assert m["per_class_iou"][2] == 0.0
    assert m["mIoU"] == pytest.approx((0.5 + 0.0) / 2)


def test_mean_iou_pools_a_batch_like_a_dataset():
    rng = np.random.default_rng(0)
    preds, targets = rng.integers(0, 4, (3, 5, 6)), rng.integers(0, 4, (3, 5, 6))
    pooled = sum(segmentation_confusion(p, t, 4) for p, t in zip(preds, targets, strict=True))
    assert torch.equal(pooled, segmentation_confusion(preds, targets, 4))
    assert mean_iou(preds, targets, 4) == iou_from_confusion(pooled)
    # Per-image mIoUs averaged are not the dataset mIoU in general: the pooled one is the standard.


def test_mean_iou_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        mean_iou(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="outside"):
        mean_iou(torch.tensor([[3]]), torch.tensor([[0]]), 2)
    with pytest.raises(TypeError, match="integer"):
        mean_iou(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 2)
