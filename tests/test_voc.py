"""The Pascal VOC 2012 path and the real-photo download, offline against a local HTTP server.

The fixture archive has the real layout (``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
ImageSets/Segmentation, Annotations}``), palette-PNG masks with VOC's palette colours, boundary
pixels of 255, and JPEGs without a mask that extraction must leave out; only tiny.
"""

from __future__ import annotations

import io
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from http_fixture import LocalHTTPServer
from PIL import Image

from utils.metrics import mean_iou
from utils.sources.download import DownloadError, extract_tar_atomic, md5sum
from utils.sources.photos import download_images, upload_photos
from utils.sources.voc import (
    VOC_ARCHIVE,
    VOC_CLASSES,
    VOC_PROMPT_NAMES,
    VOC_URLS,
    load_voc_mask,
    load_voc_split,
    prepare_voc,
    read_voc_split,
    voc_miou,
)

ROOT = "VOCdevkit/VOC2012"
SEGMENTED = {"2007_000032": 1, "2007_000033": 15, "2008_000002": 12, "2009_000005": 20}
VAL = ["2007_000033", "2009_000005", "2008_000002"]
TRAIN = ["2007_000032"]
UNSEGMENTED = ["2007_000027", "2010_000001"]     # detection-only images: not extracted


def _voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved index -> RGB), so fixtures look like the real PNGs."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _mask(class_id: int, size: tuple[int, int]) -> np.ndarray:
    """Background, a block of ``class_id``, and a 255 boundary band around the block."""
    height, width = size
    ids = np.zeros(size, dtype=np.uint8)
    ids[2:height - 2, 3:width - 3] = IGNORE = 255
    ids[3:height - 3, 4:width - 4] = class_id
    assert IGNORE in ids
    return ids


def _png(ids: np.ndarray) -> bytes:
    image = Image.fromarray(ids, mode="P")
    image.putpalette(_voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _size(name: str) -> tuple[int, int]:
    return 12 + int(name[-1]), 16 + int(name[-2])     # images of different sizes, as in VOC


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _build_tar(path: Path, with_val: bool = True) -> None:
    with tarfile.open(path, "w") as archive:
        for index, name in enumerate([*SEGMENTED, *UNSEGMENTED]):
            _add(archive, f"{ROOT}/JPEGImages/{name}.jpg", _jpeg(_size(name), index))
            _add(archive, f"{ROOT}/Annotations/{name}.xml", b"<annotation/>")
        for name, class_id in SEGMENTED.items():
            _add(archive, f"{ROOT}/SegmentationClass/{name}.png", _png(_mask(class_id,
                                                                            _size(name))))
        splits = {"train": TRAIN, "trainval": TRAIN + VAL, **({"val": VAL} if with_val else {})}
        for split, names in splits.items():
            _add(archive, f"{ROOT}/ImageSets/Segmentation/{split}.txt",
                 ("\n".join(names) + "\n").encode())
        _add(archive, f"{ROOT}/ImageSets/Main/train.txt", b"2007_000027\n")


@pytest.fixture
def served(tmp_path: Path) -> Path:
    folder = tmp_path / "served"
    folder.mkdir()
    _build_tar(folder / VOC_ARCHIVE)
    return folder


@pytest.fixture
def server(served: Path):
    with LocalHTTPServer(served) as running:
        yield running


def _prepare(server: LocalHTTPServer, served: Path, root: Path) -> Path:
    return prepare_voc(root, urls=[server.url(VOC_ARCHIVE)], md5=md5sum(served / VOC_ARCHIVE),
                       progress=False)


def test_class_lists() -> None:
    assert len(VOC_CLASSES) == len(VOC_PROMPT_NAMES) == 20
    assert VOC_CLASSES[14] == "person" and VOC_CLASSES[19] == "tvmonitor"
    assert VOC_PROMPT_NAMES[10] == "dining table" and VOC_PROMPT_NAMES[15] == "potted plant"


def test_prepare_extracts_only_the_segmentation_part_and_second_call_is_offline(
        server: LocalHTTPServer, served: Path, tmp_path: Path) -> None:
    root = tmp_path / "voc"
    voc_dir = _prepare(server, served, root)
    assert voc_dir == root / ROOT
    assert sorted(p.stem for p in (voc_dir / "JPEGImages").iterdir()) == sorted(SEGMENTED)
    assert sorted(p.stem for p in (voc_dir / "SegmentationClass").iterdir()) == sorted(SEGMENTED)
    assert not (voc_dir / "Annotations").exists() and not (voc_dir / "ImageSets/Main").exists()
    assert sorted(p.name for p in root.iterdir()) == ["VOCdevkit"]    # archive and staging gone
    requests = len(server.requests)
    assert _prepare(server, served, root) == voc_dir
    assert len(server.requests) == requests


def test_prepare_resumes_a_cut_download(server: LocalHTTPServer, served: Path,
                                        tmp_path: Path) -> None:
    server.cut_after_bytes = 3000
    with pytest.raises(DownloadError, match="cut after 3000 bytes"):
        _prepare(server, served, tmp_path / "voc")
    assert not (tmp_path / "voc" / "VOCdevkit").exists()
    voc_dir = _prepare(server, served, tmp_path / "voc")
    assert server.requests[-1].range_header == "bytes=3000-"
    assert read_voc_split(voc_dir) == VAL


def test_prepare_rejects_a_wrong_checksum_and_an_archive_without_val(
        server: LocalHTTPServer, served: Path, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="failed its checksum"):
        prepare_voc(tmp_path / "a", urls=[server.url(VOC_ARCHIVE)], md5="0" * 32, progress=False)
    assert list((tmp_path / "a").iterdir()) == []
    _build_tar(served / "no_val.tar", with_val=False)
    with pytest.raises(FileNotFoundError, match="val.txt"):
        prepare_voc(tmp_path / "b", urls=[server.url("no_val.tar")],
                    md5=md5sum(served / "no_val.tar"), progress=False)
    assert not (tmp_path / "b" / "VOCdevkit").exists()


def test_prepare_tries_each_location_in_order_and_says_what_failed(
        server: LocalHTTPServer, served: Path, tmp_path: Path, capsys) -> None:
    (served / "wrong.tar").write_bytes(b"not the archive")
    urls = [server.url("missing.tar"), server.url("wrong.tar"), server.url(VOC_ARCHIVE)]
    voc_dir = prepare_voc(tmp_path / "voc", urls=urls, md5=md5sum(served / VOC_ARCHIVE),
                          progress=False)
    assert read_voc_split(voc_dir) == VAL
    printed = capsys.readouterr().out
    assert f"Could not download from {urls[0]}" in printed and "404" in printed
    assert f"Could not download from {urls[1]}" in printed and "checksum" in printed
    with pytest.raises(DownloadError, match="None of the 2 locations") as failure:
        prepare_voc(tmp_path / "again", urls=urls[:2], md5=md5sum(served / VOC_ARCHIVE),
                    progress=False)
    assert urls[0] in str(failure.value) and urls[1] in str(failure.value)
    assert str(tmp_path / "again" / VOC_ARCHIVE) in str(failure.value)


def test_the_default_locations_start_with_oxfords_current_host() -> None:
    assert VOC_URLS[0].startswith("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/")
    assert all(url.endswith(VOC_ARCHIVE) for url in VOC_URLS) and len(set(VOC_URLS)) == 3


def test_masks_are_read_as_class_ids_not_colours(server: LocalHTTPServer, served: Path,
                                                 tmp_path: Path) -> None:
    voc_dir = _prepare(server, served, tmp_path / "voc")
    mask = load_voc_mask(voc_dir / "SegmentationClass" / "2007_000033.png")
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 15, 255}
    assert (mask == _mask(15, _size("2007_000033"))).all()


