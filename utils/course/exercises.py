"""The assignment's exercises (notebook 04): what each asks for, its reference, its test inputs.

Each exercise asks for something the notebooks explain but never show as code to copy:

(a) ``clip_loss(image_emb [N, D], text_emb [N, D], logit_scale, positives [N, N] bool)`` -> a
    0-dim tensor in the inputs' dtype, differentiable: CLIP's loss (Radford et al. 2021, Fig. 3)
    when a row may have several true captions. Row ``i``'s target is spread evenly over its
    positives ``positives[i]``, column ``j``'s over ``positives[:, j]`` (notebook 01 §5 explains
    it; the course's :func:`utils.losses.clip_loss` with ``positives`` is the reference).
(b) ``image_to_text_recall(similarity [I, T], text_to_image [T], k) -> float``: the share of
    images with at least one of their captions among their ``k`` best-scored captions
    (:func:`utils.metrics.recall_at_k` over the image -> text direction).
(c) ``pacl_compatibility(patch_emb [B, P, D], text_emb [T, D], patch_mask [B, P] bool)`` ->
    ``[B, T]``: PACL's compatibility (Mukhoti et al. 2023, Eq. 2-3) when images of different
    sizes were padded to one patch grid: padded patches (``patch_mask`` False) get no weight in
    the softmax and add nothing to the weighted sum. The course's own rule, for this exercise;
    the reference is :func:`reference_masked_compatibility`.
(d) ``voc20_mean_iou(scores [N, 1 + C, H, W], target [N, H, W]) -> float``: mIoU under the
    VOC-20 rule the course scores PACL with (notebook 03 §3): pixels whose target is background
    (0) or ``ignore_index`` count for nothing, and background is never predicted (each pixel gets
    its best object class, channels 1..C). Reference: :func:`reference_voc20_mean_iou`.
(e) an open experiment: ``run_experiment() -> matplotlib Figure`` and a paragraph
    ``EXPERIMENT_ANSWER``; only their form can be checked.

A :class:`Case` builds its inputs from fixed seeds, so the student's kernel and the grader (in
another process) build the same inputs without sending them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from utils.losses import clip_loss as reference_clip_loss
from utils.metrics import mean_iou, recall_at_k
from utils.pacl import patch_text_similarity
from utils.positives import positives_from_text_to_image

# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One input of a check. ``make`` builds fresh arguments on every call (the student and the
    reference each get their own copy, so strides such as a transposed view survive)."""

    name: str
    make: Callable[[], tuple]
    hint: str
    kwargs: dict = field(default_factory=dict)
    gradients: bool = False   # also compare the gradients of the inputs that require them


@dataclass
class Exercise:
    key: str
    title: str
    function_name: str
    reference: Callable
    answer_kind: str           # "tensor" or "float": how an answer is compared
    cases: list[Case]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=_generator(seed), dtype=dtype)


def _randint(high: int, *shape: int, seed: int) -> torch.Tensor:
    return torch.randint(high, shape, generator=_generator(seed))


