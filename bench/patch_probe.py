"""What do the demo CLIP's patches know, and which background rule can read them?

Reads a finished demo run (``make demo`` -> ``outputs/demo/{clip,pacl}``) and the synthetic set,
and prints, for raw CLIP patches and for PACL, on ``--images`` test images:

- **shape accuracy**: on shape pixels only, how often the best of the 5 shape prompts is the right
  shape (chance 0.2);
- **mIoU, true background**: shapes from the argmax, background taken from the ground truth: an
  upper bound for *any* background rule on these scores;
- **AUROC of two shape-vs-background rules**: "low class entropy means shape" (the entropy
  rule) and "a high best-class cosine means shape" (the best-cosine rule). 0.5 is chance; below
  0.5 the rule points the wrong way (background pixels look *more* like a shape than shapes do).

Then the **supervised ceiling**: a linear and a one-hidden-layer probe trained with the masks
(cell labels at the centre pixel of each grid cell) on ``--probe-images`` training images. PACL
learns from captions only, so it should not be expected to beat a probe that saw the masks.

    .venv/bin/python bench/patch_probe.py [--run outputs/demo] [--data data/captioned_shapes]

Not a test: a measurement for the README and the issue notes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils.backbones import CourseCLIPBackbone
from utils.data import load_split, locate_dataset
from utils.metrics import mean_iou
from utils.models import load_clip
from utils.segmentation import (
    Segmenter,
    load_images_and_masks,
    normalised_entropy,
)
from utils.sources.synthetic import CLASS_NAMES
from utils.storage.pacl_io import load_pacl

SHAPES = list(CLASS_NAMES[1:])


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive`` (rank formula;
    ties are broken by order, which is fine for continuous scores)."""
    ranks = scores.flatten().double().argsort().argsort().double() + 1
    positive = positive.flatten()
    n_pos, n_neg = positive.sum().double(), (~positive).sum().double()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def load_batch(backbone, files, names: list[str], image_size: int):
    """-> (images ``[N, 3, S, S]``, masks ``[N, S, S]`` long)."""
    images, masks = load_images_and_masks(backbone, files.images_dir, files.root / "masks", names,
                                          image_size)
    return images, masks.long()


def score_report(segmenter: Segmenter, images: torch.Tensor, masks: torch.Tensor) -> dict:
    """Shape accuracy, true-background mIoU and the two detectors' AUROC for one method."""
    cosines = segmenter.scores(images, size=tuple(masks.shape[-2:]))                # [N, C, H, W]
    probabilities = (segmenter.logit_scale * cosines).softmax(1)
    best_cosine, best_class = cosines.max(1)
    shape = masks > 0
    true_background = torch.where(shape, best_class + 1, torch.zeros_like(best_class))
    return {"shape accuracy": float((best_class[shape] + 1 == masks[shape]).float().mean()),
            "mIoU, true background": mean_iou(true_background, masks, len(CLASS_NAMES))["mIoU"],
            "AUROC low entropy": auroc(-normalised_entropy(probabilities), shape),
            "AUROC high best cosine": auroc(best_cosine, shape)}


def cell_features(backbone, files, names: list[str], image_size: int, batch: int = 200):
    """Patch embeddings ``[N * P, D]`` and the class at each cell's centre pixel ``[N * P]``."""
    features, labels = [], []
    for start in range(0, len(names), batch):
        images, masks = load_batch(backbone, files, names[start:start + batch], image_size)
        patches = backbone.patch_embeddings(images)                               # [B, P, D]
        side = int(patches.shape[1] ** 0.5)
        step = image_size // side
        features.append(patches.flatten(0, 1))
        labels.append(masks[:, step // 2::step, step // 2::step].flatten())
    return torch.cat(features), torch.cat(labels)


def probe_miou(train: tuple, test: tuple, hidden: int, steps: int = 1500, seed: int = 0) -> float:
    """Train a cell classifier with cross-entropy on ``train`` -> cell-level mIoU on ``test``."""
    torch.manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = train, test
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    dim, classes = x_train.shape[1], len(CLASS_NAMES)
    probe = (nn.Linear(dim, classes) if hidden == 0 else
             nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes)))
    optimiser = torch.optim.Adam(probe.parameters(), lr=3e-3)
    for _ in range(steps):
        rows = torch.randint(len(x_train), (2048,))
        loss = F.cross_entropy(probe((x_train[rows] - mean) / std), y_train[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        predicted = probe((x_test - mean) / std).argmax(1)
    return mean_iou(predicted, y_test, classes)["mIoU"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="outputs/demo", help="a finished demo's output folder")
    parser.add_argument("--data", default="data/captioned_shapes")
    parser.add_argument("--images", type=int, default=500, help="test images scored")
    parser.add_argument("--probe-images", type=int, default=2000, help="training images probed")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    model, tokenizer = load_clip(Path(args.run) / "clip")
    backbone = CourseCLIPBackbone(model, tokenizer)
    pacl, _ = load_pacl(Path(args.run) / "pacl", backbone=backbone)
    files = locate_dataset(args.data)
    image_size = model.config.image_size
    test_names = [n for n, _ in load_split(files, "test")][:args.images]
    images, masks = load_batch(backbone, files, test_names, image_size)

    print(f"{len(test_names)} test images, {(masks > 0).float().mean():.3f} of pixels are shapes")
    rows = {method: score_report(Segmenter(backbone, SHAPES, method=method, pacl=pacl),
                                 images, masks) for method in ("raw", "pacl")}
    print(f"{'':24}" + "".join(f"{m:>8}" for m in rows))
    for key in rows["raw"]:
        print(f"{key:24}" + "".join(f"{rows[m][key]:>8.3f}" for m in rows))

    train_names = [n for n, _ in load_split(files, "train")][:args.probe_images]
    train = cell_features(backbone, files, train_names, image_size)
    test = cell_features(backbone, files, test_names, image_size)
    print(f"\nsupervised probes on raw patch embeddings ({len(train_names)} training images, "
          f"cell-level mIoU on the test images):")
    for hidden, name in ((0, "linear"), (256, "MLP, 256 hidden")):
        print(f"  {name:<18}{probe_miou(train, test, hidden):.3f}")


if __name__ == "__main__":
    main()