def test_bad_masks_get_errors_naming_the_file(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4), (192, 128, 128)).save(rgb)
    with pytest.raises(ValueError, match=r"rgb\.png: mode RGB"):
        load_voc_mask(rgb)
    wrong = tmp_path / "wrong.png"
    wrong.write_bytes(_png(np.full((4, 4), 30, dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"wrong\.png: class id 30"):
        load_voc_mask(wrong)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_voc_mask(tmp_path / "missing.png")


def test_load_split_in_file_order_with_a_cap(server: LocalHTTPServer, served: Path,
                                             tmp_path: Path) -> None:
    voc_dir = _prepare(server, served, tmp_path / "voc")
    samples = list(load_voc_split(voc_dir, "val", max_images=2))
    assert [s.name for s in samples] == VAL[:2]
    for sample in samples:
        assert sample.image.shape == (*_size(sample.name), 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == _size(sample.name)
        assert SEGMENTED[sample.name] in sample.mask
    assert [s.name for s in load_voc_split(voc_dir, "train")] == TRAIN
    with pytest.raises(FileNotFoundError, match="test.txt"):
        read_voc_split(voc_dir, "test")


def test_load_split_detects_an_image_and_mask_of_different_sizes(
        server: LocalHTTPServer, served: Path, tmp_path: Path) -> None:
    voc_dir = _prepare(server, served, tmp_path / "voc")
    (voc_dir / "SegmentationClass" / f"{VAL[0]}.png").write_bytes(_png(_mask(15, (20, 20))))
    with pytest.raises(ValueError, match="do not belong together"):
        list(load_voc_split(voc_dir))


def test_voc_miou_pools_pixels_over_images_with_and_without_background(
        server: LocalHTTPServer, served: Path, tmp_path: Path) -> None:
    voc_dir = _prepare(server, served, tmp_path / "voc")
    samples = list(load_voc_split(voc_dir, "val"))

    def left_half_is_person(image: np.ndarray) -> np.ndarray:
        # A real, simple rule (not the truth): person (15) on the left half, background right.
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        mask[:, : image.shape[1] // 2] = 15
        return mask

    predictions = [left_half_is_person(s.image) for s in samples]
    scores = voc_miou(left_half_is_person, iter(samples), progress=False)
    # Pooled: the same as scoring all pixels at once.
    pooled = mean_iou(np.concatenate([p.ravel() for p in predictions]),
                      np.concatenate([s.mask.ravel() for s in samples]), 21)
    assert scores["num_images"] == 3
    assert scores["mIoU"] == pytest.approx(pooled["mIoU"])
    assert scores["present_classes"] == [0, 12, 15, 20]
    objects_only = voc_miou(left_half_is_person, samples, include_background=False,
                            progress=False)
    assert objects_only["present_classes"] == [0, 12, 15, 20]     # predicted 0 still counts
    assert objects_only["per_class_iou"][0] == 0.0
    assert objects_only["per_class_iou"][15] > scores["per_class_iou"][15]


# --------------------------------------------------------------------------------------------
# Tar extraction (utils.sources.download), as the VOC path uses it
# --------------------------------------------------------------------------------------------

def test_tar_extraction_refuses_escaping_names_and_links(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as archive:
        _add(archive, "fine.txt", b"ok")
        _add(archive, "../escaped.txt", b"bad")
    with pytest.raises(ValueError, match="outside the extraction folder"):
        extract_tar_atomic(evil, tmp_path / "out", progress=False)
    linked = tmp_path / "link.tar"
    with tarfile.open(linked, "w") as archive:
        info = tarfile.TarInfo("passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(ValueError, match="link or special file"):
        extract_tar_atomic(linked, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped.txt").exists()


def test_truncated_tar_leaves_no_folder(served: Path, tmp_path: Path) -> None:
    data = (served / VOC_ARCHIVE).read_bytes()
    with tarfile.open(served / VOC_ARCHIVE) as archive:
        last = archive.getmembers()[-1]
    truncated = tmp_path / "truncated.tar"
    # Cut inside a member's data, inside a header, and exactly between two members (which
    # tarfile alone reads as a valid, shorter archive).
    for cut in (last.offset_data + 3, last.offset + 100, last.offset):
        truncated.write_bytes(data[:cut])
        with pytest.raises(tarfile.TarError, match="truncated.tar"):
            extract_tar_atomic(truncated, tmp_path / "out", progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["served", "truncated.tar"]
    with tarfile.open(served / VOC_ARCHIVE) as archive:
        names = archive.getnames()
    extract_tar_atomic(served / VOC_ARCHIVE, tmp_path / "out", progress=False,
                       keep=lambda name: name.endswith(".txt"))
    extracted = sorted(str(p.relative_to(tmp_path / "out")) for p in
                       (tmp_path / "out").rglob("*.txt"))
    assert extracted == sorted(n for n in names if n.endswith(".txt"))


# --------------------------------------------------------------------------------------------
# Real photos
# --------------------------------------------------------------------------------------------

def test_download_images_keeps_the_good_ones_and_names_the_failures(served: Path,
                                                                    tmp_path: Path) -> None:
    (served / "a.jpg").write_bytes(_jpeg((10, 14), 1))
    (served / "b.jpg").write_bytes(_jpeg((9, 9), 2))
    (served / "page.jpg").write_text("<html>Too many requests</html>")
    with LocalHTTPServer(served) as server:
        urls = {"cat.jpg": server.url("a.jpg"), "dog.jpg": server.url("b.jpg"),
                "html.jpg": server.url("page.jpg"), "gone.jpg": server.url("nothing.jpg")}
        images, failures = download_images(urls, tmp_path / "photos")
        assert sorted(images) == ["cat.jpg", "dog.jpg"]
        assert images["cat.jpg"].shape == (10, 14, 3)
        assert sorted(failures) == ["gone.jpg", "html.jpg"]
        assert "404" in failures["gone.jpg"] and "cannot read" in failures["html.jpg"]
        assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg", "dog.jpg"]
        requests = len(server.requests)
        download_images({"cat.jpg": urls["cat.jpg"]}, tmp_path / "photos")
        assert len(server.requests) == requests                     # reused from disk


def test_uploaded_photos_are_saved_and_read_and_a_non_image_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    colab = types.ModuleType("google.colab")
    colab.files = types.SimpleNamespace(upload=lambda: {"../mine.jpg": _jpeg((12, 8), 3),
                                                        "notes.txt": b"not a picture"})
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    images, failures = upload_photos(tmp_path / "uploads")
    assert list(images) == ["mine.jpg"] and images["mine.jpg"].shape == (12, 8, 3)
    assert list(failures) == ["notes.txt"] and "not an image" in failures["notes.txt"]
    assert (tmp_path / "uploads" / "mine.jpg").is_file()     # a name, never a path, is kept