def _row_scaled(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Rows of very different lengths (0.1 to 10), directions unchanged."""
    scale = 10 ** (2 * torch.rand(*x.shape[:-1], 1, generator=_generator(seed), dtype=x.dtype) - 1)
    return x * scale


def _requiring_grad(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().requires_grad_(True) for t in tensors)


def _grouped(num_images: int, per_image: int) -> torch.Tensor:
    return torch.arange(num_images).repeat_interleave(per_image)


# --------------------------------------------------------------------------------------------
# (a) CLIP's loss with several positives per row
# --------------------------------------------------------------------------------------------

def _same_group(groups: list[int]) -> torch.Tensor:
    """``[N, N]`` positives: pairs ``i`` and ``j`` match when they show the same image."""
    group = torch.tensor(groups)
    return group[:, None] == group[None, :]


def _grouped_pairs(groups: list[int], dim: int, seed: int, logit_scale: float = 10.0,
                   dtype=torch.float32) -> tuple:
    """Arguments of (a): random pairs, and positives saying which pairs show the same image.
    (The image embeddings differ: identical copies would give the spread targets and the
    diagonal the same loss.)"""
    return (_randn(len(groups), dim, seed=seed, dtype=dtype),
            _randn(len(groups), dim, seed=seed + 1, dtype=dtype), logit_scale, _same_group(groups))


def _one_way_positive() -> tuple:
    """Caption 3 also describes image 0, but caption 0 does not describe image 3: row 0 has two
    positives, column 0 one; so rows and columns need their own normalisation."""
    positives = torch.eye(5, dtype=torch.bool)
    positives[0, 3] = True
    return _randn(5, 8, seed=111), _randn(5, 8, seed=112), 5.0, positives


def _clip_loss_cases() -> list[Case]:
    recipe = ("logits = s * normalize(I) @ normalize(T).T; row i's target puts 1/|positives[i]| "
              "on each of its positives, column j's puts 1/|positives[:, j]| on each of its own; "
              "loss = (mean over rows of -sum target * log_softmax(row) + the same over the "
              "columns) / 2")
    return [
        Case("one positive per row (positives = the identity), N=8, logit_scale=10",
             lambda: (_randn(8, 16, seed=101), _randn(8, 16, seed=102), 10.0,
                      torch.eye(8, dtype=torch.bool)),
             "with the identity as positives this is CLIP's ordinary loss: cross-entropy over "
             "rows and over columns, averaged."),
        Case("pairs 0-1, 2-4 and 5 show the same image (2, 3 and 1 captions)",
             lambda: _grouped_pairs([0, 0, 1, 1, 1, 2], 8, seed=103),
             f"recipe: {recipe}. A row with two positives puts 1/2 on each, not 1 on each."),
        Case("a caption that is a positive for another row only one way (rows and columns differ)",
             _one_way_positive,
             "normalise the targets of the columns over the positives of each column "
             "(positives.T), not with the rows' counts."),
        Case("embeddings of very different lengths",
             lambda: (_row_scaled(_randn(6, 8, seed=113), 114),
                      _row_scaled(_randn(6, 8, seed=115), 116), 10.0,
                      _same_group([0, 1, 1, 2, 3, 3])),
             "L2-normalise both embeddings along D before the dot product (F.normalize(x, dim=-1))."),
        Case("logit_scale as a 0-dim tensor (1 / 0.07)",
             lambda: (_randn(6, 8, seed=117), _randn(6, 8, seed=118), torch.tensor(1 / 0.07),
                      _same_group([0, 0, 1, 2, 2, 2])),
             "multiply the cosine similarities by logit_scale: it is already exponentiated."),
        Case("every pair in the batch a positive of every other",
             lambda: (_randn(4, 8, seed=119), _randn(4, 8, seed=120), 10.0,
                      torch.ones(4, 4, dtype=torch.bool)),
             "with every entry a positive, the target of a row is uniform over all columns."),
        Case("the largest logit scale CLIP allows (100), N=16",
             lambda: _grouped_pairs([i // 2 for i in range(16)], 16, seed=121, logit_scale=100.0),
             "exp(100) overflows float32: use log_softmax, never exp yourself."),
        Case("non-contiguous inputs (transposed views of [D, N] tensors)",
             lambda: (_randn(8, 6, seed=123).T, _randn(8, 6, seed=124).T, 10.0,
                      _same_group([0, 1, 1, 2, 3, 3]).T),
             "use operations that accept any memory layout: `@`, F.normalize, .reshape (not .view)."),
        Case("float64 embeddings",
             lambda: _grouped_pairs([0, 0, 1, 2, 2, 3], 8, seed=125, dtype=torch.float64),
             "the loss must keep the inputs' dtype: convert the positives to the logits' dtype, "
             "not to float32."),
        Case("inputs that require gradients: the loss must backpropagate",
             lambda: (*_requiring_grad(_randn(6, 8, seed=127), _randn(6, 8, seed=128)), 10.0,
                      _same_group([0, 0, 1, 2, 3, 3])),
             "return a tensor computed with torch operations only.", gradients=True),
    ]


# --------------------------------------------------------------------------------------------
# (b) Recall@K with several captions per image
# --------------------------------------------------------------------------------------------

def reference_image_to_text_recall(similarity: torch.Tensor, text_to_image: torch.Tensor,
                                   k: int) -> float:
    """Image -> text recall@k of :func:`utils.metrics.recall_at_k` (the course's retrieval)."""
    positives = positives_from_text_to_image(text_to_image, similarity.shape[0]).T   # [I, T]
    return recall_at_k(similarity, positives, [k])[k]


def _recall_cases() -> list[Case]:
    rule = ("image i is a hit when ANY caption j with text_to_image[j] == i is among the k "
            "highest-scoring columns of row i (torch.topk(k), ranks 1..k)")
    best_not_first = torch.full((3, 6), -1.0)
    best_not_first[0, [0, 1]] = torch.tensor([0.1, 0.9])     # image 0's second caption wins
    best_not_first[1, [2, 3]] = torch.tensor([0.2, 0.8])
    best_not_first[2, [4, 5]] = torch.tensor([0.3, 0.7])
    best_not_first[0, 4] = 0.5                                # image 0's first caption is 3rd
    duplicate = _randn(4, 8, seed=31)
    duplicate[:, 3] = duplicate[:, 2]                         # captions 2 and 3 (both image 1) tie
    return [
        Case("4 images with 5 captions each (captions 5i..5i+4 belong to image i), k=1",
             lambda: (_randn(4, 20, seed=21), _grouped(4, 5), 1), rule),
        Case("the same kind of input, k=5",
             lambda: (_randn(4, 20, seed=22), _grouped(4, 5), 5),
             f"{rule}; k=5 means the top 5, not 4 or 6."),
        Case("an image's best caption is not its first one, k=1",
             lambda: (best_not_first.clone(), _grouped(3, 2), 1),
             "every caption of an image counts, not only its first one."),
        Case("captions in shuffled order, k=3",
             lambda: (_randn(5, 15, seed=23), _grouped(5, 3)[torch.randperm(
                 15, generator=_generator(24))], 3),
             "find an image's captions with text_to_image, not by their position."),
        Case("images with different numbers of captions (1 to 4), k=2",
             lambda: (_randn(4, 10, seed=25), torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]), 2),
             "do not assume five captions per image."),
        Case("a single image (batch of 1), k=1",
             lambda: (_randn(1, 5, seed=26), torch.zeros(5, dtype=torch.long), 1),
             "with one image, all captions are its own: the recall is 1."),
        Case("k larger than the number of captions (k=10, 6 captions)",
             lambda: (_randn(3, 6, seed=27), _grouped(3, 2), 10),
             "cap k at the number of captions: torch.topk raises when k > T."),
        Case("tied scores: two captions of image 1 are duplicates, k=1",
             lambda: (duplicate.clone(), _grouped(4, 2), 1), rule),
        Case("non-contiguous similarity (a transposed [T, I] tensor), k=2",
             lambda: (_randn(12, 4, seed=28).T, _grouped(4, 3), 2),
             "use operations that accept any memory layout (.reshape, not .view)."),
        Case("float64 similarity, k=2",
             lambda: (_randn(6, 18, seed=29, dtype=torch.float64), _grouped(6, 3), 2), rule),
    ]


