"""PACL's feature cache: the frozen backbone's outputs, computed once and kept on disk.

Both CLIP encoders are frozen in PACL, so an image's patch embeddings and a prompt's text
embedding are the same in every epoch. :func:`cache_features` computes them once (patches as a
float16 ``.npy`` memory map, texts as float16) under a folder keyed by the backbone's weights, the
dataset, the image size, the texts and the image files' bytes; :func:`pacl_feature_loader` then feeds them to
:func:`utils.pacl.pacl_batch_loss` through :func:`utils.train.fit`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from utils.backbones import FrozenBackbone
from utils.data import ImageCaptionDataset
from utils.positives import text_id_positives
from utils.storage.atomic import atomic_folder
from utils.storage.image_cache import ArrayImageCaptionDataset, images_fingerprint

CACHE_FORMAT = 1
PATCHES_FILE = "patch_emb.npy"
TEXTS_FILE = "text_emb.npy"
MANIFEST_FILE = "manifest.json"


@dataclass
class FeatureCache:
    """Frozen-backbone features of one dataset, as :func:`cache_features` wrote them.

    Attributes:
        folder: where the files are.
        image_names: ``N`` image file names, in the order of ``patch_emb``.
        texts: ``T`` distinct training texts, in the order of ``text_emb``.
        image_text_ids: for each image, the indices into ``texts`` of its training texts.
        patch_emb: ``[N, P, D]`` float16, memory-mapped (read from disk as needed).
        text_emb: ``[T, D]`` float16, unit length.
        grid_shape: ``(h, w)`` with ``h * w = P``.
        key: what the cache was made from (backbone, dataset, image size, texts, image bytes).
    """

    folder: Path
    image_names: list[str]
    texts: list[str]
    image_text_ids: list[list[int]]
    patch_emb: np.ndarray
    text_emb: np.ndarray
    grid_shape: tuple[int, int]
    key: dict

    @classmethod
    def load(cls, folder: str | Path) -> FeatureCache:
        """Open a cache folder written by :func:`cache_features`."""
        folder = Path(folder)
        if not (folder / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no {MANIFEST_FILE}: not a PACL feature cache "
                                    "(build one with utils.storage.feature_cache.cache_features)")
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            cache = cls(folder, manifest["image_names"], manifest["texts"],
                        manifest["image_text_ids"], np.load(folder / PATCHES_FILE, mmap_mode="r"),
                        np.load(folder / TEXTS_FILE, mmap_mode="r"),
                        tuple(manifest["grid_shape"]), manifest["key"])
        except (OSError, ValueError, EOFError, KeyError, TypeError) as error:
            raise _damaged(folder, str(error)) from error
        if (cache.patch_emb.shape[0] != len(cache.image_names)
                or cache.text_emb.shape[0] != len(cache.texts)):
            raise _damaged(folder, f"the arrays do not match {MANIFEST_FILE}")
        return cache

    def __len__(self) -> int:
        return len(self.image_names)


def cache_features(backbone: FrozenBackbone, images_dir: str | Path,
                   items: Sequence[tuple[str, Sequence[str]]], image_size: int,
                   cache_dir: str | Path, dataset_key: str, *, image_array: str | Path | None = None,
                   batch_size: int = 64, num_workers: int = 0, progress: bool = True
                   ) -> FeatureCache:
    """Compute the frozen backbone's patch and text embeddings once and keep them on disk.

    Args:
        backbone: a :class:`~utils.backbones.CourseCLIPBackbone` or
            :class:`~utils.backbones.HFCLIPBackbone`.
        images_dir: folder of the image files.
        items: ``(image file name, training texts of that image)`` pairs; build the texts with
            :func:`utils.prompts.training_texts` from the image's captions (the object phrases
            they name, in prompt templates, on Flickr8k and on the synthetic set). Texts are used as
            given; equal strings are stored (and embedded) once.
        image_size: images are resized to this square with the backbone's eval transform (no
            augmentation: the cache holds one view of each image).
        cache_dir: parent folder of the caches.
        dataset_key: names the image set (e.g. ``"flickr8k-train"``); part of the cache's key.
        image_array: optional :func:`utils.storage.image_cache.cache_image_array` file of these images at
            ``image_size``: their pixels are read from it instead of decoding ``images_dir``'s
            files. The tensors are the same, so is the cache (and its key); only the decoding is
            skipped (the demo trained its CLIP from such an array already).

    Returns:
        The :class:`FeatureCache`. It lives in ``cache_dir/<dataset_key>_<size>px_<hash>/``, the
        hash covering ``backbone.cache_key``, ``dataset_key``, ``image_size``, the items and the
        image files' bytes (:func:`utils.storage.image_cache.images_fingerprint`), so a different model,
        dataset, size, text set or edited image never reuses a stale cache, and a second call
        with the same inputs reuses it without touching the backbone. The folder is built under a
        temporary name and renamed into place: it is either complete or absent.
    """
    items = _checked_items(items)
    if not dataset_key or not isinstance(dataset_key, str):
        raise ValueError("dataset_key must be a non-empty string naming the image set, "
                         "e.g. 'flickr8k-train'")
    key = {"format": CACHE_FORMAT, "backbone": backbone.cache_key, "dataset": dataset_key,
           "image_size": image_size, "items": _digest(items),
           "images": images_fingerprint(images_dir, [name for name, _ in items])}
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{_slug(dataset_key)}_{image_size}px_{_digest(key)[:16]}"
    cached = _load_if_valid(folder, key)
    if cached is not None:
        return cached

    # A cache of the same key that failed to load (damaged, unreadable) is replaced.
    with atomic_folder(folder) as building:
        _write_patch_embeddings(backbone, images_dir, image_array, items, image_size,
                                building / PATCHES_FILE, batch_size, num_workers, progress)
        texts, image_text_ids = _index_texts(items)
        _write_text_embeddings(backbone, texts, building / TEXTS_FILE, batch_size, progress)
        manifest = {"key": key, "image_names": [name for name, _ in items], "texts": texts,
                    "image_text_ids": image_text_ids,
                    "grid_shape": list(backbone.grid_shape(image_size))}
        (building / MANIFEST_FILE).write_text(json.dumps(manifest))
    return FeatureCache.load(folder)


def _damaged(folder: Path, why: str) -> ValueError:
    return ValueError(f"{folder} is damaged ({why}); delete the folder: cache_features builds it "
                      "again")


def _checked_items(items: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, list[str]]]:
    if not items:
        raise ValueError("cache_features got no items: pass (image name, texts) pairs")
    checked = []
    for name, texts in items:
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"image {name!r} needs a non-empty list of text strings, got "
                             f"{texts!r}; build it with utils.prompts.training_texts")
        checked.append((name, list(texts)))
    return checked


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    """``text`` safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "dataset"


