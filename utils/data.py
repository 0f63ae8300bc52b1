"""From a dataset folder on disk to batches: captions, splits, images, transforms, datasets.

The same readers serve Flickr8k and the course's synthetic set, which is written in Flickr8k's
Kaggle layout. Two layouts are understood:

- Kaggle: ``Images/`` + ``captions.txt`` (CSV, header ``image,caption``), split files added;
- official: ``Flicker8k_Dataset/`` (sic) + ``Flickr8k.token.txt`` (``name.jpg#k<TAB>caption``)
  + ``Flickr_8k.{train,dev,test}Images.txt``, the text files possibly in ``Flickr8k_text/``.

Every problem with the files on disk raises :class:`DatasetFormatError` with a message that names
the file (``path:line`` where a line is at fault) and says what to do about it.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# albumentations asks PyPI for a newer version on every import; the course also runs offline and
# its tests must not touch the network. A user who wants the check can set the variable to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from .positives import caption_positives  # noqa: E402
from .tokenization import (  # noqa: E402
    build_tokenizer,
    load_pretrained_tokenizer,
    train_wordpiece_tokenizer,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "CaptionCollator",
    "DatasetFiles",
    "DatasetFormatError",
    "ImageCaptionDataset",
    "build_tokenizer",
    "build_transform",
    "load_image",
    "load_pretrained_tokenizer",
    "load_split",
    "locate_dataset",
    "read_captions",
    "read_split",
    "train_wordpiece_tokenizer",
]

PathLike = str | os.PathLike[str]

KAGGLE_HEADER = "image,caption"
KAGGLE_CAPTIONS_NAME = "captions.txt"
TOKEN_CAPTIONS_NAME = "Flickr8k.token.txt"
# The official archive really spells its folder "Flicker"; a corrected spelling is accepted too.
IMAGE_DIR_NAMES = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
CAPTION_FILE_NAMES = (KAGGLE_CAPTIONS_NAME, TOKEN_CAPTIONS_NAME)
SPLITS = ("train", "dev", "test")
SPLIT_FILE_NAMES = {split: f"Flickr_8k.{split}Images.txt" for split in SPLITS}
SEARCH_DEPTH = 2  # how many folder levels below the root locate_dataset looks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TOKEN_KEY = re.compile(r"^(?P<image>.+)#(?P<k>\d+)$")
_CSV_QUOTED = re.compile(r'^"(?P<body>(?:[^"]|"")*)"$')
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SHOWN_NAMES = 5  # how many offending names an error message lists


class DatasetFormatError(ValueError):
    """A dataset file is missing or malformed; the message names it and says what to do."""


# --------------------------------------------------------------------------------------------
# Captions and splits
# --------------------------------------------------------------------------------------------


def read_captions(path: PathLike) -> dict[str, list[str]]:
    """Image file name -> its captions in file order, from ``captions.txt`` or ``Flickr8k.token.txt``.

    The format is detected from the first line: exactly ``image,caption`` means Kaggle CSV, a
    ``name#k<TAB>caption`` line means the official token file. Names and captions are stripped.
    Entries are returned as written, even for images that have no file (the official token file
    names ``2258277193_586949ec62.jpg.1``); :func:`load_split` only keeps images of a split.
    """
    path = Path(path)
    lines = _read_text_lines(path, "caption file")
    first = lines[0].strip()
    if first == KAGGLE_HEADER:
        numbered = list(enumerate(lines, start=1))[1:]
        parse_line = _parse_kaggle_line
    elif _looks_like_token_line(first):
        numbered = list(enumerate(lines, start=1))
        parse_line = _parse_token_line
    else:
        raise DatasetFormatError(
            f"{path}:1: has no header: the first line is {_shorten(first)}, expected "
            f"`{KAGGLE_HEADER}` (Kaggle captions.txt) or a line `name.jpg#0<TAB>caption` "
            "(Flickr8k.token.txt). Add the header line or download the file again."
        )
    captions: dict[str, list[str]] = {}
    line_of_key: dict[str, int] = {}    # token file: where each `name#k` was first seen
    for number, line in numbered:
        if not line.strip():
            continue
        image, key, caption = parse_line(line, path, number)
        if key is not None and line_of_key.setdefault(key, number) != number:
            raise DatasetFormatError(
                f"{path}:{number}: the key {key!r} was already used on line {line_of_key[key]}: "
                "each caption of an image needs its own number k. Delete the repeated line or "
                "renumber it, or download the file again."
            )
        captions.setdefault(image, []).append(caption)
    return captions


def _read_text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (BOM dropped), or an error if it is missing or empty."""
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: {what} not found. Check the path, or download the dataset again."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetFormatError(
            f"{path}: {what} is not UTF-8 text ({error.reason} at byte {error.start}); the file "
            "is damaged: download it again."
        ) from error
    # split("\n") rather than splitlines(): captions may hold unicode separators that
    # splitlines() would break on, which would shift every later line number.
    lines = text.split("\n")
    if not any(line.strip() for line in lines):
        raise DatasetFormatError(f"{path}: {what} is empty. Download it again.")
    return lines


