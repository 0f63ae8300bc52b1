"""Open-vocabulary semantic segmentation from patch-text scores (PACL Sec. 3.3; MaskCLIP).

Nothing here is trained on masks. A class is a *name*; its text embedding is compared with every
patch embedding of the image, the patch scores are upsampled to pixels, and each pixel takes the
class it matches best::

    class_emb[c]      = normalise(mean_t normalise(e_t(template_t(name_c))))   prompt ensemble
    scores[b, c, p]   = cos(patch_emb[b, p], class_emb[c])                     [B, C, P]
    pixels[b, :, y, x] = bilinear_upsample(scores)[b, :, y, x]                 cosines per pixel
    mask[b, y, x]     = 1 + argmax_c pixels   or 0 (background), see below

Background is not a class a caption names. Three rules find it, each a choice to tune on dev
images (:func:`tune_background`), never on the test split:

- ``"entropy"``: softmax the pixel's class cosines (times the logit scale ``s``); where that
  distribution is nearly uniform (normalised entropy above the threshold), no class wins clearly.
  It compares the classes *with each other* at one pixel.
- ``"cosine"``: where even the best class's cosine is below the threshold, nothing matches. It
  asks each class "how well does this pixel match you?", which is the question PACL's training
  asks of every patch ("which patches match this text?").
- ``"prompt"``: background prompts ("a plain background") compete with the classes in the argmax.

The entropy and cosine rules are the course's, both common in open-vocabulary segmentation; the
PACL paper's benchmarks as the course reproduces them (VOC-20: object pixels only) need none.

Three ways to get patch embeddings, one code path (:func:`patch_embeddings`):

- ``"raw"``: the frozen CLIP's own patch tokens (:meth:`FrozenBackbone.patch_embeddings`);
- ``"maskclip"``: for a Hugging Face CLIP ViT, MaskCLIP's training-free trick (Zhou et al. 2022):
  in the last block, replace attention by each token's own value path, so every patch keeps its own
  content instead of a mixture of the whole image;
- ``"pacl"``: the raw patch tokens through PACL's trained vision embedder.

Labels: class ``c`` of ``class_names`` is mask value ``c + 1``; ``0`` is background, as in the
synthetic set's masks (and Pascal VOC's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from utils.backbones import FrozenBackbone, HFCLIPBackbone
from utils.data import load_image
from utils.metrics import iou_from_confusion, segmentation_confusion
from utils.pacl import PACL, patch_text_similarity
from utils.prompts import PROMPT_TEMPLATES, format_prompt, normalise_text

METHODS = ("raw", "maskclip", "pacl")
BACKGROUND_MODES = ("entropy", "cosine", "prompt")
THRESHOLD_RULES = ("entropy", "cosine")     # the rules with a threshold to tune
# No final period, as in PROMPT_TEMPLATES: the course tokenizer maps "." to [UNK].
BACKGROUND_PROMPTS = ("a plain background", "an empty background", "a photo of nothing")


# --------------------------------------------------------------------------------------------
# Class embeddings and patch embeddings
# --------------------------------------------------------------------------------------------

def checked_class_names(class_names: Sequence[str]) -> list[str]:
    """``class_names`` as a list, after refusing what would silently go wrong: a bare string, an
    empty list, a name without a letter or digit (it would leave the bare prompt template, "a
    photo of a "), and two names that are one text to the model (case and spaces aside: the
    second could never win the argmax)."""
    if isinstance(class_names, str) or not class_names:
        raise ValueError("class_names must be a non-empty list of names, e.g. ['circle', 'star']")
    names = list(class_names)
    blank = [name for name in names
             if not isinstance(name, str) or not any(ch.isalnum() for ch in name)]
    if blank:
        raise ValueError(f"class names {blank!r} have no letter or digit: each would be scored as "
                         "the bare prompt template. Remove them or give them a word.")
    first: dict[str, str] = {}
    for name in names:
        same = first.setdefault(normalise_text(name), name)
        if same is not name:
            raise ValueError(f"class names {same!r} and {name!r} are the same text to the model "
                             "(case and spaces aside): keep one of them")
    return names


@torch.no_grad()
def class_embeddings(backbone: FrozenBackbone, class_names: Sequence[str],
                     templates: Sequence[str] = PROMPT_TEMPLATES) -> torch.Tensor:
    """``C`` class names -> ``[C, D]`` unit-length prompt-ensemble embeddings (CLIP Sec. 3.1.4).

    Every name is put into every template ("a photo of a {}"), each prompt is embedded and
    normalised, the ``T`` embeddings of a class are averaged and the mean is normalised again.
    """
    class_names = checked_class_names(class_names)
    prompts = [format_prompt(template, name) for name in class_names for template in templates]
    emb = backbone.text_embeddings(prompts).view(len(class_names), len(templates), -1)
    return _ensemble(emb)


def _ensemble(emb: torch.Tensor) -> torch.Tensor:
    """``[..., T, D]`` embeddings of one concept's prompts -> ``[..., D]``: the unit-length mean of
    the unit-length embeddings."""
    return F.normalize(F.normalize(emb, dim=-1).mean(-2), dim=-1)


@torch.no_grad()
def maskclip_patch_embeddings(backbone: HFCLIPBackbone, images: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's dense features of a Hugging Face CLIP ViT: ``[B, 3, H, W]`` -> ``[B, P, D]``.

    The last transformer block normally mixes every token with all others through attention, so a
    patch token at its output describes the whole image as much as its own patch. MaskCLIP keeps the
    block but lets each token attend only to itself: attention with a one-hot weight is just the
    value path ``out_proj(v_proj(LN1(h)))``. The residual, the MLP, CLIP's final layer norm and the
    visual projection then apply as usual.
    """
    images = images.to(backbone.device)
    vision = backbone.model.vision_model
    hidden = vision(pixel_values=images, output_hidden_states=True,
                    **backbone.size_arguments(images)).hidden_states[-2]   # input of the last block
    block = vision.encoder.layers[-1]
    attention = block.self_attn
    hidden = hidden + attention.out_proj(attention.v_proj(block.layer_norm1(hidden)))
    hidden = hidden + block.mlp(block.layer_norm2(hidden))
    return backbone.model.visual_projection(vision.post_layernorm(hidden[:, 1:]))