def _load_if_valid(folder: Path, key: dict) -> FeatureCache | None:
    """The cache in ``folder`` if it is complete and was made from ``key``, else None."""
    try:
        cache = FeatureCache.load(folder)
    except (OSError, ValueError):     # absent (FileNotFoundError) or damaged (ValueError)
        return None
    return cache if cache.key == key else None


def _write_patch_embeddings(backbone: FrozenBackbone, images_dir: str | Path,
                            image_array: str | Path | None, items: list[tuple[str, list[str]]],
                            image_size: int, path: Path, batch_size: int, num_workers: int,
                            progress: bool) -> None:
    """All images' patch embeddings -> ``path`` (``.npy``, ``[N, P, D]`` float16), batch by batch
    through a memory map, so the whole array never has to fit in memory."""
    transform = backbone.image_transform(image_size)
    dataset = (ImageCaptionDataset(images_dir, items, transform, caption_index=0)
               if image_array is None else
               ArrayImageCaptionDataset(image_array, items, transform, caption_index=0))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    array, start = None, 0
    for batch in tqdm(loader, desc="caching patch embeddings", disable=not progress):
        patches = backbone.patch_embeddings(batch["image"]).float().cpu().numpy()
        if array is None:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                              shape=(len(items), *patches.shape[1:]))
        array[start:start + len(patches)] = patches
        start += len(patches)
    array.flush()
    del array  # close the memory map before the folder is renamed


