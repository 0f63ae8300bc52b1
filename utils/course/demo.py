"""The course's main job on the synthetic set: ``python -m utils.course.demo`` (what ``make demo`` runs).

The whole course in one run, on CPU:

1. CLIP: generate the captioned-shapes dataset if absent -> train a WordPiece tokenizer on the
   training captions -> train a small CLIP from scratch -> retrieval recall@K on the test split.
2. PACL: freeze that CLIP, cache its patch and text embeddings once, train the vision embedder.
3. Segmentation: segment the test split with raw CLIP patches and with PACL, each with the
   background rule and threshold that do best on dev images -> mIoU against the generator's masks,
   background included and on object pixels only.

Everything lands under one output folder: ``metrics.json``, figures, the trained CLIP (``clip/``)
and PACL (``pacl/``); a summary table goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.backbones import CourseCLIPBackbone
from utils.course.standalone import PACLRecipe, train_pacl_recipe
from utils.data import (
    CaptionCollator,
    DatasetFiles,
    build_transform,
    load_image,
    load_split,
    locate_dataset,
)
from utils.evaluation import SplitEmbeddings, embed_split
from utils.losses import clip_batch_loss
from utils.models import CLIP, CLIPConfig, clip_parameter_groups, save_clip
from utils.pacl import PACL
from utils.plots.clip import (
    plot_retrieval_gallery,
    plot_similarity_matrix,
    plot_training_curves,
    save_figure,
)
from utils.plots.segmentation import (
    lowest_scores,
    plot_methods_side_by_side,
    plot_miou_bars,
    plot_worst_cases,
)
from utils.prompts import SHAPES_VOCABULARY
from utils.segmentation import Segmenter, run_segmentation, tune_background
from utils.sources.synthetic import CLASS_NAMES, ensure_captioned_shapes
from utils.storage.atomic import write_text_atomic
from utils.storage.image_cache import ArrayImageCaptionDataset, cache_image_array
from utils.storage.pacl_io import BACKBONE_KEY, save_pacl
from utils.tokenization import train_wordpiece_tokenizer
from utils.train import (
    History,
    TrainConfig,
    fit,
    seed_everything,
)

SHAPE_CLASSES = list(CLASS_NAMES[1:])  # what segmentation looks for; 0 is the background


@dataclass
class DemoConfig:
    """Everything the demo decides. The defaults meet the course's bars on a 2-core CPU."""

    data_root: str = "data/captioned_shapes"
    out_dir: str = "outputs/demo"
    num_train: int = 6000
    num_dev: int = 1000
    num_test: int = 1000
    image_size: int = 64
    cnn_width: int = 48               # narrower and longer beats wider and shorter in the budget
    attention_pool: bool = False      # average pooling: better text->image recall and patches here
    epochs: int = 20
    batch_size: int = 64
    encoder_lr: float = 2e-3
    head_lr: float = 2e-3
    weight_decay: float = 0.05
    vocab_size: int = 400
    max_length: int = 48
    embed_dim: int = 128
    dropout: float = 0.0              # no dropout: 20 short epochs are too few to overfit
    captions_per_image: int = 2       # texts per image in each batch (CaptionCollator)
    clip_only: bool = False           # stop after CLIP (notebooks that only need the CLIP)
    pacl_epochs: int = 4
    pacl_batch_size: int = 64
    pacl_lr: float = 1e-2
    pacl_softmax_temperature: float | None = 0.1   # the course's; None: plain cosines
    pacl_seed: int = 0                # PACL's initialisation and batches (the data keep `seed`)
    pacl_with_captions: bool = False  # also train on whole captions (worse here: notebook 02)
    seg_tune_images: int = 300        # dev images used to tune the background rule
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    @classmethod
    def fast(cls, **overrides) -> DemoConfig:
        """A minutes-to-seconds version for smoke tests: a small dataset, few epochs."""
        return replace(cls(num_train=600, num_dev=100, num_test=200, epochs=8, batch_size=32,
                           pacl_epochs=2, pacl_batch_size=32, seg_tune_images=100), **overrides)


def _dataset_arguments(config: DemoConfig) -> dict[str, int]:
    """The generator's arguments for ``config``'s synthetic set: split sizes, image size, seed."""
    return {"num_train": config.num_train, "num_dev": config.num_dev,
            "num_test": config.num_test, "image_size": config.image_size, "seed": config.seed}


def ensure_demo_dataset(config: DemoConfig) -> Path:
    """The synthetic set of ``config`` at ``config.data_root``, generated if absent."""
    return ensure_captioned_shapes(config.data_root, **_dataset_arguments(config),
                                   progress=config.progress)


