"""Evaluation metrics: cross-modal retrieval recall@K."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def positives_from_text_to_image(text_to_image: torch.Tensor, num_images: int) -> torch.Tensor:
    """``[T] image index per caption`` -> ``[T, num_images]`` boolean positives matrix."""
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long)
    if text_to_image.numel() and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image holds indices outside [0, {num_images})")
    positives = torch.zeros(len(text_to_image), num_images, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    return positives


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
