"""How much faster does PACL's embedder train from the feature cache than through the backbone?

On CPU, with the course's tiny CLIP (random weights: speed does not depend on them) on a freshly
generated synthetic set of ``--images`` images, one run side by side:

(a) every step loads and transforms the images and runs the frozen backbone to get the patch
    embeddings, then trains the embedder;
(b) every step reads the patch embeddings from :func:`utils.storage.feature_cache.cache_features`' cache.

Both train the same :class:`utils.pacl.PACL` with :func:`utils.train.fit` (same batches, same
loss); text embeddings come from the cache in both, so the difference is the image side only.
Prints seconds per epoch of each, their ratio, how much of (a) the backbone took, the one-time
cache build and a cache reuse, and the floating-point operations of one batch on each side: the
cache removes only the backbone's forward pass, so ``1 + backbone / training step`` (in FLOPs)
is roughly the most the cache can gain. Not a test.

``--backbone vit-b16`` swaps in a randomly initialised Hugging Face CLIP ViT-B/16 (the Colab
backbone; no download) at 224 px, to see the ratio where the backbone is heavy; use few images.

    .venv/bin/python bench/pacl_feature_cache.py [--images 600] [--epochs 2] [--image-size 64]
    .venv/bin/python bench/pacl_feature_cache.py --backbone vit-b16 --images 64 --image-size 224
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPConfig as HFCLIPConfig
from transformers import CLIPModel

from utils.backbones import CourseCLIPBackbone, FrozenBackbone, HFCLIPBackbone
from utils.data import ImageCaptionDataset, load_split, locate_dataset
from utils.models import CLIP, CLIPConfig
from utils.pacl import PACL, pacl_batch_loss, pacl_parameter_groups
from utils.positives import text_id_positives
from utils.prompts import SHAPES_VOCABULARY, training_texts
from utils.sources.synthetic import generate_captioned_shapes
from utils.storage.feature_cache import (
    FeatureCache,
    cache_features,
    pacl_feature_loader,
)
from utils.tokenization import train_wordpiece_tokenizer
from utils.train import TrainConfig, fit

BATCH_SIZE = 64
COURSE_EMBED_DIM = 128


class ImageTextIdCollator:
    """Images of the batch plus, for (a), the cache's text ids and positives of their texts."""

    def __init__(self, cache: FeatureCache):
        self.text_index = {text: i for i, text in enumerate(cache.texts)}
        self.image_text_ids = cache.image_text_ids

    def __call__(self, samples: list[dict]) -> dict:
        text_ids = torch.tensor([self.text_index[sample["caption"]] for sample in samples])
        image_text_ids = [self.image_text_ids[sample["image_index"]] for sample in samples]
        return {"images": torch.stack([sample["image"] for sample in samples]),
                "text_ids": text_ids,
                "positives": text_id_positives(image_text_ids, text_ids)}


def make_backbone(kind: str, tokenizer, image_size: int) -> FrozenBackbone:
    """The course's tiny CLIP, or CLIP ViT-B/16's architecture, both with random weights."""
    torch.manual_seed(0)
    if kind == "course":
        return CourseCLIPBackbone(CLIP(CLIPConfig(vocab_size=len(tokenizer), image_size=image_size,
                                                  embed_dim=COURSE_EMBED_DIM)), tokenizer)
    config = HFCLIPConfig(text_config={"vocab_size": len(tokenizer),
                                       "pad_token_id": tokenizer.pad_token_id,
                                       "bos_token_id": tokenizer.cls_token_id,
                                       "eos_token_id": tokenizer.sep_token_id},
                          vision_config={"patch_size": 16, "image_size": image_size},
                          projection_dim=512)
    return HFCLIPBackbone(CLIPModel(config), tokenizer)


def seconds_per_epoch(loader: DataLoader, loss_fn, epochs: int, embed_dim: int) -> float:
    torch.manual_seed(0)
    pacl = PACL(embed_dim)
    start = time.perf_counter()
    fit(pacl, pacl_parameter_groups(pacl, lr=1e-3), loader, loss_fn,
        TrainConfig(epochs=epochs, eval_every=0, device="cpu", progress=False))
    return (time.perf_counter() - start) / epochs


