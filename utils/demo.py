"""The course's main job on the synthetic set: ``python -m utils.demo`` (what ``make demo`` runs).

Generate the captioned-shapes dataset if absent -> train a WordPiece tokenizer on the training
captions -> train a small CLIP from scratch on CPU -> embed the test split -> retrieval recall@K ->
``metrics.json``, figures and the trained model (``clip/``, for PACL) under one output folder ->
a summary table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.data import (
    CaptionCollator,
    build_transform,
    load_image,
    load_split,
    locate_dataset,
)
from utils.evaluation import SplitEmbeddings, embed_split
from utils.image_cache import ArrayImageCaptionDataset, cache_image_array
from utils.models import CLIP, CLIPConfig, save_clip
from utils.synthetic import ensure_captioned_shapes
from utils.tokenization import train_wordpiece_tokenizer
from utils.train import TrainConfig, clip_batch_loss, clip_parameter_groups, fit, seed_everything
from utils.viz import (
    plot_retrieval_gallery,
    plot_similarity_matrix,
    plot_training_curves,
    save_figure,
)


@dataclass
class DemoConfig:
    """Everything the demo decides. The defaults meet the course's bars on a 2-core CPU."""

    data_root: str = "data/captioned_shapes"
    out_dir: str = "outputs/demo"
    num_train: int = 6000
    num_dev: int = 1000
    num_test: int = 1000
    image_size: int = 64
    epochs: int = 15
    batch_size: int = 64
    encoder_lr: float = 2e-3
    head_lr: float = 2e-3
    weight_decay: float = 0.05
    vocab_size: int = 400
    max_length: int = 48
    embed_dim: int = 128
    dropout: float = 0.0              # no dropout: 15 short epochs are too few to overfit
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    @classmethod
    def fast(cls, **overrides) -> DemoConfig:
        """A minutes-to-seconds version for smoke tests: a small dataset, few epochs."""
        return replace(cls(num_train=600, num_dev=100, num_test=200, epochs=8, batch_size=32),
                       **overrides)


def run_demo(config: DemoConfig) -> dict:
    """Run the whole job; returns the metrics dictionary it also writes to ``metrics.json``."""
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    root = ensure_captioned_shapes(config.data_root, num_train=config.num_train,
                                   num_dev=config.num_dev, num_test=config.num_test,
                                   image_size=config.image_size, seed=config.seed,
                                   progress=config.progress)
    files = locate_dataset(root)
    train_items, dev_items, test_items = (load_split(files, s) for s in ("train", "dev", "test"))
    tokenizer = train_wordpiece_tokenizer(
        [c for _, captions in train_items for c in captions], vocab_size=config.vocab_size)

    model = CLIP(CLIPConfig(image_size=config.image_size, embed_dim=config.embed_dim,
                            dropout=config.dropout,
                            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            max_length=config.max_length))
    # Decode the training images once into a uint8 array: every epoch then skips PNG decoding
    # (about 2 s of each ~17 s epoch here) and sees exactly the same tensors.
    train_images = cache_image_array(files.images_dir, [name for name, _ in train_items],
                                     out_dir / "cache" / f"train_{config.image_size}px.npy",
                                     image_size=config.image_size, progress=config.progress)
    train_loader = DataLoader(
        ArrayImageCaptionDataset(train_images, train_items,
                                 build_transform(config.image_size, train=True, seed=config.seed)),
        batch_size=config.batch_size, shuffle=True, drop_last=True,
        num_workers=config.num_workers,
        collate_fn=CaptionCollator(tokenizer, config.max_length,
                                   captions_of_images=[captions for _, captions in train_items]))

    def validate(model: CLIP) -> dict:
        return embed_split(model, tokenizer, files.images_dir, dev_items, config.image_size,
                           progress=False).metrics()

    history = fit(model, clip_parameter_groups(model, config.encoder_lr, config.head_lr,
                                               config.weight_decay),
                  train_loader, clip_batch_loss,
                  TrainConfig(epochs=config.epochs, seed=config.seed, progress=config.progress,
                              eval_every=max(1, config.epochs // 3)),
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
    metrics["total_seconds"] = time.perf_counter() - started
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "history.json").write_text(json.dumps(history.to_dict()))
    return metrics


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
                 f"logit scale: {metrics['final_logit_scale']:.1f}   "
                 f"total time: {metrics['total_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DemoConfig.out_dir, help="output folder")
    parser.add_argument("--data", default=DemoConfig.data_root, help="synthetic dataset folder")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--fast", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(out_dir=args.out, data_root=args.data, progress=not args.no_progress)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = DemoConfig.fast(**overrides) if args.fast else replace(DemoConfig(), **overrides)
    metrics = run_demo(config)
    print(format_summary(metrics))
    print(f"wrote {config.out_dir}/metrics.json and figures")


if __name__ == "__main__":
    main()
