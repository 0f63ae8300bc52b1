"""Tests for utils.sources.synthetic: layout on disk, determinism, atomic writes and true captions."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.sources import synthetic
from utils.sources.synthetic import (
    CLASS_NAMES,
    COLOURS,
    SHAPES,
    SIZES,
    SPLIT_FILES,
    Sample,
    ShapeObject,
    ensure_captioned_shapes,
    generate_captioned_shapes,
    make_captions,
    render_sample,
    shape_footprint,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_train": 20, "num_dev": 5, "num_test": 5, "image_size": 64, "seed": 0}
NUM_IMAGES = 30
SIZE = 64

SHAPE = "(?:" + "|".join(SHAPES) + ")"
COLOUR = "(?:" + "|".join(COLOURS) + ")"
SIZE_WORD = "(?:" + "|".join(SIZES) + ")"
RELATION = "(?:to the left of|left of|to the right of|right of|above|below)"
POSITION = "(?:on the (?:left|right)|at the (?:top|bottom)|in the (?:top|bottom) (?:left|right)|in the middle)"


# ---------------------------------------------------------------------------------------------------
# helpers


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _load_objects(root: Path) -> dict[str, list[ShapeObject]]:
    raw = json.loads((root / "objects.json").read_text(encoding="utf-8"))
    return {
        name: [ShapeObject(o["shape"], o["colour"], o["size"], tuple(o["box"])) for o in objs]
        for name, objs in raw.items()
    }


def _by_colour(objects: list[ShapeObject], colour: str) -> ShapeObject:
    matches = [o for o in objects if o.colour == colour]
    assert len(matches) == 1, f"colour {colour} names {len(matches)} objects"
    return matches[0]


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int) -> np.ndarray:
    """pixels [..., 3] uint8 -> bool [...]: every channel within tolerance of colour."""
    return np.all(np.abs(pixels.astype(np.int16) - np.array(colour)) <= tolerance, axis=-1)


def _words(caption: str, vocabulary: tuple[str, ...] | list[str]) -> set[str]:
    """Vocabulary words (singular or plural) that occur in the caption."""
    return {w for w in vocabulary if re.search(rf"\b{w}(?:e?s)?\b", caption)}


def _check_caption_is_true(caption: str, objects: list[ShapeObject], image_size: int) -> Counter:
    """Assert that one caption is true for the objects; count which claim types it made."""
    claims: Counter = Counter()
    assert caption == caption.strip().lower() and caption, caption
    assert "," not in caption, caption
    shapes = {o.shape for o in objects}
    colours = {o.colour for o in objects}
    mentioned_shapes, mentioned_colours = _words(caption, SHAPES), _words(caption, list(COLOURS))
    assert mentioned_shapes <= shapes, caption
    assert mentioned_colours <= colours, caption
    # Each caption describes the whole image: all shapes, or (colour-only captions) all colours.
    assert mentioned_shapes == shapes or mentioned_colours == colours, caption
    for number, word in re.findall(rf"\b(one|two|three) ({SHAPE})(?:e?s)?\b", caption):
        assert sum(o.shape == word for o in objects) == {"one": 1, "two": 2, "three": 3}[number]
        claims["count"] += 1
    for number in re.findall(r"\b(one|two|three) shapes?\b", caption):
        assert len(objects) == {"one": 1, "two": 2, "three": 3}[number], caption
    # Colour-shape bindings, with size where given: "large red circle", "large circle in red".
    pattern = rf"\b(?:({SIZE_WORD}) )?(?:({COLOUR}) ({SHAPE})|({SHAPE}) in ({COLOUR}))\b"
    for size, colour_a, shape_a, shape_b, colour_b in re.findall(pattern, caption):
        obj = _by_colour(objects, colour_a or colour_b)
        assert obj.shape == (shape_a or shape_b), caption
        if size:
            assert obj.size == size, caption
            claims["size"] += 1
    _check_relations(caption, objects, image_size, claims)
    _check_positions(caption, objects, image_size, claims)
    return claims


def _check_relations(
    caption: str, objects: list[ShapeObject], image_size: int, claims: Counter
) -> None:
    """ "X to the left of Y" etc. must agree with the box centres by a clear margin."""
    noun = rf"(?:{SIZE_WORD} )?({COLOUR}) {SHAPE}"
    for colour_a, relation, colour_b in re.findall(
        rf"{noun} ({RELATION}) (?:a|an|the) {noun}", caption
    ):
        (ax, ay), (bx, by) = (_by_colour(objects, c).centre for c in (colour_a, colour_b))
        margin = 0.15 * image_size  # looser than the generator's own rule: an independent check
        if "left" in relation:
            assert bx - ax >= margin, caption
        elif "right" in relation:
            assert ax - bx >= margin, caption
        elif relation == "above":
            assert by - ay >= margin, caption
        else:
            assert ay - by >= margin, caption
        claims["relation"] += 1


def _check_positions(
    caption: str, objects: list[ShapeObject], image_size: int, claims: Counter
) -> None:
    """ "a large red circle on the left": the centre must lie in that part of the image."""
    pattern = rf"(?:({COLOUR}) {SHAPE}|{SHAPE} in ({COLOUR})) ({POSITION})"
    for colour_a, colour_b, position in re.findall(pattern, caption):
        x, y = (c / image_size for c in _by_colour(objects, colour_a or colour_b).centre)
        if "left" in position:
            assert x < 0.45, caption
        if "right" in position:
            assert x > 0.55, caption
        if "top" in position:
            assert y < 0.45, caption
        if "bottom" in position:
            assert y > 0.55, caption
        if "middle" in position:
            assert abs(x - 0.5) <= 0.1 and abs(y - 0.5) <= 0.1, caption
        claims["position"] += 1


# ---------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_captioned_shapes(
        tmp_path_factory.mktemp("shapes") / "captioned_shapes", **SMALL, progress=False
    )


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [render_sample(np.random.default_rng([7, i]), SIZE) for i in range(400)]


# ---------------------------------------------------------------------------------------------------
# layout on disk


def test_layout_has_every_file(dataset: Path) -> None:
    names = [f"{i:06d}.png" for i in range(NUM_IMAGES)]
    assert sorted(p.name for p in (dataset / "Images").iterdir()) == names
    assert sorted(p.name for p in (dataset / "masks").iterdir()) == names
    assert (dataset / "classes.txt").read_text(encoding="utf-8").splitlines() == list(CLASS_NAMES)
    marker = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))
    assert marker["arguments"] == SMALL
    assert not _leftovers(dataset.parent, dataset.name)


def test_captions_csv_has_header_and_five_captions_per_image(dataset: Path) -> None:
    text = (dataset / "captions.txt").read_text(encoding="utf-8")
    assert text.startswith("image,caption\n")
    with open(dataset / "captions.txt", encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["image", "caption"]
    assert all(len(row) == 2 for row in rows[1:])
    counts = Counter(row[0] for row in rows[1:])
    assert counts == {f"{i:06d}.png": 5 for i in range(NUM_IMAGES)}
    # Kaggle-style loaders that split on the first comma must see the same captions.
    plain = [line.split(",", 1) for line in text.splitlines()[1:]]
    assert plain == rows[1:]


def test_split_files_are_disjoint_and_cover_all_images(dataset: Path) -> None:
    splits = {
        split: (dataset / name).read_text(encoding="utf-8").splitlines()
        for split, name in SPLIT_FILES.items()
    }
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [20, 5, 5]
    all_names = [n for names in splits.values() for n in names]
    assert len(set(all_names)) == len(all_names)
    assert set(all_names) == {p.name for p in (dataset / "Images").iterdir()}


def test_images_and_masks_have_matching_sizes_and_valid_class_ids(dataset: Path) -> None:
    for path in (dataset / "Images").iterdir():
        with Image.open(path) as image, Image.open(dataset / "masks" / path.name) as mask:
            assert image.mode == "RGB" and image.size == (SIZE, SIZE)
            assert mask.mode == "L" and mask.size == (SIZE, SIZE)
            assert np.asarray(mask).max() < len(CLASS_NAMES)


def test_objects_json_agrees_with_masks_and_images(dataset: Path) -> None:
    objects = _load_objects(dataset)
    assert sorted(objects) == sorted(p.name for p in (dataset / "Images").iterdir())
    for name, objs in objects.items():
        image = np.asarray(Image.open(dataset / "Images" / name))
        mask = np.asarray(Image.open(dataset / "masks" / name))
        assert 1 <= len(objs) <= 3
        assert len({o.colour for o in objs}) == len(objs), "colours repeat within an image"
        repainted = np.zeros_like(mask)
        for obj in objs:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE and x1 - x0 == y1 - y0
            low, high = synthetic.SIZE_RANGES[obj.size]
            assert low <= (x1 - x0) / SIZE <= high
            repainted[shape_footprint(obj.shape, obj.box, SIZE)] = CLASS_NAMES.index(obj.shape)
        # Painting the listed objects in order reproduces the saved mask pixel for pixel.
        np.testing.assert_array_equal(repainted, mask)
        for obj in objs:
            footprint = shape_footprint(obj.shape, obj.box, SIZE)
            class_id = CLASS_NAMES.index(obj.shape)
            visible = footprint & (mask == class_id) & _near(image, COLOURS[obj.colour], 2)
            assert visible.sum() >= 0.5 * footprint.sum(), f"{name}: {obj} mostly hidden"


def test_mask_marks_where_the_shapes_are(dataset: Path) -> None:
    objects = _load_objects(dataset)
    for name, objs in objects.items():
        image = np.asarray(Image.open(dataset / "Images" / name))
        mask = np.asarray(Image.open(dataset / "masks" / name))
        for class_id in np.unique(mask[mask > 0]):
            kind = CLASS_NAMES[class_id]
            colours = [COLOURS[o.colour] for o in objs if o.shape == kind]
            assert colours, f"{name}: mask has {kind} but objects.json has none"
            pixels = image[mask == class_id]
            assert np.any([_near(pixels, c, 2) for c in colours], axis=0).all()
        # The background is low-saturation everywhere: never mistakable for a shape colour.
        background = image[mask == 0].astype(np.int16)
        assert (background.max(axis=1) - background.min(axis=1)).max() <= 60
        for colour in COLOURS.values():
            assert not _near(image[mask == 0], colour, 40).any()


def test_saved_files_match_render_sample_for_that_index(dataset: Path) -> None:
    sample = render_sample(np.random.default_rng([SMALL["seed"], 3]), SIZE)
    np.testing.assert_array_equal(
        np.asarray(Image.open(dataset / "Images/000003.png")), sample.image
    )
    np.testing.assert_array_equal(np.asarray(Image.open(dataset / "masks/000003.png")), sample.mask)
    with open(dataset / "captions.txt", encoding="utf-8", newline="") as file:
        captions = [caption for name, caption in csv.reader(file) if name == "000003.png"]
    assert captions == sample.captions


# ---------------------------------------------------------------------------------------------------
# images and captions from render_sample


def test_render_sample_shapes_dtypes_and_visibility(samples: list[Sample]) -> None:
    counts = Counter(len(s.objects) for s in samples)
    assert set(counts) == {1, 2, 3}
    kinds = Counter(o.shape for s in samples for o in s.objects)
    assert set(kinds) == set(SHAPES) and set(
        Counter(o.colour for s in samples for o in s.objects)
    ) == set(COLOURS)
    for sample in samples:
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (SIZE, SIZE) and sample.mask.dtype == np.uint8
        assert len(sample.captions) == 5
        for obj in sample.objects:
            footprint = shape_footprint(obj.shape, obj.box, SIZE)
            still_visible = footprint & (sample.mask == CLASS_NAMES.index(obj.shape))
            still_visible &= _near(sample.image, COLOURS[obj.colour], 2)
            assert still_visible.sum() >= 0.5 * footprint.sum()


def test_every_caption_is_true(samples: list[Sample]) -> None:
    claims: Counter = Counter()
    for sample in samples:
        for caption in sample.captions:
            claims += _check_caption_is_true(caption, sample.objects, SIZE)
    # The checks above only bite if the captions make such claims often enough.
    assert claims["relation"] >= 100 and claims["position"] >= 100
    assert claims["size"] >= 400 and claims["count"] >= 50


def test_captions_cover_every_level_of_detail(samples: list[Sample]) -> None:
    captions = {c for s in samples for c in s.captions}
    for shape in SHAPES:  # bare class names, as used later for segmentation prompts
        assert f"a {shape}" in captions
    assert any(c.startswith("a photo of ") for c in captions)  # prompt-style prefixes occur
    for colour in COLOURS:
        assert any(f"something {colour}" in c for c in captions)
    for sample in samples:
        first, second, colour_shape, shape_only, _ = sample.captions
        assert _words(first, SIZES) and _words(second, SIZES) and first != second
        assert not _words(colour_shape, SIZES) and _words(colour_shape, list(COLOURS))
        assert not _words(shape_only, list(COLOURS)) and not _words(shape_only, SIZES)
        # Shape-only captions count every kind exactly: "a circle" never stands for two circles.
        numbers = {"a": 1, "an": 1, "two": 2, "three": 3}
        said = Counter()
        for number, shape in re.findall(rf"\b(a|an|two|three) ({SHAPE})(?:e?s)?\b", shape_only):
            said[shape] += numbers[number]
        assert said == Counter(o.shape for o in sample.objects), shape_only


def test_caption_checker_rejects_false_captions() -> None:
    left = ShapeObject("circle", "red", "large", (0, 20, 24, 44))
    right = ShapeObject("square", "blue", "small", (48, 20, 62, 34))
    _check_caption_is_true(
        "a large red circle to the left of a small blue square", [left, right], SIZE
    )
    for false_caption in (
        "a large red circle to the right of a small blue square",
        "a small red circle and a small blue square",
        "a red star and a blue square",
        "two circles and a square",
        "a large red circle on the right and a small blue square",
    ):
        with pytest.raises(AssertionError):
            _check_caption_is_true(false_caption, [left, right], SIZE)


def test_shape_footprint_sizes_and_bad_boxes() -> None:
    box = (10, 10, 30, 30)
    areas = {shape: int(shape_footprint(shape, box, SIZE).sum()) for shape in SHAPES}
    assert areas["square"] == 400
    assert abs(areas["circle"] - np.pi * 100) < 15
    assert 150 <= areas["triangle"] <= 250 and areas["star"] < areas["cross"] < areas["square"]
    with pytest.raises(ValueError, match="inside"):
        shape_footprint("circle", (50, 50, 70, 70), SIZE)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_footprint("hexagon", box, SIZE)


# ---------------------------------------------------------------------------------------------------
# determinism, reuse and atomic writes


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = generate_captioned_shapes(tmp_path / "a", **SMALL, progress=False)
    second = generate_captioned_shapes(tmp_path / "b", **SMALL, progress=False)
    assert _file_hashes(first) == _file_hashes(second)
    other = generate_captioned_shapes(tmp_path / "c", **{**SMALL, "seed": 1}, progress=False)
    hashes, other_hashes = _file_hashes(first), _file_hashes(other)
    assert hashes["captions.txt"] != other_hashes["captions.txt"]
    assert all(
        hashes[f"Images/{i:06d}.png"] != other_hashes[f"Images/{i:06d}.png"] for i in range(5)
    )


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    one = generate_captioned_shapes(tmp_path / "one", **SMALL, workers=1, progress=False)
    three = generate_captioned_shapes(tmp_path / "three", **SMALL, workers=3, progress=False)
    assert _file_hashes(one) == _file_hashes(three)


def test_a_script_without_a_main_guard_still_gets_its_dataset(tmp_path: Path) -> None:
    """Worker processes start by re-running such a script, which cannot work; the generator says
    so and draws the images itself."""
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from utils.sources.synthetic import generate_captioned_shapes\n"
        f"generate_captioned_shapes({str(tmp_path / 'made')!r}, num_train=20, num_dev=5, "
        "num_test=5, workers=2, progress=False)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "drawing it in this process instead" in done.stderr
    expected = generate_captioned_shapes(tmp_path / "expected", **SMALL, workers=1, progress=False)
    assert _file_hashes(tmp_path / "made") == _file_hashes(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expected", "made", "no_guard.py"]


def test_ensure_reuses_then_regenerates_when_arguments_change(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    assert ensure_captioned_shapes(root, **SMALL, progress=False) == root
    before = _mtimes(root)
    assert ensure_captioned_shapes(str(root), **SMALL, progress=False) == root
    assert _mtimes(root) == before
    hashes = _file_hashes(root)
    ensure_captioned_shapes(root, **{**SMALL, "seed": 5}, progress=False)
    assert json.loads((root / "dataset.json").read_text())["arguments"]["seed"] == 5
    assert _file_hashes(root)["captions.txt"] != hashes["captions.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_ensure_regenerates_an_incomplete_dataset(tmp_path: Path) -> None:
    root = generate_captioned_shapes(tmp_path / "shapes", **SMALL, progress=False)
    hashes = _file_hashes(root)
    (root / "Images" / "000007.png").unlink()
    ensure_captioned_shapes(root, **SMALL, progress=False)
    assert _file_hashes(root) == hashes


def test_failure_mid_write_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    real_save = synthetic._save_png
    calls = []

    def fail_on_third_image(path: Path, array: np.ndarray) -> None:
        if path.parent.name == "Images":
            calls.append(path)
            if len(calls) == 3:
                raise OSError("disk full (simulated)")
        real_save(path, array)

    monkeypatch.setattr(synthetic, "_save_png", fail_on_third_image)
    with pytest.raises(OSError, match="simulated"):
        generate_captioned_shapes(tmp_path / "shapes", **SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_dataset_intact(tmp_path: Path, monkeypatch) -> None:
    root = generate_captioned_shapes(tmp_path / "shapes", **SMALL, progress=False)
    hashes = _file_hashes(root)

    def broken_save(path: Path, array: np.ndarray) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(synthetic, "_save_png", broken_save)
    with pytest.raises(OSError, match="simulated"):
        ensure_captioned_shapes(root, **{**SMALL, "seed": 9}, progress=False)
    assert _file_hashes(root) == hashes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path: Path) -> None:
    root = tmp_path / "my_data"
    root.mkdir()
    (root / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="my_data"):
        generate_captioned_shapes(root, **SMALL, progress=False)
    assert (root / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data"]


@pytest.mark.parametrize(
    ("argument", "value"),
    [("num_train", -1), ("image_size", 8), ("seed", -3), ("num_dev", 1.5)],
)
def test_bad_arguments_are_named(tmp_path: Path, argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=argument):
        generate_captioned_shapes(tmp_path / "x", **{**SMALL, argument: value}, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_command_line_generates_then_reuses(tmp_path: Path, capsys) -> None:
    root = tmp_path / "cli"
    argv = ["--root", str(root), "--num-train", "4", "--num-dev", "1", "--num-test", "1"]
    synthetic.main(argv)
    assert str(root.resolve()) in capsys.readouterr().out
    assert len(list((root / "Images").iterdir())) == 6
    before = _mtimes(root)
    synthetic.main(argv)
    assert _mtimes(root) == before


def test_short_captions_depend_only_on_content() -> None:
    # The same objects listed in another order (or drawn elsewhere) get the same three short
    # captions, so "exact caption text" positives in retrieval mean "same content".
    objects = [ShapeObject("star", "red", "small", (2, 2, 14, 14)),
               ShapeObject("circle", "blue", "large", (20, 20, 50, 50)),
               ShapeObject("circle", "green", "small", (40, 2, 54, 16))]
    moved = [ShapeObject(o.shape, o.colour, o.size, (0, 0, 10, 10)) for o in reversed(objects)]
    captions = make_captions(objects, SIZE, np.random.default_rng(0))[2:]
    assert captions == make_captions(moved, SIZE, np.random.default_rng(1))[2:]
    assert captions == ["a green circle and a blue circle and a red star",
                        "two circles and a star", "something red and something green and something blue"]
