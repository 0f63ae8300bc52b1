"""How much faster does a DataLoader run on the image array cache than on the original JPEGs?

Makes N Flickr-sized JPEGs (~500x375, textured and noisy so decoding costs what a photo costs),
builds the 224 px uint8 array of ``utils.storage.image_cache.cache_image_array`` (timed), then measures
images/s through identical DataLoaders (batch 32, 2 workers, eval transform at 224 px, first
batches excluded) over the originals and the array, taking turns ``--repeats`` times and reporting
the median. Prints figures; not a test.

    .venv/bin/python bench/image_cache_throughput.py [--images 400] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.data import ImageCaptionDataset, build_transform
from utils.storage.image_cache import ArrayImageCaptionDataset, cache_image_array

# Flickr8k photos are mostly 500 px on the long side, landscape or portrait.
FLICKR_SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (333, 500))
BATCH_SIZE = 32
NUM_WORKERS = 2
WARMUP_BATCHES = 2


def make_photo_like_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Write ``count`` JPEGs (quality 90) with smooth shapes, edges and sensor-like noise."""
    rng = np.random.default_rng(seed)
    names = []
    for index in range(count):
        width, height = FLICKR_SIZES[index % len(FLICKR_SIZES)]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        pixels = np.zeros((height, width, 3), np.float32)
        for _ in range(6):  # overlapping soft blobs and stripes: low-frequency content
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            radius = rng.uniform(30, 200)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
            stripes = 0.5 + 0.5 * np.sin(xx * rng.uniform(0.02, 0.3) + yy * rng.uniform(0.02, 0.3))
            pixels += (blob * stripes)[..., None] * rng.uniform(40, 160, 3)
        pixels += rng.normal(0, 28, pixels.shape)  # fine texture: what makes photos costly
        name = f"{1000000 + index}_bench.jpg"
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        image.save(folder / name, quality=90)
        names.append(name)
    return names


def images_per_second(dataset: torch.utils.data.Dataset, epochs: int) -> float:
    """Images/s through a DataLoader; the first batches of epoch 1 (worker start-up) excluded."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH_SIZE, num_workers=NUM_WORKERS, persistent_workers=True
    )
    timed_images, started = 0, None
    for _ in range(epochs):
        for batch_index, batch in enumerate(loader):
            if started is None:
                if batch_index + 1 == WARMUP_BATCHES:
                    started = time.perf_counter()
                continue
            timed_images += batch["image"].shape[0]
    return timed_images / (time.perf_counter() - started)


def timed(build: Callable[[], object]) -> float:
    """Seconds one call of ``build()`` takes."""
    start = time.perf_counter()
    build()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the images per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per source (median shown)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only receives batches; leave cores to workers

    with tempfile.TemporaryDirectory() as temp:
        originals = Path(temp) / "originals"
        originals.mkdir()
        names = make_photo_like_jpegs(originals, args.images)
        mean_kb = np.mean([(originals / n).stat().st_size for n in names]) / 1024
        print(f"{args.images} fixture JPEGs, mean {mean_kb:.0f} KB (Flickr8k: ~130 KB)")

        array_path = Path(temp) / "pixels_224.npy"
        seconds = timed(
            lambda: cache_image_array(originals, names, array_path, 224, progress=False)
        )
        megabytes = array_path.stat().st_size / 2**20
        print(f"array cache build (224 px): {seconds:.2f} s, {megabytes:.0f} MB")

        items = [(name, [f"a photo {name}"]) for name in names]
        transform = build_transform(224, train=False)
        datasets = {
            "originals": ImageCaptionDataset(originals, items, transform),
            "array cache": ArrayImageCaptionDataset(array_path, items, transform),
        }
        rates: dict[str, list[float]] = {label: [] for label in datasets}
        for _ in range(args.repeats):  # taking turns spreads background noise over all sources
            for label, dataset in datasets.items():
                rates[label].append(images_per_second(dataset, args.epochs))

        print(
            f"DataLoader (batch {BATCH_SIZE}, num_workers {NUM_WORKERS}, eval transform 224 px), "
            f"median of {args.repeats}:"
        )
        baseline = statistics.median(rates["originals"])
        for label, runs in rates.items():
            median = statistics.median(runs)
            spread = ", ".join(f"{rate:.0f}" for rate in runs)
            print(
                f"  {label:12s} {median:7.1f} images/s  ({median / baseline:4.2f}x)  runs: {spread}"
            )


if __name__ == "__main__":
    main()