def draw_dataset_in_child_process(config: DemoConfig) -> None:
    """Run ``python -m utils.sources.synthetic`` for ``config``'s dataset: it returns at once when the
    dataset is there, and draws it otherwise. :func:`ensure_demo_dataset` then finds it complete.

    Why a child process, for the command line: the generator shares the drawing among spawned
    worker processes, and a spawned process starts by importing its parent's main module. Under
    ``python -m utils.course.demo`` that module is this one, with torch and transformers behind it: each
    worker spent about 6 s importing them before drawing a shape (8000 images: 20 s instead of
    14 s on 2 cores). The generator's own entry point leaves its workers light. (In a notebook the
    main module is the kernel's launcher, which is light already.)
    """
    flags = [text for name, value in _dataset_arguments(config).items()       # --num-train 6000
             for text in (f"--{name.replace('_', '-')}", str(value))]
    command = [sys.executable, "-m", "utils.sources.synthetic", "--root",
               str(Path(config.data_root).resolve()), *flags,
               *([] if config.progress else ["--no-progress"])]
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[2])


def demo_clip(config: DemoConfig, tokenizer) -> CLIP:
    """The untrained CLIP that the demo trains: tiny CNN + tiny DistilBERT sized by ``config``."""
    return CLIP(CLIPConfig(image_size=config.image_size, cnn_width=config.cnn_width,
                           attention_pool=config.attention_pool, embed_dim=config.embed_dim,
                           dropout=config.dropout,
                           vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           max_length=config.max_length))


def demo_train_loader(config: DemoConfig, tokenizer, train_items: list,
                      train_images: Path) -> DataLoader:
    """Shuffled, augmented training batches from the decoded training images (the ``.npy`` file
    of :func:`utils.storage.image_cache.cache_image_array`), ``config.captions_per_image`` captions per
    image."""
    return DataLoader(
        ArrayImageCaptionDataset(train_images, train_items,
                                 build_transform(config.image_size, train=True, seed=config.seed)),
        batch_size=config.batch_size, shuffle=True, drop_last=True,
        num_workers=config.num_workers,
        collate_fn=CaptionCollator(tokenizer, config.max_length,
                                   captions_of_images=[captions for _, captions in train_items],
                                   captions_per_image=config.captions_per_image))


def run_demo(config: DemoConfig) -> dict:
    """Run the whole job; returns the metrics dictionary it also writes to ``metrics.json``."""
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    files = locate_dataset(ensure_demo_dataset(config))
    train_items, dev_items, test_items = (load_split(files, s) for s in ("train", "dev", "test"))
    tokenizer = train_wordpiece_tokenizer(
        [c for _, captions in train_items for c in captions], vocab_size=config.vocab_size)

    model = demo_clip(config, tokenizer)
    # Decode the training images once into a uint8 array: every epoch then skips PNG decoding
    # (about 2 s of each ~17 s epoch here) and sees exactly the same tensors.
    train_images = cache_image_array(files.images_dir, [name for name, _ in train_items],
                                     out_dir / "cache" / f"train_{config.image_size}px.npy",
                                     image_size=config.image_size, progress=config.progress)
    train_loader = demo_train_loader(config, tokenizer, train_items, train_images)

    def validate(model: CLIP) -> dict:
        return embed_split(model, tokenizer, files.images_dir, dev_items, config.image_size,
                           progress=False).metrics()

    history = fit(model, clip_parameter_groups(model, config.encoder_lr, config.head_lr,
                                               config.weight_decay),
                  train_loader, clip_batch_loss,
                  TrainConfig(epochs=config.epochs, seed=config.seed, progress=config.progress,
                              eval_every=config.epochs),   # one dev evaluation, at the end
                  evaluate=validate)
    train_seconds = time.perf_counter() - started

    test = embed_split(model, tokenizer, files.images_dir, test_items, config.image_size,
                       progress=config.progress)
    metrics = {
        "test": test.metrics(),
        "chance_text_to_image_R@1": test.positives.float().mean().item(),
        "num_test_images": len(test.image_names),
        "num_test_captions": len(test.texts),
        "final_logit_scale": model.logit_scale.item(),
        "final_train_loss": float(np.mean([s["loss"] for s in history.steps[-10:]])),
        "first_train_loss": history.steps[0]["loss"],
        "train_seconds": train_seconds,
        "config": asdict(config),
    }
    save_clip(out_dir / "clip", model, tokenizer)
    write_figures(out_dir, history, test, files.images_dir)
    if not config.clip_only:
        backbone = CourseCLIPBackbone(model, tokenizer)
        pacl_started = time.perf_counter()
        pacl, pacl_history = train_pacl(config, backbone, files, train_items, train_images,
                                        out_dir)
        save_pacl(out_dir / "pacl", pacl, meta={BACKBONE_KEY: backbone.cache_key,
                                                "backbone": "course",
                                                "image_size": config.image_size,
                                                "grid_shape": list(backbone.grid_shape(
                                                    config.image_size))})
        metrics["pacl"] = {"first_train_loss": pacl_history.steps[0]["loss"],
                           "final_train_loss": float(np.mean([s["loss"] for s in
                                                              pacl_history.steps[-10:]])),
                           "final_logit_scale": pacl.logit_scale.item(),
                           "seconds": time.perf_counter() - pacl_started}
        metrics["segmentation"] = evaluate_segmentation(config, backbone, pacl, files, dev_items,
                                                        test_items, out_dir)
    metrics["total_seconds"] = time.perf_counter() - started
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(out_dir / "history.json", json.dumps(history.to_dict()))
    return metrics


