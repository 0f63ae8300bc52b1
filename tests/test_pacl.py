"""Tests for utils.pacl: the compatibility (PACL Eq. 2-3) against a direct loop and its invariances,
the loss, the vision embedder, and gradients that reach the embedder but nothing frozen."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_clips import CAPTIONS, EMBED_DIM, IMAGE_SIZE, course_clip

from utils.backbones import CourseCLIPBackbone
from utils.losses import clip_loss
from utils.pacl import (
    PACL,
    VisionEmbedder,
    pacl_batch_loss,
    pacl_compatibility,
    pacl_loss,
    pacl_parameter_groups,
    patch_text_similarity,
    patch_weights,
)


def random_inputs(batch=3, texts=4, patches=5, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, patches, dim, generator=generator, dtype=torch.float64),
            torch.randn(texts, dim, generator=generator, dtype=torch.float64))


def compatibility_by_loops(patch_emb, text_emb, temperature=None):
    """PACL Eq. 2-3 written out one image, one text and one patch at a time."""
    result = torch.zeros(len(patch_emb), len(text_emb), dtype=patch_emb.dtype)
    for b, patches in enumerate(patch_emb):
        for t, text in enumerate(text_emb):
            scores = torch.stack([F.cosine_similarity(patch, text, dim=0) for patch in patches])
            weights = torch.softmax(scores / (temperature or 1.0), dim=0)
            pooled = sum(weight * patch for weight, patch in zip(weights, patches, strict=True))
            result[b, t] = F.cosine_similarity(pooled, text, dim=0)
    return result


# --------------------------------------------------------------------------------------------
# Compatibility and loss
# --------------------------------------------------------------------------------------------

def test_compatibility_equals_the_direct_loop():
    patch_emb, text_emb = random_inputs()
    result = pacl_compatibility(patch_emb, text_emb)
    assert result.shape == (3, 4)
    torch.testing.assert_close(result, compatibility_by_loops(patch_emb, text_emb))


def test_temperature_option_matches_the_loop_and_sharpens_towards_the_best_patch():
    patch_emb, text_emb = random_inputs(seed=1)
    torch.testing.assert_close(pacl_compatibility(patch_emb, text_emb, temperature=0.1),
                               compatibility_by_loops(patch_emb, text_emb, temperature=0.1))
    assert not torch.allclose(pacl_compatibility(patch_emb, text_emb, temperature=0.1),
                              pacl_compatibility(patch_emb, text_emb))
    # A tiny temperature puts all the weight on the most similar patch.
    best_patch_cosine = patch_text_similarity(patch_emb, text_emb).amax(dim=-1)
    torch.testing.assert_close(pacl_compatibility(patch_emb, text_emb, temperature=1e-6),
                               best_patch_cosine)
    with pytest.raises(ValueError, match="temperature"):
        pacl_compatibility(patch_emb, text_emb, temperature=0.0)



def test_patch_weights_are_a_softmax_over_the_patches_of_the_scaled_cosines():
    patch_emb, text_emb = random_inputs(seed=3)
    cosines = patch_text_similarity(patch_emb, text_emb)                      # [B, T, P]
    for temperature, divisor in ((None, 1.0), (0.1, 0.1)):
        weights = patch_weights(patch_emb, text_emb, temperature)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))
        # By hand: exp(cos / tau), normalised over the patches.
        by_hand = (cosines / divisor).exp()
        torch.testing.assert_close(weights, by_hand / by_hand.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="temperature"):
        patch_weights(patch_emb, text_emb, temperature=-1.0)

def test_compatibility_invariances():
    patch_emb, text_emb = random_inputs(seed=2)
    reference = pacl_compatibility(patch_emb, text_emb)
    permuted = patch_emb[:, torch.randperm(patch_emb.shape[1])]
    torch.testing.assert_close(pacl_compatibility(permuted, text_emb), reference)
    torch.testing.assert_close(pacl_compatibility(3.7 * patch_emb, text_emb), reference)
    text_scales = torch.tensor([0.2, 1.0, 5.0, 40.0], dtype=torch.float64)[:, None]
    torch.testing.assert_close(pacl_compatibility(patch_emb, text_scales * text_emb), reference)


def test_compatibility_does_not_renormalise_patches():
    # Scaling one patch changes its weight in the sum (the sum uses the embeddings as they are)
    # though not its cosine with the text: the result must change.
    patch_emb, text_emb = random_inputs(seed=3)
    scaled = patch_emb.clone()
    scaled[:, 0] *= 10
    assert not torch.allclose(pacl_compatibility(scaled, text_emb),
                              pacl_compatibility(patch_emb, text_emb))
    torch.testing.assert_close(pacl_compatibility(scaled, text_emb),
                               compatibility_by_loops(scaled, text_emb))


def test_identical_patches_reduce_to_the_plain_cosine():
    patch_emb, text_emb = random_inputs(seed=4)
    same = patch_emb[:, :1].expand(-1, 7, -1)
    expected = F.normalize(patch_emb[:, 0], dim=-1) @ F.normalize(text_emb, dim=-1).T
    torch.testing.assert_close(pacl_compatibility(same, text_emb), expected)


def test_patch_text_similarity_is_the_cosine_of_each_patch():
    patch_emb, text_emb = random_inputs(seed=5)
    similarity = patch_text_similarity(patch_emb, text_emb)
    assert similarity.shape == (3, 4, 5)
    torch.testing.assert_close(
        similarity[2, 1, 3], F.cosine_similarity(patch_emb[2, 3], text_emb[1], dim=0))


@pytest.mark.parametrize("patch_shape, text_shape", [((5, 6), (4, 6)), ((3, 5, 6), (4, 7)),
                                                     ((3, 5, 6), (6,))])
def test_wrong_shapes_are_refused(patch_shape, text_shape):
    with pytest.raises(ValueError, match=r"\[B, P, D\]"):
        pacl_compatibility(torch.randn(patch_shape), torch.randn(text_shape))


def test_pacl_loss_with_one_patch_equals_the_clip_loss():
    generator = torch.Generator().manual_seed(6)
    patch_emb = torch.randn(8, 1, 16, generator=generator)
    text_emb = torch.randn(8, 16, generator=generator)
    positives = torch.eye(8, dtype=torch.bool)
    positives[0, 3] = positives[3, 0] = True
    for pos in (None, positives):
        torch.testing.assert_close(pacl_loss(patch_emb, text_emb, 14.3, pos),
                                   clip_loss(patch_emb[:, 0], text_emb, 14.3, pos))
    with pytest.raises(ValueError, match="pairs image i with text i"):
        pacl_loss(patch_emb, text_emb[:5], 14.3)


# --------------------------------------------------------------------------------------------
# The trainable part
# --------------------------------------------------------------------------------------------

def test_vision_embedder_is_a_residual_block_of_about_a_million_parameters():
    embedder = VisionEmbedder(768, 512)
    assert 0.9e6 < sum(p.numel() for p in embedder.parameters()) < 1.2e6
    x = torch.randn(2, 5, 768)
    assert embedder(x).shape == (2, 5, 512)
    torch.testing.assert_close(embedder(x), embedder.linear(x) + embedder.residual(x))
    with pytest.raises(ValueError, match="identity_init"):
        VisionEmbedder(768, 512, identity_init=True)


def test_pacl_starts_as_the_identity_and_then_equals_clip_on_single_patches():
    pacl = PACL(EMBED_DIM)
    x = torch.randn(4, 9, EMBED_DIM)
    torch.testing.assert_close(pacl.embed_patches(x), x)
    assert pacl.text_embedder is None
    assert pacl.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    batch = {"patch_emb": torch.randn(6, 1, EMBED_DIM).half(), "text_emb": torch.randn(6, EMBED_DIM)}
    torch.testing.assert_close(
        pacl_batch_loss(pacl, batch),
        clip_loss(batch["patch_emb"][:, 0].float(), batch["text_emb"], pacl.logit_scale))


def test_logit_scale_is_clamped_at_100():
    pacl = PACL(EMBED_DIM)
    with torch.no_grad():
        pacl.log_logit_scale.fill_(math.log(1e4))
    assert pacl.logit_scale.item() == pytest.approx(100.0)


def test_optional_text_embedder_and_parameter_groups():
    plain, with_text = PACL(EMBED_DIM), PACL(EMBED_DIM, text_embedder=True, identity_init=False)
    assert (sum(p.numel() for p in with_text.parameters())
            > sum(p.numel() for p in plain.parameters()))
    texts = torch.randn(3, EMBED_DIM)
    torch.testing.assert_close(plain.embed_texts(texts), texts)
    assert not torch.allclose(with_text.embed_texts(texts), texts)
    groups = pacl_parameter_groups(with_text, lr=1e-3)
    grouped = [p for group in groups for p in group["params"]]
    assert len(grouped) == len(list(with_text.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in with_text.parameters()}
    no_decay = next(g for g in groups if g["weight_decay"] == 0.0)["params"]
    assert any(p is with_text.log_logit_scale for p in no_decay)


def test_gradients_reach_the_embedder_and_nothing_frozen(tokenizer):
    model = course_clip(tokenizer)
    backbone = CourseCLIPBackbone(model, tokenizer)
    pacl = PACL(EMBED_DIM, identity_init=False)
    patches = backbone.patch_embeddings(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE))
    texts = backbone.text_embeddings(CAPTIONS[:4])
    assert not patches.requires_grad and not texts.requires_grad
    loss = pacl_batch_loss(pacl, {"patch_emb": patches, "text_emb": texts})
    loss.backward()
    for name, param in pacl.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())

