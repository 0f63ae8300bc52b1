"""Tests for utils.storage.feature_cache: the keyed, atomic cache of a frozen backbone's features, its
batches, and training PACL's embedder from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_clips import EMBED_DIM, IMAGE_SIZE, course_clip

from utils.backbones import CourseCLIPBackbone
from utils.data import load_image, load_split, locate_dataset
from utils.pacl import PACL, pacl_batch_loss, pacl_parameter_groups
from utils.prompts import SHAPES_VOCABULARY, training_texts
from utils.sources.synthetic import generate_captioned_shapes
from utils.storage.feature_cache import (
    FeatureCache,
    PACLFeatureDataset,
    cache_features,
    pacl_feature_loader,
)
from utils.storage.image_cache import cache_image_array
from utils.train import TrainConfig, fit


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 16-image synthetic set and its PACL training items (object phrases in prompts)."""
    root = generate_captioned_shapes(tmp_path_factory.mktemp("data") / "shapes", num_train=16,
                                     num_dev=0, num_test=0, image_size=IMAGE_SIZE, progress=False)
    files = locate_dataset(root)
    items = [(name, training_texts(captions, SHAPES_VOCABULARY, rng=np.random.default_rng(i)))
             for i, (name, captions) in enumerate(load_split(files, "train"))]
    return files.images_dir, items


def build(backbone, shapes, cache_dir, dataset_key="shapes-train"):
    images_dir, items = shapes
    return cache_features(backbone, images_dir, items, IMAGE_SIZE, cache_dir, dataset_key,
                          batch_size=6, progress=False)


