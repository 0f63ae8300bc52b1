"""PACL: aligning a frozen CLIP's patch tokens with its text embedding (Mukhoti et al., CVPR 2023).

Both CLIP encoders stay frozen. A small *vision embedder* maps every patch embedding (already in
CLIP's joint space) to a new one, and the contrastive loss of CLIP is computed with PACL's
*compatibility* instead of the plain cosine (PACL Eq. 2-3)::

    s_i       = cos(e_v(patch_i), e_t(y))           similarity of patch i with the text
    a         = softmax_i(s)                        weights over the P patches
    v         = sum_i a_i * e_v(patch_i)            text-specific visual embedding
    phi(x, y) = cos(v, e_t(y))                      compatibility of image x and text y

Only the embedder (and the logit scale) learn. The frozen CLIP sits behind
:class:`utils.backbones.FrozenBackbone`; since its outputs never change they are computed once by
:func:`utils.storage.feature_cache.cache_features`, and :func:`pacl_batch_loss` trains from those cached
features with :func:`utils.train.fit`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.losses import contrastive_loss_from_logits

# --------------------------------------------------------------------------------------------
# Compatibility and loss (PACL Eq. 2-3)
# --------------------------------------------------------------------------------------------

def _check_patch_text_shapes(patch_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if patch_emb.ndim != 3 or text_emb.ndim != 2 or patch_emb.shape[-1] != text_emb.shape[-1]:
        raise ValueError(
            f"expected patch_emb [B, P, D] and text_emb [T, D] with the same D, got "
            f"{tuple(patch_emb.shape)} and {tuple(text_emb.shape)}. A single image needs a batch "
            "dimension (patch_emb[None]); a single text too (text_emb[None])."
        )


def patch_text_similarity(patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine of every patch with every text: ``[B, P, D], [T, D] -> [B, T, P]``.

    PACL Eq. 2's ``s_i`` for all images and texts at once; reshaped to the patch grid it is the
    text's heatmap over the image.
    """
    _check_patch_text_shapes(patch_emb, text_emb)
    return torch.einsum("bpd,td->btp", F.normalize(patch_emb, dim=-1), F.normalize(text_emb, dim=-1))


def patch_weights(patch_emb: torch.Tensor, text_emb: torch.Tensor,
                  temperature: float | None = None) -> torch.Tensor:
    """PACL Eq. 2's weights ``a``: ``[B, P, D], [T, D] -> [B, T, P]``, for every image and text
    the softmax over the ``P`` patches of their cosines with the text, each divided by
    ``temperature`` first (None: the cosines as they are). Each ``[b, t]`` row sums to 1."""
    similarity = patch_text_similarity(patch_emb, text_emb)                  # [B, T, P]
    if temperature is not None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive (or None), got {temperature}")
        similarity = similarity / temperature
    return similarity.softmax(dim=-1)


def pacl_compatibility(patch_emb: torch.Tensor, text_emb: torch.Tensor,
                       temperature: float | None = None) -> torch.Tensor:
    """PACL's compatibility of every image with every text (PACL Eq. 2-3).

    Args:
        patch_emb: ``[B, P, D]`` the vision embedder's outputs for the ``P`` patches of ``B`` images.
        text_emb: ``[T, D]`` text embeddings (any norm).
        temperature: divides the patch-text cosines before the softmax over patches; None (the
            paper) uses the cosines as they are, so the weights stay soft.

    Returns:
        ``[B, T]``: ``cos(sum_i a_i patch_i, text)`` with ``a = softmax_i(cos(patch_i, text))``.
        The weighted sum uses the patch embeddings as given, not re-normalised per patch.

    Memory: a direct translation of the formula would build a ``[B, T, P, D]`` tensor (26 GB for
    B = T = 256, P = 196, D = 512 in float32). Here the patches and texts are normalised once, one
    einsum ``bpd,td->btp`` gives all cosines, the softmax runs over ``P``, and a second einsum
    ``btp,bpd->btd`` forms the weighted sums; the largest tensor is ``[B, T, D]``.
    """
    weights = patch_weights(patch_emb, text_emb, temperature)                 # [B, T, P]
    pooled = torch.einsum("btp,bpd->btd", weights, patch_emb)                 # [B, T, D]
    return torch.einsum("btd,td->bt", F.normalize(pooled, dim=-1), F.normalize(text_emb, dim=-1))


