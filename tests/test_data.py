"""utils.data on tiny fixture datasets written here in both real Flickr8k layouts."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from utils.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CaptionCollator,
    DatasetFiles,
    DatasetFormatError,
    ImageCaptionDataset,
    build_transform,
    load_image,
    load_split,
    locate_dataset,
    read_captions,
    read_split,
)
from utils.positives import caption_positives
from utils.tokenization import train_wordpiece_tokenizer

# Image name -> captions. Captions with commas test the Kaggle CSV parsing, quotes the unquoting.
CAPTIONS = {
    "1000_a.jpg": ["A dog , running", "a dog, quoted in the csv", "A brown dog ."],
    "1001_b.jpg": ["Two cats sit on a mat .", 'A cat says "hi", loudly', "cats"],
    "1002_c.jpg": ["A red circle on the left", "a red circle", "red circle ."],
    "1003_d.jpg": ["A blue square to the left of a green triangle", "shapes", "blue, green"],
}
SPLIT_NAMES = {"train": ["1000_a.jpg", "1001_b.jpg"], "dev": ["1002_c.jpg"], "test": ["1003_d.jpg"]}
GHOST_IMAGE = "2258277193_586949ec62.jpg.1"  # in the real token file, with no file and no split
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def _csv_field(caption: str) -> str:
    """Quote a caption the CSV way only when it holds a quote or when asked by the fixture."""
    if '"' in caption or caption.endswith("quoted in the csv"):
        return '"' + caption.replace('"', '""') + '"'
    return caption  # unquoted, commas and all, as in the Kaggle file


def _write_images(folder: Path) -> None:
    """One JPEG per image: its colour, darkened in a checkerboard so that crops differ."""
    folder.mkdir(parents=True)
    checkerboard = (np.indices((18, 24)).sum(axis=0) // 3 % 2)[:, :, None]
    for colour, name in zip(COLOURS, CAPTIONS, strict=True):
        pixels = (np.array(colour) * (1 - 0.5 * checkerboard)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name, format="JPEG")


def _write_split_files(folder: Path) -> None:
    for split, names in SPLIT_NAMES.items():
        (folder / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n\n")


def _write_kaggle_captions(path: Path, captions: dict[str, list[str]] = CAPTIONS) -> None:
    lines = ["image,caption"]
    lines += [f"{name},{_csv_field(c)}" for name, caps in captions.items() for c in caps]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _make_kaggle(root: Path, with_splits: bool = True) -> Path:
    _write_images(root / "Images")
    _write_kaggle_captions(root / "captions.txt")
    if with_splits:
        _write_split_files(root)
    return root


def _make_official(root: Path) -> Path:
    _write_images(root / "Flicker8k_Dataset")
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    lines = [f"{name}#{k}\t{c}" for name, caps in CAPTIONS.items() for k, c in enumerate(caps)]
    lines.insert(3, f"{GHOST_IMAGE}#0\tA caption for an image that does not exist .")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_split_files(text)
    # The real archives carry macOS resource forks that only look like the real files.
    junk = root / "__MACOSX" / "Flicker8k_Dataset"
    junk.mkdir(parents=True)
    (junk.parent / "._Flickr8k.token.txt").write_bytes(b"\x00\x05\x16\x07")
    return root


def _raises_naming(path: Path, line: int | None = None, match: str = "") -> AbstractContextManager:
    """pytest.raises for a DatasetFormatError whose message names ``path`` (and ``line``)."""
    where = re.escape(f"{path}:{line}" if line is not None else str(path))
    return pytest.raises(DatasetFormatError, match=f"(?s){where}.*{match}")


def _write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


def test_kaggle_captions_keep_commas_and_undo_csv_quotes(tmp_path):
    path = tmp_path / "captions.txt"
    _write_kaggle_captions(path)
    assert read_captions(path) == CAPTIONS


def test_kaggle_captions_strip_whitespace_and_windows_line_ends(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes(b'image,caption\r\n a.jpg ,  A dog , running  \r\nb.jpg," x, y "\r\n')
    assert read_captions(path) == {"a.jpg": ["A dog , running"], "b.jpg": ["x, y"]}


def test_token_file_gives_captions_in_file_order(tmp_path):
    path = _write_lines(tmp_path / "t.txt", "a.jpg#0\tFirst .", "a.jpg#1\t Second ", "b.jpg#0\tB")
    assert read_captions(path) == {"a.jpg": ["First .", "Second"], "b.jpg": ["B"]}


def test_both_layouts_parse_to_the_same_captions(tmp_path):
    kaggle = locate_dataset(_make_kaggle(tmp_path / "kaggle"))
    official = locate_dataset(_make_official(tmp_path / "official"))
    from_token_file = read_captions(official.captions_file)
    assert from_token_file.pop(GHOST_IMAGE) == ["A caption for an image that does not exist ."]
    assert from_token_file == read_captions(kaggle.captions_file) == CAPTIONS


def test_missing_caption_file(tmp_path):
    path = tmp_path / "nope" / "captions.txt"
    with _raises_naming(path, match="not found"):
        read_captions(path)


def test_caption_file_without_header(tmp_path):
    path = _write_lines(tmp_path / "captions.txt", "a.jpg,A dog .", "b.jpg,A cat .")
    with _raises_naming(path, 1, match="has no header.*`image,caption`"):
        read_captions(path)


def test_kaggle_line_without_comma(tmp_path):
    path = _write_lines(tmp_path / "captions.txt", "image,caption", "a.jpg,A dog .", "b.jpg A cat")
    with _raises_naming(path, 3, match="malformed line 'b.jpg A cat'"):
        read_captions(path)


def test_token_line_without_tab(tmp_path):
    path = _write_lines(tmp_path / "t.txt", "a.jpg#0\tA dog .", "", "a.jpg#1 A dog again .")
    with _raises_naming(path, 3, match="no TAB"):
        read_captions(path)


@pytest.mark.parametrize("line", ["a.jpg#0\tA dog, running .", "a.jpg\tA dog, running .",
                                  '"a.jpg\tA dog",running .'])
def test_kaggle_line_whose_fields_a_tab_separates(tmp_path, line):
    # A token-file line pasted into the CSV: without the check, the image name would swallow the
    # caption up to its first comma.
    path = _write_lines(tmp_path / "captions.txt", "image,caption", "b.jpg,A cat .", line)
    with _raises_naming(path, 3, match="holds a TAB.*comma between the two"):
        read_captions(path)


@pytest.mark.parametrize("repeat", ["a.jpg#1\tThe same key again .", "a.jpg#01\tAs #01 ."])
def test_token_file_with_a_repeated_key(tmp_path, repeat):
    path = _write_lines(tmp_path / "t.txt", "a.jpg#0\tFirst .", "a.jpg#1\tSecond .",
                        "b.jpg#1\tOther image, same k .", repeat)
    with _raises_naming(path, 4, match="'a.jpg#1' was already used on line 2"):
        read_captions(path)


@pytest.mark.parametrize("key", ["a.jpg", "a.jpg#x", "a.jpg#", "#0"])
def test_token_line_with_bad_caption_number(tmp_path, key):
    path = _write_lines(tmp_path / "t.txt", "a.jpg#0\tA dog .", f"{key}\tA dog again .")
    with _raises_naming(path, 2, match="does not end in `#k`"):
        read_captions(path)


@pytest.mark.parametrize(
    ("lines", "line"),
    [
        (["image,caption", "a.jpg,A dog .", "b.jpg,   "], 3),
        (["image,caption", 'a.jpg,""'], 2),
        (["a.jpg#0\tA dog .", "a.jpg#1\t "], 2),
    ],
)
def test_empty_caption(tmp_path, lines, line):
    path = _write_lines(tmp_path / "captions.txt", *lines)
    with _raises_naming(path, line, match="empty caption for image"):
        read_captions(path)


def test_caption_file_that_is_not_text(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes(b"image,caption\na.jpg,\xff\xfe broken\n")
    with _raises_naming(path, match="not UTF-8"):
        read_captions(path)


# --------------------------------------------------------------------------------------------
# Splits, locating, loading
# --------------------------------------------------------------------------------------------


def test_read_split_ignores_blank_lines(tmp_path):
    path = _write_lines(tmp_path / "split.txt", "", " b.jpg ", "", "a.jpg", "")
    assert read_split(path, {"a.jpg", "b.jpg", "c.jpg"}) == ["b.jpg", "a.jpg"]


def test_read_split_with_unknown_images(tmp_path):
    path = _write_lines(tmp_path / "split.txt", "a.jpg", "typo.jpg", "b.jpg", "other.jpg")
    with _raises_naming(path, 2, match="2 image.*'typo.jpg', 'other.jpg'"):
        read_split(path, ["a.jpg", "b.jpg"])


def test_locate_kaggle_layout(tmp_path):
    root = _make_kaggle(tmp_path)
    files = locate_dataset(root)
    assert files == DatasetFiles(
        root=root,
        images_dir=root / "Images",
        captions_file=root / "captions.txt",
        split_files={s: root / f"Flickr_8k.{s}Images.txt" for s in ("train", "dev", "test")},
    )


def test_locate_official_layout_with_text_in_a_subfolder(tmp_path):
    root = _make_official(tmp_path)
    files = locate_dataset(root)
    assert files.images_dir == root / "Flicker8k_Dataset"  # not the __MACOSX look-alike
    assert files.captions_file == root / "Flickr8k_text" / "Flickr8k.token.txt"
    assert files.split_files["dev"] == root / "Flickr8k_text" / "Flickr_8k.devImages.txt"


def test_locate_follows_symlinks_as_use_kaggle_copy_writes_them(tmp_path):
    kaggle = _make_kaggle(tmp_path / "kaggle", with_splits=False)
    root = tmp_path / "course"
    root.mkdir()
    (root / "Images").symlink_to(kaggle / "Images", target_is_directory=True)
    (root / "captions.txt").symlink_to(kaggle / "captions.txt")
    _write_split_files(root)
    files = locate_dataset(root)
    assert files.images_dir == root / "Images"
    assert load_split(files, "dev") == [("1002_c.jpg", CAPTIONS["1002_c.jpg"])]


def test_locate_dataset_one_level_up(tmp_path):
    _make_official(tmp_path / "flickr8k")
    assert locate_dataset(tmp_path).images_dir == tmp_path / "flickr8k" / "Flicker8k_Dataset"


def test_locate_kaggle_copy_without_split_files_says_how_to_get_them(tmp_path):
    root = _make_kaggle(tmp_path, with_splits=False)
    with _raises_naming(root, match="Kaggle.*Flickr8k_text.zip.*use_kaggle_copy"):
        locate_dataset(root)


def test_locate_in_a_folder_without_a_dataset_lists_what_it_expected(tmp_path):
    (tmp_path / "Images").mkdir()
    expected = "Images/.*captions.txt.*Flicker8k_Dataset/.*Flickr8k.token.txt.*caption file none"
    with _raises_naming(tmp_path, match=expected):
        locate_dataset(tmp_path)


def test_locate_missing_folder(tmp_path):
    with _raises_naming(tmp_path / "nope", match="not found"):
        locate_dataset(tmp_path / "nope")


def test_both_layouts_load_the_same_splits_and_ignore_the_missing_image(tmp_path):
    kaggle = locate_dataset(_make_kaggle(tmp_path / "kaggle"))
    official = locate_dataset(_make_official(tmp_path / "official"))
    for split, names in SPLIT_NAMES.items():
        expected = [(name, CAPTIONS[name]) for name in names]
        assert load_split(kaggle, split) == load_split(official, split) == expected


def test_load_split_with_a_missing_image_file(tmp_path):
    files = locate_dataset(_make_kaggle(tmp_path))
    (files.images_dir / "1001_b.jpg").unlink()
    with _raises_naming(files.images_dir, match="1 image.*'1001_b.jpg'"):
        load_split(files, "train")
    assert load_split(files, "test")[0][0] == "1003_d.jpg"  # other splits still load


def test_load_split_with_an_image_that_has_no_captions(tmp_path):
    root = _make_kaggle(tmp_path)
    _write_kaggle_captions(root / "captions.txt", {"1000_a.jpg": ["only this one"]})
    files = locate_dataset(root)
    with _raises_naming(files.captions_file, match="no captions for 1 image.*'1001_b.jpg'"):
        load_split(files, "train")


def test_read_split_with_a_name_listed_twice(tmp_path):
    path = _write_lines(tmp_path / "split.txt", "a.jpg", "b.jpg", "", " a.jpg")
    with _raises_naming(path, 4, match="'a.jpg' is listed again \\(first on line 1\\)"):
        read_split(path, ["a.jpg", "b.jpg"])


def test_load_split_refuses_splits_that_share_images(tmp_path):
    files = locate_dataset(_make_kaggle(tmp_path))
    test_names = files.split_files["test"].read_text().split()
    with files.split_files["dev"].open("a") as dev:
        dev.write(f"{test_names[0]}\n")                   # a test image leaked into dev
    for split in ("dev", "test"):
        with pytest.raises(DatasetFormatError, match=f"both list 1 image.*{test_names[0]!r}"):
            load_split(files, split)
    assert load_split(files, "train")                    # the train split shares nothing


def test_load_split_rejects_an_unknown_split_name(tmp_path):
    with pytest.raises(ValueError, match="'validation'"):
        load_split(locate_dataset(_make_kaggle(tmp_path)), "validation")


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_rgb_png_loads_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    loaded = load_image(_save(Image.fromarray(pixels), tmp_path / "x.png"))
    assert loaded.dtype == np.uint8 and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, pixels)


@pytest.mark.parametrize(
    ("make", "suffix", "expected"),
    [
        (lambda: Image.new("L", (4, 3), 77), ".png", (77, 77, 77)),
        (lambda: Image.new("1", (4, 3), 1), ".png", (255, 255, 255)),
        (lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 0)), ".png", (255, 255, 255)),
        (lambda: Image.new("RGBA", (4, 3), (10, 20, 30, 255)), ".png", (10, 20, 30)),
        (lambda: Image.new("LA", (4, 3), (0, 128)), ".png", (127, 127, 127)),
        (lambda: Image.new("CMYK", (4, 3), (0, 255, 255, 0)), ".jpg", (255, 0, 0)),
    ],
    ids=["L", "1", "RGBA-clear", "RGBA-opaque", "LA-half", "CMYK-jpeg"],
)
def test_other_modes_load_as_rgb(tmp_path, make, suffix, expected):
    loaded = load_image(_save(make(), tmp_path / f"x{suffix}"))
    assert loaded.shape == (3, 4, 3) and loaded.dtype == np.uint8
    np.testing.assert_allclose(loaded.reshape(-1, 3), [expected] * 12, atol=3)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 65535], [32896, 1000]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "x.png")
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.shape == (2, 2, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], [[0, 255], [128, 4]])
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 degrees clockwise to display"
    path = _save(Image.new("RGB", (8, 4), (0, 128, 0)), tmp_path / "r.jpg", exif=exif)
    assert load_image(path).shape == (8, 4, 3)


def _palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    if transparent:
        image.info["transparency"] = 1
    return image


@pytest.mark.parametrize(("transparent", "right_pixel"), [(False, (0, 0, 255)), (True, (255,) * 3)])
def test_palette_images_with_and_without_transparency(tmp_path, transparent, right_pixel):
    path = _save(_palette_image(transparent), tmp_path / "p.png")
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(load_image(path)[0], [(255, 0, 0), right_pixel])


def test_missing_image(tmp_path):
    with _raises_naming(tmp_path / "gone.jpg", match="not found"):
        load_image(tmp_path / "gone.jpg")


def test_garbage_bytes_are_not_an_image(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with _raises_naming(path, match="cannot read.*download"):
        load_image(path)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, image_format):
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = _save(
        Image.fromarray(noise), tmp_path / f"cut.{image_format.lower()}", format=image_format
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with _raises_naming(path, match="cannot read.*delete it and download"):
        load_image(path)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _left_red_right_blue(height: int = 40, width: int = 60) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2] = (230, 20, 20)
    image[:, width // 2 :] = (20, 20, 230)
    image[::4] //= 2  # stripes, so that different crops give different pixels
    return image


def test_eval_transform_shape_dtype_and_normalisation():
    image = np.full((30, 50, 3), (255, 0, 128), dtype=np.uint8)
    out = build_transform(16, train=False)(image=image)["image"]
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected = (np.array([1.0, 0.0, 128 / 255]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)


def test_eval_transform_is_deterministic():
    image = _left_red_right_blue()
    transform = build_transform(24, train=False)
    assert torch.equal(transform(image=image)["image"], transform(image=image)["image"])


def test_train_transform_is_random_but_reproducible_with_a_seed():
    image = _left_red_right_blue()
    first = build_transform(24, train=True, seed=3)
    second = build_transform(24, train=True, seed=3)
    draws = [first(image=image)["image"] for _ in range(4)]
    assert all(torch.equal(d, second(image=image)["image"]) for d in draws)
    assert not all(torch.equal(draws[0], d) for d in draws[1:])
    assert draws[0].shape == (3, 24, 24) and draws[0].dtype == torch.float32


def test_train_transform_never_flips_or_changes_colours():
    transform = build_transform(24, train=True, seed=0)
    for _ in range(40):
        red, _, blue = transform(image=_left_red_right_blue())["image"]
        assert (red[:, :4] > blue[:, :4]).all(), "left edge must stay red"
        assert (blue[:, -4:] > red[:, -4:]).all(), "right edge must stay blue"


# --------------------------------------------------------------------------------------------
# Dataset, collator, positives
# --------------------------------------------------------------------------------------------


def _train_items(tmp_path: Path) -> tuple[DatasetFiles, list[tuple[str, list[str]]]]:
    files = locate_dataset(_make_kaggle(tmp_path))
    return files, load_split(files, "train") + load_split(files, "dev")


def test_dataset_item_with_a_fixed_caption(tmp_path):
    files, items = _train_items(tmp_path)
    dataset = ImageCaptionDataset(files.images_dir, items, build_transform(8, False), 1)
    assert len(dataset) == 3
    item = dataset[-1]
    assert item["caption"] == "a red circle" and item["image_index"] == 2
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    with pytest.raises(IndexError):
        dataset[3]


def test_dataset_draws_every_caption_with_torch_rng(tmp_path):
    files, items = _train_items(tmp_path)
    dataset = ImageCaptionDataset(files.images_dir, items, build_transform(8, True))
    torch.manual_seed(0)
    drawn = [dataset[0]["caption"] for _ in range(30)]
    assert set(drawn) == set(CAPTIONS["1000_a.jpg"])
    torch.manual_seed(0)
    assert [dataset[0]["caption"] for _ in range(30)] == drawn


def test_dataset_rejects_bad_items(tmp_path):
    transform = build_transform(8, False)
    with pytest.raises(ValueError, match="'a.jpg' needs a non-empty list"):
        ImageCaptionDataset(tmp_path, [("a.jpg", [])], transform)
    with pytest.raises(ValueError, match="'a.jpg' needs a non-empty list"):
        ImageCaptionDataset(tmp_path, [("a.jpg", "a caption, not a list")], transform)
    with pytest.raises(ValueError, match="caption_index=3.*'b.jpg'"):
        ImageCaptionDataset(
            tmp_path, [("a.jpg", ["1", "2", "3", "4"]), ("b.jpg", ["x"])], transform, 3
        )


def test_dataset_error_names_the_bad_image(tmp_path):
    files, items = _train_items(tmp_path)
    (files.images_dir / "1001_b.jpg").write_bytes(b"broken")
    dataset = ImageCaptionDataset(files.images_dir, items, build_transform(8, False), 0)
    with _raises_naming(files.images_dir / "1001_b.jpg", match="cannot read"):
        dataset[1]


def _loader(dataset: ImageCaptionDataset, collator: CaptionCollator, seed: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=2,
        shuffle=True,
        num_workers=2,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(seed),
    )


def test_dataloader_batches_are_shaped_right_and_reproducible(tmp_path):
    files, items = _train_items(tmp_path)
    tokenizer = train_wordpiece_tokenizer([c for caps in CAPTIONS.values() for c in caps], 200)
    dataset = ImageCaptionDataset(files.images_dir, items, build_transform(16, True, seed=0))
    collator = CaptionCollator(tokenizer, max_length=6)
    epochs = [list(_loader(dataset, collator, seed)) for seed in (0, 0, 1)]
    first, last = epochs[0][0], epochs[0][-1]
    assert first["images"].shape == (2, 3, 16, 16) and first["images"].dtype == torch.float32
    assert last["images"].shape == (1, 3, 16, 16)
    assert first["input_ids"].dtype == torch.long and first["attention_mask"].dtype == torch.long
    assert first["input_ids"].shape == first["attention_mask"].shape
    assert first["input_ids"].shape[0] == 2 and first["input_ids"].shape[1] <= 6
    assert first["image_index"].dtype == torch.long and len(first["captions"]) == 2
    assert torch.equal(first["input_ids"][:, 0], torch.full((2,), tokenizer.cls_token_id))
    indices = torch.cat([batch["image_index"] for batch in epochs[0]])
    assert sorted(indices.tolist()) == [0, 1, 2]
    for batch in epochs[0]:  # each caption belongs to the image it came with
        for index, caption in zip(batch["image_index"], batch["captions"], strict=True):
            assert caption in items[index][1]
    same_seed = zip(epochs[0], epochs[1], strict=True)
    assert all(
        torch.equal(a["images"], b["images"]) and a["captions"] == b["captions"]
        for a, b in same_seed
    )
    other_seed = zip(epochs[0], epochs[2], strict=True)
    assert not all(torch.equal(a["images"], b["images"]) for a, b in other_seed)


def test_augmentations_differ_between_epochs_of_one_loader(tmp_path):
    # A seeded A.Compose copied into a fresh worker each epoch would repeat the same crops.
    torch.manual_seed(0)
    files, items = _train_items(tmp_path)
    dataset = ImageCaptionDataset(files.images_dir, items, build_transform(16, True, seed=0), 0)
    loader = DataLoader(dataset, batch_size=3, num_workers=1)
    first_epoch, second_epoch = (next(iter(loader))["image"] for _ in range(2))
    assert not torch.equal(first_epoch, second_epoch)


def test_collator_pads_to_the_longest_and_truncates():
    tokenizer = train_wordpiece_tokenizer(["a dog runs on the grass", "a cat"], 100)
    image = torch.zeros(3, 4, 4)
    samples = [
        {"image": image, "caption": c, "image_index": i}
        for i, c in enumerate(["a cat", "a dog runs"])
    ]
    batch = CaptionCollator(tokenizer, max_length=32)(samples)
    assert batch["input_ids"].shape == (2, 5)  # [CLS] a dog runs [SEP]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert batch["input_ids"][0, -1] == tokenizer.pad_token_id
    assert batch["image_index"].tolist() == [0, 1]
    short = CaptionCollator(tokenizer, max_length=3)(samples)
    assert short["input_ids"].shape == (2, 3)


def test_collator_tokens_equal_the_tokenizers_own_padding_call_after_call():
    """The collator remembers each caption's ids; batches must still be exactly what the
    tokenizer pads, for new captions, remembered ones and repeats within a batch."""
    texts = ["a dog runs on the grass", "a cat", "two red circles above a blue square", "a dog"]
    tokenizer = train_wordpiece_tokenizer(texts, 100)
    collate = CaptionCollator(tokenizer, max_length=6)
    for captions in (texts[:2], texts, [texts[3], texts[1], texts[3]]):
        batch = collate([{"image": torch.zeros(3, 4, 4), "caption": c, "image_index": i}
                         for i, c in enumerate(captions)])
        expected = tokenizer(captions, padding="longest", truncation=True, max_length=6,
                             return_tensors="pt")
        assert torch.equal(batch["input_ids"], expected["input_ids"].long())
        assert torch.equal(batch["attention_mask"], expected["attention_mask"].long())
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_caption_positives_match_exact_text_after_strip_and_lower():
    captions_of_images = [["A red circle", "a circle"], ["A circle ", "a blue square"], ["x"]]
    texts = ["a circle", " A RED CIRCLE", "a blue square", "a square", "x"]
    positives = caption_positives(captions_of_images, texts)
    assert positives.dtype == torch.bool
    assert positives.tolist() == [
        [True, True, False],
        [True, False, False],
        [False, True, False],
        [False, False, False],
        [False, False, True],
    ]


def test_collator_adds_positives_for_shared_caption_text():
    tokenizer = train_wordpiece_tokenizer(["a circle", "a red circle", "a star"], 100)
    captions_of_images = [["a red circle", "a circle"], ["a blue circle", "a circle"], ["a star"]]
    image = torch.zeros(3, 4, 4)
    samples = [{"image": image, "caption": c, "image_index": i}
               for i, c in [(0, "a circle"), (1, "a blue circle"), (2, "a star")]]
    batch = CaptionCollator(tokenizer, captions_of_images=captions_of_images)(samples)
    # Rows are images, columns the batch's captions: "a circle" (column 0) fits images 0 and 1.
    assert batch["positives"].tolist() == [[True, False, False],
                                           [True, True, False],
                                           [False, False, True]]
    assert "positives" not in CaptionCollator(tokenizer)(samples)


def test_collator_brings_several_captions_per_image():
    captions_of_images = [["a red circle", "a circle", "something red"],
                          ["a blue star", "a star", "something blue"],
                          ["a green circle", "a circle", "something green"]]
    tokenizer = train_wordpiece_tokenizer([c for cs in captions_of_images for c in cs], 100)
    samples = [{"image": torch.zeros(3, 4, 4), "caption": cs[0], "image_index": i}
               for i, cs in enumerate(captions_of_images)]
    torch.manual_seed(0)
    batch = CaptionCollator(tokenizer, captions_of_images=captions_of_images,
                            captions_per_image=2)(samples)
    owners, captions = batch["caption_owner"].tolist(), batch["captions"]
    assert owners == [0, 0, 1, 1, 2, 2] and batch["input_ids"].shape[0] == 6
    assert batch["images"].shape[0] == 3
    for row, owner in enumerate(owners):
        assert captions[row] in captions_of_images[owner]
    # Each image's sampled caption comes first, then one of its other captions.
    assert captions[0::2] == [cs[0] for cs in captions_of_images]
    assert all(captions[i] != captions[i + 1] for i in range(0, 6, 2))
    # One row per text's owner image: true wherever that image has the column's caption text.
    expected = [[text in captions_of_images[owner] for text in captions] for owner in owners]
    assert batch["positives"].tolist() == expected
    assert batch["positives"].diagonal().all()


def test_collator_rejects_extra_captions_it_cannot_draw():
    tokenizer = train_wordpiece_tokenizer(["a circle"], 100)
    with pytest.raises(ValueError, match="captions_of_images"):
        CaptionCollator(tokenizer, captions_per_image=2)
    with pytest.raises(ValueError, match="at least 1"):
        CaptionCollator(tokenizer, captions_of_images=[["a circle"]], captions_per_image=0)
