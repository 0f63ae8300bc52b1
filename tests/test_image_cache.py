"""The image caches: resized JPEG copies (sizes, aspect, no upscaling, reuse, rebuild, RGB) and
the fixed-size uint8 array with its dataset (same tensors as the uncached path, reuse, rebuild)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data import ImageCaptionDataset, build_transform, load_image
from utils.image_cache import (
    MANIFEST_NAME,
    ArrayImageCaptionDataset,
    cache_image_array,
    cache_resized_images,
)

SIZES = {
    "landscape.jpg": (500, 375),
    "portrait.jpg": (333, 500),
    "small.jpg": (120, 90),
    "large.jpg": (1100, 825),  # big enough for the JPEG decoder's draft (1/2) downscale
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


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_short_side_is_resized_and_aspect_kept(images_dir: Path, tmp_path: Path) -> None:
    cache = cache_resized_images(
        images_dir, ["landscape.jpg", "portrait.jpg"], tmp_path / "cache", 256, progress=False
    )
    assert cache == tmp_path / "cache"
    assert _size(cache / "landscape.jpg") == (341, 256)  # 500 * 256 / 375 = 341.3
    assert _size(cache / "portrait.jpg") == (256, 384)  # 500 * 256 / 333 = 384.4
    for name in ("landscape.jpg", "portrait.jpg"):
        width, height = _size(cache / name)
        original_width, original_height = SIZES[name]
        assert abs(width / height - original_width / original_height) < 0.01


@pytest.mark.parametrize(
    ("name", "size"), [("landscape.jpg", (341, 256)), ("large.jpg", (341, 256))]
)
def test_content_survives_resizing(
    images_dir: Path, tmp_path: Path, name: str, size: tuple[int, int]
) -> None:
    cache = cache_resized_images(images_dir, [name], tmp_path / "c", progress=False)
    with Image.open(images_dir / name) as original, Image.open(cache / name) as cached:
        assert cached.size == size
        expected = np.asarray(original.resize(size, Image.Resampling.BOX), dtype=np.float32)
        assert np.abs(np.asarray(cached, dtype=np.float32) - expected).mean() < 10


def test_small_images_are_not_upscaled(images_dir: Path, tmp_path: Path) -> None:
    cache = cache_resized_images(images_dir, ["small.jpg"], tmp_path / "cache", 256, progress=False)
    assert _size(cache / "small.jpg") == SIZES["small.jpg"]


def test_grayscale_input_gives_rgb_jpeg(images_dir: Path, tmp_path: Path) -> None:
    cache = cache_resized_images(images_dir, ["gray.jpg"], tmp_path / "cache", 150, progress=False)
    with Image.open(cache / "gray.jpg") as image:
        assert (image.mode, image.format, image.size) == ("RGB", "JPEG", (200, 150))


def test_exif_orientation_is_applied_like_load_image(images_dir: Path, tmp_path: Path) -> None:
    stored = np.zeros((200, 400, 3), np.uint8)
    stored[:, :200] = (255, 0, 0)  # left half red, right half blue, as stored
    stored[:, 200:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: a portrait, red on top
    Image.fromarray(stored).save(images_dir / "rotated.jpg", exif=exif.tobytes(), quality=95)
    cache = cache_resized_images(
        images_dir, ["rotated.jpg"], tmp_path / "cache", 100, progress=False
    )
    shown = load_image(images_dir / "rotated.jpg")
    cached = load_image(cache / "rotated.jpg")
    assert (shown.shape, cached.shape) == ((400, 200, 3), (200, 100, 3))
    expected = np.asarray(Image.fromarray(shown).resize((100, 200)), dtype=np.float32)
    assert np.abs(cached.astype(np.float32) - expected).mean() < 8


def test_transparency_is_composited_on_white_like_load_image(
    images_dir: Path, tmp_path: Path
) -> None:
    Image.new("RGBA", (300, 200), (255, 0, 0, 0)).save(images_dir / "clear.png")
    cache = cache_resized_images(images_dir, ["clear.png"], tmp_path / "cache", 100, progress=False)
    cached = load_image(cache / "clear.png")
    assert cached.shape == (100, 150, 3)
    assert cached.min() >= 250  # white, as load_image shows the original; not red, not black


def test_second_call_reuses_cached_files(images_dir: Path, tmp_path: Path) -> None:
    names = list(SIZES)
    cache = cache_resized_images(images_dir, names[:2], tmp_path / "cache", progress=False)
    mtimes = {name: (cache / name).stat().st_mtime_ns for name in names[:2]}
    cache_resized_images(images_dir, names, cache, progress=False)
    assert {name: (cache / name).stat().st_mtime_ns for name in names[:2]} == mtimes
    assert (cache / names[2]).is_file()  # the new name was added
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    assert manifest["short_side"] == 256 and manifest["complete"] is True
    assert manifest["source"] == str(images_dir.resolve())
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []


def test_other_short_side_rebuilds(images_dir: Path, tmp_path: Path) -> None:
    cache = cache_resized_images(
        images_dir, ["landscape.jpg", "portrait.jpg"], tmp_path / "cache", 256, progress=False
    )
    cache_resized_images(images_dir, ["landscape.jpg"], cache, 128, progress=False)
    assert _size(cache / "landscape.jpg") == (171, 128)
    # Stale images of the old size are gone, so a later call cannot pick them up as cached.
    assert not (cache / "portrait.jpg").exists()
    assert json.loads((cache / MANIFEST_NAME).read_text())["short_side"] == 128


def test_other_source_folder_rebuilds(images_dir: Path, tmp_path: Path) -> None:
    cache = cache_resized_images(images_dir, ["landscape.jpg"], tmp_path / "cache", progress=False)
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (600, 300), (255, 0, 0)).save(other / "landscape.jpg")
    cache_resized_images(other, ["landscape.jpg"], cache, progress=False)
    assert _size(cache / "landscape.jpg") == (512, 256)


def test_worker_processes_give_the_same_files(images_dir: Path, tmp_path: Path) -> None:
    names = [f"copy_{i:02d}.jpg" for i in range(20)]  # more than one chunk of work
    for i, name in enumerate(names):
        _textured((300 + i, 200), i).save(images_dir / name)
    serial = cache_resized_images(images_dir, names, tmp_path / "serial", 100, progress=False)
    parallel = cache_resized_images(
        images_dir, names, tmp_path / "parallel", 100, num_workers=2, progress=False
    )
    for name in names:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_missing_image_error_names_the_file(images_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="nope.jpg"):
        cache_resized_images(images_dir, ["nope.jpg"], tmp_path / "cache", progress=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [MANIFEST_NAME]


def test_cache_dir_must_differ_from_images_dir(images_dir: Path) -> None:
    with pytest.raises(ValueError, match="separate folder"):
        cache_resized_images(images_dir, ["small.jpg"], images_dir, progress=False)


# --------------------------------------------------------------------------------------------
# Fixed-size array cache
# --------------------------------------------------------------------------------------------


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
