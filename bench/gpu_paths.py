"""The CUDA code paths that Colab runs, exercised and timed on one GPU (random weights, no download).

The offline tests run this code on CPU only; this script is the check that it also runs on CUDA,
and the source of the GPU figures the README quotes. Three blocks of output:

1. ``make demo``'s job on the GPU (``fit`` with float16 autocast): the dataset is generated, the
   course CLIP trained, PACL trained, the test split segmented; wall time, recall and mIoU.
2. Notebook 01's Flickr8k model (ResNet-50 + DistilBERT, 224 px, batch 64) trained by ``fit`` on
   the synthetic images resized to 224 px, with autocast and without, fed by the DataLoader and
   by one batch kept on the GPU: images per second and peak GPU memory.
3. Notebooks 02-03's backbone, CLIP ViT-B/16's architecture at 224 px: the feature-cache build,
   PACL epochs from the cache, and MaskCLIP and PACL segmentation, in images per second.

Weights in blocks 2-3 are random (nothing can be downloaded): speed does not depend on them, so
their accuracies would mean nothing and are not printed.

    python bench/gpu_paths.py [--data /tmp/captioned_shapes] [--out outputs/gpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from pacl_feature_cache import make_backbone  # bench/, the script's own folder
from torch.utils.data import DataLoader

from utils.course.demo import SHAPE_CLASSES, DemoConfig, format_summary, run_demo
from utils.data import (
    CaptionCollator,
    ImageCaptionDataset,
    build_transform,
    load_split,
    locate_dataset,
)
from utils.losses import clip_batch_loss
from utils.models import CLIP, CLIPConfig, clip_parameter_groups
from utils.pacl import PACL, pacl_batch_loss, pacl_parameter_groups
from utils.prompts import SHAPES_VOCABULARY, training_texts
from utils.segmentation import Segmenter, run_segmentation
from utils.storage.feature_cache import cache_features, pacl_feature_loader
from utils.tokenization import train_wordpiece_tokenizer
from utils.train import (
    TrainConfig,
    fit,
    move_to,
)

COLAB_IMAGE_SIZE = 224


def gpu_seconds(function, *args, **kwargs) -> tuple[float, object]:
    """Wall seconds of ``function(*args, **kwargs)``, the GPU's queue drained before and after,
    and its result."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30


def demo_on_gpu(data_root: str, out_dir: Path) -> None:
    seconds, metrics = gpu_seconds(run_demo, replace(
        DemoConfig(), data_root=data_root, out_dir=str(out_dir / "demo"), progress=False))
    print(f"\n[1] make demo's job on {torch.cuda.get_device_name()} ({seconds:.0f} s in all)")
    print(format_summary(metrics))
    print(f"CLIP (data included): {metrics['train_seconds']:.0f} s, PACL: "
          f"{metrics['pacl']['seconds']:.0f} s, peak GPU memory {peak_gib():.2f} GiB")


def colab_clip_throughput(files, train_items, tokenizer, steps: int, workers: int) -> None:
    """Notebook 01's Colab model, ``steps`` batches of 64 per run: fed by the loader, then by
    one batch already on the GPU (the model's own speed; the gap is what data loading costs)."""
    print(f"\n[2] ResNet-50 + DistilBERT (random weights), {COLAB_IMAGE_SIZE} px, batch 64, "
          f"{steps} steps through fit, {workers} loader workers")
    items = train_items[:64 * steps]
    loader = DataLoader(
        ImageCaptionDataset(files.images_dir, items,
                            build_transform(COLAB_IMAGE_SIZE, train=True, seed=0)),
        batch_size=64, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=True,
        collate_fn=CaptionCollator(tokenizer, 48, captions_of_images=[c for _, c in items]))
    one_batch = [move_to(next(iter(loader)), torch.device("cuda"))] * steps
    for amp in (True, False, True):   # autocast twice: the first run pays cuDNN's warm-up
        for source, batches in (("loader", loader), ("one batch", one_batch)):
            torch.manual_seed(0)
            model = CLIP(CLIPConfig(image_encoder="resnet50", text_encoder="distilbert",
                                    pretrained=False, image_size=COLAB_IMAGE_SIZE,
                                    vocab_size=len(tokenizer),
                                    pad_token_id=tokenizer.pad_token_id, max_length=48))
            torch.cuda.reset_peak_memory_stats()
            seconds, history = gpu_seconds(
                fit, model, clip_parameter_groups(model, 3e-5, 1e-3, 0.05), batches,
                clip_batch_loss, TrainConfig(epochs=1, eval_every=0, amp=amp, progress=False))
            losses = [s["loss"] for s in history.steps]
            print(f"  autocast {'on ' if amp else 'off'}, {source:>9}: "
                  f"{64 * steps / seconds:6.0f} images/s, peak {peak_gib():.1f} GiB, loss "
                  f"{losses[0]:.2f} -> {losses[-1]:.2f}, all finite: {np.isfinite(losses).all()}")