def _looks_like_token_line(line: str) -> bool:
    first_word = line.split(maxsplit=1)[0] if line.strip() else ""
    return "\t" in line or bool(_TOKEN_KEY.match(first_word))


def _parse_kaggle_line(line: str, path: Path, number: int) -> tuple[str, None, str]:
    """``a.jpg,A dog , running`` -> (``a.jpg``, None, ``A dog , running``); CSV quotes undone.

    The middle item is the line's key, which only token files have.
    """
    image, comma, caption = line.partition(",")
    image = _unquote_csv(image.strip())
    if not comma or not image:
        raise DatasetFormatError(
            f"{path}:{number}: malformed line {_shorten(line)}: expected `image,caption` (the "
            "image file name, a comma, the caption). Fix or delete the line, or download the "
            "file again."
        )
    if any(character.isspace() and character != " " for character in image):
        # Most often a token-file line (`name#k<TAB>caption`) pasted into the CSV: the name
        # would swallow the caption's start, and the caption would lose it.
        raise DatasetFormatError(
            f"{path}:{number}: the image name {_shorten(image)} holds a TAB or line break. A "
            "captions.txt line is `image,caption` with a comma between the two; a TAB separates "
            "them only in Flickr8k.token.txt. Fix the line."
        )
    return image, None, _checked_caption(_unquote_csv(caption.strip()), image, path, number)


def _unquote_csv(field: str) -> str:
    """Undo CSV quoting: a field wrapped in double quotes, inner quotes doubled.

    An unquoted field is kept as it is.
    """
    quoted = _CSV_QUOTED.match(field)
    return quoted["body"].replace('""', '"').strip() if quoted else field


def _parse_token_line(line: str, path: Path, number: int) -> tuple[str, str, str]:
    """``a.jpg#0<TAB>A dog .`` -> (``a.jpg``, ``a.jpg#0``, ``A dog .``)."""
    key, tab, caption = line.partition("\t")
    if not tab:
        raise DatasetFormatError(
            f"{path}:{number}: malformed line {_shorten(line)}: no TAB; expected "
            "`name.jpg#k<TAB>caption`. Fix or delete the line, or download the file again."
        )
    match = _TOKEN_KEY.match(key.strip())
    if not match:
        raise DatasetFormatError(
            f"{path}:{number}: malformed line {_shorten(line)}: {_shorten(key)} does not end in "
            "`#k` with k the caption number (expected `name.jpg#k<TAB>caption`). Fix or delete "
            "the line, or download the file again."
        )
    image = match["image"].strip()
    return image, f"{image}#{int(match['k'])}", _checked_caption(caption.strip(), image, path,
                                                                  number)


def _checked_caption(caption: str, image: str, path: Path, number: int) -> str:
    if not caption:
        raise DatasetFormatError(
            f"{path}:{number}: empty caption for image {image!r}. Write the caption or delete "
            "the line."
        )
    return caption


def _shorten(text: str, limit: int = 80) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters so messages stay readable."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _first_names(names: Sequence[str]) -> str:
    """The first few of ``names`` for an error message."""
    return ", ".join(repr(name) for name in names[:_SHOWN_NAMES])