def pacl_loss(patch_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
              positives: torch.Tensor | None = None, temperature: float | None = None
              ) -> torch.Tensor:
    """PACL's training loss: CLIP's symmetric cross-entropy over the ``[B, B]`` compatibilities.

    Args:
        patch_emb: ``[B, P, D]`` embedded patches of ``B`` images; image ``i`` is paired with
            ``text_emb[i]``.
        text_emb: ``[B, D]`` text embeddings.
        logit_scale: positive multiplier of the compatibilities (already exponentiated).
        positives: optional ``[B, B]`` boolean, image ``i`` matches text ``j`` (as in
            :func:`utils.losses.clip_loss`). Default: the identity.
        temperature: the softmax temperature of :func:`pacl_compatibility`.

    Returns:
        Scalar loss. With one patch per image (``P = 1``) it equals ``clip_loss`` on those patches.
    """
    if patch_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"pacl_loss pairs image i with text i: got {patch_emb.shape[0]} images "
                         f"and {text_emb.shape[0]} texts")
    logits = logit_scale * pacl_compatibility(patch_emb, text_emb, temperature)   # [B, B]
    return contrastive_loss_from_logits(logits, positives)


# --------------------------------------------------------------------------------------------
# The trainable part
# --------------------------------------------------------------------------------------------

class VisionEmbedder(nn.Module):
    """PACL's vision embedder (paper appendix): ``Linear(x) + Linear(ReLU(Linear(x)))``.

    ``[..., in_dim] -> [..., out_dim]``; about 1M parameters for 768 -> 512 with the default
    ``hidden_dim = out_dim``.

    Args:
        identity_init: start as the identity map (needs ``in_dim == out_dim``): the linear branch
            is the identity and the residual branch's last layer is zero. PACL then starts from
            the raw CLIP patch embeddings instead of a random projection of them.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None,
                 identity_init: bool = False):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.residual = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                      nn.Linear(hidden_dim, out_dim))
        if identity_init:
            self._init_identity(in_dim, out_dim)

    def _init_identity(self, in_dim: int, out_dim: int) -> None:
        if in_dim != out_dim:
            raise ValueError(f"identity_init needs in_dim == out_dim, got {in_dim} -> {out_dim}; "
                             "pass identity_init=False")
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(out_dim))
            self.linear.bias.zero_()
            # Zero only the last layer: the first still gets gradients once this one moves.
            self.residual[-1].weight.zero_()
            self.residual[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.residual(x)


class PACL(nn.Module):
    """Everything PACL trains: the vision embedder and a learnable logit scale.

    Args:
        embed_dim: width ``D`` of the frozen CLIP's joint space (patches and texts).
        hidden_dim: width of the embedder's residual branch (default ``D``).
        text_embedder: also learn an embedder on the text side. OFF by default: the paper trains
            only the vision embedder; switching it on departs from the paper.
        identity_init: see :class:`VisionEmbedder`.
        softmax_temperature: temperature of the softmax over patches (None: the paper's plain
            cosines).
        init_temperature, max_logit_scale: the logit scale starts at ``1 / init_temperature`` and
            is clamped at ``max_logit_scale`` (as in CLIP).
    """

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, text_embedder: bool = False,
                 identity_init: bool = True, softmax_temperature: float | None = None,
                 init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.vision_embedder = VisionEmbedder(embed_dim, embed_dim, hidden_dim, identity_init)
        # The same residual block serves the text side when asked for.
        self.text_embedder = (VisionEmbedder(embed_dim, embed_dim, hidden_dim, identity_init)
                              if text_embedder else None)
        self.softmax_temperature = softmax_temperature
        self.max_logit_scale = max_logit_scale
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(log_logit_scale)``, clamped at ``max_logit_scale``."""
        return self.log_logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def embed_patches(self, patch_emb: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` frozen CLIP patch embeddings -> ``[..., D]`` embedded patches."""
        return self.vision_embedder(patch_emb)

    def embed_texts(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` frozen CLIP text embeddings -> ``[..., D]`` (unchanged without a text embedder)."""
        return text_emb if self.text_embedder is None else self.text_embedder(text_emb)

    def forward(self, patch_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``[B, P, D]`` frozen patch embeddings, ``[T, D]`` text embeddings -> ``[B, T]``
        compatibilities (PACL Eq. 3, without the logit scale)."""
        return pacl_compatibility(self.embed_patches(patch_emb), self.embed_texts(text_emb),
                                  self.softmax_temperature)


def pacl_parameter_groups(pacl: PACL, lr: float, weight_decay: float = 0.05) -> list[dict]:
    """AdamW groups for :func:`utils.train.fit`: weight matrices decay, biases and the logit scale
    do not (decaying the scale would pull the temperature towards 1)."""
    params = [p for p in pacl.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0}]


def pacl_batch_loss(pacl: PACL, batch: dict) -> torch.Tensor:
    """PACL loss of one batch (the ``loss_fn`` of :func:`utils.train.fit`).

    ``batch`` holds frozen-backbone ``patch_emb [B, P, D]`` and ``text_emb [B, D]`` (any float
    type; float16 from the cache is computed in float32 here) and optionally ``positives [B, B]``.
    """
    patch_emb = pacl.embed_patches(batch["patch_emb"].float())
    text_emb = pacl.embed_texts(batch["text_emb"].float())
    return pacl_loss(patch_emb, text_emb, pacl.logit_scale, batch.get("positives"),
                     pacl.softmax_temperature)