@torch.no_grad()
def patch_embeddings(backbone: FrozenBackbone, images: torch.Tensor, method: str = "raw",
                     pacl: PACL | None = None) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, P, D]`` patch embeddings by ``method`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "maskclip":
        if not isinstance(backbone, HFCLIPBackbone):
            raise ValueError("MaskCLIP's value-path trick needs a Hugging Face CLIP ViT backbone; "
                             "a CNN has no last attention block to bypass (use method='raw')")
        return maskclip_patch_embeddings(backbone, images)
    patches = backbone.patch_embeddings(images)
    if method == "pacl":
        if pacl is None:
            raise ValueError("method='pacl' needs the trained PACL module (pacl=...)")
        patches = pacl.embed_patches(patches.float())
    return patches


# --------------------------------------------------------------------------------------------
# Scores -> pixels -> masks
# --------------------------------------------------------------------------------------------

def upsample_scores(scores: torch.Tensor, grid_shape: tuple[int, int],
                    size: tuple[int, int]) -> torch.Tensor:
    """``[B, C, P]`` patch scores -> ``[B, C, H, W]`` pixel scores, bilinear (``P = h * w``)."""
    batch, classes, _ = scores.shape
    grid = scores.reshape(batch, classes, *grid_shape)
    return F.interpolate(grid.float(), size=tuple(size), mode="bilinear", align_corners=False)


def normalised_entropy(probabilities: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of a distribution over ``dim`` divided by its maximum ``log C``: 0 = certain,
    1 = uniform."""
    num_classes = probabilities.shape[dim]
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim)
    return entropy / np.log(num_classes) if num_classes > 1 else torch.zeros_like(entropy)


def masks_from_scores(scores: torch.Tensor, logit_scale: float, background: str = "entropy",
                      threshold: float = 0.5) -> torch.Tensor:
    """``[B, K, H, W]`` class cosines -> ``[B, H, W]`` long masks (0 background, c+1 class c).

    Args:
        logit_scale: multiplier of the cosines before the softmax (used by ``"entropy"`` only).
        background: ``"entropy"``: background where the normalised entropy of
            ``softmax_c(logit_scale * scores)`` is above ``threshold``. ``"cosine"``: background
            where the best class's cosine is below ``threshold``. ``"prompt"``: entry 0 is the
            background prompt and competes in the argmax (``threshold`` unused).
    """
    if background == "prompt":
        return scores.argmax(1)
    best_class, statistic = background_statistic(scores, logit_scale, background)
    return background_masks(best_class, statistic, background, threshold)


def background_statistic(scores: torch.Tensor, logit_scale: float, background: str
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, K, H, W]`` class cosines -> (``[B, H, W]`` best class, ``[B, H, W]`` what the rule
    thresholds: the normalised entropy for ``"entropy"``, the best cosine for ``"cosine"``).

    Computed once, it serves every threshold (:func:`confusions_by_threshold`).
    """
    if background == "entropy":
        return scores.argmax(1), normalised_entropy((logit_scale * scores.float()).softmax(1))
    if background == "cosine":
        best = scores.float().max(1)
        return best.indices, best.values
    raise ValueError(f"background must be one of {THRESHOLD_RULES} here, got {background!r}")


def background_masks(best_class: torch.Tensor, statistic: torch.Tensor, background: str,
                     threshold: float) -> torch.Tensor:
    """Masks from :func:`background_statistic`'s output: ``c + 1`` for the best class ``c``, and
    0 where the rule says background (entropy above, or best cosine below, ``threshold``)."""
    unsure = statistic > threshold if background == "entropy" else statistic < threshold
    return (best_class + 1).masked_fill(unsure, 0)


def object_masks(scores: torch.Tensor, background: str = "entropy") -> torch.Tensor:
    """``[B, K, H, W]`` class cosines -> ``[B, H, W]`` masks that never say background: every
    pixel gets its best class ``c + 1`` (a background prompt's entry, if any, left out). For
    scoring object pixels only, as the PACL paper's VOC-20 protocol does."""
    classes = scores[:, 1:] if background == "prompt" else scores
    return classes.argmax(1) + 1


@dataclass
class Segmenter:
    """Turns images into class masks with one method and one class list.

    Args:
        backbone: the frozen CLIP.
        class_names: the foreground classes (background is found, not named).
        method: ``"raw"`` | ``"maskclip"`` | ``"pacl"`` (see the module docstring).
        pacl: the trained PACL module, for ``method="pacl"``.
        background: ``"entropy"``, ``"cosine"`` or ``"prompt"`` (see the module docstring).
        threshold: the normalised-entropy threshold (``"entropy"``) or the cosine threshold
            (``"cosine"``); tune it with :func:`tune_background`.
        logit_scale: multiplier of the cosines before the softmax over classes; default: the
            scale the embeddings were trained with (PACL's for ``"pacl"``, else CLIP's).
        templates: prompt templates of the class ensemble.
        background_prompts: texts whose ensemble is the background class in ``"prompt"`` mode.
    """

    backbone: FrozenBackbone
    class_names: Sequence[str]
    method: str = "pacl"
    pacl: PACL | None = None
    background: str = "entropy"
    threshold: float = 0.5
    logit_scale: float | None = None
    templates: Sequence[str] = PROMPT_TEMPLATES
    background_prompts: Sequence[str] = BACKGROUND_PROMPTS
    _class_emb: tuple[str, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {BACKGROUND_MODES}, "
                             f"got {self.background!r}")
        if self.method == "pacl" and self.pacl is None:
            raise ValueError("method='pacl' needs the trained PACL module (pacl=...)")
        if self.logit_scale is None:
            self.logit_scale = (float(self.pacl.logit_scale.detach()) if self.method == "pacl"
                                else self.backbone.logit_scale)
        self.class_names = checked_class_names(self.class_names)

    @property
    def num_classes(self) -> int:
        """Mask values in use: background plus one per class."""
        return len(self.class_names) + 1

    def text_embeddings(self) -> torch.Tensor:
        """``[K, D]``: the classes (after a background entry in ``"prompt"`` mode), in the space
        the patches are compared in (through PACL's text embedder when it has one)."""
        # Cached per rule: the background entry comes and goes with the rule.
        if self._class_emb is None or self._class_emb[0] != self.background:
            emb = class_embeddings(self.backbone, self.class_names, self.templates)
            if self.background == "prompt":
                # The background prompts share one ensemble: "an empty background." is no template.
                with torch.no_grad():
                    background = _ensemble(self.backbone.text_embeddings(
                        list(self.background_prompts)))
                emb = torch.cat([background[None], emb])
            if self.method == "pacl":
                emb = self.pacl.embed_texts(emb.float())
            self._class_emb = (self.background, emb)
        return self._class_emb[1]

    def use_background(self, choice: BackgroundChoice) -> Segmenter:
        """Switch to the rule and threshold :func:`tune_background` chose; returns ``self``."""
        self.background, self.threshold = choice.background, choice.threshold
        return self

    @torch.no_grad()
    def scores(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``[B, 3, h, w]`` transformed images -> ``[B, K, H, W]`` cosines of every pixel with
        every class (patch cosines upsampled bilinearly) at ``size`` (default: the input size)."""
        patches = patch_embeddings(self.backbone, images, self.method, self.pacl)     # [B, P, D]
        scores = patch_text_similarity(patches.float(), self.text_embeddings().float())  # [B, K, P]
        side = math.isqrt(patches.shape[1])
        if images.shape[-1] != images.shape[-2] or side * side != patches.shape[1]:
            raise ValueError(f"expected square network inputs (the backbone's transform makes "
                             f"them) and a square patch grid, got {tuple(images.shape[-2:])} "
                             f"and {patches.shape[1]} patches")
        return upsample_scores(scores, (side, side), size or tuple(images.shape[-2:]))

    def masks(self, scores: torch.Tensor) -> torch.Tensor:
        """``[B, K, H, W]`` class cosines (:meth:`scores`) -> ``[B, H, W]`` masks with this
        segmenter's background rule and threshold."""
        return masks_from_scores(scores, self.logit_scale, self.background, self.threshold)

    def image_scores(self, image: np.ndarray, image_size: int) -> torch.Tensor:
        """One RGB image ``[H, W, 3]`` uint8 (any size) -> ``[1, K, H, W]`` class cosines at the
        image's own size; the network sees it resized to ``image_size``."""
        tensor = self.backbone.image_transform(image_size)(image=image)["image"][None]
        return self.scores(tensor, size=image.shape[:2])

    def segment_image(self, image: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        """One RGB image ``[H, W, 3]`` uint8 (any size) -> (class probabilities ``[K, H, W]``,
        mask ``[H, W]``) at the image's own size; the network sees it resized to ``image_size``."""
        scores = self.image_scores(image, image_size)
        probabilities = (self.logit_scale * scores).softmax(1)
        return probabilities[0].cpu().numpy(), self.masks(scores)[0].cpu().numpy()


# --------------------------------------------------------------------------------------------
# Evaluation on a set of images with ground-truth masks
# --------------------------------------------------------------------------------------------

def load_mask(path: str | Path) -> np.ndarray:
    """A mask PNG (mode L or P: the stored index is the class id) -> ``[H, W]`` uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {path} does not exist")
    with Image.open(path) as mask:
        if mask.mode not in ("L", "P"):
            raise ValueError(f"mask {path} has mode {mask.mode}; expected one channel of class ids "
                             "(mode L or a palette PNG)")
        return np.array(mask)


@dataclass
class SegmentationRun:
    """Predictions of one segmenter on a list of images, kept for metrics and plots.

    ``scores`` ``[N, K, H, W]`` float16 class cosines at the masks' resolution
    (:meth:`Segmenter.scores`), ``targets`` ``[N, H, W]`` uint8.
    """

    scores: torch.Tensor
    targets: torch.Tensor
    image_names: list[str]

    def masks(self, segmenter: Segmenter, threshold: float | None = None,
              background: str | None = None) -> torch.Tensor:
        """``[N, H, W]`` predicted masks with the segmenter's background rule and threshold, or
        with the ``background`` rule and ``threshold`` given."""
        return masks_from_scores(self.scores.float(), segmenter.logit_scale,
                                 background or segmenter.background,
                                 segmenter.threshold if threshold is None else threshold)

    def metrics(self, segmenter: Segmenter, threshold: float | None = None,
                background: str | None = None, ignore_index: int = 255) -> dict:
        """:func:`utils.metrics.mean_iou` of the whole set, background pixels included (pixel
        counts pooled over images), with the rule and threshold of :meth:`masks`."""
        confusion = segmentation_confusion(self.masks(segmenter, threshold, background),
                                           self.targets, segmenter.num_classes, ignore_index)
        return iou_from_confusion(confusion)

    def object_metrics(self, segmenter: Segmenter, ignore_index: int = 255) -> dict:
        """mIoU over object pixels only: ground-truth background is ignored and no pixel is
        predicted background (:func:`object_masks`), as in the PACL paper's VOC-20 protocol."""
        targets = self.targets.long().masked_fill(self.targets == 0, ignore_index)
        confusion = segmentation_confusion(object_masks(self.scores, segmenter.background),
                                           targets, segmenter.num_classes, ignore_index)
        return iou_from_confusion(confusion)

    def per_image_miou(self, segmenter: Segmenter, ignore_index: int = 255) -> list[float]:
        """mIoU of each image on its own (for finding the worst cases)."""
        predictions = self.masks(segmenter)
        return [iou_from_confusion(segmentation_confusion(p, t, segmenter.num_classes,
                                                          ignore_index))["mIoU"]
                for p, t in zip(predictions, self.targets, strict=True)]


@torch.no_grad()
def run_segmentation(segmenter: Segmenter, images_dir: str | Path, masks_dir: str | Path,
                     image_names: Sequence[str], image_size: int, batch_size: int = 64,
                     progress: bool = True) -> SegmentationRun:
    """Segment every image of ``image_names`` (same-size images, e.g. the synthetic set) and keep
    the class cosines at the masks' resolution next to the ground truth."""
    scores, targets = [], []
    for start in tqdm(range(0, len(image_names), batch_size), desc=f"segmenting ({segmenter.method})",
                      disable=not progress):
        images, masks = load_images_and_masks(segmenter.backbone, images_dir, masks_dir,
                                              image_names[start:start + batch_size], image_size)
        scores.append(segmenter.scores(images, size=masks.shape[-2:]).half().cpu())
        targets.append(masks)
    return SegmentationRun(torch.cat(scores), torch.cat(targets), list(image_names))


def load_images_and_masks(backbone: FrozenBackbone, images_dir: str | Path,
                          masks_dir: str | Path, image_names: Sequence[str], image_size: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-size images and their masks -> (network inputs ``[N, 3, S, S]`` from the backbone's
    transform at ``image_size``, masks ``[N, H, W]`` uint8 at the images' own size)."""
    transform = backbone.image_transform(image_size)
    images = torch.stack([transform(image=load_image(Path(images_dir) / name))["image"]
                          for name in image_names])
    masks = np.stack([load_mask(Path(masks_dir) / name) for name in image_names])
    return images, torch.from_numpy(masks)


ENTROPY_THRESHOLDS = tuple(float(t) for t in np.linspace(0.05, 0.95, 19))
# Cosine thresholds are placed where they cut: at these fractions of the tuning pixels (ranked by
# best cosine), so one grid fits any model's range of cosines.
COSINE_QUANTILES = tuple(float(q) for q in np.linspace(0.05, 0.95, 19))


def threshold_grid(runs: SegmentationRun | Sequence[SegmentationRun], background: str,
                   max_pixels: int = 1_000_000) -> tuple[float, ...]:
    """The thresholds :func:`tune_background` tries for one rule: :data:`ENTROPY_THRESHOLDS` for
    ``"entropy"``; for ``"cosine"`` the :data:`COSINE_QUANTILES` of the best class cosine over the
    pixels of ``runs`` (an evenly spaced subsample of at most ``max_pixels``)."""
    if background == "entropy":
        return ENTROPY_THRESHOLDS
    if background != "cosine":
        raise ValueError(f"only {THRESHOLD_RULES} have thresholds to tune, got {background!r}")
    best = torch.cat([run.scores.float().amax(1).flatten() for run in _as_list(runs)])
    best = best[::max(1, best.numel() // max_pixels)]
    return tuple(float(t) for t in torch.quantile(best, torch.tensor(COSINE_QUANTILES)))


def _as_list(runs: SegmentationRun | Sequence[SegmentationRun]) -> list[SegmentationRun]:
    return [runs] if isinstance(runs, SegmentationRun) else list(runs)


def confusions_by_threshold(scores: torch.Tensor, targets: torch.Tensor, num_classes: int,
                            logit_scale: float, background: str = "entropy",
                            thresholds: Sequence[float] = ENTROPY_THRESHOLDS,
                            ignore_index: int = 255) -> torch.Tensor:
    """``[B, K, H, W]`` class cosines and ``[B, H, W]`` targets -> one confusion matrix per
    threshold of the ``background`` rule, ``[len(thresholds), num_classes, num_classes]``. Sum
    them over batches (or over images of different sizes) to score a whole set at every
    threshold in one pass."""
    # Only the threshold changes: the best class and the rule's statistic are computed once.
    best_class, statistic = background_statistic(scores, logit_scale, background)
    return torch.stack([
        segmentation_confusion(background_masks(best_class, statistic, background, t), targets,
                               num_classes, ignore_index)
        for t in thresholds])


def threshold_with_best_miou(confusions: torch.Tensor, thresholds: Sequence[float]
                             ) -> tuple[float, float]:
    """(threshold, its mIoU) of the confusion matrix (from :func:`confusions_by_threshold`) with
    the highest mIoU."""
    scores = [iou_from_confusion(confusion)["mIoU"] for confusion in confusions]
    if all(math.isnan(score) for score in scores):
        raise ValueError("no pixel to score a threshold on: every target pixel is the ignore "
                         "index (or no image was given). Tune on images whose masks label "
                         "their pixels.")
    best = int(np.nanargmax(scores))
    return float(thresholds[best]), float(scores[best])


@dataclass
class BackgroundChoice:
    """What :func:`tune_background` chose: a rule, its threshold, and the tuning mIoU of the best
    threshold of every rule it tried (``dev_miou[rule]``)."""

    background: str
    threshold: float
    dev_miou: dict[str, float]


def tune_background(runs: SegmentationRun | Sequence[SegmentationRun], segmenter: Segmenter,
                    rules: Sequence[str] = THRESHOLD_RULES) -> BackgroundChoice:
    """Pick the background rule and threshold with the highest mIoU on ``runs`` (tune on a
    validation split, then report on the test split); every rule of ``rules`` tries its
    :func:`threshold_grid`. Images of different sizes come as one run each; their pixel counts
    are pooled. Apply the choice with :meth:`Segmenter.use_background`."""
    runs = _as_list(runs)
    best: dict[str, tuple[float, float]] = {}
    for rule in rules:
        thresholds = threshold_grid(runs, rule)
        confusions = sum(confusions_by_threshold(run.scores.float(), run.targets,
                                                 segmenter.num_classes, segmenter.logit_scale,
                                                 rule, thresholds)
                         for run in runs)
        best[rule] = threshold_with_best_miou(confusions, thresholds)
    rule = max(best, key=lambda r: best[r][1])
    return BackgroundChoice(rule, best[rule][0], {r: miou for r, (_, miou) in best.items()})
