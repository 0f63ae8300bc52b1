"""The image cache: the fixed-size uint8 array and its dataset (same tensors as the uncached path,
reuse, rebuilds for other sizes, other bytes and a cut-short file)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import ImageCaptionDataset, build_transform
from utils.storage.image_cache import ArrayImageCaptionDataset, cache_image_array

SIZES = {
    "landscape.jpg": (500, 375),
    "portrait.jpg": (333, 500),
    "small.jpg": (120, 90),
}


def _textured(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image with smooth gradients plus noise, so JPEG encoding has something to keep."""
    width, height = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    pixels = (x + y) / 2 + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for seed, (name, size) in enumerate(SIZES.items()):
        _textured(size, seed).save(folder / name, quality=90)
    Image.new("L", (400, 300), 128).save(folder / "gray.jpg")
    return folder


def test_missing_image_error_names_the_file(images_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="nope.jpg"):
        cache_image_array(images_dir, ["small.jpg", "nope.jpg"], tmp_path / "a.npy", 16,
                          progress=False)
    assert not list(tmp_path.glob("*.npy"))


def _items(names: list[str]) -> list[tuple[str, list[str]]]:
    return [(name, [f"first caption of {name}", f"second caption of {name}"]) for name in names]


def test_array_dataset_gives_the_same_tensors_as_the_jpeg_dataset(
    images_dir: Path, tmp_path: Path
) -> None:
    names = ["landscape.jpg", "portrait.jpg", "small.jpg", "gray.jpg"]
    array_path = cache_image_array(images_dir, names, tmp_path / "pixels.npy", 64, progress=False)
    pixels = np.load(array_path)
    assert (pixels.shape, pixels.dtype) == ((4, 64, 64, 3), np.uint8)
    items = _items(names[::-1])  # another order than the array's rows
    for train in (False, True):
        transform = build_transform(64, train=train)
        torch.manual_seed(0)
        expected = [ImageCaptionDataset(images_dir, items, transform)[i] for i in range(4)]
        torch.manual_seed(0)
        cached = [ArrayImageCaptionDataset(array_path, items, transform)[i] for i in range(4)]
        for want, got in zip(expected, cached, strict=True):
            assert torch.equal(want["image"], got["image"])
            assert (want["caption"], want["image_index"]) == (got["caption"], got["image_index"])


def test_array_cache_is_reused_and_rebuilt_for_another_size(
    images_dir: Path, tmp_path: Path
) -> None:
    names = ["landscape.jpg", "portrait.jpg"]
    array_path = cache_image_array(images_dir, names, tmp_path / "pixels.npy", 32, progress=False)
    first_mtime = array_path.stat().st_mtime_ns
    cache_image_array(images_dir, names, array_path, 32, progress=False)
    assert array_path.stat().st_mtime_ns == first_mtime
    cache_image_array(images_dir, names, array_path, 48, progress=False)
    assert np.load(array_path).shape == (2, 48, 48, 3)
    assert json.loads((tmp_path / "pixels.json").read_text())["image_size"] == 48
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pixels")) == [
        "pixels.json",
        "pixels.npy",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_array_cache_follows_the_images_bytes_not_their_folder(
    images_dir: Path, tmp_path: Path
) -> None:
    names = ["landscape.jpg", "portrait.jpg"]
    array_path = cache_image_array(images_dir, names, tmp_path / "pixels.npy", 16, progress=False)
    before = np.load(array_path).copy()
    first_mtime = array_path.stat().st_mtime_ns
    # The same bytes in another folder: the array is still right, nothing to rebuild.
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in names:
        (moved / name).write_bytes((images_dir / name).read_bytes())
    cache_image_array(moved, names, array_path, 16, progress=False)
    assert array_path.stat().st_mtime_ns == first_mtime
    # Same names, other pixels (a regenerated dataset): rebuilt.
    Image.new("RGB", (300, 200), (255, 0, 0)).save(moved / "portrait.jpg")
    cache_image_array(moved, names, array_path, 16, progress=False)
    after = np.load(array_path)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1].mean(axis=(0, 1)).round().tolist() == [254, 0, 0]


def test_a_truncated_array_is_rebuilt_and_never_read(images_dir: Path, tmp_path: Path) -> None:
    names = ["landscape.jpg", "portrait.jpg", "small.jpg"]
    array_path = cache_image_array(images_dir, names, tmp_path / "pixels.npy", 16, progress=False)
    whole = array_path.read_bytes()
    array_path.write_bytes(whole[: len(whole) - 100])      # a disk that filled up, a cut copy
    with pytest.raises(ValueError, match=f"{array_path} is damaged.*cache_image_array again"):
        ArrayImageCaptionDataset(array_path, _items(names), build_transform(16, False))
    cache_image_array(images_dir, names, array_path, 16, progress=False)
    assert array_path.read_bytes() == whole
    ArrayImageCaptionDataset(array_path, _items(names), build_transform(16, False))[2]


def test_array_dataset_refuses_names_it_does_not_hold(images_dir: Path, tmp_path: Path) -> None:
    array_path = cache_image_array(
        images_dir, ["small.jpg"], tmp_path / "pixels.npy", 16, progress=False
    )
    with pytest.raises(ValueError, match="landscape.jpg") as error:
        ArrayImageCaptionDataset(array_path, _items(["landscape.jpg"]), build_transform(16, False))
    assert str(array_path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="cache_image_array"):
        ArrayImageCaptionDataset(tmp_path / "absent.npy", _items(["small.jpg"]), None)


def test_array_dataset_pickles_without_the_pixels(images_dir: Path, tmp_path: Path) -> None:
    names = ["landscape.jpg", "portrait.jpg"]
    array_path = cache_image_array(images_dir, names, tmp_path / "pixels.npy", 128, progress=False)
    dataset = ArrayImageCaptionDataset(array_path, _items(names), build_transform(128, False))
    first = dataset[0]["image"]  # maps the array in this process
    copy = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives
    assert len(pickle.dumps(dataset)) < 128 * 128 * 3
    assert torch.equal(copy[0]["image"], first)