def read_split(path: PathLike, known_images: Collection[str]) -> list[str]:
    """Image names listed in a split file, in file order (blank lines ignored).

    Raises :class:`DatasetFormatError` naming the file, the line of the first unknown name and
    the first few names if the file lists images that are not in ``known_images``, and the lines
    of a name listed twice (it would weigh double in training and in every metric).
    """
    path = Path(path)
    known = set(known_images)
    line_of: dict[str, int] = {}
    unknown: list[tuple[int, str]] = []
    for number, line in enumerate(_read_text_lines(path, "split file"), start=1):
        name = line.strip()
        if not name:
            continue
        if line_of.setdefault(name, number) != number:
            raise DatasetFormatError(
                f"{path}:{number}: {name!r} is listed again (first on line {line_of[name]}). "
                "Delete the repeated line, or download the split files again."
            )
        if name not in known:
            unknown.append((number, name))
    names = list(line_of)
    if unknown:
        raise DatasetFormatError(
            f"{path}:{unknown[0][0]}: names {len(unknown)} image(s) that are not in the dataset, "
            f"first: {_first_names([name for _, name in unknown])}. Check that this split file "
            "belongs to this copy of the dataset (download it again if it does)."
        )
    return names


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as RGB: ``[H, W, 3]`` uint8.

    Grayscale (``L``, ``1``, 16-bit) is replicated to three channels, transparency (``RGBA``,
    ``LA``, palette with a transparent colour) is composited onto white, ``CMYK`` and palettes
    are converted. The EXIF orientation is applied, as a viewer (and a captioner) would see it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: image not found. Check the images folder, or download the dataset again."
        )
    try:
        with Image.open(path) as image:
            # Decode every pixel now: a truncated file only fails once its pixels are read.
            image.load()
            return _to_rgb_array(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise DatasetFormatError(
            f"{path}: cannot read this image ({error}). The file is damaged or not an image: "
            "delete it and download the dataset again."
        ) from error


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image -> a writable ``[H, W, 3]`` uint8 RGB array."""
    if image.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_gray_to_rgb(image)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        image = _composite_on_white(image)
    # np.array, not np.asarray: the latter gives a read-only view that in-place code would trip on.
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _sixteen_bit_gray_to_rgb(image: Image.Image) -> np.ndarray:
    """16-bit gray -> 8-bit RGB, scaling 0..65535 to 0..255 (PIL's convert would clip at 255)."""
    values = np.asarray(image).astype(np.float32)
    gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Blend a transparent image onto white, the background a viewer would show."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


# --------------------------------------------------------------------------------------------
# Locating a dataset and loading a split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetFiles:
    """Where a dataset's parts are; ``split_files`` maps ``"train" | "dev" | "test"`` to a path."""

    root: Path
    images_dir: Path
    captions_file: Path
    split_files: dict[str, Path]


def locate_dataset(root: PathLike) -> DatasetFiles:
    """Find the image folder, caption file and split files of a dataset under ``root``.

    Looks in ``root`` and up to ``SEARCH_DEPTH`` folder levels below it (``__MACOSX`` and hidden
    folders skipped) for the Kaggle layout (``Images/`` + ``captions.txt``) or the official one
    (``Flicker8k_Dataset/`` + ``Flickr8k.token.txt``), and for the three split files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(
            f"{root}: dataset folder not found. Check the path, or download the dataset first."
        )
    found = _find_by_name(root, {*IMAGE_DIR_NAMES, *CAPTION_FILE_NAMES, *SPLIT_FILE_NAMES.values()})
    images_dir = next((found[n] for n in IMAGE_DIR_NAMES if n in found and found[n].is_dir()), None)
    captions_file = next(
        (found[n] for n in CAPTION_FILE_NAMES if n in found and found[n].is_file()), None
    )
    if images_dir is None or captions_file is None:
        raise _layout_not_found(root, images_dir, captions_file)
    split_files = {
        split: found[name]
        for split, name in SPLIT_FILE_NAMES.items()
        if name in found and found[name].is_file()
    }
    missing = [name for split, name in SPLIT_FILE_NAMES.items() if split not in split_files]
    if missing:
        raise _split_files_missing(root, captions_file, missing)
    return DatasetFiles(root, images_dir, captions_file, split_files)


def _find_by_name(root: Path, names: set[str]) -> dict[str, Path]:
    """Shallowest path of each of ``names`` found in ``root`` or up to ``SEARCH_DEPTH`` below.

    Breadth first and sorted, so the answer does not depend on the file system's order. Image
    folders are not entered: they hold thousands of files and nothing else.
    """
    found: dict[str, Path] = {}
    folders = [root]
    for _ in range(SEARCH_DEPTH + 1):
        subfolders = []
        for folder in folders:
            for entry in sorted(folder.iterdir()):
                if entry.name in names:
                    found.setdefault(entry.name, entry)
                if entry.is_dir() and _worth_searching(entry.name):
                    subfolders.append(entry)
        folders = subfolders
    return found


def _worth_searching(folder_name: str) -> bool:
    # __MACOSX holds resource-fork copies (``._name``) that only look like the real files.
    return not (
        folder_name.startswith(".") or folder_name == "__MACOSX" or folder_name in IMAGE_DIR_NAMES
    )


def _layout_not_found(
    root: Path, images_dir: Path | None, captions_file: Path | None
) -> DatasetFormatError:
    return DatasetFormatError(
        f"{root}: no Flickr8k-style dataset found in this folder or up to {SEARCH_DEPTH} levels "
        "below it. Expected either\n"
        f"  - the Kaggle layout: Images/ and {KAGGLE_CAPTIONS_NAME} (header `{KAGGLE_HEADER}`), or\n"
        f"  - the official layout: Flicker8k_Dataset/ (from Flickr8k_Dataset.zip) and "
        f"{TOKEN_CAPTIONS_NAME} (from Flickr8k_text.zip, e.g. in Flickr8k_text/),\n"
        f"plus the split files {', '.join(SPLIT_FILE_NAMES.values())}.\n"
        f"Found: image folder {images_dir or 'none'}, caption file {captions_file or 'none'}. "
        "Pass the folder that holds the dataset, or download it again."
    )


def _split_files_missing(root: Path, captions_file: Path, missing: list[str]) -> DatasetFormatError:
    if captions_file.name == KAGGLE_CAPTIONS_NAME:
        return DatasetFormatError(
            f"{root}: this looks like the Kaggle copy of Flickr8k ({captions_file.name}), which "
            f"has no split files; missing: {', '.join(missing)}. They come with the official "
            "text archive Flickr8k_text.zip: extract them into this folder, or call "
            "utils.sources.flickr8k.use_kaggle_copy(path), which fetches them and returns a folder to "
            "pass here."
        )
    return DatasetFormatError(
        f"{root}: missing split file(s) {', '.join(missing)} (looked up to {SEARCH_DEPTH} levels "
        "below this folder). They come with the official text archive Flickr8k_text.zip: "
        "extract it into this folder."
    )


def load_split(files: DatasetFiles, split: str) -> list[tuple[str, list[str]]]:
    """``(image name, captions)`` for every image of ``split``, in split-file order.

    Checks that every image of the split has a file and at least one caption; captions of
    images outside the split (such as the token file's ``...jpg.1`` entry) are left out.
    """
    if split not in files.split_files:
        raise ValueError(f"Unknown split {split!r}: use one of {sorted(files.split_files)}.")
    split_file = files.split_files[split]
    captions = read_captions(files.captions_file)
    image_files = _image_file_names(files.images_dir)
    names = read_split(split_file, known_images=captions.keys() | image_files)
    _check_disjoint(files, split, names)
    without_file = [name for name in names if name not in image_files]
    if without_file:
        raise DatasetFormatError(
            f"{files.images_dir}: {len(without_file)} image(s) of the {split} split "
            f"({split_file.name}) have no file here, first: {_first_names(without_file)}. "
            "Extract the image archive again, or download the dataset again."
        )
    without_captions = [name for name in names if name not in captions]
    if without_captions:
        raise DatasetFormatError(
            f"{files.captions_file}: no captions for {len(without_captions)} image(s) of the "
            f"{split} split ({split_file}), first: {_first_names(without_captions)}. Download "
            "the caption file again, or remove these images from the split file."
        )
    return [(name, captions[name]) for name in names]


def _check_disjoint(files: DatasetFiles, split: str, names: list[str]) -> None:
    """Refuse a split that shares images with another: a test image seen in training would make
    every test result look better than it is, with nothing to show it."""
    for other, other_file in files.split_files.items():
        if other == split or not other_file.is_file():
            continue
        # Read leniently: that split's own load reports its problems (an empty dev split is fine
        # for a set that has none).
        other_names = other_file.read_text(encoding="utf-8-sig", errors="replace").split("\n")
        shared = sorted(set(names) & {name.strip() for name in other_names})
        if shared:
            raise DatasetFormatError(
                f"{files.split_files[split]} and {other_file} both list {len(shared)} image(s), "
                f"first: {_first_names(shared)}. Each image belongs to one split: download the "
                "split files again, or remove the images from one of them."
            )


def _image_file_names(images_dir: Path) -> set[str]:
    if not images_dir.is_dir():
        raise DatasetFormatError(
            f"{images_dir}: image folder not found. Download the dataset again."
        )
    with os.scandir(images_dir) as entries:
        return {entry.name for entry in entries if entry.is_file()}


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def build_transform(
    image_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
) -> A.Compose:
    """``transform(image=uint8 [H, W, 3])["image"]`` -> float32 ``[3, image_size, image_size]``.

    Both resize the whole image to a square (INTER_AREA, which does not alias when shrinking) and
    normalise with ``mean``/``std``. ``train=True`` adds light augmentation that keeps captions
    true: a crop of 80-100 % of the area with a near-square shape, and small brightness/contrast.
    ``seed`` makes the random sequence reproducible (``A.Compose(seed=...)``).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    steps: list[Any] = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]
    if train:
        # Captions name colours and positions ("a red circle on the left", "to the left of"):
        # a horizontal flip would swap left and right, a hue shift would change the colour, and
        # either would teach the model false captions. So no flip, no hue/colour jitter, and a
        # crop mild enough that objects stay in view and keep their relative positions. Cropping
        # after the square resize makes train and eval images share the same geometry.
        steps += [
            A.RandomResizedCrop(
                size=(image_size, image_size), scale=(0.8, 1.0), ratio=(0.9, 1 / 0.9)
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps, seed=seed)


# --------------------------------------------------------------------------------------------
# Dataset, collator, positives
# --------------------------------------------------------------------------------------------


class ImageCaptionDataset(torch.utils.data.Dataset):
    """One item per image: ``{"image": FloatTensor[3, H, W], "caption": str, "image_index": int}``.

    ``items`` are ``(image file name, captions)`` pairs as returned by :func:`load_split`.
    ``caption_index=None`` draws one of the image's captions at random on every access, an int
    always picks that caption. All randomness (the caption and, for an albumentations transform,
    the augmentation) comes from torch's RNG, so ``torch.manual_seed`` or a DataLoader
    ``generator`` make every epoch reproducible, workers included.
    """

    def __init__(
        self,
        images_dir: PathLike,
        items: Sequence[tuple[str, Sequence[str]]],
        transform: Callable[..., dict[str, Any]],
        caption_index: int | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.items = [(name, _caption_list(name, captions)) for name, captions in items]
        self.transform = transform
        self.caption_index = caption_index
        if caption_index is not None:
            _check_caption_index(self.items, caption_index)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self.items))[index]  # IndexError when out of range; negatives resolved
        name, captions = self.items[index]
        caption = captions[self._pick_caption(len(captions))]
        return {
            "image": self._transform(load_image(self.images_dir / name)),
            "caption": caption,
            "image_index": index,
        }

    def _pick_caption(self, num_captions: int) -> int:
        if self.caption_index is not None:
            return self.caption_index
        return int(torch.randint(num_captions, ()).item())

    def _transform(self, image: np.ndarray) -> torch.Tensor:
        # A.Compose keeps its own RNG, which a DataLoader copies unchanged into every worker at
        # every epoch: each epoch would repeat the same augmentations. Reseeding it from torch's
        # RNG (which DataLoader seeds per worker and per epoch) makes the draws fresh each epoch
        # and still reproducible. One generator pair, shared by all the steps of the Compose:
        # its set_random_seed would build a pair for every step, a quarter of the loading time.
        share = getattr(self.transform, "set_random_state", None)
        if share is not None:
            seed = int(torch.randint(2**31 - 1, ()).item())
            share(np.random.default_rng(seed), random.Random(seed))
        return self.transform(image=image)["image"]


def _caption_list(name: str, captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str) or not captions:
        raise ValueError(
            f"Image {name!r} needs a non-empty list of captions, got {captions!r}. Pass items "
            "as (image name, [caption, ...]) pairs, e.g. from load_split."
        )
    return list(captions)


def _check_caption_index(items: list[tuple[str, list[str]]], caption_index: int) -> None:
    fewest = min(items, key=lambda item: len(item[1]), default=None)
    if fewest is not None and not -len(fewest[1]) <= caption_index < len(fewest[1]):
        raise ValueError(
            f"caption_index={caption_index} is out of range: image {fewest[0]!r} has only "
            f"{len(fewest[1])} caption(s). Use a smaller index, or None for a random caption."
        )


class CaptionCollator:
    """Stack images and tokenize captions into one batch (``collate_fn`` of a DataLoader).

    Returns ``images`` float ``[B, 3, H, W]``, ``input_ids`` and ``attention_mask``
    ``LongTensor[B, L]`` (padded to the longest caption of the batch, cut at ``max_length``),
    ``image_index`` ``LongTensor[B]`` and the raw ``captions``.

    Given every image's captions (``captions_of_images``, indexed like the dataset), it also
    returns ``positives`` BoolTensor ``[B, B]``: image ``i`` matches caption ``j`` when ``j`` is,
    word for word, one of image ``i``'s captions. Short captions such as "a circle" fit many
    images; counting them as negatives would teach the model something false.

    ``captions_per_image = K > 1`` (needs ``captions_of_images``) brings each image's sampled
    caption plus ``K - 1`` other captions of it, drawn at random: ``B * K`` texts for ``B`` images.
    The text encoder is cheap next to the image encoder, so every image gets ``K`` captions'
    worth of gradient for little extra time. The batch then also holds ``caption_owner``
    ``LongTensor[B * K]`` (the image of each text), and ``positives`` is ``[B * K, B * K]``, one row
    per text's owner image: :func:`utils.losses.clip_batch_loss` repeats each image embedding once
    per caption it brought, so the loss keeps CLIP's square form.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 32,
                 captions_of_images: Sequence[Sequence[str]] | None = None,
                 captions_per_image: int = 1) -> None:
        if captions_per_image < 1:
            raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")
        if captions_per_image > 1 and captions_of_images is None:
            raise ValueError("captions_per_image > 1 draws the extra captions from "
                             "captions_of_images: pass every image's captions too")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.captions_of_images = captions_of_images
        self.captions_per_image = captions_per_image
        self._token_ids: dict[str, list[int]] = {}   # caption -> its ids, cut at max_length

    def _captions_with_owners(self, samples: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
        """Each sample's caption, then up to ``captions_per_image - 1`` more of its image's
        captions (distinct, drawn with torch's RNG); the owner of each is the sample's row."""
        captions, owners = [], []
        for row, sample in enumerate(samples):
            others = [c for c in self.captions_of_images[sample["image_index"]]
                      if c != sample["caption"]]
            picks = torch.randperm(len(others))[:self.captions_per_image - 1].tolist()
            for caption in [sample["caption"], *(others[i] for i in picks)]:
                captions.append(caption)
                owners.append(row)
        return captions, owners

    def _tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[T, L]``, right-padded to the longest caption.

        What ``tokenizer(captions, padding="longest", truncation=True)`` returns, but each distinct
        caption is tokenized once and remembered: the same captions come back every epoch, and
        the tokenizer's per-call work is a third of the collator's time on the synthetic set.
        """
        new = [c for c in dict.fromkeys(captions) if c not in self._token_ids]
        if new:
            ids = self.tokenizer(new, truncation=True, max_length=self.max_length)["input_ids"]
            self._token_ids.update(zip(new, ids, strict=True))
        rows = [self._token_ids[caption] for caption in captions]
        input_ids = np.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)
        attention_mask = np.zeros(input_ids.shape, dtype=np.int64)
        for row, ids in enumerate(rows):
            input_ids[row, :len(ids)] = ids
            attention_mask[row, :len(ids)] = 1
        return torch.from_numpy(input_ids).long(), torch.from_numpy(attention_mask)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("CaptionCollator got an empty batch.")
        if self.captions_per_image > 1:
            captions, owners = self._captions_with_owners(samples)
        else:
            captions, owners = [sample["caption"] for sample in samples], None
        input_ids, attention_mask = self._tokenize(captions)
        batch = {
            "images": torch.stack([sample["image"] for sample in samples]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "image_index": torch.tensor([sample["image_index"] for sample in samples]).long(),
            "captions": captions,
        }
        if self.captions_of_images is not None:
            batch_images = [self.captions_of_images[s["image_index"]] for s in samples]
            batch["positives"] = caption_positives(batch_images, captions).T   # [images, texts]
        if owners is not None:
            batch["caption_owner"] = torch.tensor(owners).long()
            batch["positives"] = batch["positives"][batch["caption_owner"]]    # [texts, texts]
        return batch


