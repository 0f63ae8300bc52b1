"""Evaluation metrics: cross-modal retrieval recall@K, and segmentation IoU / pixel accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.positives import positives_from_text_to_image


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks: Sequence[int]
                ) -> dict[int, float]:
    """Fraction of queries (rows) with at least one positive among their top-``k`` candidates.

    Args:
        similarity: ``[Q, C]`` query-candidate scores (higher is better).
        positives: ``[Q, C]`` boolean, which candidates count as a hit for each query.
        ks: the cut-offs; each is capped at ``C``.
    """
    if similarity.shape != positives.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and positives "
                         f"{tuple(positives.shape)} must have the same shape")
    max_k = min(max(ks), similarity.shape[1])
    top = similarity.topk(max_k, dim=1).indices              # [Q, max_k]
    hit_at_rank = positives.gather(1, top)                    # [Q, max_k]: is rank r a positive?
    return {k: hit_at_rank[:, :min(k, max_k)].any(1).float().mean().item() for k in ks}


@torch.no_grad()
def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor,
                      text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
                      ) -> dict[str, float]:
    """Recall@K for image->text and text->image retrieval (CLIP paper, Sec. 3.1.4 / Table 13).

    Args:
        image_emb: ``[I, D]`` image embeddings (normalised here; cosine similarity).
        text_emb: ``[T, D]`` caption embeddings.
        text_to_image: either ``[T]`` integer image index of each caption (Flickr: five captions
            per image, any of an image's captions is a hit), or a ``[T, I]`` boolean positives
            matrix for data where one caption text fits several images.
        ks: recall cut-offs.

    Returns:
        ``{"image_to_text_R@1": ..., "text_to_image_R@1": ..., ...}`` for every ``k``, in ``[0, 1]``.
    """
    text_to_image = torch.as_tensor(text_to_image, device="cpu")
    num_texts, num_images = text_emb.shape[0], image_emb.shape[0]
    if text_to_image.dtype == torch.bool:
        positives = text_to_image
        if positives.shape != (num_texts, num_images):
            raise ValueError(f"positives must be [num_texts, num_images] = "
                             f"[{num_texts}, {num_images}], got {tuple(positives.shape)}")
    else:
        if text_to_image.shape != (num_texts,):
            raise ValueError(f"text_to_image must have one entry per caption ({num_texts}), "
                             f"got shape {tuple(text_to_image.shape)}")
        positives = positives_from_text_to_image(text_to_image, num_images)

    similarity = F.normalize(text_emb.float().cpu(), dim=-1) @ F.normalize(
        image_emb.float().cpu(), dim=-1).T                    # [T, I]
    text_to_image_recall = recall_at_k(similarity, positives, ks)
    image_to_text_recall = recall_at_k(similarity.T, positives.T, ks)
    metrics = {f"image_to_text_R@{k}": v for k, v in image_to_text_recall.items()}
    metrics |= {f"text_to_image_R@{k}": v for k, v in text_to_image_recall.items()}
    return metrics


# --------------------------------------------------------------------------------------------
# Segmentation: confusion matrix, IoU, pixel accuracy
# --------------------------------------------------------------------------------------------

def segmentation_confusion(pred, target, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``[num_classes, num_classes]`` pixel counts, ``confusion[t, p]`` = pixels of true class ``t``
    predicted as ``p``; pixels whose target is ``ignore_index`` are left out.

    Args:
        pred, target: integer class maps of the same shape (one ``[H, W]`` image or a batch
            ``[N, H, W]``), as tensors or NumPy arrays. Summing the confusions of several images
            equals the confusion of their batch, which is how a dataset's mIoU is accumulated.
    """
    pred, target = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target))
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have "
                         "the same shape (upsample the prediction to the mask's size first)")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("pred and target must hold integer class ids (take argmax of scores first)")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    for name, values in (("pred", pred), ("target", target)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} holds class ids outside [0, {num_classes}) (besides the "
                             f"ignore index {ignore_index}): {sorted(set(values.tolist()))[:10]}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: torch.Tensor) -> dict:
    """Per-class IoU, mIoU and pixel accuracy from a confusion matrix (see :func:`mean_iou`)."""
    confusion = torch.as_tensor(confusion).double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive     # |pred U target| per class
    per_class = torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)
    present = union > 0
    total = confusion.sum()
    return {
        "per_class_iou": per_class.tolist(),
        "mIoU": per_class[present].mean().item() if present.any() else float("nan"),
        "pixel_accuracy": (true_positive.sum() / total).item() if total > 0 else float("nan"),
        "present_classes": present.nonzero().flatten().tolist(),
    }


def mean_iou(pred, target, num_classes: int, ignore_index: int = 255) -> dict:
    """Intersection over union per class and its mean (the standard semantic-segmentation metric).

    ``IoU_c = |pred == c AND target == c| / |pred == c OR target == c|`` counted over every pixel
    of ``pred`` / ``target`` (one image ``[H, W]`` or a batch ``[N, H, W]``: the counts are pooled
    over the batch, as for a whole dataset). Pixels whose target is ``ignore_index`` count for
    nothing, whatever was predicted there.

    Returns:
        ``{"per_class_iou": [num_classes] floats (nan for a class absent from both prediction and
        target), "mIoU": mean over the classes that are present in either, "pixel_accuracy":
        fraction of non-ignored pixels predicted right, "present_classes": their ids}``.
    """
    return iou_from_confusion(segmentation_confusion(pred, target, num_classes, ignore_index))
