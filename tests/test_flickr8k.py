"""The real Flickr8k data path, exercised offline against a local HTTP server on 127.0.0.1.

Fixture archives have the official layout (``Flicker8k_Dataset/`` spelled as in the real zip,
``__MACOSX/`` resource forks, a token file naming the image that has no file, split files), only
tiny; their MD5s are computed here and passed in.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_fixture import LocalHTTPServer
from PIL import Image

from utils.data import ImageCaptionDataset, build_transform, load_split, locate_dataset
from utils.sources.download import DownloadError, download_file, extract_zip_atomic, md5sum
from utils.sources.flickr8k import (
    FLICKR8K_TEXT_ARCHIVE,
    PREPARED_MARKER,
    SPLIT_FILES,
    prepare_flickr8k,
    use_kaggle_copy,
)

DATASET_ARCHIVE = "Flickr8k_Dataset.zip"
IMAGE_NAMES = [f"{1000 + i}_{i:010x}.jpg" for i in range(10)]
SPLITS = {"train": IMAGE_NAMES[:6], "dev": IMAGE_NAMES[6:8], "test": IMAGE_NAMES[8:]}
MISSING_IMAGE = "2258277193_586949ec62.jpg.1"  # named by the real token file, has no JPEG


def _jpeg_bytes(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + index, 30), (20 * index % 256, 90, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _captions(names: list[str]) -> list[tuple[str, str]]:
    return [(name, f"a photo number {i} of image {name}") for name in names for i in range(5)]


def _build_dataset_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("Flicker8k_Dataset/", "")
        for index, name in enumerate(IMAGE_NAMES):
            archive.writestr(f"Flicker8k_Dataset/{name}", _jpeg_bytes(index))
            archive.writestr(f"__MACOSX/Flicker8k_Dataset/._{name}", b"\x00\x05\x16\x07mac")


def _build_text_zip(path: Path) -> None:
    token_lines = [
        f"{name}#{k % 5}\t{text}" for k, (name, text) in enumerate(_captions(IMAGE_NAMES))
    ]
    token_lines.append(f"{MISSING_IMAGE}#0\tA caption for an image that has no file .")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Flickr8k.token.txt", "\n".join(token_lines) + "\n")
        archive.writestr("Flickr8k.lemma.token.txt", "\n".join(token_lines) + "\n")
        for split, names in SPLITS.items():
            archive.writestr(f"Flickr_8k.{split}Images.txt", "\n".join(names) + "\n")
        archive.writestr("readme.txt", "Flickr8k text data (test fixture)\n")
        archive.writestr("__MACOSX/._Flickr8k.token.txt", b"\x00\x05\x16\x07mac")


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A folder holding both fixture archives in the official layout."""
    folder = tmp_path / "served"
    folder.mkdir()
    _build_dataset_zip(folder / DATASET_ARCHIVE)
    _build_text_zip(folder / FLICKR8K_TEXT_ARCHIVE)
    return folder


@pytest.fixture
def archives(served: Path) -> dict[str, str]:
    return {name: md5sum(served / name) for name in (FLICKR8K_TEXT_ARCHIVE, DATASET_ARCHIVE)}


@pytest.fixture
def server(served: Path) -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer(served) as running:
        yield running


@pytest.fixture
def big_file(served: Path) -> Path:
    """A 300 KB incompressible file, so a cut lands well inside it."""
    path = served / "big.bin"
    path.write_bytes(os.urandom(300_000))
    return path


# --------------------------------------------------------------------------------------------
# download_file
# --------------------------------------------------------------------------------------------


