"""utils.segmentation: prompt ensembles, MaskCLIP, scores -> masks, and evaluation plumbing."""

from __future__ import annotations

import inspect
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
    COSINE_QUANTILES,
    BackgroundChoice,
    SegmentationRun,
    Segmenter,
    class_embeddings,
    confusions_by_threshold,
    maskclip_patch_embeddings,
    masks_from_scores,
    normalised_entropy,
    object_masks,
    patch_embeddings,
    run_segmentation,
    threshold_grid,
    threshold_with_best_miou,
    tune_background,
    upsample_scores,
)
from utils.sources.synthetic import CLASS_NAMES, generate_captioned_shapes


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
        last = vision.encoder.layers[-1]
        # transformers 4.x's layer also takes a causal mask (None for images); 5.x's does not
        causal = ({"causal_attention_mask": None}
                  if "causal_attention_mask" in inspect.signature(last.forward).parameters else {})
        out = last(hidden, self_only.expand(2, 1, length, length), **causal)
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
    # Three pixels over 2 classes: confident class 0, confident class 1, undecided. With a logit
    # scale of 1, softmax(log p) = p: the scores below give exactly these probabilities.
    probabilities = torch.tensor([[0.95, 0.02, 0.5], [0.05, 0.98, 0.5]]).view(1, 2, 1, 3)
    scores = probabilities.log()
    masks = masks_from_scores(scores, 1.0, "entropy", threshold=0.5)
    assert masks.tolist() == [[[1, 2, 0]]]     # class c -> c + 1, undecided -> background 0
    everything = masks_from_scores(scores, 1.0, "entropy", threshold=1.0)
    assert everything.tolist() == [[[1, 2, 1]]]  # no pixel is above the maximum entropy


def test_cosine_background_hand_computed():
    # Best cosines 0.9, 0.8 and 0.3: only the last is below 0.5. The logit scale plays no part.
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.25]]).view(1, 2, 1, 3)
    for scale in (1.0, 100.0):
        assert masks_from_scores(scores, scale, "cosine", threshold=0.5).tolist() == [[[1, 2, 0]]]
    assert masks_from_scores(scores, 1.0, "cosine", threshold=-1.0).tolist() == [[[1, 2, 1]]]
    assert masks_from_scores(scores, 1.0, "cosine", threshold=0.95).tolist() == [[[0, 0, 0]]]


def test_prompt_background_competes_in_the_argmax_and_object_masks_never_say_background():
    scores = torch.tensor([[0.7, 0.1], [0.2, 0.1], [0.1, 0.8]]).view(1, 3, 1, 2)
    assert masks_from_scores(scores, 1.0, "prompt").tolist() == [[[0, 2]]]
    assert object_masks(scores, "prompt").tolist() == [[[1, 2]]]     # the prompt entry left out
    assert object_masks(scores, "cosine").tolist() == [[[1, 3]]]
    with pytest.raises(ValueError, match="background"):
        masks_from_scores(scores, 1.0, "nothing")


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

TARGETS = torch.tensor([[[0, 1, 1, 2]], [[2, 2, 0, 0]]], dtype=torch.uint8)     # [2, 1, 4]


def scores_for(targets: torch.Tensor, on_class: tuple[float, float],
               on_background: tuple[float, float]) -> torch.Tensor:
    """Cosines ``[N, 2, H, W]``: ``on_class`` = (right class, other class) on a class's pixels,
    ``on_background`` = (class 1, class 2) on background pixels."""
    scores = torch.empty(targets.shape[0], 2, *targets.shape[1:])
    for value in (1, 2):
        scores[:, value - 1][targets == value] = on_class[0]
        scores[:, 2 - value][targets == value] = on_class[1]
    for c in (0, 1):
        scores[:, c][targets == 0] = on_background[c]
    return scores


def test_perfect_scores_score_miou_one_and_thresholds_are_tuned(course_backbone):
    segmenter = Segmenter(course_backbone, ["a", "b"], method="raw", logit_scale=10.0)
    # Clear winners on the shapes, two equal low cosines on the background: both rules work.
    run = SegmentationRun(scores_for(TARGETS, (0.9, 0.1), (0.3, 0.3)).half(), TARGETS, ["x", "y"])
    assert run.metrics(segmenter, threshold=0.5)["mIoU"] == pytest.approx(1.0)
    assert run.metrics(segmenter, threshold=1.0)["mIoU"] < 1.0   # background never found
    assert run.metrics(segmenter, 0.5, background="cosine")["mIoU"] == pytest.approx(1.0)
    assert run.per_image_miou(segmenter) == pytest.approx([1.0, 1.0])
    choice = tune_background(run, segmenter)
    assert choice.dev_miou == pytest.approx({"entropy": 1.0, "cosine": 1.0})
    # Confident shape pixels have normalised entropy 0.004: the first grid value is above it.
    only_entropy = tune_background(run, segmenter, rules=("entropy",))
    assert (only_entropy.background, only_entropy.threshold) == ("entropy", pytest.approx(0.05))


