"""Decode and resize a dataset's images once, so training does not redo it every epoch.

Colab gives 2 vCPUs; decoding a ~500x375 Flickr JPEG and resizing it on every access leaves the
GPU waiting. :func:`cache_image_array` + :class:`ArrayImageCaptionDataset` keep one uint8 array
``[N, S, S, 3]`` memory-mapped from a ``.npy`` file, each image already squashed to the ``S x S``
square that ``utils.data.build_transform(S, ...)`` starts with. No decode and no resize remain per
access, only augmentation and normalisation (``bench/image_cache_throughput.py`` measures the
speed-up), and the tensors are identical to the uncached ones. Costs ``N * S * S * 3`` bytes (8091
images at 224 px: 1.2 GB) and fixes ``S``. The array is keyed by the images' bytes
(:func:`images_fingerprint`), built atomically, and rebuilt when cut short.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from utils.data import ImageCaptionDataset, load_image
from utils.storage.atomic import atomic_file, write_text_atomic


def _read_json(path: Path) -> dict[str, object] | None:
    """A sidecar's content; None if absent, ``{}`` if unreadable."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        content = None
    # Unreadable means edited by hand: treat it as other settings, so the cache is rebuilt.
    return content if isinstance(content, dict) else {}


# --------------------------------------------------------------------------------------------
# Fixed-size array cache
# --------------------------------------------------------------------------------------------


def cache_image_array(
    images_dir: str | os.PathLike[str],
    names: Sequence[str],
    array_path: str | os.PathLike[str],
    image_size: int = 224,
    *,
    progress: bool = True,
) -> Path:
    """Store each image squashed to ``image_size`` x ``image_size`` in one uint8 ``.npy`` file.

    Row ``i`` of the array ``[N, S, S, 3]`` (uint8 RGB) is
    ``cv2.resize(load_image(images_dir / names[i]), (S, S), INTER_AREA)``: exactly the first step
    of ``utils.data.build_transform(S, ...)``, so :class:`ArrayImageCaptionDataset` gives the same
    tensors as ``ImageCaptionDataset`` on the originals. The array is written to a temp file and
    renamed; a sidecar ``<array_path stem>.json`` written last records the row order, the size
    and :func:`images_fingerprint` of the files. A later call with the same size, names and file
    contents returns at once if the array is whole; any other call (edited images, a cut-short
    array) rebuilds it.

    Returns:
        ``array_path`` as a Path, to pass to :class:`ArrayImageCaptionDataset`.
    """
    source, array_path = Path(images_dir).resolve(), Path(array_path)
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    names = list(dict.fromkeys(names))
    # Keyed by the files' bytes, not their folder: regenerated or edited images with the same
    # names must not reuse an old array, and a moved folder need not rebuild it.
    manifest = {"image_size": image_size, "names": names,
                "fingerprint": images_fingerprint(source, names)}
    sidecar = _array_manifest_path(array_path)
    if _read_json(sidecar) == manifest and _array_shape(array_path) == (len(names), image_size):
        return array_path
    array_path.parent.mkdir(parents=True, exist_ok=True)
    # The array is about to change: a sidecar must never describe an array it does not match.
    sidecar.unlink(missing_ok=True)
    with atomic_file(array_path) as temp:
        _fill_array(temp, source, names, image_size, progress)
    write_text_atomic(sidecar, json.dumps(manifest))
    return array_path


def images_fingerprint(images_dir: str | os.PathLike[str], names: Sequence[str]) -> str:
    """SHA-256 over ``names`` and each named file's bytes, in order: what a cache of these images
    depends on. Reading the files costs about a second per gigabyte; decoding them costs far more.
    """
    digest = hashlib.sha256()
    for name in names:
        with open(Path(images_dir) / name, "rb") as file:
            file_digest = hashlib.file_digest(file, "sha256").digest()
        digest.update(name.encode("utf-8") + b"\0" + file_digest)
    return digest.hexdigest()


