"""Open-vocabulary semantic segmentation from patch-text scores (PACL Sec. 3.3; MaskCLIP).

Nothing here is trained on masks. A class is a *name*; its text embedding is compared with every
patch embedding of the image, the patch scores are upsampled to pixels, and each pixel takes the
class it matches best::

    class_emb[c]      = normalise(mean_t normalise(e_t(template_t(name_c))))   prompt ensemble
    scores[b, c, p]   = cos(patch_emb[b, p], class_emb[c])                     [B, C, P]
    probs[b, :, y, x] = softmax_c(s * bilinear_upsample(scores)[b, :, y, x])   s = logit scale
    mask[b, y, x]     = 1 + argmax_c probs   or 0 (background), see below

Background is not a class a caption names, so two ways to find it are offered: PACL's *entropy
threshold* (a pixel whose class distribution is nearly uniform matches no class well) or an
explicit *background prompt* that competes with the classes in the argmax.

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
from utils.prompts import PROMPT_TEMPLATES, format_prompt

METHODS = ("raw", "maskclip", "pacl")
BACKGROUND_MODES = ("entropy", "prompt")
# No final period, as in PROMPT_TEMPLATES: the course tokenizer maps "." to [UNK].
BACKGROUND_PROMPTS = ("a plain background", "an empty background", "a photo of nothing")


# --------------------------------------------------------------------------------------------
# Class embeddings and patch embeddings
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def class_embeddings(backbone: FrozenBackbone, class_names: Sequence[str],
                     templates: Sequence[str] = PROMPT_TEMPLATES) -> torch.Tensor:
    """``C`` class names -> ``[C, D]`` unit-length prompt-ensemble embeddings (CLIP Sec. 3.1.4).

    Every name is put into every template ("a photo of a {}"), each prompt is embedded and
    normalised, the ``T`` embeddings of a class are averaged and the mean is normalised again.
    """
    if isinstance(class_names, str) or not class_names:
        raise ValueError("class_names must be a non-empty list of names, e.g. ['circle', 'star']")
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


def masks_from_probabilities(probabilities: torch.Tensor, background: str = "entropy",
                             threshold: float = 0.5) -> torch.Tensor:
    """``[B, K, H, W]`` class probabilities -> ``[B, H, W]`` long masks (0 background, c+1 class c).

    Args:
        background: ``"entropy"``: the ``K`` entries are the classes, and a pixel whose
            normalised entropy is above ``threshold`` becomes background (PACL). ``"prompt"``:
            entry 0 is the background prompt's probability and competes in the argmax; entries
            ``1..K-1`` are the classes (``threshold`` unused).
    """
    if background == "prompt":
        return probabilities.argmax(1)
    if background != "entropy":
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
    return entropy_masks(probabilities.argmax(1), normalised_entropy(probabilities), threshold)


def entropy_masks(best_class: torch.Tensor, entropy: torch.Tensor, threshold: float
                  ) -> torch.Tensor:
    """PACL's background rule: ``[B, H, W]`` argmax class and normalised entropy -> masks, with
    0 where the entropy is above ``threshold`` (too unsure: background) and ``c + 1`` elsewhere."""
    return (best_class + 1).masked_fill(entropy > threshold, 0)


@dataclass
class Segmenter:
    """Turns images into class masks with one method and one class list.

    Args:
        backbone: the frozen CLIP.
        class_names: the foreground classes (background is found, not named).
        method: ``"raw"`` | ``"maskclip"`` | ``"pacl"`` (see the module docstring).
        pacl: the trained PACL module, for ``method="pacl"``.
        background: ``"entropy"`` (PACL's threshold) or ``"prompt"`` (background prompts compete).
        threshold: normalised-entropy threshold for ``background="entropy"``.
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
    _class_emb: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {BACKGROUND_MODES}, "
                             f"got {self.background!r}")
        if self.method == "pacl" and self.pacl is None:
            raise ValueError("method='pacl' needs the trained PACL module (pacl=...)")
        if self.logit_scale is None:
            self.logit_scale = (float(self.pacl.logit_scale.detach()) if self.method == "pacl"
                                else self.backbone.logit_scale)
        self.class_names = list(self.class_names)

    @property
    def num_classes(self) -> int:
        """Mask values in use: background plus one per class."""
        return len(self.class_names) + 1

    def text_embeddings(self) -> torch.Tensor:
        """``[K, D]``: the classes (after a background entry in ``"prompt"`` mode), in the space
        the patches are compared in (through PACL's text embedder when it has one)."""
        if self._class_emb is None:
            emb = class_embeddings(self.backbone, self.class_names, self.templates)
            if self.background == "prompt":
                # The background prompts share one ensemble: "an empty background." is no template.
                with torch.no_grad():
                    background = _ensemble(self.backbone.text_embeddings(
                        list(self.background_prompts)))
                emb = torch.cat([background[None], emb])
            if self.method == "pacl":
                emb = self.pacl.embed_texts(emb.float())
            self._class_emb = emb
        return self._class_emb

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

    def probabilities(self, images: torch.Tensor, size: tuple[int, int] | None = None
                      ) -> torch.Tensor:
        """``[B, 3, h, w]`` transformed images -> ``[B, K, H, W]`` class probabilities at ``size``
        (default: the input size): the softmax over classes of the scaled :meth:`scores`."""
        return (self.logit_scale * self.scores(images, size)).softmax(1)

    def masks(self, probabilities: torch.Tensor) -> torch.Tensor:
        """``[B, K, H, W]`` -> ``[B, H, W]`` masks with this segmenter's background rule."""
        return masks_from_probabilities(probabilities, self.background, self.threshold)

    def segment_image(self, image: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        """One RGB image ``[H, W, 3]`` uint8 (any size) -> (class probabilities ``[K, H, W]``,
        mask ``[H, W]``) at the image's own size; the network sees it resized to ``image_size``."""
        tensor = self.backbone.image_transform(image_size)(image=image)["image"][None]
        probabilities = self.probabilities(tensor, size=image.shape[:2])
        return probabilities[0].cpu().numpy(), self.masks(probabilities)[0].cpu().numpy()


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

    ``probabilities`` ``[N, K, H, W]`` float16, ``targets`` ``[N, H, W]`` uint8.
    """

    probabilities: torch.Tensor
    targets: torch.Tensor
    image_names: list[str]

    def masks(self, segmenter: Segmenter, threshold: float | None = None) -> torch.Tensor:
        """``[N, H, W]`` predicted masks (optionally at another entropy threshold)."""
        return masks_from_probabilities(self.probabilities.float(), segmenter.background,
                                        segmenter.threshold if threshold is None else threshold)

    def metrics(self, segmenter: Segmenter, threshold: float | None = None,
                ignore_index: int = 255) -> dict:
        """:func:`utils.metrics.mean_iou` of the whole set (pixel counts pooled over images)."""
        confusion = segmentation_confusion(self.masks(segmenter, threshold), self.targets,
                                           segmenter.num_classes, ignore_index)
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
    the class probabilities at the masks' resolution next to the ground truth."""
    probabilities, targets = [], []
    for start in tqdm(range(0, len(image_names), batch_size), desc=f"segmenting ({segmenter.method})",
                      disable=not progress):
        images, masks = load_images_and_masks(segmenter.backbone, images_dir, masks_dir,
                                              image_names[start:start + batch_size], image_size)
        probabilities.append(segmenter.probabilities(images, size=masks.shape[-2:]).half().cpu())
        targets.append(masks)
    return SegmentationRun(torch.cat(probabilities), torch.cat(targets), list(image_names))


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


def confusions_by_threshold(probabilities: torch.Tensor, targets: torch.Tensor, num_classes: int,
                            thresholds: Sequence[float] = ENTROPY_THRESHOLDS,
                            ignore_index: int = 255) -> torch.Tensor:
    """``[B, K, H, W]`` class probabilities and ``[B, H, W]`` targets -> one confusion matrix per
    entropy threshold, ``[len(thresholds), num_classes, num_classes]``. Sum them over batches (or
    over images of different sizes) to score a whole set at every threshold in one pass."""
    # Only the threshold changes: the argmax and the entropy are computed once.
    best_class, entropy = probabilities.argmax(1), normalised_entropy(probabilities)
    return torch.stack([
        segmentation_confusion(entropy_masks(best_class, entropy, t), targets, num_classes,
                               ignore_index)
        for t in thresholds])


def threshold_with_best_miou(confusions: torch.Tensor,
                             thresholds: Sequence[float] = ENTROPY_THRESHOLDS) -> float:
    """The threshold whose confusion matrix (from :func:`confusions_by_threshold`) has the
    highest mIoU."""
    scores = [iou_from_confusion(confusion)["mIoU"] for confusion in confusions]
    return float(thresholds[int(np.nanargmax(scores))])


def best_threshold(run: SegmentationRun, segmenter: Segmenter,
                   thresholds: Sequence[float] = ENTROPY_THRESHOLDS) -> float:
    """The entropy threshold with the highest mIoU on ``run`` (tune it on a validation split, then
    report on the test split)."""
    confusions = confusions_by_threshold(run.probabilities.float(), run.targets,
                                         segmenter.num_classes, thresholds)
    return threshold_with_best_miou(confusions, thresholds)
