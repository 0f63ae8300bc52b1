"""The embedded synthetic dataset "captioned shapes", written to disk in Flickr8k's (Kaggle) layout.

Each image shows 1 to 3 flat-coloured shapes (5 kinds, 6 colours, 2 sizes) on a smooth, low-saturation
background, with five true captions at several levels of detail and a per-pixel class mask. Because the
files follow Flickr8k's layout (``Images/``, ``captions.txt``, ``Flickr_8k.*Images.txt``), every loader in
the course runs the same code on this set and on Flickr8k; ``masks/``, ``classes.txt`` and
``objects.json`` add what open-vocabulary segmentation needs for evaluation.

Generation is deterministic: image ``i`` is drawn from its own random generator seeded with
``(seed, i)``, so the same arguments give byte-identical files. Run it from the repository root with
``python -m utils.sources.synthetic --root data/captioned_shapes``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import multiprocessing
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from utils.storage.atomic import atomic_folder

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# Saturated colours far apart in hue, and far from the low-saturation backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 85, 215),
    "yellow": (240, 205, 30),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
}
SIZES: tuple[str, ...] = ("small", "large")
CLASS_NAMES: tuple[str, ...] = ("background", *SHAPES)
SPLIT_FILES: dict[str, str] = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}

GENERATOR_NAME = "captioned_shapes"
# Bump whenever a change alters the generated pixels, masks or texts, so that
# ensure_captioned_shapes regenerates (the PNG compression level alone changes only the bytes).
GENERATOR_VERSION = 2
MARKER_FILE = "dataset.json"
MAX_WORKERS = 4         # processes that draw a large set (one per core, at most this many)
PARALLEL_FROM = 2000    # below this many images, starting processes costs more than it saves

# Side of a shape's square box as a fraction of the image side.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.20, 0.28), "large": (0.40, 0.55)}
# A partly covered shape must keep this much of its area visible, so its caption stays true.
MIN_VISIBLE_FRACTION = 0.6
# Two centres this far apart (fraction of the side) along an axis are "clearly" left/right/above/below.
RELATION_MARGIN = 0.2
# A centre left of 40 % of the side is "on the left", right of 60 % "on the right"; between 45 % and
# 55 % it is central. Centres in the gaps get no position word, so no caption is borderline.
SIDE_LIMIT = 0.4
CENTRE_HALF_WIDTH = 0.05
# Low-saturation background tones (greys, beiges, slate): never mistakable for a shape colour.
BACKGROUND_TONES: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (200, 200, 196),
    (88, 90, 94),
    (205, 193, 168),
    (176, 165, 145),
    (112, 122, 138),
    (150, 158, 166),
    (160, 150, 138),
)
BACKGROUND_NOISE = 1  # +- grey levels of per-pixel noise on the background
SHAPE_NOISE = 1  # +- grey levels on shapes: keeps them flat, but not perfectly synthetic
_MAX_PLACEMENT_TRIES = 40

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
_PREFIXES = ("a photo of ", "an image of ", "a picture of ", "a drawing of ")
_RELATION_PHRASES = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below",),
}
_INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape. ``box`` = (x0, y0, x1, y1) in pixels, end-exclusive (``mask[y0:y1, x0:x1]``);
    it is the square box the shape is inscribed in, and lies fully inside the image."""

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) centre of the box in pixel coordinates."""
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def to_json(self) -> dict[str, object]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "box": list(self.box),
        }


@dataclass
class Sample:
    """One rendered image: ``image`` [H, W, 3] uint8 RGB, ``mask`` [H, W] uint8 class ids (index into
    CLASS_NAMES), ``objects`` in drawing order (later ones on top), ``captions`` (5 strings)."""

    image: np.ndarray
    mask: np.ndarray
    objects: list[ShapeObject]
    captions: list[str]


# --------------------------------------------------------------------------------------------------
# Drawing


def _unit_star(points: int = 5, inner_radius: float = 0.42) -> np.ndarray:
    """Vertices [2 * points, 2] of an upright star, stretched to fill the square [-1, 1]^2."""
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_radius)
    vertices = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    return 2 * (vertices - low) / (high - low) - 1


def _unit_cross(arm_half_width: float = 0.34) -> np.ndarray:
    """Vertices [12, 2] of an upright plus sign filling the square [-1, 1]^2."""
    t = arm_half_width
    return np.array(
        [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t),
         (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)],
        dtype=np.float64,
    )  # fmt: skip


# Polygons in box coordinates: the box spans [-1, 1] on both axes, y pointing down.
_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "triangle": np.array([(0, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "star": _unit_star(),
    "cross": _unit_cross(),
}


def _polygon_inside(vertices: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test. ``vertices`` [K, 2]; ``u`` [1, S] and ``v`` [S, 1] sample
    coordinates -> bool [S, S]. Hard edges (no anti-aliasing), so the mask equals the drawn pixels."""
    inside = np.zeros((v.shape[0], u.shape[1]), dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if y0 == y1:  # a horizontal edge is never crossed by a horizontal ray
            continue
        row_crosses = (y0 > v) != (y1 > v)  # [S, 1]
        x_at_row = x0 + (v - y0) * (x1 - x0) / (y1 - y0)  # [S, 1]
        inside ^= row_crosses & (u < x_at_row)
    return inside


def shape_footprint(shape: str, box: Sequence[int], image_size: int) -> np.ndarray:
    """Pixels a shape covers when drawn alone: bool [image_size, image_size].

    ``box`` = (x0, y0, x1, y1), a square, end-exclusive, inside the image. A pixel belongs to the
    shape when its centre lies inside the shape's outline.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    x0, y0, x1, y1 = (int(c) for c in box)
    side = x1 - x0
    if side <= 0 or y1 - y0 != side or x0 < 0 or y0 < 0 or max(x1, y1) > image_size:
        raise ValueError(
            f"box {tuple(box)} must be a non-empty square inside a {image_size}x{image_size} image"
        )
    # Pixel centres of the box in box coordinates [-1, 1].
    centres = (np.arange(side) + 0.5) * (2.0 / side) - 1.0
    u, v = centres[None, :], centres[:, None]
    if shape == "circle":
        local = u**2 + v**2 <= 1.0
    else:
        local = _polygon_inside(_UNIT_POLYGONS[shape], u, v)
    footprint = np.zeros((image_size, image_size), dtype=bool)
    footprint[y0:y1, x0:x1] = local
    return footprint


@functools.lru_cache(maxsize=8)
def _unit_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: x [1, S] and y [S, 1] (float32)."""
    centres = ((np.arange(image_size) + 0.5) * (2.0 / image_size) - 1.0).astype(np.float32)
    return centres[None, :], centres[:, None]


def _background_tone(rng: np.random.Generator) -> np.ndarray:
    """One low-saturation RGB tone [3] float32: a palette tone with jittered brightness and tint."""
    tone = np.asarray(BACKGROUND_TONES[rng.integers(len(BACKGROUND_TONES))], dtype=np.float32)
    brightness = rng.uniform(0.85, 1.12)
    tint = rng.uniform(-8, 8, size=3)
    return np.clip(tone * brightness + tint, 40, 230).astype(np.float32)


def _noise(rng: np.random.Generator, amplitude: int, image_size: int) -> np.ndarray:
    """Brightness noise [S, S, 1] int16 in [-amplitude, amplitude], equal on R, G and B so it adds
    texture without adding colour (and compresses better in PNG)."""
    return rng.integers(-amplitude, amplitude + 1, size=(image_size, image_size, 1), dtype=np.int16)


def _render_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A smooth linear gradient between two low-saturation tones plus mild noise: [S, S, 3] int16."""
    start, end = _background_tone(rng), _background_tone(rng)
    angle = rng.uniform(0, 2 * np.pi)
    x, y = _unit_grid(image_size)
    # Position along the gradient direction, scaled from [-sqrt(2), sqrt(2)] to [0, 1].
    t = ((x * np.cos(angle) + y * np.sin(angle)) / (2 * np.sqrt(2)) + 0.5)[..., None]
    gradient = start + t * (end - start)
    return np.rint(gradient).astype(np.int16) + _noise(rng, BACKGROUND_NOISE, image_size)


def _sample_attributes(rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(shape, colour, size) for 1-3 objects. Colours are distinct within an image so every colour
    word names exactly one object; shape kinds may repeat ("two circles")."""
    count = int(rng.integers(1, 4))
    colour_names = list(COLOURS)
    colours = [colour_names[i] for i in rng.choice(len(colour_names), size=count, replace=False)]
    return [
        (SHAPES[rng.integers(len(SHAPES))], colour, SIZES[rng.integers(len(SIZES))])
        for colour in colours
    ]


def _sample_box(rng: np.random.Generator, size: str, image_size: int) -> tuple[int, int, int, int]:
    """A square box for a shape of the given size word, fully inside the image."""
    low, high = SIZE_RANGES[size]
    side = int(rng.integers(int(np.ceil(low * image_size)), int(np.floor(high * image_size)) + 1))
    x0, y0 = (int(c) for c in rng.integers(0, image_size - side + 1, size=2))
    return x0, y0, x0 + side, y0 + side


def _visible_enough(footprints: list[np.ndarray]) -> bool:
    """True if every shape keeps MIN_VISIBLE_FRACTION of its pixels once later shapes cover it."""
    covered = np.zeros_like(footprints[0])
    for footprint in reversed(footprints):  # walk from the top-most shape down
        visible = np.count_nonzero(footprint & ~covered)
        if visible < MIN_VISIBLE_FRACTION * np.count_nonzero(footprint):
            return False
        covered |= footprint
    return True


def _place_objects(
    rng: np.random.Generator, image_size: int
) -> tuple[list[ShapeObject], list[np.ndarray]]:
    """Objects with random attributes and positions, re-sampled until each is visible enough.
    Returns the objects and their footprints (bool [S, S] each)."""
    while True:
        attributes = _sample_attributes(rng)
        for _ in range(_MAX_PLACEMENT_TRIES):
            objects = [
                ShapeObject(shape, colour, size, _sample_box(rng, size, image_size))
                for shape, colour, size in attributes
            ]
            footprints = [shape_footprint(o.shape, o.box, image_size) for o in objects]
            if _visible_enough(footprints):
                return objects, footprints


def _draw(
    rng: np.random.Generator,
    objects: list[ShapeObject],
    footprints: list[np.ndarray],
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint shapes in order over a fresh background: image [S, S, 3] uint8, mask [S, S] uint8."""
    canvas = _render_background(rng, image_size)
    mask = np.zeros((image_size, image_size), dtype=np.uint8)
    shape_noise = _noise(rng, SHAPE_NOISE, image_size)
    for obj, footprint in zip(objects, footprints, strict=True):
        colour = np.asarray(COLOURS[obj.colour], dtype=np.int16)
        canvas[footprint] = colour + shape_noise[footprint]
        mask[footprint] = CLASS_NAMES.index(obj.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8), mask


def render_sample(rng: np.random.Generator, image_size: int) -> Sample:
    """Draw one random image with its mask, object list and five true captions."""
    if image_size < 16:
        raise ValueError(
            f"image_size must be at least 16 pixels so small shapes stay visible, got {image_size}"
        )
    objects, footprints = _place_objects(rng, image_size)
    image, mask = _draw(rng, objects, footprints, image_size)
    return Sample(image, mask, objects, make_captions(objects, image_size, rng))


# --------------------------------------------------------------------------------------------------
# Captions


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _join(phrases: list[str], rng: np.random.Generator) -> str:
    """Join phrases into one list without commas (so captions.txt never needs CSV quoting)."""
    if len(phrases) == 1:
        return phrases[0]
    first_joiner = _pick(rng, ("and", "and", "with"))
    return f"{phrases[0]} {first_joiner} " + " and ".join(phrases[1:])


def _maybe_prefix(caption: str, rng: np.random.Generator) -> str:
    """Half the time, wrap a caption as "a photo of ..." so CLIP-style prompts are in-distribution."""
    return _pick(rng, _PREFIXES) + caption if rng.random() < 0.5 else caption


def _full_phrase(obj: ShapeObject) -> str:
    return _with_article(f"{obj.size} {obj.colour} {obj.shape}")


def _placed_phrase(obj: ShapeObject, image_size: int, rng: np.random.Generator) -> str:
    """Size, colour and shape without article, worded "large red circle" or "large circle in red",
    followed by the object's position where it is clear ("... on the left")."""
    if rng.random() < 0.5:
        phrase = f"{obj.size} {obj.colour} {obj.shape}"
    else:
        phrase = f"{obj.size} {obj.shape} in {obj.colour}"
    position = _position(obj, image_size)
    return f"{phrase} {position}" if position else phrase


def _colour_phrase(obj: ShapeObject) -> str:
    return _with_article(f"{obj.colour} {obj.shape}")


def _relation(a: ShapeObject, b: ShapeObject, image_size: int) -> str | None:
    """Where ``a`` is relative to ``b`` ("left", "right", "above", "below") along the axis where
    their centres differ most, if they differ by at least RELATION_MARGIN of the side; else None."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = bx - ax, by - ay
    if max(abs(dx), abs(dy)) < RELATION_MARGIN * image_size:
        return None
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def _relation_clause(
    a: ShapeObject, b: ShapeObject, relation: str, rng: np.random.Generator
) -> str:
    """ "a large red circle to the left of a small blue square", or the same fact from b's side."""
    if rng.random() < 0.5:
        a, b, relation = b, a, _INVERSE_RELATION[relation]
    return f"{_full_phrase(a)} {_pick(rng, _RELATION_PHRASES[relation])} {_full_phrase(b)}"


def _position(obj: ShapeObject, image_size: int) -> str | None:
    """Where the centre lies in the image ("on the left", "in the top right", "in the middle"), or
    None when it is near a boundary between regions and any word could be disputed."""
    x, y = (c / image_size for c in obj.centre)

    def region(value: float, low_word: str, high_word: str) -> str | None:
        if value < SIDE_LIMIT:
            return low_word
        if value > 1 - SIDE_LIMIT:
            return high_word
        return "centre" if abs(value - 0.5) <= CENTRE_HALF_WIDTH else None

    horizontal, vertical = region(x, "left", "right"), region(y, "top", "bottom")
    if horizontal in ("left", "right") and vertical in ("top", "bottom"):
        return f"in the {vertical} {horizontal}"
    if horizontal in ("left", "right"):
        return f"on the {horizontal}"
    if vertical in ("top", "bottom"):
        return f"at the {vertical}"
    if horizontal == vertical == "centre":
        return "in the middle"
    return None


def _relational_caption(
    objects: list[ShapeObject], image_size: int, rng: np.random.Generator
) -> str:
    """Level 1: every object with size and colour, linked by true spatial relations where clear;
    a single object gets its position in the image."""
    if len(objects) == 1:
        position = _position(objects[0], image_size)
        phrase = _full_phrase(objects[0])
        return _maybe_prefix(f"{phrase} {position}" if position else phrase, rng)
    shuffled = [objects[i] for i in rng.permutation(len(objects))]
    pairs = [(a, b) for i, a in enumerate(shuffled) for b in shuffled[i + 1 :]]
    related = [(a, b, r) for a, b in pairs if (r := _relation(a, b, image_size))]
    if not related:
        return _maybe_prefix(_join([_full_phrase(o) for o in shuffled], rng), rng)
    a, b, relation = related[0]
    clause = _relation_clause(a, b, relation, rng)
    rest = [o for o in shuffled if o is not a and o is not b]
    if not rest:
        return _maybe_prefix(clause, rng)
    third = rest[0]
    anchors = [(o, r) for o in (a, b) if (r := _relation(third, o, image_size))]
    if not anchors:
        return f"{clause} and {_full_phrase(third)}"
    anchor, relation = anchors[0]
    phrase = _pick(rng, _RELATION_PHRASES[relation])
    return f"{clause} and {_full_phrase(third)} {phrase} the {anchor.colour} {anchor.shape}"


def _positional_caption(
    objects: list[ShapeObject], image_size: int, rng: np.random.Generator
) -> str:
    """Level 2: every object with size and colour (varied wording) and its position where clear."""
    phrases = [_placed_phrase(objects[i], image_size, rng) for i in rng.permutation(len(objects))]
    listing = _join([_with_article(p) for p in phrases], rng)
    count = len(objects)
    style = int(rng.integers(3))
    if style == 0:
        return _maybe_prefix(listing, rng)
    if count == 1:
        return f"there is {listing}" if style == 1 else f"a single {phrases[0]}"
    return f"there are {_NUMBER_WORDS[count]} shapes: {listing}"


def _canonical(objects: list[ShapeObject]) -> list[ShapeObject]:
    """Objects in a fixed order (shape kind, then colour), independent of where they are drawn.

    The three short caption levels are worded canonically, so images with the same content get
    the same words. Retrieval counts a hit for any image that has the query's exact caption text;
    with random word order, "a star and a circle" and "a circle and a star" would be different
    queries and no model could tell which of two identical-looking images got which.
    """
    colour_rank = {c: i for i, c in enumerate(COLOURS)}
    return sorted(objects, key=lambda o: (SHAPES.index(o.shape), colour_rank[o.colour]))


def _colour_shape_caption(objects: list[ShapeObject]) -> str:
    """Level 3: colour and shape, no size: "a red circle and a blue square"."""
    return " and ".join(_colour_phrase(o) for o in _canonical(objects))


def _shape_caption(objects: list[ShapeObject]) -> str:
    """Level 4: shape kinds only, with counts: "a circle", "two circles and a star"."""
    counts = Counter(o.shape for o in _canonical(objects))
    return " and ".join(_with_article(shape) if n == 1 else f"{_NUMBER_WORDS[n]} {_plural(shape)}"
                        for shape, n in counts.items())


def _colour_caption(objects: list[ShapeObject]) -> str:
    """Level 5: colours only: "something red and something blue"."""
    colour_rank = {c: i for i, c in enumerate(COLOURS)}
    colours = sorted((o.colour for o in objects), key=colour_rank.__getitem__)
    return " and ".join(f"something {c}" for c in colours)


def make_captions(
    objects: list[ShapeObject], image_size: int, rng: np.random.Generator
) -> list[str]:
    """Five true, lower-case captions for one image, from full detail down to colour only.

    The two detailed captions vary their wording with ``rng`` (including prefixes such as
    "a photo of"); the three short ones are canonical (see :func:`_canonical`), so short class
    prompts such as "a circle" or "something red" are in-distribution for segmentation later.
    Captions never contain commas.
    """
    relational = _relational_caption(objects, image_size, rng)
    positional = _positional_caption(objects, image_size, rng)
    for _ in range(3):  # a lone, unplaceable object can get the same words twice: re-word it
        if positional != relational:
            break
        positional = _positional_caption(objects, image_size, rng)
    return [
        relational,
        positional,
        _colour_shape_caption(objects),
        _shape_caption(objects),
        _colour_caption(objects),
    ]


# --------------------------------------------------------------------------------------------------
# Writing the dataset


def _save_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as PNG: [H, W, 3] -> RGB, [H, W] -> L.

    zlib's fastest level: PNG is lossless at every level, so the pixels are the same, and
    drawing the 8000 default images takes 13 s of CPU instead of 18 s, for 38 MB instead of 32
    MB of files (measured on 2 cores).
    """
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _arguments(
    num_train: int, num_dev: int, num_test: int, image_size: int, seed: int
) -> dict[str, int]:
    """Validated generator arguments, as recorded in the marker file."""
    counts = {"num_train": num_train, "num_dev": num_dev, "num_test": num_test}
    for name, value in counts.items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if num_train + num_dev + num_test == 0:
        raise ValueError("num_train + num_dev + num_test must be at least 1")
    if num_train + num_dev + num_test > 1_000_000:
        raise ValueError("at most 1,000,000 images: file names have six digits")
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer of at least 16, got {image_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return {**counts, "image_size": image_size, "seed": seed}


def _marker(arguments: dict[str, int]) -> dict[str, object]:
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "arguments": arguments}


def _read_marker(root: Path) -> dict[str, object] | None:
    """The marker's content, or None when it is missing or unreadable."""
    try:
        content = json.loads((root / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _count_pngs(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".png"))
    except OSError:
        return 0


def _is_complete(root: Path, arguments: dict[str, int]) -> bool:
    """True if ``root`` holds a full dataset made with exactly these arguments by this version."""
    if _read_marker(root) != _marker(arguments):
        return False
    files = ["captions.txt", "classes.txt", "objects.json", *SPLIT_FILES.values()]
    if not all((root / name).is_file() for name in files):
        return False
    total = arguments["num_train"] + arguments["num_dev"] + arguments["num_test"]
    return _count_pngs(root / "Images") == total and _count_pngs(root / "masks") == total


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a folder that is neither empty nor a dataset made by this generator."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(
            f"{root} exists and is not a folder; remove it or choose another root"
        )
    marker = _read_marker(root)
    if any(root.iterdir()) and (marker is None or marker.get("generator") != GENERATOR_NAME):
        raise FileExistsError(
            f"{root} exists and is not a captioned-shapes dataset (no valid {MARKER_FILE}); "
            "delete it or choose another root so nothing of yours is overwritten"
        )


def _split_names(arguments: dict[str, int]) -> dict[str, list[str]]:
    """Image file names per split: train first, then dev, then test (images are i.i.d.)."""
    names, start = {}, 0
    for split in SPLIT_FILES:
        count = arguments[f"num_{split}"]
        names[split] = [f"{i:06d}.png" for i in range(start, start + count)]
        start += count
    return names


def _write_one(job: tuple[Path, int, str, int, int]) -> tuple[list[str], list[dict[str, object]]]:
    """Render image ``index`` and save it and its mask; returns its captions and objects."""
    folder, index, name, seed, image_size = job
    # One generator per image: image i depends only on (seed, i), not on the split sizes or on
    # which process draws it.
    sample = render_sample(np.random.default_rng([seed, index]), image_size)
    _save_png(folder / "Images" / name, sample.image)
    _save_png(folder / "masks" / name, sample.mask)
    return sample.captions, [obj.to_json() for obj in sample.objects]


def _write_images(
    folder: Path, names: list[str], arguments: dict[str, int], workers: int | None, progress: bool
) -> tuple[list[tuple[str, str]], dict[str, list[dict[str, object]]]]:
    """Render and save every image and mask. Returns (image, caption) rows and objects per image.

    Rendering and PNG encoding are plain Python and numpy work that one process cannot spread
    over cores, so ``workers`` processes share it (``None``: one per core, up to 4, for 2000
    images or more). The results come back in order and every image depends on its index alone,
    so the files are the same whatever the number of processes.
    """
    (folder / "Images").mkdir()
    (folder / "masks").mkdir()
    jobs = [(folder, index, name, arguments["seed"], arguments["image_size"])
            for index, name in enumerate(names)]
    if workers is None:
        workers = min(os.cpu_count() or 1, MAX_WORKERS) if len(jobs) >= PARALLEL_FROM else 1
    results = None
    if workers > 1:
        try:
            results = _draw_in_processes(jobs, workers, progress)
        except BrokenProcessPool:
            warnings.warn("Could not draw the dataset in worker processes (a script that calls "
                          "this at import time needs `if __name__ == '__main__':`); drawing it "
                          "in this process instead.", RuntimeWarning, stacklevel=3)
    if results is None:
        results = list(tqdm(map(_write_one, jobs), total=len(jobs), desc="captioned shapes",
                            unit="img", disable=not progress))
    rows = [(name, caption) for name, (captions, _) in zip(names, results, strict=True)
            for caption in captions]
    objects = {name: objs for name, (_, objs) in zip(names, results, strict=True)}
    return rows, objects


def _draw_in_processes(jobs: list, workers: int, progress: bool) -> list:
    # "spawn", not "fork": a forked copy of a process that runs threads (torch's) can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(tqdm(pool.map(_write_one, jobs, chunksize=100), total=len(jobs),
                         desc=f"captioned shapes ({workers} processes)", unit="img",
                         disable=not progress))


