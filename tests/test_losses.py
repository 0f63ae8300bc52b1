"""clip_loss against transformers' own CLIP loss, hand-computed cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.clip import modeling_clip

from utils.losses import clip_logits, clip_loss
from utils.positives import same_image_positives


def transformers_clip_loss(similarity: torch.Tensor) -> torch.Tensor:
    """The reference: transformers 5.x calls it image_text_contrastive_loss, 4.x clip_loss."""
    reference = (
        getattr(modeling_clip, "image_text_contrastive_loss", None) or modeling_clip.clip_loss
    )
    return reference(similarity)


@pytest.mark.parametrize("n,d,scale", [(1, 4, 1.0), (7, 16, 1 / 0.07), (32, 8, 100.0)])
def test_matches_transformers_reference(n, d, scale):
    torch.manual_seed(n)
    image, text = torch.randn(n, d), torch.randn(n, d)
    # transformers builds logits_per_text = s * T @ I.T from normalised embeddings.
    logits_per_text = scale * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    expected = transformers_clip_loss(logits_per_text)
    torch.testing.assert_close(clip_loss(image, text, scale), expected)


def test_hand_computed_two_by_two():
    # Orthogonal unit embeddings paired correctly: logits are s on the diagonal, 0 elsewhere,
    # so each cross-entropy is log(1 + e^-s) in both directions.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms must not matter
    s = 2.0
    expected = math.log(1 + math.exp(-s))
    assert clip_loss(image, text, s).item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_in_swapping_modalities():
    torch.manual_seed(0)
    image, text = torch.randn(9, 5), torch.randn(9, 5)
    torch.testing.assert_close(clip_loss(image, text, 10.0), clip_loss(text, image, 10.0))


def test_invariant_to_embedding_norms_and_batch_order():
    torch.manual_seed(1)
    image, text = torch.randn(6, 5), torch.randn(6, 5)
    perm = torch.randperm(6)
    scaled = clip_loss(image * (torch.rand(6, 1) * 5 + 0.1), text * 3, 10.0)
    torch.testing.assert_close(scaled, clip_loss(image, text, 10.0))
    torch.testing.assert_close(
        clip_loss(image[perm], text[perm], 10.0), clip_loss(image, text, 10.0)
    )


def test_perfect_alignment_loss_falls_with_scale():
    image = torch.eye(4)
    losses = [clip_loss(image, image.clone(), s).item() for s in (1.0, 10.0, 100.0)]
    assert losses[0] > losses[1] > losses[2] >= 0
    assert losses[2] < 1e-6


def test_gradients_flow_to_embeddings_and_scale():
    torch.manual_seed(2)
    image = torch.randn(5, 3, requires_grad=True)
    text = torch.randn(5, 3, requires_grad=True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    clip_loss(image, text, log_scale.exp()).backward()
    for grad in (image.grad, text.grad, log_scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_identity_positives_equal_default():
    torch.manual_seed(3)
    image, text = torch.randn(5, 4), torch.randn(5, 4)
    torch.testing.assert_close(
        clip_loss(image, text, 5.0, positives=torch.eye(5, dtype=torch.bool)),
        clip_loss(image, text, 5.0),
    )


def test_same_image_captions_as_positives():
    image_ids = torch.tensor([0, 0, 1])
    positives = same_image_positives(image_ids)
    assert positives.tolist() == [[True, True, False], [True, True, False], [False, False, True]]

    # Two captions of one image, embedded identically; the two image rows differ slightly (two
    # crops of the image, say). Identity targets pull each caption towards "its" crop (a gradient
    # along the second axis); same-image targets are already satisfied there.
    def text_gradient(positives):
        text = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
        image = torch.tensor([[1.0, 0.2, 0.0], [1.0, -0.2, 0.0], [0.0, 0.0, 1.0]])
        clip_loss(image, text, 20.0, positives=positives).backward()
        return text.grad

    assert text_gradient(None)[:2, 1].abs().min() > 0.5
    assert text_gradient(positives).abs().max() < 1e-6
    # Hand-computed value for orthogonal groups at a large scale: each of the first two rows
    # spreads its target over two equal logits, so its cross-entropy is log 2.
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert clip_loss(emb, emb, 50.0, positives=positives).item() == pytest.approx(
        2 * math.log(2) / 3, rel=1e-4
    )


def test_logits_shape_and_values():
    image, text = torch.randn(3, 4), torch.randn(5, 4)
    logits = clip_logits(image, text, 2.0)
    assert logits.shape == (3, 5)
    assert logits.abs().max() <= 2.0 + 1e-5


def test_bad_positives_rejected():
    emb = torch.randn(3, 2)
    with pytest.raises(ValueError):
        clip_loss(emb, emb, 1.0, positives=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        clip_loss(emb, emb, 1.0, positives=torch.zeros(3, 3, dtype=torch.bool))
