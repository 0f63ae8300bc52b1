"""Get the real Flickr8k onto disk: download (resumable, verified), extract (atomic), lay out.

Two ways in:

- :func:`prepare_flickr8k` downloads the two official archives and leaves ``root/`` holding the
  official layout (``Flicker8k_Dataset/`` with 8091 JPEGs, ``Flickr8k.token.txt`` and the split
  files ``Flickr_8k.{train,dev,test}Images.txt``).
- :func:`use_kaggle_copy` starts from the Kaggle copy a user already has (``Images/`` +
  ``captions.txt``), which lacks the split files: it fetches only the small text archive for them.

Every write is atomic (temp path in the same folder, then ``os.replace``; the download and
extraction helpers live in :mod:`utils.sources.download`), so an interrupted run never leaves a file or
folder that looks finished but is not; running again resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from utils.sources.download import MACOS_METADATA, download_file, extract_zip_atomic, open_zip
from utils.storage.atomic import atomic_file, write_text_atomic

FLICKR8K_BASE_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k"
FLICKR8K_TEXT_ARCHIVE = "Flickr8k_text.zip"
FLICKR8K_ARCHIVES: dict[str, str] = {
    # The small text archive first: if the big one is interrupted, only a cheap step is redone.
    FLICKR8K_TEXT_ARCHIVE: "bf6c1abcb8e4a833b7f922104de18627",
    "Flickr8k_Dataset.zip": "f18a1e2920de5bd84dae7cf08ec78978",
}
SPLIT_FILES = (
    "Flickr_8k.trainImages.txt",
    "Flickr_8k.devImages.txt",
    "Flickr_8k.testImages.txt",
)
OFFICIAL_LAYOUT = ("Flicker8k_Dataset", "Flickr8k.token.txt", *SPLIT_FILES)
PREPARED_MARKER = ".flickr8k_prepared.json"
KAGGLE_SOURCE_RECORD = "kaggle_source.json"


# --------------------------------------------------------------------------------------------
# Official layout
# --------------------------------------------------------------------------------------------


def prepare_flickr8k(
    root: str | os.PathLike[str],
    *,
    base_url: str = FLICKR8K_BASE_URL,
    archives: dict[str, str] = FLICKR8K_ARCHIVES,
    keep_archives: bool = False,
    progress: bool = True,
) -> Path:
    """Download and extract the official Flickr8k archives so ``root`` holds the official layout.

    Afterwards ``root`` holds ``Flicker8k_Dataset/`` (the JPEGs), ``Flickr8k.token.txt``, the
    three split files and the archives' other text files. Each archive goes through
    :func:`download_file` (resumable, MD5-checked) into ``root``, is extracted into a hidden
    folder with :func:`extract_zip_atomic`, and its top-level entries are renamed into ``root``.
    A marker file (``.flickr8k_prepared.json``) records each finished archive and the entries it
    brought, and is written last; a later call that finds every archive done returns at once
    without touching the network. ``archives`` maps archive file name -> md5.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    done = _read_marker(root)
    for name, md5 in archives.items():
        if _archive_done(root, done, name, md5):
            continue
        archive_path = download_file(
            f"{base_url.rstrip('/')}/{name}", root / name, md5, progress=progress
        )
        entries = _unpack_into(archive_path, root, progress=progress)
        done[name] = {"md5": md5.lower(), "entries": entries}
        _write_json_atomic(root / PREPARED_MARKER, done)
        if not keep_archives:
            archive_path.unlink()
    _check_official_layout(root, base_url)
    return root


def _read_marker(root: Path) -> dict[str, dict]:
    """Archive name -> {"md5", "entries"} for every archive already unpacked into ``root``."""
    marker = root / PREPARED_MARKER
    if not marker.is_file():
        return {}
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        done = None
    # Written atomically, so it is only unreadable if someone edited it: then redo the work.
    return done if isinstance(done, dict) else {}


def _archive_done(root: Path, done: dict[str, dict], name: str, md5: str) -> bool:
    """True when the marker says ``name`` (same md5) was unpacked and its entries still exist."""
    record = done.get(name)
    return (
        record is not None
        and record.get("md5") == md5.lower()
        and all((root / entry).exists() for entry in record.get("entries", []))
    )


def _unpack_into(archive_path: Path, root: Path, *, progress: bool) -> list[str]:
    """Extract an archive and rename its top-level entries into ``root``; return their names."""
    staging = root / f".{archive_path.stem}.extracted"
    # A staging folder only exists once complete (atomic extraction): reuse it after a crash.
    if not staging.is_dir():
        extract_zip_atomic(archive_path, staging, progress=progress)
    entries = _top_level_entries(archive_path)
    for name in entries:
        if (staging / name).exists():  # not yet moved by an interrupted earlier run
            target = root / name
            _remove(target)  # a leftover of an interrupted run; renames cannot replace folders
            os.replace(staging / name, target)
    staging.rmdir()
    return entries


def _top_level_entries(archive_path: Path) -> list[str]:
    """Names of the files and folders at the top of the archive, macOS metadata left out."""
    with open_zip(archive_path) as archive:
        names = archive.namelist()
    return sorted({name.split("/", 1)[0] for name in names if not name.startswith(MACOS_METADATA)})


