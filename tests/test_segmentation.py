"""utils.segmentation: prompt ensembles, MaskCLIP, scores -> masks, and evaluation plumbing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_clips import EMBED_DIM, IMAGE_SIZE, caption_tokenizer, course_clip, tiny_hf_clip

from utils.backbones import CourseCLIPBackbone, HFCLIPBackbone
from utils.metrics import iou_from_confusion, segmentation_confusion
from utils.pacl import PACL
from utils.prompts import format_prompt
from utils.segmentation import (
    SegmentationRun,
    Segmenter,
    best_threshold,
    class_embeddings,
    confusions_by_threshold,
    maskclip_patch_embeddings,
    masks_from_probabilities,
    normalised_entropy,
    patch_embeddings,
    run_segmentation,
    threshold_with_best_miou,
    upsample_scores,
)
from utils.synthetic import CLASS_NAMES, generate_captioned_shapes


@pytest.fixture(scope="module")
def course_backbone() -> CourseCLIPBackbone:
    tokenizer = caption_tokenizer()
    return CourseCLIPBackbone(course_clip(tokenizer), tokenizer)


@pytest.fixture(scope="module")
def hf_backbone() -> HFCLIPBackbone:
    tokenizer = caption_tokenizer()
    return HFCLIPBackbone(tiny_hf_clip(tokenizer), tokenizer)


# --------------------------------------------------------------------------------------------
# Class embeddings
# --------------------------------------------------------------------------------------------

def test_class_embeddings_are_the_renormalised_mean_of_the_template_embeddings(course_backbone):
    templates = ("a photo of a {}.", "a {}.")
    emb = class_embeddings(course_backbone, ["circle", "star"], templates)
    assert emb.shape == (2, EMBED_DIM)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    by_hand = torch.stack([
        F.normalize(sum(course_backbone.text_embeddings([format_prompt(t, name)])[0]
                        for t in templates), dim=-1)
        for name in ("circle", "star")])
    torch.testing.assert_close(emb, by_hand, atol=1e-5, rtol=1e-5)


def test_class_embeddings_reject_a_bare_string(course_backbone):
    with pytest.raises(ValueError, match="list of names"):
        class_embeddings(course_backbone, "circle")


# --------------------------------------------------------------------------------------------
# Patch embeddings by method
# --------------------------------------------------------------------------------------------

def test_maskclip_equals_the_last_block_with_self_only_attention(hf_backbone):
    # Independent reference: run the real last block with an attention mask that lets every token
    # attend only to itself; attention then returns each token's own value.
    model = hf_backbone.model
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        vision = model.vision_model
        hidden = vision(pixel_values=images, output_hidden_states=True).hidden_states[-2]
        length = hidden.shape[1]
        self_only = torch.full((length, length), torch.finfo(hidden.dtype).min)
        self_only.fill_diagonal_(0.0)
        out = vision.encoder.layers[-1](hidden, self_only.expand(2, 1, length, length))
        out = out[0] if isinstance(out, tuple) else out
        expected = model.visual_projection(vision.post_layernorm(out[:, 1:]))
    maskclip = maskclip_patch_embeddings(hf_backbone, images)
    assert maskclip.shape == (2, 16, EMBED_DIM)
    torch.testing.assert_close(maskclip, expected, atol=1e-5, rtol=1e-5)
    # ... and it differs from the ordinary patch tokens, whose last block mixes the tokens.
    assert not torch.allclose(maskclip, hf_backbone.patch_embeddings(images), atol=1e-4)


def test_maskclip_needs_a_vit_backbone(course_backbone):
    with pytest.raises(ValueError, match="Hugging Face CLIP ViT"):
        patch_embeddings(course_backbone, torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE), "maskclip")


def test_pacl_with_identity_embedder_gives_the_raw_patches(course_backbone):
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    pacl = PACL(EMBED_DIM, identity_init=True)
    torch.testing.assert_close(patch_embeddings(course_backbone, images, "pacl", pacl),
                               patch_embeddings(course_backbone, images, "raw"))
    with pytest.raises(ValueError, match="PACL module"):
        patch_embeddings(course_backbone, images, "pacl")


# --------------------------------------------------------------------------------------------
# Scores -> masks
# --------------------------------------------------------------------------------------------

def test_upsampling_keeps_constant_maps_and_the_location_of_a_peak():
    scores = torch.zeros(1, 2, 16)
    scores[0, 1, 5] = 1.0                      # class 1 peaks in cell (1, 1) of a 4x4 grid
    pixels = upsample_scores(scores, (4, 4), (32, 32))
    assert pixels.shape == (1, 2, 32, 32)
    assert torch.all(pixels[0, 0] == 0)
    peak = divmod(int(pixels[0, 1].argmax()), 32)
    assert 8 <= peak[0] < 16 and 8 <= peak[1] < 16  # inside that cell's 8x8 pixels


def test_normalised_entropy_is_zero_when_certain_and_one_when_uniform():
    probabilities = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(normalised_entropy(probabilities), torch.tensor([0.0, 1.0]))


def test_entropy_background_hand_computed():
    # Three pixels over 2 classes: confident class 0, confident class 1, undecided.
    probabilities = torch.tensor([[0.95, 0.02, 0.5], [0.05, 0.98, 0.5]]).view(1, 2, 1, 3)
    masks = masks_from_probabilities(probabilities, "entropy", threshold=0.5)
    assert masks.tolist() == [[[1, 2, 0]]]     # class c -> c + 1, undecided -> background 0
    everything = masks_from_probabilities(probabilities, "entropy", threshold=1.0)
    assert everything.tolist() == [[[1, 2, 1]]]  # no pixel is above the maximum entropy


def test_prompt_background_competes_in_the_argmax():
    probabilities = torch.tensor([[0.7, 0.1], [0.2, 0.1], [0.1, 0.8]]).view(1, 3, 1, 2)
    assert masks_from_probabilities(probabilities, "prompt").tolist() == [[[0, 2]]]
    with pytest.raises(ValueError, match="background"):
        masks_from_probabilities(probabilities, "nothing")


def test_segmenter_handles_images_of_any_size(course_backbone, hf_backbone):
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for backbone, method in ((course_backbone, "raw"), (hf_backbone, "maskclip")):
        segmenter = Segmenter(backbone, ["circle", "star", "square"], method=method)
        probabilities, mask = segmenter.segment_image(image, image_size=IMAGE_SIZE)
        assert probabilities.shape == (3, 50, 70) and mask.shape == (50, 70)
        np.testing.assert_allclose(probabilities.sum(0), 1.0, rtol=1e-4)
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
    prompt = Segmenter(course_backbone, ["circle", "star"], method="raw", background="prompt")
    probabilities, mask = prompt.segment_image(image, image_size=IMAGE_SIZE)
    assert probabilities.shape == (3, 50, 70)   # background prompt + 2 classes


def test_segmenter_scale_defaults_to_the_trained_ones(course_backbone):
    pacl = PACL(EMBED_DIM, init_temperature=0.5)
    assert Segmenter(course_backbone, ["circle"], "pacl", pacl).logit_scale == pytest.approx(2.0)
    raw = Segmenter(course_backbone, ["circle"], "raw")
    assert raw.logit_scale == pytest.approx(float(course_backbone.model.logit_scale))


# --------------------------------------------------------------------------------------------
# Evaluation plumbing
# --------------------------------------------------------------------------------------------

def test_perfect_probabilities_score_miou_one_and_thresholds_are_tuned(course_backbone):
    targets = torch.tensor([[[0, 1, 1, 2]], [[2, 2, 0, 0]]], dtype=torch.uint8)
    segmenter = Segmenter(course_backbone, ["a", "b"], method="raw")
    # Confident where there is a class, uniform where there is background.
    probabilities = torch.full((2, 2, 1, 4), 0.5)
    for value in (1, 2):
        where = targets == value
        probabilities[:, value - 1][where] = 0.99
        probabilities[:, 2 - value][where] = 0.01
    run = SegmentationRun(probabilities.half(), targets, ["x", "y"])
    assert run.metrics(segmenter, threshold=0.5)["mIoU"] == pytest.approx(1.0)
    assert run.metrics(segmenter, threshold=1.0)["mIoU"] < 1.0   # background never found
    # Confident pixels have normalised entropy 0.08: the first grid value above it wins.
    assert best_threshold(run, segmenter) == pytest.approx(0.10)
    assert run.per_image_miou(segmenter) == pytest.approx([1.0, 1.0])


def test_run_segmentation_on_synthetic_images(tmp_path, course_backbone):
    root = generate_captioned_shapes(tmp_path / "shapes", num_train=6, num_dev=0, num_test=0,
                                     image_size=IMAGE_SIZE, progress=False)
    names = sorted(p.name for p in (root / "Images").iterdir())
    segmenter = Segmenter(course_backbone, list(CLASS_NAMES[1:]), method="raw")
    run = run_segmentation(segmenter, root / "Images", root / "masks", names, IMAGE_SIZE,
                           batch_size=4, progress=False)
    assert run.probabilities.shape == (6, len(CLASS_NAMES) - 1, IMAGE_SIZE, IMAGE_SIZE)
    assert run.targets.shape == (6, IMAGE_SIZE, IMAGE_SIZE)
    metrics = run.metrics(segmenter)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and not math.isnan(metrics["pixel_accuracy"])
    assert len(metrics["per_class_iou"]) == len(CLASS_NAMES)


def test_confusions_by_threshold_match_masks_and_add_up_over_images():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(3, 2, 4, 5, generator=generator).softmax(1)
    targets = torch.randint(0, 3, (3, 4, 5), generator=generator)
    thresholds = (0.2, 0.9)
    confusions = confusions_by_threshold(probabilities, targets, 3, thresholds)
    assert confusions.shape == (2, 3, 3)
    for k, t in enumerate(thresholds):
        expected = segmentation_confusion(masks_from_probabilities(probabilities, "entropy", t),
                                          targets, 3)
        assert torch.equal(confusions[k], expected)
    one_by_one = sum(confusions_by_threshold(p[None], y[None], 3, thresholds)
                     for p, y in zip(probabilities, targets, strict=True))
    assert torch.equal(one_by_one, confusions)
    best = threshold_with_best_miou(confusions, thresholds)
    assert best == max(thresholds, key=lambda t: iou_from_confusion(
        confusions[thresholds.index(t)])["mIoU"])