def test_download_verifies_md5_and_second_call_uses_no_network(
    server: LocalHTTPServer, big_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "big.bin"
    result = download_file(server.url("big.bin"), dest, md5sum(big_file), progress=False)
    assert result == dest
    assert dest.read_bytes() == big_file.read_bytes()
    assert not dest.with_suffix(".bin.part").exists()
    download_file(server.url("big.bin"), dest, md5sum(big_file), progress=False)
    assert len(server.requests) == 1


def test_download_resumes_after_cut_connection(
    server: LocalHTTPServer, big_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    server.cut_after_bytes = 100_000
    with pytest.raises(DownloadError, match="cut after 100000 bytes") as error:
        download_file(server.url("big.bin"), dest, md5sum(big_file), progress=False)
    assert server.url("big.bin") in str(error.value)
    assert part.stat().st_size == 100_000 and not dest.exists()

    download_file(server.url("big.bin"), dest, md5sum(big_file), progress=False)
    assert [r.range_header for r in server.requests] == [None, "bytes=100000-"]
    assert server.requests[-1].status == 206
    assert dest.read_bytes() == big_file.read_bytes()
    assert not part.exists()


def test_download_starts_over_when_server_ignores_range(
    server: LocalHTTPServer, big_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "big.bin"
    server.cut_after_bytes = 120_000
    with pytest.raises(DownloadError):
        download_file(server.url("big.bin"), dest, md5sum(big_file), progress=False)
    server.ignore_range = True
    download_file(server.url("big.bin"), dest, md5sum(big_file), progress=False)
    assert server.requests[-1].range_header == "bytes=120000-"
    assert server.requests[-1].status == 200
    assert dest.read_bytes() == big_file.read_bytes()


def test_download_finishes_a_complete_part_file_answered_with_416(
    server: LocalHTTPServer, big_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(big_file.read_bytes())
    download_file(server.url("big.bin"), dest, md5sum(big_file), progress=False)
    assert [r.status for r in server.requests] == [416]
    assert dest.read_bytes() == big_file.read_bytes()


def test_wrong_checksum_raises_and_leaves_nothing(
    server: LocalHTTPServer, big_file: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "big.bin"
    wrong = "0" * 32
    with pytest.raises(DownloadError) as error:
        download_file(server.url("big.bin"), dest, wrong, progress=False)
    message = str(error.value)
    assert str(dest) in message and wrong in message and md5sum(big_file) in message
    assert list(tmp_path.glob("big.bin*")) == []


def test_server_error_names_url_and_status(
    server: LocalHTTPServer, big_file: Path, tmp_path: Path
) -> None:
    server.error_status = 500
    with pytest.raises(DownloadError, match="HTTP 500") as error:
        download_file(server.url("big.bin"), tmp_path / "big.bin", progress=False)
    assert server.url("big.bin") in str(error.value)
    assert list(tmp_path.glob("big.bin*")) == []


def test_missing_file_is_a_404_download_error(server: LocalHTTPServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("nope.zip"), tmp_path / "nope.zip", progress=False)


def test_refused_connection_names_the_url(tmp_path: Path) -> None:
    with LocalHTTPServer(tmp_path) as stopped_soon:
        url = stopped_soon.url("x.zip")
    with pytest.raises(DownloadError, match="Could not connect") as error:
        download_file(url, tmp_path / "x.zip", timeout=5, progress=False)
    assert url in str(error.value)


# --------------------------------------------------------------------------------------------
# extract_zip_atomic
# --------------------------------------------------------------------------------------------


def test_extract_skips_macosx(served: Path, tmp_path: Path) -> None:
    dest = extract_zip_atomic(served / DATASET_ARCHIVE, tmp_path / "x", progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["Flicker8k_Dataset"]
    assert sorted(p.name for p in (dest / "Flicker8k_Dataset").iterdir()) == sorted(IMAGE_NAMES)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("evil_name", ["../escaped.txt", "/abs/escaped.txt", "a/../../b.txt"])
def test_extract_refuses_zip_slip(tmp_path: Path, evil_name: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "ok")
        # ZipInfo keeps the name as given (writestr with a str would too, but be explicit).
        zf.writestr(zipfile.ZipInfo(evil_name), "pwned")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ValueError, match="outside the extraction folder") as error:
        extract_zip_atomic(archive, work / "dest", progress=False)
    assert str(archive) in str(error.value)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_interrupted_extraction_leaves_no_folder(tmp_path: Path) -> None:
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("first.txt", "extracted before the damage")
        zf.writestr("second.txt", "MARKER-" * 50)
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"MARKER-MARKER", b"MARKER-MARKEX", 1))  # CRC now wrong
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(zipfile.BadZipFile, match="second.txt") as error:
        extract_zip_atomic(archive, work / "dest", progress=False)
    assert str(archive) in str(error.value)
    assert list(work.iterdir()) == []


def test_extract_names_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    not_zip = tmp_path / "Flickr8k_Dataset.zip"
    not_zip.write_text("<html>rate limited</html>")
    with pytest.raises(zipfile.BadZipFile, match="not a valid zip") as error:
        extract_zip_atomic(not_zip, tmp_path / "dest", progress=False)
    assert str(not_zip) in str(error.value)
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------------------------
# prepare_flickr8k / use_kaggle_copy
# --------------------------------------------------------------------------------------------


def test_prepare_builds_official_layout_and_second_run_is_offline(
    server: LocalHTTPServer, archives: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "flickr8k"
    assert (
        prepare_flickr8k(root, base_url=server.base_url, archives=archives, progress=False) == root
    )
    assert sorted(p.name for p in (root / "Flicker8k_Dataset").iterdir()) == sorted(IMAGE_NAMES)
    for name in ("Flickr8k.token.txt", *SPLIT_FILES):
        assert (root / name).is_file()
    assert MISSING_IMAGE in (root / "Flickr8k.token.txt").read_text()
    assert not (root / "__MACOSX").exists()
    assert not any(root.glob("*.zip*"))  # archives removed by default
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [PREPARED_MARKER]
    assert len(server.requests) == 2

    prepare_flickr8k(root, base_url=server.base_url, archives=archives, progress=False)
    assert len(server.requests) == 2


def test_prepare_resumes_a_cut_dataset_download(
    server: LocalHTTPServer, archives: dict[str, str], served: Path, tmp_path: Path
) -> None:
    root = tmp_path / "flickr8k"
    dataset_first = {DATASET_ARCHIVE: archives[DATASET_ARCHIVE], **archives}
    server.cut_after_bytes = 500
    with pytest.raises(DownloadError, match="resume"):
        prepare_flickr8k(root, base_url=server.base_url, archives=dataset_first, progress=False)
    assert not (root / PREPARED_MARKER).exists()
    prepare_flickr8k(
        root, base_url=server.base_url, archives=dataset_first, keep_archives=True, progress=False
    )
    assert [(r.path, r.range_header) for r in server.requests] == [
        (f"/{DATASET_ARCHIVE}", None),
        (f"/{DATASET_ARCHIVE}", "bytes=500-"),
        (f"/{FLICKR8K_TEXT_ARCHIVE}", None),
    ]
    assert (root / DATASET_ARCHIVE).read_bytes() == (served / DATASET_ARCHIVE).read_bytes()
    assert sorted(p.name for p in (root / "Flicker8k_Dataset").iterdir()) == sorted(IMAGE_NAMES)


def test_prepare_recovers_from_a_run_killed_after_extraction(
    server: LocalHTTPServer, archives: dict[str, str], served: Path, tmp_path: Path
) -> None:
    root = tmp_path / "flickr8k"
    root.mkdir()
    # What a run killed between extracting the dataset archive and moving it into place leaves:
    shutil.copy(served / DATASET_ARCHIVE, root / DATASET_ARCHIVE)
    extract_zip_atomic(
        served / DATASET_ARCHIVE, root / ".Flickr8k_Dataset.extracted", progress=False
    )
    (root / "Flicker8k_Dataset").mkdir()  # a stale, empty folder in the way
    prepare_flickr8k(root, base_url=server.base_url, archives=archives, progress=False)
    assert [r.path for r in server.requests] == [f"/{FLICKR8K_TEXT_ARCHIVE}"]
    assert sorted(p.name for p in (root / "Flicker8k_Dataset").iterdir()) == sorted(IMAGE_NAMES)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [PREPARED_MARKER]


def test_prepared_root_is_read_by_utils_data(
    server: LocalHTTPServer, archives: dict[str, str], tmp_path: Path
) -> None:
    root = prepare_flickr8k(
        tmp_path / "flickr8k", base_url=server.base_url, archives=archives, progress=False
    )
    files = locate_dataset(root)
    assert files.images_dir == root / "Flicker8k_Dataset"
    assert files.captions_file == root / "Flickr8k.token.txt"
    test_items = load_split(files, "test")
    assert [name for name, _ in test_items] == SPLITS["test"]
    assert all(len(captions) == 5 for _, captions in test_items)
    dataset = ImageCaptionDataset(files.images_dir, test_items, build_transform(32, train=False))
    assert tuple(dataset[0]["image"].shape) == (3, 32, 32)


def _make_kaggle_copy(folder: Path) -> Path:
    (folder / "Images").mkdir(parents=True)
    for index, name in enumerate(IMAGE_NAMES):
        (folder / "Images" / name).write_bytes(_jpeg_bytes(index))
    rows = [f"{name},{text}" for name, text in _captions(IMAGE_NAMES)]
    (folder / "captions.txt").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return folder


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_kaggle_copy_gets_split_files_only_from_the_text_archive(
    server: LocalHTTPServer, archives: dict[str, str], tmp_path: Path
) -> None:
    kaggle = _make_kaggle_copy(tmp_path / "kaggle" / "flickr8k")
    before = _snapshot(kaggle)
    root = use_kaggle_copy(
        kaggle, tmp_path / "course", base_url=server.base_url, archives=archives, progress=False
    )
    assert root == tmp_path / "course"
    assert [r.path for r in server.requests] == [f"/{FLICKR8K_TEXT_ARCHIVE}"]
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["Images", "captions.txt", "kaggle_source.json", *SPLIT_FILES]
    )
    assert (root / "Images").resolve() == (kaggle / "Images").resolve()
    assert (root / "captions.txt").read_text() == (kaggle / "captions.txt").read_text()
    assert (root / "Flickr_8k.testImages.txt").read_text().split() == SPLITS["test"]
    assert _snapshot(kaggle) == before  # the user's folder is untouched

    use_kaggle_copy(kaggle, root, base_url=server.base_url, archives=archives, progress=False)
    assert len(server.requests) == 1

    files = locate_dataset(root)
    assert (files.images_dir, files.captions_file) == (root / "Images", root / "captions.txt")
    test_items = load_split(files, "test")
    assert [name for name, _ in test_items] == SPLITS["test"]
    dataset = ImageCaptionDataset(files.images_dir, test_items, build_transform(32, train=False))
    assert tuple(dataset[1]["image"].shape) == (3, 32, 32)


def test_kaggle_copy_default_root_is_a_sibling(
    server: LocalHTTPServer, archives: dict[str, str], tmp_path: Path
) -> None:
    kaggle = _make_kaggle_copy(tmp_path / "flickr8k")
    root = use_kaggle_copy(kaggle, base_url=server.base_url, archives=archives, progress=False)
    assert root == tmp_path / "flickr8k_course"
    assert (root / "Flickr_8k.trainImages.txt").read_text().split() == SPLITS["train"]


def test_kaggle_copy_rejects_a_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "captions.txt").write_text("image,caption\n")
    with pytest.raises(FileNotFoundError, match="Images/") as error:
        use_kaggle_copy(tmp_path, tmp_path / "course", base_url="http://127.0.0.1:9")
    assert str(tmp_path) in str(error.value)