def _remove(path: Path) -> None:
    """Delete a file, symlink or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _check_official_layout(root: Path, base_url: str) -> None:
    missing = [name for name in OFFICIAL_LAYOUT if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{root} lacks {', '.join(missing)} after extracting the archives from {base_url}. "
            "The archives do not have the official Flickr8k layout: check base_url, delete "
            f"{root / PREPARED_MARKER} and run again."
        )


def _write_json_atomic(path: Path, payload: object) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# Kaggle copy
# --------------------------------------------------------------------------------------------


def use_kaggle_copy(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    base_url: str = FLICKR8K_BASE_URL,
    archives: dict[str, str] = FLICKR8K_ARCHIVES,
    progress: bool = True,
) -> Path:
    """Make a Kaggle-layout copy (``Images/`` + ``captions.txt``) usable with the official split.

    The Kaggle copy has no split files, so this downloads only the small, MD5-checked text
    archive and writes under ``root``:

    - ``Flickr_8k.{train,dev,test}Images.txt`` taken from that archive;
    - symlinks ``Images`` and ``captions.txt`` pointing into the user's folder (no 1 GB copy);
    - ``kaggle_source.json`` recording which folder the links point to, written last.

    The user's folder is never modified. ``root`` defaults to a sibling folder
    ``<path>_course``. A second call with the same folder touches no network.

    Returns:
        ``root`` as a Path; ``utils.data.locate_dataset(root)`` finds the Kaggle layout there.
    """
    source = _check_kaggle_folder(Path(path).expanduser().resolve())
    root = (
        Path(root).expanduser() if root is not None else source.with_name(source.name + "_course")
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise PermissionError(
            f"Cannot create {root} ({error}). The Kaggle folder's parent is read-only (as on "
            "Kaggle's /kaggle/input): pass root= a writable folder."
        ) from error
    if _kaggle_root_ready(root, source):
        return root
    if FLICKR8K_TEXT_ARCHIVE not in archives:
        raise ValueError(
            f"archives has no {FLICKR8K_TEXT_ARCHIVE!r} entry; the split files come from it. "
            "Pass archives that include it (name -> md5)."
        )
    _fetch_split_files(root, base_url, archives[FLICKR8K_TEXT_ARCHIVE], progress=progress)
    _link_atomic(root / "Images", source / "Images")
    _link_atomic(root / "captions.txt", source / "captions.txt")
    _write_json_atomic(root / KAGGLE_SOURCE_RECORD, {"kaggle_folder": str(source)})
    return root


def _check_kaggle_folder(source: Path) -> Path:
    """Raise unless ``source`` holds ``Images/`` and a ``captions.txt`` with the Kaggle header."""
    captions = source / "captions.txt"
    if not (source / "Images").is_dir() or not captions.is_file():
        raise FileNotFoundError(
            f"{source} does not look like the Kaggle Flickr8k copy: it needs an Images/ folder "
            "and captions.txt side by side. Pass the folder that holds both."
        )
    with open(captions, encoding="utf-8") as file:
        header = file.readline().strip()
    if header != "image,caption":
        raise ValueError(
            f"{captions}, line 1: expected the header 'image,caption', found {header!r}. "
            "Pass the unmodified Kaggle captions.txt."
        )
    return source


def _kaggle_root_ready(root: Path, source: Path) -> bool:
    """True when ``root`` was finished by an earlier call for the same Kaggle folder."""
    record = root / KAGGLE_SOURCE_RECORD
    if not record.is_file():
        return False
    try:
        content = json.loads(record.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    recorded = content.get("kaggle_folder") if isinstance(content, dict) else None
    links_ok = all(
        (root / name).resolve() == (source / name).resolve() for name in ("Images", "captions.txt")
    )
    return recorded == str(source) and links_ok and all((root / n).is_file() for n in SPLIT_FILES)


def _fetch_split_files(root: Path, base_url: str, md5: str, *, progress: bool) -> None:
    """Download the text archive into ``root``, move its split files there, drop the rest."""
    archive_path = download_file(
        f"{base_url.rstrip('/')}/{FLICKR8K_TEXT_ARCHIVE}",
        root / FLICKR8K_TEXT_ARCHIVE,
        md5,
        progress=progress,
    )
    staging = root / f".{archive_path.stem}.extracted"
    shutil.rmtree(staging, ignore_errors=True)
    extract_zip_atomic(archive_path, staging, progress=progress)
    try:
        missing = [name for name in SPLIT_FILES if not (staging / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{archive_path} lacks {', '.join(missing)}; it is not the official Flickr8k "
                "text archive. Check base_url."
            )
        # Only the split files: a Flickr8k.token.txt next to captions.txt would make two
        # caption sources in one root.
        for name in SPLIT_FILES:
            os.replace(staging / name, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    archive_path.unlink()


def _link_atomic(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, replacing an older symlink in one rename."""
    if link.exists() and not link.is_symlink():
        raise FileExistsError(
            f"{link} exists and is not a symlink; use_kaggle_copy will not replace it. Pass "
            "another root folder."
        )
    with atomic_file(link) as temp:
        try:
            temp.symlink_to(target, target_is_directory=target.is_dir())
        except OSError as error:
            raise OSError(
                f"Could not create the symlink {link} -> {target} ({error}). On Windows enable "
                "Developer Mode (symlinks need it), or copy the Kaggle folder's Images/ and "
                f"captions.txt into {link.parent} yourself."
            ) from error