def _write_text_files(
    folder: Path,
    splits: dict[str, list[str]],
    rows: list[tuple[str, str]],
    objects: dict[str, list[dict[str, object]]],
) -> None:
    """captions.txt (Kaggle Flickr8k CSV), split lists, classes.txt and objects.json."""
    with open(folder / "captions.txt", "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(("image", "caption"))
        writer.writerows(rows)
    for split, file_name in SPLIT_FILES.items():
        (folder / file_name).write_text("".join(f"{n}\n" for n in splits[split]), encoding="utf-8")
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in CLASS_NAMES), encoding="utf-8")
    # One image per line: compact, yet readable and diff-friendly.
    lines = [f"{json.dumps(name)}: {json.dumps(objs)}" for name, objs in objects.items()]
    (folder / "objects.json").write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def generate_captioned_shapes(
    root: str | os.PathLike[str],
    *,
    num_train: int = 6000,
    num_dev: int = 1000,
    num_test: int = 1000,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """(Re)generate the dataset under ``root`` in Flickr8k's Kaggle layout and return ``root``.

    Writes ``Images/NNNNNN.png`` (RGB, image_size^2), ``masks/NNNNNN.png`` (mode L, class ids),
    ``captions.txt`` (``image,caption`` header, 5 rows per image), ``Flickr_8k.{train,dev,test}Images.txt``,
    ``classes.txt``, ``objects.json`` and the marker ``dataset.json``. ``workers`` processes draw the
    images (``None``: one per core, up to 4, from 2000 images on). Everything is built in a hidden
    sibling folder and renamed into place at the end, so an interrupted run leaves no partial ``root``
    (and an existing dataset at ``root`` stays untouched until the new one is complete).
    Raises FileExistsError if ``root`` is a non-empty folder that this generator did not make.
    """
    arguments = _arguments(num_train, num_dev, num_test, image_size, seed)
    root = Path(root).expanduser()
    _check_replaceable(root)
    with atomic_folder(root) as building:
        splits = _split_names(arguments)
        names = [name for split in SPLIT_FILES for name in splits[split]]
        rows, objects = _write_images(building, names, arguments, workers, progress)
        _write_text_files(building, splits, rows, objects)
        # The marker is written last: its presence certifies that everything else is there.
        marker = json.dumps(_marker(arguments), indent=2) + "\n"
        (building / MARKER_FILE).write_text(marker, encoding="utf-8")
    return root


def ensure_captioned_shapes(
    root: str | os.PathLike[str],
    *,
    num_train: int = 6000,
    num_dev: int = 1000,
    num_test: int = 1000,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Return ``root`` at once if it already holds a complete dataset generated with the same
    arguments by this generator version; otherwise (re)generate it (see generate_captioned_shapes)."""
    arguments = _arguments(num_train, num_dev, num_test, image_size, seed)
    root = Path(root).expanduser()
    if _is_complete(root, arguments):
        return root
    return generate_captioned_shapes(root, **arguments, workers=workers, progress=progress)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the captioned-shapes dataset.")
    parser.add_argument("--root", default="data/captioned_shapes", help="output folder")
    parser.add_argument("--num-train", type=int, default=6000)
    parser.add_argument("--num-dev", type=int, default=1000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if already there")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    kwargs = {
        "num_train": args.num_train,
        "num_dev": args.num_dev,
        "num_test": args.num_test,
        "image_size": args.image_size,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    start = time.perf_counter()
    if args.force:
        root = generate_captioned_shapes(args.root, **kwargs)
    else:
        root = ensure_captioned_shapes(args.root, **kwargs)
    total = args.num_train + args.num_dev + args.num_test
    print(
        f"captioned shapes: {total} images at {root.resolve()} ({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