# --------------------------------------------------------------------------------------------
# (c) PACL's compatibility with padded patches masked out
# --------------------------------------------------------------------------------------------

def reference_masked_compatibility(patch_emb: torch.Tensor, text_emb: torch.Tensor,
                                   patch_mask: torch.Tensor) -> torch.Tensor:
    """PACL Eq. 2-3 over the real patches only: ``[B, P, D], [T, D], [B, P] bool -> [B, T]``.

    A padded patch's cosine is set to ``-inf`` before the softmax over patches, so its weight is
    exactly 0; it is also zeroed in the weighted sum, so that whatever the padding holds (even
    inf or nan) cannot reach the result.
    """
    keep = patch_mask.bool()
    similarity = patch_text_similarity(patch_emb, text_emb)                     # [B, T, P]
    weights = similarity.masked_fill(~keep[:, None, :], float("-inf")).softmax(dim=-1)
    patches = patch_emb.masked_fill(~keep[..., None], 0)
    pooled = torch.einsum("btp,bpd->btd", weights, patches)                     # [B, T, D]
    return torch.einsum("btd,td->bt", F.normalize(pooled, dim=-1), F.normalize(text_emb, dim=-1))


def _padded(valid: list[int], num_patches: int, dim: int, seed: int, fill: float | None = None,
            dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of ``len(valid)`` images, image ``b`` with ``valid[b]`` real patches then padding
    (zeros, or ``fill`` times a random vector: padding that would win the softmax if counted)."""
    patches = _randn(len(valid), num_patches, dim, seed=seed, dtype=dtype)
    mask = torch.arange(num_patches)[None, :] < torch.tensor(valid)[:, None]   # [B, P]
    padding = torch.zeros_like(patches) if fill is None else fill * _randn(
        *patches.shape, seed=seed + 1, dtype=dtype)
    return torch.where(mask[..., None], patches, padding), mask


def _padded_case(valid: list[int], num_patches: int, num_texts: int, seed: int,
                 fill: float | None = None, dtype=torch.float32) -> tuple:
    """``(patch_emb, text_emb, patch_mask)`` with :func:`_padded` patches and random texts."""
    patches, mask = _padded(valid, num_patches, 8, seed, fill, dtype)
    return patches, _randn(num_texts, 8, seed=seed + 2, dtype=dtype), mask


def _transposed_view(x: torch.Tensor) -> torch.Tensor:
    """The same values as ``x`` [B, P, D], laid out as a transposed [B, D, P] tensor."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _pacl_cases() -> list[Case]:
    recipe = ("s_p = cos(patch_p, text) for the real patches; a = softmax over the real patches "
              "only (a padded patch gets weight 0); v = sum_p a_p * patch_p (the patches as "
              "given, not normalised); result [b, t] = cos(v, text_t)")
    return [
        Case("no padding (every patch real): B=2, P=9, T=3, D=8",
             lambda: _padded_case([9, 9], 9, 3, seed=141), f"recipe: {recipe}."),
        Case("images with 9 and 4 real patches, padded with zeros",
             lambda: _padded_case([9, 4], 9, 3, seed=143),
             "a zero patch has cosine 0, so the softmax still gives it weight: mask the cosines "
             "of padded patches with -inf (or a very negative number) before the softmax."),
        Case("padding that would win the softmax if it were counted",
             lambda: _padded_case([6, 3, 9], 9, 4, seed=147, fill=50.0),
             "padded patches must get no weight and add nothing to the weighted sum."),
        Case("patches of very different lengths, some padding",
             lambda: (lambda p, t, m: (_row_scaled(p, 152), t, m))(
                 *_padded_case([7, 5], 7, 3, seed=151)),
             "the softmax weights use cosines, but the weighted sum uses the patches as given."),
        Case("texts of very different lengths",
             lambda: (lambda p, t, m: (p, _row_scaled(t, 158), m))(
                 *_padded_case([5, 2], 5, 4, seed=155)),
             "normalise the text embeddings for both cosines."),
        Case("one real patch in an image: its compatibility is that patch's cosine",
             lambda: _padded_case([1, 6], 6, 2, seed=159, fill=3.0), f"recipe: {recipe}."),
        Case("one image and one text (B=1, T=1)", lambda: _padded_case([4], 6, 1, seed=163),
             "keep the output 2-D, [B, T], even when B or T is 1 (no .squeeze())."),
        Case("the real patches are not the first ones (mask [[F, T, F, T, T, F]])",
             lambda: (_randn(1, 6, 8, seed=167) * 10, _randn(3, 8, seed=168),
                      torch.tensor([[False, True, False, True, True, False]])),
             "use the mask itself, not a count of real patches."),
        Case("non-contiguous patches (a transposed [B, D, P] tensor)",
             lambda: (lambda p, t, m: (_transposed_view(p), t, m))(
                 *_padded_case([6, 4], 6, 3, seed=169)),
             "use operations that accept any memory layout: einsum, `@`, .reshape (not .view)."),
        Case("float64 inputs", lambda: _padded_case([5, 3], 5, 3, seed=173, dtype=torch.float64),
             "keep the inputs' dtype."),
    ]


# --------------------------------------------------------------------------------------------
# (d) mIoU under the VOC-20 rule
# --------------------------------------------------------------------------------------------

def reference_voc20_mean_iou(scores: torch.Tensor, target: torch.Tensor,
                             ignore_index: int = 255) -> float:
    """mIoU over object pixels only, background never predicted (the course's
    ``SegmentationRun.object_metrics``): ``[N, 1 + C, H, W], [N, H, W] -> float``."""
    prediction = scores[:, 1:].argmax(dim=1) + 1              # the best object class, 1..C
    target = target.long().masked_fill(target == 0, ignore_index)
    return mean_iou(prediction, target, scores.shape[1], ignore_index)["mIoU"]


def _voc(num_objects: int, batch: int, size: int, seed: int, agree: float = 0.6,
         background: float = 0.3, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[N, 1 + C, H, W]`` and a target ``[N, H, W]``: about ``background`` of the target
    is background (0); the scores' best object class agrees with the target on about ``agree`` of
    the object pixels, and the background channel wins on the background pixels."""
    target = 1 + _randint(num_objects, batch, size, size, seed=seed)
    is_background = torch.rand(batch, size, size, generator=_generator(seed + 1)) < background
    target = target.masked_fill(is_background, 0)
    scores = _randn(batch, 1 + num_objects, size, size, seed=seed + 2, dtype=dtype)
    agree_here = torch.rand(batch, size, size, generator=_generator(seed + 3)) < agree
    boost = torch.nn.functional.one_hot(target, 1 + num_objects).permute(0, 3, 1, 2).to(dtype)
    scores = scores + 4 * boost * agree_here[:, None]
    scores[:, 0] += 4 * is_background          # a model that would say "background" there
    return scores, target


def _with_ignored(seed: int, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    scores, target = _voc(4, 2, 6, seed=seed)
    target[:, :2] = ignore_index                 # object borders: no label
    return scores, target


def _absent_class(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 4 of 5 appears nowhere: neither in the target nor as anyone's best object class."""
    scores, target = _voc(5, 2, 6, seed=seed)
    target = target.masked_fill(target == 4, 1)
    scores[:, 4] = -100.0
    return scores, target


def _voc20_cases() -> list[Case]:
    rule = ("predict each pixel's best OBJECT class (argmax over channels 1..C, plus 1); drop "
            "pixels whose target is 0 (background) or ignore_index; IoU_c over all kept pixels "
            "of the batch; mIoU = mean over the classes present in the prediction or the target")
    return [
        Case("one 8x8 image, 3 object classes (channels 1-3) and background (channel 0)",
             lambda: _voc(3, 1, 8, seed=181), rule),
        Case("background pixels where the background channel scores highest",
             lambda: _voc(3, 2, 6, seed=183, background=0.5),
             "background is never predicted: take the argmax over channels 1..C only, and leave "
             "the pixels whose target is background out of the counts."),
        Case("pixels marked 255 (ignore_index) in the target", lambda: _with_ignored(185),
             "drop the pixels whose target is ignore_index before counting anything."),
        Case("another ignore index (ignore_index=250)", lambda: _with_ignored(187, 250),
             "use the ignore_index argument, not a hard-coded 255.",
             kwargs={"ignore_index": 250}),
        Case("an object class absent from the image and from the prediction",
             lambda: _absent_class(189),
             "leave classes that appear neither in the prediction nor in the target out of the "
             "mean."),
        Case("a batch of 3 images: counts pooled over the batch",
             lambda: _voc(4, 3, 6, seed=191, agree=0.4),
             "pool the pixel counts over the whole batch, then divide; do not average per-image "
             "IoUs."),
        Case("a perfect prediction on the object pixels: mIoU = 1",
             lambda: _voc(3, 2, 6, seed=193, agree=1.0), rule),
        Case("non-contiguous maps (scores and target as transposed views)",
             lambda: (lambda s, t: (s.transpose(-1, -2), t.transpose(-1, -2)))(
                 *_voc(3, 2, 6, seed=195)),
             "use operations that accept any memory layout (.reshape or .flatten, not .view)."),
        Case("float64 scores and an int32 target",
             lambda: (lambda s, t: (s, t.int()))(*_voc(3, 2, 6, seed=197, dtype=torch.float64)),
             "do not rely on the target being int64."),
    ]


EXERCISES = {
    "a": Exercise("a", "CLIP's loss, several positives", "clip_loss", reference_clip_loss,
                  "tensor", _clip_loss_cases()),
    "b": Exercise("b", "image -> text recall@K", "image_to_text_recall",
                  reference_image_to_text_recall, "float", _recall_cases()),
    "c": Exercise("c", "PACL, padded patches", "pacl_compatibility",
                  reference_masked_compatibility, "tensor", _pacl_cases()),
    "d": Exercise("d", "mIoU, the VOC-20 rule", "voc20_mean_iou", reference_voc20_mean_iou,
                  "float", _voc20_cases()),
}
EXPERIMENT_TITLE = "the open experiment"
EXPERIMENT_NAMES = ("run_experiment", "EXPERIMENT_ANSWER")
MIN_ANSWER_WORDS = 50