def _array_shape(array_path: Path) -> tuple[int, int] | None:
    """``(rows, side)`` of a complete ``[N, S, S, 3]`` uint8 array file; None when the file is
    missing, truncated or of another shape (numpy checks the length against the header)."""
    try:
        pixels = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3 \
            or pixels.shape[1] != pixels.shape[2]:
        return None
    return pixels.shape[0], pixels.shape[1]


def _array_manifest_path(array_path: Path) -> Path:
    return array_path.with_suffix(".json")


def _fill_array(path: Path, source: Path, names: list[str], size: int, progress: bool) -> None:
    """Write the ``[len(names), size, size, 3]`` uint8 array of squashed images to ``path``."""
    pixels = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(len(names), size, size, 3)
    )
    for row, name in enumerate(tqdm(names, desc="cache array", unit="img", disable=not progress)):
        pixels[row] = cv2.resize(
            load_image(source / name), (size, size), interpolation=cv2.INTER_AREA
        )
    pixels.flush()
    del pixels  # close the map before the file is renamed


class ArrayImageCaptionDataset(ImageCaptionDataset):
    """``ImageCaptionDataset`` whose pixels come from a :func:`cache_image_array` file.

    Same ``items``, ``transform``, ``caption_index`` and output
    (``{"image": FloatTensor[3, H, W], "caption": str, "image_index": int}``) and the same use of
    torch's RNG, so with ``build_transform(S, ...)`` at the array's size ``S`` it returns the
    same tensors as the JPEG-reading dataset, minus the decode and resize.
    """

    def __init__(
        self,
        array_path: str | os.PathLike[str],
        items: Sequence[tuple[str, Sequence[str]]],
        transform: Callable[..., dict[str, object]],
        caption_index: int | None = None,
    ) -> None:
        self.array_path = Path(array_path)
        super().__init__(self.array_path.parent, items, transform, caption_index)
        self._rows = _rows_of(self.array_path, [name for name, _ in self.items])
        self._pixels: np.ndarray | None = None  # mapped on first access, in each process

    def __getitem__(self, index: int) -> dict[str, object]:
        index = range(len(self.items))[index]  # IndexError when out of range; negatives resolved
        captions = self.items[index][1]
        caption = captions[self._pick_caption(len(captions))]
        return {
            "image": self._transform(self._image(index)),
            "caption": caption,
            "image_index": index,
        }

    def _image(self, index: int) -> np.ndarray:
        """``[S, S, 3]`` uint8 pixels of item ``index``."""
        if self._pixels is None:
            self._pixels = np.load(self.array_path, mmap_mode="r")
        # A copy: the map is read-only and a transform may work in place.
        return np.array(self._pixels[self._rows[index]])

    def __getstate__(self) -> dict[str, object]:
        # DataLoader workers receive the dataset pickled; a pickled memmap would be a full copy
        # of the array. Each worker maps the file itself instead.
        return {**self.__dict__, "_pixels": None}


def _rows_of(array_path: Path, names: list[str]) -> list[int]:
    """Row of each of ``names`` in the array, from its sidecar manifest."""
    sidecar = _array_manifest_path(array_path)
    manifest = _read_json(sidecar)
    if not array_path.is_file() or not manifest or "names" not in manifest:
        raise FileNotFoundError(
            f"{array_path} (with {sidecar.name}) is not a complete image array; build it with "
            "utils.storage.image_cache.cache_image_array."
        )
    shape = _array_shape(array_path)
    if shape is None or shape[0] != len(manifest["names"]) \
            or shape[1] != manifest.get("image_size"):
        raise ValueError(
            f"{array_path} is damaged: it does not hold the {len(manifest['names'])} images "
            f"that {sidecar.name} lists (cut short or replaced). Call "
            "utils.storage.image_cache.cache_image_array again with the same arguments: it rebuilds it."
        )
    row_of = {name: row for row, name in enumerate(manifest["names"])}
    missing = [name for name in names if name not in row_of]
    if missing:
        raise ValueError(
            f"{array_path} has no rows for {len(missing)} image(s), first: {missing[:5]}. "
            "Rebuild it with cache_image_array over all the names you use."
        )
    return [row_of[name] for name in names]