def train_pacl(config: DemoConfig, backbone: CourseCLIPBackbone, files: DatasetFiles,
               train_items: list, train_images: Path, out_dir: Path) -> tuple[PACL, History]:
    """PACL on the frozen CLIP with :func:`utils.course.standalone.train_pacl_recipe`: training
    texts -> feature cache (under ``out_dir/cache``, reused when it is there) -> trained vision
    embedder.

    ``train_images`` is CLIP's decoded training array (:func:`utils.storage.image_cache.cache_image_array`),
    read again here instead of the PNGs. The texts are drawn with ``config.seed``; the embedder
    starts and draws its batches with ``config.pacl_seed``, so other PACL seeds reuse the same
    feature cache.
    """
    recipe = PACLRecipe(epochs=config.pacl_epochs, batch_size=config.pacl_batch_size,
                        lr=config.pacl_lr, temperature=config.pacl_softmax_temperature,
                        seed=config.seed)
    return train_pacl_recipe(backbone, files.images_dir, train_items, SHAPES_VOCABULARY,
                             config.image_size, out_dir / "cache", "captioned-shapes-train", recipe,
                             embedder_seed=config.pacl_seed,
                             with_captions=config.pacl_with_captions, image_array=train_images,
                             progress=config.progress)


def segment_splits(config: DemoConfig, backbone: CourseCLIPBackbone, pacl: PACL,
                   files: DatasetFiles, dev_items: list, test_items: list,
                   methods: tuple[str, ...] = ("raw", "pacl")) -> dict:
    """Each method's segmenter, with the background rule and threshold that give the best mIoU on
    ``config.seg_tune_images`` dev images, and its run on the test split:
    ``{method: (segmenter, test SegmentationRun, BackgroundChoice)}``."""
    masks_dir = files.root / "masks"
    dev_names = [name for name, _ in dev_items][:config.seg_tune_images]
    test_names = [name for name, _ in test_items]
    runs = {}
    for method in methods:
        segmenter = Segmenter(backbone, SHAPE_CLASSES, method=method, pacl=pacl)
        tuning = run_segmentation(segmenter, files.images_dir, masks_dir, dev_names,
                                  config.image_size, progress=config.progress)
        choice = tune_background(tuning, segmenter)
        segmenter.use_background(choice)
        runs[method] = (segmenter, run_segmentation(segmenter, files.images_dir, masks_dir,
                                                    test_names, config.image_size,
                                                    progress=config.progress), choice)
    return runs


def segmentation_metrics(runs: dict) -> dict:
    """Per method: the background rule and threshold chosen on dev (with every rule's best dev
    mIoU), the test mIoU with background (``metrics`` of the run) and on object pixels only
    (``objects_only``, the VOC-20 protocol)."""
    results = {}
    for method, (segmenter, run, choice) in runs.items():
        results[method] = {"background": choice.background, "threshold": choice.threshold,
                           "dev_mIoU_by_rule": choice.dev_miou, **run.metrics(segmenter),
                           "objects_only": run.object_metrics(segmenter)}
    return results


def evaluate_segmentation(config: DemoConfig, backbone: CourseCLIPBackbone, pacl: PACL,
                          files: DatasetFiles, dev_items: list, test_items: list,
                          out_dir: Path) -> dict:
    """Raw CLIP patches vs PACL on the test split (:func:`segment_splits`), with figures."""
    runs = segment_splits(config, backbone, pacl, files, dev_items, test_items)
    results = segmentation_metrics(runs)
    write_segmentation_figures(out_dir, {m: r[:2] for m, r in runs.items()},
                               {m: r["mIoU"] for m, r in results.items()}, files.images_dir)
    return {"classes": ["background", *SHAPE_CLASSES], "num_test_images": len(test_items),
            "methods": results}


