"""Pascal VOC 2012 segmentation: the val images with their masks, and mIoU on them.

**Pascal VOC 2012** (Everingham et al.) is the benchmark PACL reports first (VOC-20 / VOC-21 mIoU).
Its segmentation part, inside the official trainval archive, has this layout::

    VOCdevkit/VOC2012/
      JPEGImages/2007_000033.jpg ...              RGB photos of any size (~500 x 375)
      SegmentationClass/2007_000033.png ...       palette PNGs: the stored *index* is the class
      ImageSets/Segmentation/{train,val}.txt      image ids, one a line (1464 train, 1449 val)

A mask pixel holds ``0`` (background), ``1..20`` (the classes of :data:`VOC_CLASSES`, in order)
or ``255`` (a thin band along object boundaries and hard regions, ignored when scoring). The
colours you see in an image viewer are only the palette: read the indices (``np.array`` of the
``P``-mode image), never ``convert("RGB")`` or ``convert("L")``, which turn them into colours or
grey levels.

:func:`prepare_voc` downloads the 2 GB archive (from Oxford's current host or a mirror,
resumable, MD5-checked, see :mod:`utils.sources.download`) and extracts only the segmentation part (~2900 JPEGs with masks, not all
17,125), atomically. :func:`load_voc_split` reads images and masks back, with a cap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from utils.data import load_image
from utils.metrics import iou_from_confusion, segmentation_confusion
from utils.sources.download import (
    download_from_mirrors,
    extract_tar_atomic,
    tar_member_names,
)

# Where the trainval archive is, tried in order. Oxford moved the VOC datasets to this host in
# 2025 (the old host was offline for months, then came back redirecting here: pytorch/vision
# #9216); the second is the old address, the third a copy on Amazon S3 kept by the d2l.ai book.
# The MD5 proves any copy.
VOC_URLS = (
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "https://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar",
)
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
VOC_ARCHIVE_BYTES = 1_999_639_040       # what the download costs, printed before it starts
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
VOC_SUBDIR = "VOCdevkit/VOC2012"
IMAGES, MASKS, SPLITS = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"

# The 20 classes in VOC's order: mask value c + 1 is VOC_CLASSES[c].
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
# The same classes as words a text encoder has read in captions (what the prompts use).
VOC_PROMPT_NAMES = tuple({"aeroplane": "aeroplane", "diningtable": "dining table",
                          "motorbike": "motorbike", "pottedplant": "potted plant",
                          "tvmonitor": "tv monitor"}.get(name, name) for name in VOC_CLASSES)
IGNORE_INDEX = 255


# --------------------------------------------------------------------------------------------
# Download and extraction
# --------------------------------------------------------------------------------------------

def prepare_voc(root: str | os.PathLike[str], *, urls: Sequence[str] = VOC_URLS,
                md5: str = VOC_MD5, keep_archive: bool = False, progress: bool = True) -> Path:
    """Make ``root/VOCdevkit/VOC2012`` hold VOC 2012's segmentation data; return that folder.

    Downloads the trainval archive into ``root`` from the first of ``urls`` that delivers it
    (resumed if cut, MD5-checked, each failure explained), extracts the split lists, the masks
    and the JPEGs that have a mask into a hidden folder, then renames ``VOCdevkit`` into place:
    it exists only once complete, and a second call finds it and touches no network.
    """
    root = Path(root).expanduser()
    voc_dir = root / VOC_SUBDIR
    if (voc_dir / SPLITS / "val.txt").is_file():
        return voc_dir
    root.mkdir(parents=True, exist_ok=True)
    archive = download_from_mirrors(urls, root / VOC_ARCHIVE, md5, progress=progress)
    staging = root / ".voc_extracted"
    if not staging.is_dir():    # complete if it exists (atomic): reuse it after a crash
        extract_tar_atomic(archive, staging, keep=_segmentation_members(archive),
                           progress=progress)
    top = staging / VOC_SUBDIR.split("/")[0]
    if not (top / "VOC2012" / SPLITS / "val.txt").is_file():
        raise FileNotFoundError(
            f"{archive} has no {VOC_SUBDIR}/{SPLITS}/val.txt: it is not the VOC 2012 trainval "
            f"archive. Delete {archive} and {staging}, check the URLs, and run again.")
    os.replace(top, root / top.name)
    staging.rmdir()
    if not keep_archive:
        archive.unlink()
    return voc_dir


def _segmentation_members(archive: Path):
    """``keep(name)`` for the segmentation part: split lists, masks, and the JPEGs with a mask."""
    masked = {PurePosixPath(name).stem for name in tar_member_names(archive)
              if _inside(name, MASKS) and name.endswith(".png")}

    def keep(name: str) -> bool:
        if _inside(name, SPLITS) or _inside(name, MASKS):
            return True
        return _inside(name, IMAGES) and PurePosixPath(name).stem in masked

    return keep


def _inside(name: str, folder: str) -> bool:
    return name.removeprefix("./").startswith(f"{VOC_SUBDIR}/{folder}/")


# --------------------------------------------------------------------------------------------
# Reading images and masks
# --------------------------------------------------------------------------------------------

def read_voc_split(voc_dir: str | os.PathLike[str], split: str = "val",
               max_images: int | None = None) -> list[str]:
    """Image ids of a segmentation split (``train``, ``val``, ``trainval``), the first
    ``max_images`` of them if given (the file's order, so a cap gives the same images each run)."""
    path = Path(voc_dir) / SPLITS / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the VOC2012 folder that prepare_voc "
                                "returned, and a split among train, val, trainval")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ids[:max_images] if max_images is not None else ids


