"""Train the course CLIP on the synthetic set with one process per GPU (a ``torchrun`` entry point).

One machine, 2 GPUs (or 2 CPU processes)::

    torchrun --standalone --nproc-per-node=2 scripts/train_distributed.py --epochs 13

Two machines with 8 GPUs each; run on each machine, with its own ``--node-rank``::

    torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \\
        --master-addr=HOST_OF_NODE_0 --master-port=29500 scripts/train_distributed.py

Every process loads its own shard of the training split (``DistributedSampler``); the loss uses
the negatives of all processes (:func:`utils.distributed.gathered_clip_loss`). ``--batch-size``
is per process: the global batch is that times the number of processes. Rank 0 writes the
checkpoints (``--out-dir``/checkpoints, resumable with ``--resume`` on any number of processes),
the trained model and the test-split recall. Without torchrun it trains in one process.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from utils.course.demo import DemoConfig, demo_clip
from utils.data import (
    CaptionCollator,
    ImageCaptionDataset,
    build_transform,
    load_split,
    locate_dataset,
)
from utils.distributed import (
    barrier,
    broadcast_from_rank_0,
    gathered_clip_loss,
    init_from_torchrun,
    is_distributed,
    is_main_process,
    world_size,
)
from utils.evaluation import embed_split
from utils.models import clip_parameter_groups, save_clip
from utils.sources.synthetic import ensure_captioned_shapes
from utils.tokenization import train_wordpiece_tokenizer
from utils.train import TrainConfig, fit, resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = DemoConfig()  # the single-process demo's settings, which meet the course's bars
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=defaults.data_root)
    parser.add_argument("--out-dir", default="outputs/distributed")
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="per process; the global batch is this times the process count")
    parser.add_argument("--lr", type=float, default=defaults.encoder_lr)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    return parser.parse_args(argv)


def dataset_and_tokenizer(args: argparse.Namespace) -> tuple[Path, object]:
    """Rank 0 writes the dataset while the others wait (processes writing the same files at once
    would corrupt them), then trains the tokenizer and sends it to all: every process must use
    the very same vocabulary. Other machines need the data folder too: a shared filesystem, or
    the same generator run there first (same seed, same bytes)."""
    defaults = DemoConfig()
    if is_main_process():
        ensure_captioned_shapes(args.data_root, num_train=args.num_train,
                                num_dev=defaults.num_dev, num_test=defaults.num_test,
                                image_size=defaults.image_size, seed=args.seed)
    barrier()
    tokenizer = None
    if is_main_process():
        items = load_split(locate_dataset(args.data_root), "train")
        tokenizer = train_wordpiece_tokenizer([c for _, captions in items for c in captions],
                                              vocab_size=defaults.vocab_size)
    return locate_dataset(args.data_root), broadcast_from_rank_0(tokenizer)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    defaults = DemoConfig()
    device = init_from_torchrun() if "LOCAL_RANK" in os.environ else resolve_device("auto")
    out_dir = Path(args.out_dir)
    files, tokenizer = dataset_and_tokenizer(args)
    train_items, test_items = load_split(files, "train"), load_split(files, "test")

    dataset = ImageCaptionDataset(files.images_dir, train_items,
                                  build_transform(defaults.image_size, train=True))
    # Each process gets len / world_size images, reshuffled every epoch (fit calls set_epoch).
    sampler = (DistributedSampler(dataset, shuffle=True, seed=args.seed) if is_distributed()
               else None)
    captions_of_images = [captions for _, captions in train_items]
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                        shuffle=sampler is None, drop_last=True, num_workers=args.num_workers,
                        collate_fn=CaptionCollator(tokenizer, defaults.max_length,
                                                   captions_of_images=captions_of_images,
                                                   captions_per_image=defaults.captions_per_image))

    model = demo_clip(defaults, tokenizer)
    if is_distributed() and device.type == "cuda":
        # The tiny CNN's BatchNorm would otherwise see only this GPU's share of each batch.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    history = fit(model, clip_parameter_groups(model, args.lr, args.lr, defaults.weight_decay),
                  loader, gathered_clip_loss(captions_of_images),
                  TrainConfig(epochs=args.epochs, seed=args.seed, device=str(device),
                              checkpoint_dir=out_dir / "checkpoints", eval_every=0),
                  resume=args.resume)

    if is_main_process():
        test = embed_split(model, tokenizer, files.images_dir, test_items, defaults.image_size)
        summary = {"processes": world_size(), "global_batch": args.batch_size * world_size(),
                   "final_train_loss": history.steps[-1]["loss"], "test": test.metrics()}
        save_clip(out_dir / "clip", model, tokenizer)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    if is_distributed():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