def test_the_rule_that_separates_background_is_chosen(course_backbone):
    # On the background, class "a" wins clearly but with a low cosine (0.5 against 0.9 on the
    # shapes): the entropy calls that pixel *more* certain than the shapes and cannot single it
    # out, the best cosine can.
    segmenter = Segmenter(course_backbone, ["a", "b"], method="raw", logit_scale=10.0)
    run = SegmentationRun(scores_for(TARGETS, (0.9, 0.1), (0.5, -0.5)).half(), TARGETS, ["x", "y"])
    choice = tune_background(run, segmenter)
    assert choice.background == "cosine" and 0.5 < choice.threshold <= 0.9
    assert choice.dev_miou["cosine"] == pytest.approx(1.0) and choice.dev_miou["entropy"] < 0.7
    segmenter.use_background(choice)
    assert (segmenter.background, segmenter.threshold) == ("cosine", choice.threshold)
    assert run.metrics(segmenter)["mIoU"] == pytest.approx(1.0)
    # Mutation guard: the same scores read with the entropy rule cannot reach 1.
    assert max(run.metrics(segmenter, t, "entropy")["mIoU"]
               for t in threshold_grid(run, "entropy")) < 0.7


def test_objects_only_ignores_background_pixels_and_never_predicts_background(course_backbone):
    segmenter = Segmenter(course_backbone, ["a", "b"], method="raw", background="cosine",
                          threshold=0.95)       # would call every pixel background
    scores = scores_for(TARGETS, (0.9, 0.1), (0.5, -0.5))
    scores[0, :, 0, 1] = torch.tensor([0.1, 0.8])      # one class-1 pixel predicted as class 2
    run = SegmentationRun(scores.half(), TARGETS, ["x", "y"])
    assert run.metrics(segmenter)["mIoU"] < 0.5
    objects = run.object_metrics(segmenter)
    # Object pixels: class 1 = 2 pixels (1 right), class 2 = 3 pixels (all right, 1 extra).
    assert objects["present_classes"] == [1, 2]
    assert objects["per_class_iou"][1:] == pytest.approx([1 / 2, 3 / 4])
    assert objects["mIoU"] == pytest.approx((1 / 2 + 3 / 4) / 2)


def test_cosine_threshold_grid_cuts_the_tuning_pixels_at_its_quantiles():
    scores = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    run = SegmentationRun(scores.half(), torch.zeros(3, 8, 8, dtype=torch.uint8), ["a", "b", "c"])
    grid = threshold_grid(run, "cosine")
    assert len(grid) == len(COSINE_QUANTILES) and list(grid) == sorted(grid)
    best = run.scores.float().amax(1)
    for quantile, threshold in zip(COSINE_QUANTILES, grid, strict=True):
        assert (best < threshold).float().mean().item() == pytest.approx(quantile, abs=0.02)
    with pytest.raises(ValueError, match="thresholds to tune"):
        threshold_grid(run, "prompt")


def test_switching_rules_brings_the_background_prompt_in_and_out(course_backbone):
    segmenter = Segmenter(course_backbone, ["circle", "star"], method="raw")
    assert segmenter.text_embeddings().shape[0] == 2
    segmenter.use_background(BackgroundChoice("prompt", 0.0, {}))
    assert segmenter.text_embeddings().shape[0] == 3
    segmenter.use_background(BackgroundChoice("cosine", 0.2, {}))
    assert segmenter.text_embeddings().shape[0] == 2


def test_run_segmentation_on_synthetic_images(tmp_path, course_backbone):
    root = generate_captioned_shapes(tmp_path / "shapes", num_train=6, num_dev=0, num_test=0,
                                     image_size=IMAGE_SIZE, progress=False)
    names = sorted(p.name for p in (root / "Images").iterdir())
    segmenter = Segmenter(course_backbone, list(CLASS_NAMES[1:]), method="raw")
    run = run_segmentation(segmenter, root / "Images", root / "masks", names, IMAGE_SIZE,
                           batch_size=4, progress=False)
    assert run.scores.shape == (6, len(CLASS_NAMES) - 1, IMAGE_SIZE, IMAGE_SIZE)
    assert run.targets.shape == (6, IMAGE_SIZE, IMAGE_SIZE)
    metrics = run.metrics(segmenter)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and not math.isnan(metrics["pixel_accuracy"])
    assert len(metrics["per_class_iou"]) == len(CLASS_NAMES)