def load_voc_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A VOC palette PNG -> ``[H, W]`` uint8 class ids (0 background, 1-20 classes, 255 ignore).

    Raises:
        ValueError: the PNG is not a palette image (e.g. re-saved as RGB) or holds an id that is
            no VOC class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {path} not found: the VOC folder is incomplete; delete it "
                                "and run prepare_voc again")
    with Image.open(path) as mask:
        if mask.mode != "P":
            raise ValueError(f"{path}: mode {mask.mode}, expected a palette PNG (mode P) whose "
                             "indices are the class ids; was it re-saved as colours?")
        ids = np.array(mask)
    bad = (ids > len(VOC_CLASSES)) & (ids != IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"{path}: class id {int(ids[bad][0])} is no VOC class (0-20, 255 "
                         "ignored)")
    return ids


@dataclass(frozen=True)
class VOCSample:
    """One VOC image with its mask: ``image [H, W, 3]`` uint8, ``mask [H, W]`` uint8."""

    name: str
    image: np.ndarray
    mask: np.ndarray


def load_voc_split(voc_dir: str | os.PathLike[str], split: str = "val",
                   max_images: int | None = None) -> Iterator[VOCSample]:
    """Yield the images and masks of a split one by one (VOC images differ in size, so they are
    segmented one at a time), at most ``max_images`` of them."""
    voc_dir = Path(voc_dir)
    for name in read_voc_split(voc_dir, split, max_images):
        image = load_image(voc_dir / IMAGES / f"{name}.jpg")
        mask = load_voc_mask(voc_dir / MASKS / f"{name}.png")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{voc_dir / MASKS / name}.png is {mask.shape}, its image "
                             f"{image.shape[:2]}: the files do not belong together")
        yield VOCSample(name, image, mask)


def voc_miou(predict: Callable[[np.ndarray], np.ndarray], samples: Iterable[VOCSample], *,
             include_background: bool = True, total: int | None = None,
             progress: bool = True) -> dict:
    """Segment every sample and score the whole set: pixel counts pooled over all images, as the
    benchmark does (not a mean of per-image scores).

    Args:
        predict: ``image [H, W, 3] uint8 -> mask [H, W]`` of VOC ids (0 background, 1-20).
        include_background: True scores 21 classes ("VOC-21"). False ignores the ground truth's
            background pixels, as the PACL paper's "VOC-20" numbers do: only object pixels are
            scored, so predict should then never answer background.

    Returns:
        :func:`utils.metrics.iou_from_confusion`'s dict (per-class IoU for the 21 ids, mIoU over
        the classes present, pixel accuracy) plus ``num_images``.
    """
    confusion = torch.zeros(len(VOC_CLASSES) + 1, len(VOC_CLASSES) + 1, dtype=torch.long)
    count = 0
    for sample in tqdm(samples, total=total, desc="VOC", disable=not progress):
        target = sample.mask if include_background else np.where(sample.mask == 0, IGNORE_INDEX,
                                                                  sample.mask)
        confusion += segmentation_confusion(predict(sample.image), target, len(VOC_CLASSES) + 1,
                                            IGNORE_INDEX)
        count += 1
    return {**iou_from_confusion(confusion), "num_images": count}


