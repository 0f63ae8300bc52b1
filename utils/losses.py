"""The symmetric contrastive loss of CLIP (Radford et al. 2021, Fig. 3 pseudo-code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def clip_logits(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
                ) -> torch.Tensor:
    """Scaled cosine similarities ``s * I @ T.T``.

    Args:
        image_emb: ``[N, D]`` image embeddings (any norm; L2-normalised here).
        text_emb: ``[M, D]`` text embeddings (any norm; L2-normalised here).
        logit_scale: the positive multiplier ``s = exp(t)`` (already exponentiated).

    Returns:
        ``[N, M]`` logits; row ``i`` scores image ``i`` against every text.
    """
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    return logit_scale * image_emb @ text_emb.T


def contrastive_loss_from_logits(logits: torch.Tensor, positives: torch.Tensor | None = None
                                 ) -> torch.Tensor:
    """Mean of the image->text (rows) and text->image (columns) cross-entropies of ``[N, N]`` logits.

    With ``positives=None`` the target of row ``i`` is column ``i`` (CLIP's ``labels = arange(n)``).
    With a boolean ``positives [N, N]`` the target of each row (and column) is spread uniformly over
    its positives: a soft target made from labels, never from the model's own outputs.
    """
    n = logits.shape[0]
    if positives is None:
        targets = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    if positives.shape != logits.shape:
        raise ValueError(f"positives has shape {tuple(positives.shape)}, logits {tuple(logits.shape)}")
    if not (positives.diagonal().all()):
        raise ValueError("every pair (i, i) must be a positive: row i's own caption is its match")
    targets = positives.to(logits.dtype)
    image_to_text = _soft_cross_entropy(logits, targets / targets.sum(1, keepdim=True))
    text_to_image = _soft_cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True))
    return (image_to_text + text_to_image) / 2


def _soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[N, C]`` logits against ``[N, C]`` target distributions, averaged over rows."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
              positives: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss (Radford et al. 2021, Fig. 3).

    ``logits = s * normalize(I) @ normalize(T).T``; the loss is the mean of the cross-entropy over
    rows (each image picks its caption among the batch's texts) and over columns (each caption picks
    its image).

    Args:
        image_emb: ``[N, D]`` image embeddings; row ``i`` is paired with ``text_emb[i]``.
        text_emb: ``[N, D]`` text embeddings.
        logit_scale: positive scalar multiplier ``s`` (already exponentiated, e.g. ``1/0.07``).
        positives: optional ``[N, N]`` boolean, ``positives[i, j]`` = image ``i`` matches text ``j``
            (for example :func:`utils.positives.same_image_positives`). Default: the identity.

    Returns:
        Scalar loss.
    """
    return contrastive_loss_from_logits(clip_logits(image_emb, text_emb, logit_scale), positives)


def clip_batch_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """CLIP loss of one collated batch; uses ``batch["positives"]`` when present.

    With several captions per image (``batch["caption_owner"]``, see
    :class:`utils.data.CaptionCollator`), each image embedding is repeated once per caption it
    brought: the same loss as encoding the repeated images, without encoding them again.
    """
    image_emb, text_emb, logit_scale = model(batch["images"], batch["input_ids"],
                                             batch["attention_mask"])
    if "caption_owner" in batch:
        image_emb = image_emb[batch["caption_owner"]]                     # [B * K, D]
    return clip_loss(image_emb, text_emb, logit_scale, positives=batch.get("positives"))