@pytest.mark.parametrize("background", ["entropy", "cosine"])
def test_confusions_by_threshold_match_masks_and_add_up_over_images(background):
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 2, 4, 5, generator=generator) * 2 - 1
    targets = torch.randint(0, 3, (3, 4, 5), generator=generator)
    thresholds = (0.2, 0.9)
    confusions = confusions_by_threshold(scores, targets, 3, 5.0, background, thresholds)
    assert confusions.shape == (2, 3, 3)
    for k, t in enumerate(thresholds):
        expected = segmentation_confusion(masks_from_scores(scores, 5.0, background, t),
                                          targets, 3)
        assert torch.equal(confusions[k], expected)
    one_by_one = sum(confusions_by_threshold(p[None], y[None], 3, 5.0, background, thresholds)
                     for p, y in zip(scores, targets, strict=True))
    assert torch.equal(one_by_one, confusions)
    best, miou = threshold_with_best_miou(confusions, thresholds)
    assert best == max(thresholds, key=lambda t: iou_from_confusion(
        confusions[thresholds.index(t)])["mIoU"])
    assert miou == pytest.approx(iou_from_confusion(confusions[thresholds.index(best)])["mIoU"])


def test_tuning_pools_images_of_different_sizes(course_backbone):
    # The two images of TARGETS as two runs, the second one twice as wide: the choice and its
    # dev mIoU equal those of pooling every pixel in one run of the same pixels.
    segmenter = Segmenter(course_backbone, ["a", "b"], method="raw", logit_scale=10.0)
    scores = scores_for(TARGETS, (0.9, 0.1), (0.5, -0.5))
    wide_scores, wide_targets = scores[1:].repeat(1, 1, 1, 2), TARGETS[1:].repeat(1, 1, 2)
    runs = [SegmentationRun(scores[:1].half(), TARGETS[:1], ["x"]),
            SegmentationRun(wide_scores.half(), wide_targets, ["y"])]
    pooled = SegmentationRun(torch.cat([scores[:1], wide_scores[..., :4], wide_scores[..., 4:]])
                             .half(), torch.cat([TARGETS[:1], wide_targets[..., :4],
                                                 wide_targets[..., 4:]]), ["x", "y1", "y2"])
    separate, together = tune_background(runs, segmenter), tune_background(pooled, segmenter)
    assert separate == together
    assert separate.background == "cosine" and separate.dev_miou["cosine"] == pytest.approx(1.0)


def test_image_scores_are_the_cosines_behind_segment_image(course_backbone):
    image = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    segmenter = Segmenter(course_backbone, ["circle", "star"], method="raw", background="cosine",
                          threshold=0.0)
    scores = segmenter.image_scores(image, IMAGE_SIZE)
    assert scores.shape == (1, 2, 30, 40)
    probabilities, mask = segmenter.segment_image(image, IMAGE_SIZE)
    np.testing.assert_allclose(probabilities, (segmenter.logit_scale * scores).softmax(1)[0],
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(mask, masks_from_scores(scores, 1.0, "cosine", 0.0)[0].numpy())


@pytest.mark.parametrize("names, message", [
    (["circle", ""], "no letter or digit"),
    (["circle", "   "], "no letter or digit"),
    (["circle", "\u200b"], "no letter or digit"),            # a zero-width space only
    (["circle", "star", "Circle"], "same text to the model"),
    (["red  circle", "red circle"], "same text to the model"),
    ("circle", "non-empty list"),
    ([], "non-empty list"),
])
def test_segmenter_refuses_class_names_that_would_go_silently_wrong(course_backbone, names,
                                                                    message):
    with pytest.raises(ValueError, match=message):
        Segmenter(course_backbone, names, method="raw")
    with pytest.raises(ValueError, match=message):
        class_embeddings(course_backbone, names)


def test_tuning_on_images_without_labelled_pixels_says_so(course_backbone):
    segmenter = Segmenter(course_backbone, ["a", "b"], method="raw")
    ignored = torch.full_like(TARGETS, 255)
    run = SegmentationRun(scores_for(TARGETS, (0.9, 0.1), (0.3, 0.3)).half(), ignored, ["x", "y"])
    with pytest.raises(ValueError, match="every target pixel is the ignore index"):
        tune_background(run, segmenter)