def _index_texts(items: list[tuple[str, list[str]]]) -> tuple[list[str], list[list[int]]]:
    """Distinct texts (first occurrence first) and, per image, the indices of its texts."""
    index: dict[str, int] = {}
    image_text_ids = [[index.setdefault(text, len(index)) for text in dict.fromkeys(texts)]
                      for _, texts in items]
    return list(index), image_text_ids


def _write_text_embeddings(backbone: FrozenBackbone, texts: list[str], path: Path,
                           batch_size: int, progress: bool) -> None:
    """``[T, D]`` float16 text embeddings of ``texts`` -> ``path`` (``.npy``)."""
    chunks = [backbone.text_embeddings(texts[start:start + batch_size]).float().cpu()
              for start in tqdm(range(0, len(texts), batch_size), desc="caching text embeddings",
                                disable=not progress)]
    np.save(path, torch.cat(chunks).numpy().astype(np.float16))


# --------------------------------------------------------------------------------------------
# Training the embedder from the cache (plugs into utils.train.fit)
# --------------------------------------------------------------------------------------------

class PACLFeatureDataset(Dataset):
    """One item per cached image: its patch embeddings and one of its texts.

    Item ``i``: ``{"patch_emb": [P, D] float16, "text_id": int, "image_index": i}``. The text is
    drawn uniformly from the image's texts on every access, with torch's RNG (so the seeding in
    :func:`utils.train.fit` makes epochs reproducible).
    """

    def __init__(self, cache: FeatureCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self.cache))[index]  # IndexError when out of range
        text_ids = self.cache.image_text_ids[index]
        # np.array copies the row out of the read-only memory map, so torch gets writable memory.
        return {"patch_emb": torch.from_numpy(np.array(self.cache.patch_emb[index])),
                "text_id": text_ids[int(torch.randint(len(text_ids), ()))],
                "image_index": index}


class PACLFeatureCollator:
    """Batches :class:`PACLFeatureDataset` items for :func:`utils.pacl.pacl_batch_loss`.

    Returns ``patch_emb [B, P, D]`` and ``text_emb [B, D]`` (float16, looked up from the cache),
    ``positives [B, B]`` (:func:`text_id_positives`), ``text_ids [B]`` and ``image_index [B]``.
    """

    def __init__(self, cache: FeatureCache):
        self.text_emb = torch.from_numpy(np.array(cache.text_emb))
        self.image_text_ids = [frozenset(ids) for ids in cache.image_text_ids]

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        text_ids = torch.tensor([sample["text_id"] for sample in samples])
        image_index = torch.tensor([sample["image_index"] for sample in samples])
        return {
            "patch_emb": torch.stack([sample["patch_emb"] for sample in samples]),
            "text_emb": self.text_emb[text_ids],
            "positives": text_id_positives([self.image_text_ids[i] for i in image_index.tolist()],
                                           text_ids),
            "text_ids": text_ids,
            "image_index": image_index,
        }


def pacl_feature_loader(cache: FeatureCache, batch_size: int, shuffle: bool = True,
                        num_workers: int = 0) -> DataLoader:
    """A DataLoader over the cache for :func:`utils.train.fit` (incomplete last batch dropped)."""
    if batch_size > len(cache):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(cache)} cached images: "
                         "lower it")
    return DataLoader(PACLFeatureDataset(cache), batch_size=batch_size, shuffle=shuffle,
                      drop_last=True, num_workers=num_workers, collate_fn=PACLFeatureCollator(cache))