def cache_folders(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def test_cache_holds_the_backbones_features(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    cache = build(backbone, shapes, tmp_path)
    images_dir, items = shapes
    assert cache.image_names == [name for name, _ in items]
    assert cache.patch_emb.shape == (16, 64, EMBED_DIM) and cache.patch_emb.dtype == np.float16
    assert cache.grid_shape == (8, 8)
    assert len(cache.texts) == len(set(cache.texts))
    for (_, texts), ids in zip(items, cache.image_text_ids, strict=True):
        assert [cache.texts[i] for i in ids] == texts
    transform = backbone.image_transform(IMAGE_SIZE)
    first = transform(image=load_image(images_dir / items[0][0]))["image"][None]
    torch.testing.assert_close(torch.from_numpy(np.array(cache.patch_emb[0])).float(),
                               backbone.patch_embeddings(first)[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.from_numpy(np.array(cache.text_emb[:5])).float(),
                               backbone.text_embeddings(cache.texts[:5]), atol=2e-3, rtol=2e-3)


def test_cache_from_an_image_array_equals_the_cache_from_files(tokenizer, shapes, tmp_path):
    images_dir, items = shapes
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    from_files = build(backbone, shapes, tmp_path / "files")
    # The array in another order than the items: rows are found by name.
    array = cache_image_array(images_dir, [name for name, _ in reversed(items)],
                              tmp_path / "train.npy", image_size=IMAGE_SIZE, progress=False)
    from_array = cache_features(backbone, images_dir, items, IMAGE_SIZE, tmp_path / "array",
                                "shapes-train", image_array=array, batch_size=6, progress=False)
    np.testing.assert_array_equal(from_array.patch_emb, from_files.patch_emb)
    np.testing.assert_array_equal(from_array.text_emb, from_files.text_emb)
    assert from_array.folder.name == from_files.folder.name   # same key: the same cache

    # ... and the pixels really come from the array: darken one image there, and only its
    # patches change.
    pixels = np.load(array, mmap_mode="r+")
    pixels[-1] //= 2        # the last row holds the first item
    pixels.flush()
    del pixels
    altered = cache_features(backbone, images_dir, items, IMAGE_SIZE, tmp_path / "altered",
                             "shapes-train", image_array=array, batch_size=6, progress=False)
    assert not np.array_equal(altered.patch_emb[0], from_files.patch_emb[0])
    np.testing.assert_array_equal(altered.patch_emb[1:], from_files.patch_emb[1:])


def test_cache_is_reused_and_invalidated(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    first = build(backbone, shapes, tmp_path)
    mtime = (first.folder / "patch_emb.npy").stat().st_mtime_ns
    again = build(CourseCLIPBackbone(course_clip(tokenizer), tokenizer), shapes, tmp_path)
    assert again.folder == first.folder
    assert (again.folder / "patch_emb.npy").stat().st_mtime_ns == mtime
    assert cache_folders(tmp_path) == [first.folder.name]  # no temporary files left

    other_weights = build(CourseCLIPBackbone(course_clip(tokenizer, seed=1), tokenizer), shapes,
                          tmp_path)
    other_dataset = build(backbone, shapes, tmp_path, dataset_key="shapes-other")
    images_dir, items = shapes
    other_texts = cache_features(backbone, images_dir, items[:-1], IMAGE_SIZE, tmp_path,
                                 "shapes-train", progress=False)
    folders = {first.folder, other_weights.folder, other_dataset.folder, other_texts.folder}
    assert len(folders) == 4
    assert not np.array_equal(other_weights.patch_emb, first.patch_emb)
    assert cache_folders(tmp_path) == sorted(f.name for f in folders)


def test_cache_follows_the_images_pixels(tokenizer, shapes, tmp_path):
    """Same names, same captions, other pixels (a regenerated or edited set): a new cache."""
    images_dir, items = shapes
    copy = tmp_path / "images"
    shutil.copytree(images_dir, copy)
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    first = build(backbone, (copy, items), tmp_path / "cache")
    edited = items[3][0]
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0)).save(copy / edited)
    second = build(backbone, (copy, items), tmp_path / "cache")
    assert second.folder != first.folder
    assert not np.array_equal(second.patch_emb[3], first.patch_emb[3])
    np.testing.assert_array_equal(second.patch_emb[0], first.patch_emb[0])


def test_a_cut_short_cache_says_which_folder_to_delete(tokenizer, shapes, tmp_path):
    cache = build(CourseCLIPBackbone(course_clip(tokenizer), tokenizer), shapes, tmp_path)
    patches = cache.folder / "patch_emb.npy"
    patches.write_bytes(patches.read_bytes()[:-64])
    with pytest.raises(ValueError, match=f"{cache.folder} is damaged.*delete the folder"):
        FeatureCache.load(cache.folder)


def test_a_damaged_cache_is_rebuilt(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    cache = build(backbone, shapes, tmp_path)
    (cache.folder / "text_emb.npy").unlink()
    rebuilt = build(backbone, shapes, tmp_path)
    assert rebuilt.folder == cache.folder
    np.testing.assert_array_equal(rebuilt.text_emb, cache.text_emb)


class FailingTextBackbone(CourseCLIPBackbone):
    """Fails half-way through a cache build, after the patches were written."""

    def text_embeddings(self, texts):
        raise RuntimeError("interrupted")


def test_an_interrupted_build_leaves_nothing(tokenizer, shapes, tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        build(FailingTextBackbone(course_clip(tokenizer), tokenizer), shapes, tmp_path)
    assert cache_folders(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="not a PACL feature cache"):
        FeatureCache.load(tmp_path)


def test_bad_items_are_refused(tokenizer, shapes, tmp_path):
    backbone = CourseCLIPBackbone(course_clip(tokenizer), tokenizer)
    images_dir, _ = shapes
    with pytest.raises(ValueError, match="training_texts"):
        cache_features(backbone, images_dir, [("000000.png", "a red circle")], IMAGE_SIZE,
                       tmp_path, "shapes", progress=False)
    with pytest.raises(ValueError, match="dataset_key"):
        cache_features(backbone, images_dir, [("000000.png", ["a circle"])], IMAGE_SIZE,
                       tmp_path, "", progress=False)


def test_batches_pair_patches_with_texts_and_mark_every_match(tokenizer, shapes, tmp_path):
    cache = build(CourseCLIPBackbone(course_clip(tokenizer), tokenizer), shapes, tmp_path)
    _, items = shapes
    torch.manual_seed(0)
    batch = next(iter(pacl_feature_loader(cache, batch_size=8)))
    assert batch["patch_emb"].shape == (8, 64, EMBED_DIM)
    assert batch["text_emb"].shape == (8, EMBED_DIM)
    images, text_ids = batch["image_index"].tolist(), batch["text_ids"].tolist()
    for row, image in enumerate(images):
        np.testing.assert_array_equal(batch["patch_emb"][row].numpy(), cache.patch_emb[image])
        for column, text_id in enumerate(text_ids):
            # Word for word: the text of column j is one of image i's texts.
            assert batch["positives"][row, column] == (cache.texts[text_id] in items[image][1])
    assert batch["positives"].diagonal().all()
    assert batch["positives"].sum() > 8  # shared prompts such as "a circle." fit several images
    item = PACLFeatureDataset(cache)[-1]
    assert item["image_index"] == 15 and item["text_id"] in cache.image_text_ids[15]
    with pytest.raises(ValueError, match="lower it"):
        pacl_feature_loader(cache, batch_size=17)


def random_cache(folder: Path, num_images=16, patches=9, dim=EMBED_DIM) -> FeatureCache:
    """A cache of random features: image i has its own text i and shares text "a shape." with
    every image (a random CLIP's texts are all alike, so its features would teach nothing)."""
    generator = torch.Generator().manual_seed(0)
    patch_emb = torch.randn(num_images, patches, dim, generator=generator)
    text_emb = F.normalize(torch.randn(num_images + 1, dim, generator=generator), dim=-1)
    return FeatureCache(folder, [f"{i}.png" for i in range(num_images)],
                        [f"text {i}" for i in range(num_images)] + ["a shape."],
                        [[i, num_images] for i in range(num_images)],
                        patch_emb.half().numpy(), text_emb.half().numpy(), (3, 3), key={})


def test_training_from_the_cache_lowers_the_loss(tmp_path):
    cache = random_cache(tmp_path)
    torch.manual_seed(0)
    pacl = PACL(EMBED_DIM)
    loader = pacl_feature_loader(cache, batch_size=8)
    fixed_batches = list(loader)

    def mean_loss() -> float:
        with torch.no_grad():
            return float(np.mean([pacl_batch_loss(pacl, b).item() for b in fixed_batches]))

    before = mean_loss()
    history = fit(pacl, pacl_parameter_groups(pacl, lr=1e-2), loader, pacl_batch_loss,
                  TrainConfig(epochs=15, progress=False, eval_every=0, device="cpu"))
    assert len(history.steps) == 30
    assert mean_loss() < 0.7 * before
