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
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data import CaptionCollator, build_transform, load_split, locate_dataset  # noqa: E402
from utils.demo import DemoConfig  # noqa: E402
from utils.image_cache import ArrayImageCaptionDataset, cache_image_array  # noqa: E402
from utils.models import CLIP, CLIPConfig  # noqa: E402
from utils.synthetic import ensure_captioned_shapes  # noqa: E402
from utils.tokenization import train_wordpiece_tokenizer  # noqa: E402
from utils.train import clip_batch_loss, clip_parameter_groups  # noqa: E402


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
    config = DemoConfig()
    files = locate_dataset(ensure_captioned_shapes(
        args.data, **{k: v for k, v in asdict(config).items()
                      if k in ("num_train", "num_dev", "num_test", "image_size", "seed")}))
    train_items = load_split(files, "train")
    tokenizer = train_wordpiece_tokenizer([c for _, captions in train_items for c in captions],
                                          vocab_size=config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        images = cache_image_array(files.images_dir, [name for name, _ in train_items],
                                   Path(tmp) / "train.npy", image_size=config.image_size,
                                   progress=False)
        loader = DataLoader(
            ArrayImageCaptionDataset(images, train_items,
                                     build_transform(config.image_size, train=True, seed=0)),
            batch_size=config.batch_size, shuffle=True, drop_last=True,
            collate_fn=CaptionCollator(tokenizer, config.max_length,
                                       captions_of_images=[c for _, c in train_items],
                                       captions_per_image=config.captions_per_image))
        start = time.perf_counter()
        batches = [batch for batch in loader]
        loading_seconds = time.perf_counter() - start
    batches = batches[:args.batches + 2]

    torch.manual_seed(0)
    model = CLIP(CLIPConfig(image_size=config.image_size, cnn_width=config.cnn_width,
                            embed_dim=config.embed_dim, dropout=config.dropout,
                            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            max_length=config.max_length))
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