def gigaflops(run) -> float:
    """Floating-point operations (in 1e9) of calling ``run()`` once, counted by torch."""
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", choices=("course", "vit-b16"), default="course")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_captioned_shapes(Path(tmp) / "shapes", num_train=args.images, num_dev=0,
                                         num_test=0, image_size=args.image_size, progress=False)
        files = locate_dataset(root)
        rng = np.random.default_rng(0)
        items = [(name, training_texts(captions, SHAPES_VOCABULARY, rng=rng))
                 for name, captions in load_split(files, "train")]
        tokenizer = train_wordpiece_tokenizer([t for _, texts in items for t in texts],
                                              vocab_size=400)
        backbone = make_backbone(args.backbone, tokenizer, args.image_size)

        def build() -> FeatureCache:
            return cache_features(backbone, files.images_dir, items, args.image_size,
                                  Path(tmp) / "cache", "shapes-train", progress=False)

        start = time.perf_counter()
        cache = build()
        build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        build()
        reuse_seconds = time.perf_counter() - start

        text_emb = torch.from_numpy(np.array(cache.text_emb))
        embed_dim = text_emb.shape[1]
        backbone_seconds = []

        def loss_through_backbone(pacl: PACL, batch: dict) -> torch.Tensor:
            start = time.perf_counter()
            patch_emb = backbone.patch_embeddings(batch["images"])
            backbone_seconds.append(time.perf_counter() - start)
            return pacl_batch_loss(pacl, {"patch_emb": patch_emb,
                                          "text_emb": text_emb[batch["text_ids"]],
                                          "positives": batch["positives"]})

        image_loader = DataLoader(
            ImageCaptionDataset(files.images_dir, items, backbone.image_transform(args.image_size)),
            batch_size=BATCH_SIZE, shuffle=True, drop_last=True,
            collate_fn=ImageTextIdCollator(cache))
        batch = next(iter(image_loader))
        patch_emb = backbone.patch_embeddings(batch["images"])
        backbone_gflop = gigaflops(lambda: backbone.patch_embeddings(batch["images"]))
        step_gflop = gigaflops(lambda: pacl_batch_loss(PACL(embed_dim), {
            "patch_emb": patch_emb, "text_emb": text_emb[batch["text_ids"]],
            "positives": batch["positives"]}).backward())
        through_backbone = seconds_per_epoch(image_loader, loss_through_backbone, args.epochs,
                                             embed_dim)
        from_cache = seconds_per_epoch(pacl_feature_loader(cache, BATCH_SIZE), pacl_batch_loss,
                                       args.epochs, embed_dim)

    steps = args.images // BATCH_SIZE
    print(f"PACL embedder training on CPU ({torch.get_num_threads()} threads): {args.backbone} "
          f"backbone, {args.images} synthetic images at {args.image_size} px, "
          f"P = {cache.patch_emb.shape[1]}, D = {embed_dim}, batch {BATCH_SIZE} "
          f"({steps} steps/epoch), {len(cache.texts)} distinct texts, {args.epochs} epochs each")
    print(f"  cache build (once):          {build_seconds:6.2f} s   reuse: {reuse_seconds:.2f} s")
    print(f"  (a) backbone every step:     {through_backbone:6.2f} s/epoch "
          f"({sum(backbone_seconds) / args.epochs:.2f} s of it in the backbone)")
    print(f"  (b) from the cache:          {from_cache:6.2f} s/epoch")
    print(f"  speed-up (a) / (b):          {through_backbone / from_cache:6.1f} x")
    print(f"  per batch: backbone forward {backbone_gflop:.1f} GFLOP; embedder + loss, forward and "
          f"backward, {step_gflop:.1f} GFLOP -> at equal FLOP rates the cache gains at most "
          f"{1 + backbone_gflop / step_gflop:.1f} x")


if __name__ == "__main__":
    main()
