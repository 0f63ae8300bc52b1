"""Where a training step of the demo's CLIP spends its time, on this machine's CPU.

With ``make demo``'s settings (batch 64, two captions per image, 64 px), on real batches of the
synthetic training split, it prints milliseconds per batch for:

- the image encoder, forward and backward;
- the text encoder, forward and backward, on the batch's 128 captions padded to the longest
  (``length_buckets=1``) and in groups of similar length (``length_buckets=3``, the default);
- a whole training step (both encoders, heads, loss, AdamW) with each setting;
- and the seconds one epoch of data loading takes (augmentation, tokenizing, collating).

Each figure is the mean over ``--batches`` batches after two warm-up batches. Not a test.

    .venv/bin/python bench/clip_step_time.py [--data data/captioned_shapes] [--batches 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from utils.course.demo import DemoConfig, demo_clip, demo_train_loader, ensure_demo_dataset
from utils.data import load_split, locate_dataset
from utils.losses import clip_batch_loss
from utils.models import clip_parameter_groups
from utils.storage.image_cache import cache_image_array
from utils.tokenization import train_wordpiece_tokenizer


def milliseconds(run, batches: list[dict]) -> float:
    """Mean wall time of ``run(batch)`` over ``batches[2:]``, in ms (the first two warm up)."""
    for batch in batches[:2]:
        run(batch)
    start = time.perf_counter()
    for batch in batches[2:]:
        run(batch)
    return (time.perf_counter() - start) / len(batches[2:]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DemoConfig.data_root)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    config = replace(DemoConfig(), data_root=args.data, progress=False)
    files = locate_dataset(ensure_demo_dataset(config))
    train_items = load_split(files, "train")
    tokenizer = train_wordpiece_tokenizer([c for _, captions in train_items for c in captions],
                                          vocab_size=config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        images = cache_image_array(files.images_dir, [name for name, _ in train_items],
                                   Path(tmp) / "train.npy", image_size=config.image_size,
                                   progress=False)
        loader = demo_train_loader(config, tokenizer, train_items, images)
        start = time.perf_counter()
        batches = [batch for batch in loader]
        loading_seconds = time.perf_counter() - start
    batches = batches[:args.batches + 2]

    torch.manual_seed(0)
    model = demo_clip(config, tokenizer)
    optimizer = torch.optim.AdamW(clip_parameter_groups(model, 1e-3, 1e-3, 0.05))

    def image_side(batch: dict) -> None:
        model.image_encoder(batch["images"]).sum().backward()

    def text_side(batch: dict) -> None:
        model.text_encoder(batch["input_ids"], batch["attention_mask"]).sum().backward()

    def training_step(batch: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        clip_batch_loss(model, batch).backward()
        optimizer.step()

    texts = batches[0]["input_ids"].shape[0]
    print(f"CPU, {torch.get_num_threads()} threads; batches of {config.batch_size} images and "
          f"{texts} captions at {config.image_size} px; mean of {args.batches} batches")
    print(f"  image encoder, forward + backward:            {milliseconds(image_side, batches):6.0f} ms")
    for buckets in (1, 3):
        model.text_encoder.length_buckets = buckets
        print(f"  text encoder, forward + backward, {buckets} group(s): "
              f"{milliseconds(text_side, batches):6.0f} ms")
    for buckets in (1, 3):
        model.text_encoder.length_buckets = buckets
        print(f"  training step, text in {buckets} group(s):        "
              f"{milliseconds(training_step, batches):6.0f} ms")
    print(f"  data loading, one epoch ({len(loader)} batches):     {loading_seconds:6.1f} s "
          "(the first epoch also tokenizes every caption once)")


if __name__ == "__main__":
    main()
