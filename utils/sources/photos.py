"""A few real photos to segment with free text: where they are, and downloading them.

Not a benchmark: a handful of public photos (COCO val2017 from Flickr; Wikimedia Commons) showing
objects of Pascal VOC's classes, for notebook 03 to try open-vocabulary segmentation on. Their
URLs have been stable for years but cannot be checked from an offline machine: a photo that fails
is reported by name and the rest go on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.data import DatasetFormatError, load_image
from utils.sources.download import DownloadError, download_file


@dataclass(frozen=True)
class RealPhoto:
    """A public photo to try open-vocabulary segmentation on, and VOC classes it shows."""

    url: str
    classes: tuple[str, ...]


# A handful of freely licensed photos (COCO val2017 from Flickr; Wikimedia Commons), chosen for
# VOC objects. Their URLs have been stable for years but cannot be checked from an offline
# machine: if one fails, the notebook says which and goes on with the rest.
REAL_PHOTOS: dict[str, RealPhoto] = {
    "cats_on_sofa.jpg": RealPhoto("http://images.cocodataset.org/val2017/000000039769.jpg",
                                  ("cat", "sofa")),
    "living_room.jpg": RealPhoto("http://images.cocodataset.org/val2017/000000000139.jpg",
                                 ("person", "tv monitor", "chair", "potted plant",
                                  "dining table")),
    "dog.jpg": RealPhoto(
        "https://upload.wikimedia.org/wikipedia/commons/2/26/YellowLabradorLooking_new.jpg",
        ("dog",)),
    "horses.jpg": RealPhoto(
        "https://upload.wikimedia.org/wikipedia/commons/d/de/Nokota_Horses_cropped.jpg",
        ("horse",)),
}


def download_images(urls: dict[str, str], folder: str | os.PathLike[str],
                    progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Download ``file name -> URL`` into ``folder`` (files already there are reused) and read
    them as RGB arrays. A photo that fails (network, not an image) is reported, not fatal.

    Returns:
        ``(images, failures)``: file name -> ``[H, W, 3]`` uint8 for those that worked, and file
        name -> the error message for those that did not.
    """
    folder = Path(folder)
    images, failures = {}, {}
    for name, url in urls.items():
        try:
            images[name] = load_image(download_file(url, folder / name, progress=progress))
        except (DownloadError, DatasetFormatError, OSError) as error:  # say which and why
            (folder / name).unlink(missing_ok=True)   # e.g. an HTML error page saved as .jpg
            failures[name] = f"{url}: {error}"
    return images, failures


def upload_photos(folder: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """On Colab: a file picker for photos of your own; each is saved in ``folder`` and read as an
    RGB array. A file that is not an image is reported, not fatal.

    Returns:
        ``(images, failures)`` as :func:`download_images` returns them.
    """
    from google.colab import files  # only on Colab

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, failures = {}, {}
    for name, data in files.upload().items():
        path = folder / Path(name).name
        path.write_bytes(data)
        try:
            images[path.name] = load_image(path)
        except (DatasetFormatError, OSError) as error:
            failures[path.name] = f"not an image this course can read: {error}"
    return images, failures