def write_figures(out_dir: Path, history, test: SplitEmbeddings, images_dir: Path,
                  num_matrix: int = 10, queries: int = 5, top_k: int = 5) -> None:
    """Loss curve, a test-batch similarity matrix and a text->image gallery, as PNGs."""
    save_figure(plot_training_curves(history.steps, history.evals), out_dir / "training_curves.png")

    # Similarity matrix: the first images of the test split against one caption of each.
    first_caption = [int(torch.nonzero(test.positives[:, i])[0]) for i in range(num_matrix)]
    similarity = test.image_emb[:num_matrix] @ test.text_emb[first_caption].T
    thumbs = [load_image(images_dir / name) for name in test.image_names[:num_matrix]]
    save_figure(plot_similarity_matrix(similarity, thumbs, [test.texts[j] for j in first_caption],
                                       title="test images x their captions (cosine)"),
                out_dir / "similarity_matrix.png")

    # Gallery: the first full-detail caption of a few test images (evenly spaced) as queries.
    picks = np.linspace(0, len(test.texts) - 5, queries).astype(int)
    query_ids = torch.as_tensor(picks)
    scores = test.text_emb[query_ids] @ test.image_emb.T                  # [Q, I]
    top = scores.topk(top_k, dim=1)
    gallery = [[load_image(images_dir / test.image_names[i]) for i in row] for row in
               top.indices.tolist()]
    hits = test.positives[query_ids].gather(1, top.indices)
    save_figure(plot_retrieval_gallery([test.texts[j] for j in picks], gallery, top.values, hits),
                out_dir / "retrieval_gallery.png")


def write_segmentation_figures(out_dir: Path, runs: dict, miou: dict, images_dir: Path,
                               examples: int = 4) -> None:
    """mIoU bars, a few test images segmented by every method, and PACL's worst cases.

    ``runs``: method -> (segmenter, its test :class:`SegmentationRun`); ``miou``: method -> mIoU.
    """
    save_figure(plot_miou_bars(miou, title="synthetic test split: mIoU (background included)"),
                out_dir / "segmentation_miou.png")
    masks = {method: run.masks(segmenter).numpy() for method, (segmenter, run) in runs.items()}
    segmenter, run = runs["pacl"]
    names, targets = run.image_names, run.targets.numpy()
    for i, name in enumerate(names[:examples]):
        save_figure(plot_methods_side_by_side(load_image(images_dir / name),
                                              {m: masks[m][i] for m in masks}, SHAPE_CLASSES,
                                              targets[i]),
                    out_dir / f"segmentation_example_{i}.png")
    per_image = run.per_image_miou(segmenter)
    worst = lowest_scores(per_image, 6)
    save_figure(plot_worst_cases([load_image(images_dir / names[i]) for i in worst],
                                 masks["pacl"][worst], targets[worst], SHAPE_CLASSES,
                                 [per_image[i] for i in worst], names=[names[i] for i in worst]),
                out_dir / "segmentation_worst_cases.png")


def format_summary(metrics: dict) -> str:
    """A small table of the test metrics for the terminal."""
    test = metrics["test"]
    lines = [f"Retrieval on the synthetic test split ({metrics['num_test_images']} images, "
             f"{metrics['num_test_captions']} captions)",
             f"{'direction':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}"]
    for direction in ("text_to_image", "image_to_text"):
        lines.append(f"{direction.replace('_', ' '):<16}" + "".join(
            f"{test[f'{direction}_R@{k}']:>8.3f}" for k in (1, 5, 10)))
    lines.append(f"chance text->image R@1: {metrics['chance_text_to_image_R@1']:.4f}   "
                 f"logit scale: {metrics['final_logit_scale']:.1f}")
    if "segmentation" in metrics:
        segmentation = metrics["segmentation"]
        lines += ["", f"Segmentation of the synthetic test split ({segmentation['num_test_images']}"
                      " images, background + 5 shapes)",
                  f"{'method':<10}{'mIoU':>8}{'objects only':>14}{'background rule':>24}"]
        for method, result in segmentation["methods"].items():
            rule = f"{result['background']} {result['threshold']:.2f}"
            lines.append(f"{method:<10}{result['mIoU']:>8.3f}"
                         f"{result['objects_only']['mIoU']:>14.3f}{rule:>24}")
    lines.append(f"total time: {metrics['total_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DemoConfig.out_dir, help="output folder")
    parser.add_argument("--data", default=DemoConfig.data_root, help="synthetic dataset folder")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--fast", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--clip-only", action="store_true", help="stop after training CLIP")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(out_dir=args.out, data_root=args.data, progress=not args.no_progress,
                     clip_only=args.clip_only)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = DemoConfig.fast(**overrides) if args.fast else replace(DemoConfig(), **overrides)
    draw_dataset_in_child_process(config)
    metrics = run_demo(config)
    print(format_summary(metrics))
    print(f"wrote {config.out_dir}/metrics.json and figures")


if __name__ == "__main__":
    main()