def vit_pacl_throughput(files, train_items, test_names, tokenizer, images: int,
                        workers: int, cache_dir: Path) -> None:
    """Notebooks 02-03 on CLIP ViT-B/16's architecture: cache, PACL epochs, segmentation."""
    backbone = make_backbone("vit-b16", tokenizer, COLAB_IMAGE_SIZE)
    backbone.model.cuda()
    rng = np.random.default_rng(0)
    items = [(name, training_texts(captions, SHAPES_VOCABULARY, rng=rng))
             for name, captions in train_items[:images]]
    print(f"\n[3] CLIP ViT-B/16 architecture (random weights), {COLAB_IMAGE_SIZE} px, "
          f"{len(items)} training images")
    torch.cuda.reset_peak_memory_stats()
    seconds, cache = gpu_seconds(
        cache_features, backbone, files.images_dir, items, COLAB_IMAGE_SIZE, cache_dir,
        "gpu-bench-vit-b16", batch_size=256, num_workers=workers, progress=False)
    print(f"  feature cache build: {len(items) / seconds:7.0f} images/s "
          f"({cache.patch_emb.shape[1]} patches x {cache.patch_emb.shape[2]} dims per image), "
          f"peak {peak_gib():.1f} GiB")
    torch.manual_seed(0)
    pacl = PACL(cache.patch_emb.shape[2])
    epochs = 2
    seconds, history = gpu_seconds(
        fit, pacl, pacl_parameter_groups(pacl, 1e-3), pacl_feature_loader(cache, 256),
        pacl_batch_loss, TrainConfig(epochs=epochs, eval_every=0, progress=False))
    print(f"  PACL from the cache, batch 256: {seconds / epochs:.2f} s/epoch, loss "
          f"{history.steps[0]['loss']:.3f} -> {history.steps[-1]['loss']:.3f}")
    pacl.eval()
    for method in ("maskclip", "pacl"):
        segmenter = Segmenter(backbone, SHAPE_CLASSES, method=method, pacl=pacl)
        seconds, run = gpu_seconds(
            run_segmentation, segmenter, files.images_dir, files.root / "masks", test_names,
            COLAB_IMAGE_SIZE, batch_size=128, progress=False)
        print(f"  segmentation, {method:>8}: {len(test_names) / seconds:6.0f} images/s "
              f"(scores {tuple(run.scores.shape)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/captioned_shapes",
                        help="synthetic set (generated by part 1 when absent)")
    parser.add_argument("--out", default="outputs/gpu")
    parser.add_argument("--steps", type=int, default=40, help="part 2: batches per setting")
    parser.add_argument("--vit-images", type=int, default=2000, help="part 3: training images")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_paths.py measures the CUDA paths: it needs a CUDA GPU (on CPU, run "
                 "make demo and the other bench/ scripts instead).")
    out = Path(args.out)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    demo_on_gpu(args.data, out)

    files = locate_dataset(args.data)
    train_items = load_split(files, "train")
    test_names = [name for name, _ in load_split(files, "test")]
    tokenizer = train_wordpiece_tokenizer([c for _, cs in train_items for c in cs], vocab_size=400)
    colab_clip_throughput(files, train_items, tokenizer, args.steps, args.workers)
    vit_pacl_throughput(files, train_items, test_names, tokenizer, args.vit_images, args.workers,
                        out / "cache")


if __name__ == "__main__":
    main()
