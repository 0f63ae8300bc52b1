"""Get the real Flickr8k onto disk: download (resumable, verified), extract (atomic), lay out.

Two ways in:

- :func:`prepare_flickr8k` downloads the two official archives and leaves ``root/`` holding the
  official layout (``Flicker8k_Dataset/`` with 8091 JPEGs, ``Flickr8k.token.txt`` and the split
  files ``Flickr_8k.{train,dev,test}Images.txt``).
- :func:`use_kaggle_copy` starts from the Kaggle copy a user already has (``Images/`` +
  ``captions.txt``), which lacks the split files: it fetches only the small text archive for them.

Every write is atomic (temp path in the same folder, then ``os.replace``), so an interrupted run
never leaves a file or folder that looks finished but is not; running again resumes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

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
MACOS_METADATA = "__MACOSX/"  # resource-fork copies ("._name") zipped on a Mac: not data
KAGGLE_SOURCE_RECORD = "kaggle_source.json"

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "clip-pacl-course/0.1 (python urllib)"


class DownloadError(RuntimeError):
    """A download failed; the message names the URL or file, what happened and what to do."""


def md5sum(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks so a 1 GB archive never sits in memory."""
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not security
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def download_file(
    url: str,
    dest: Path,
    md5: str | None = None,
    *,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download, and verify its MD5.

    Bytes stream into ``dest`` + ``.part``; only a complete file whose MD5 matches is renamed to
    ``dest``. A cut connection keeps the ``.part`` so the next call resumes with an HTTP Range
    request; a wrong checksum deletes it. If ``dest`` already exists with the right MD5 (or
    exists and no MD5 is given) nothing touches the network.

    Raises:
        DownloadError: HTTP error status, connection failure, cut connection, or MD5 mismatch.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    _fetch_into_part(url, part, md5, timeout=timeout, progress=progress)
    _publish_if_valid(part, dest, md5)
    return dest


def _fetch_into_part(
    url: str, part: Path, md5: str | None, *, timeout: float, progress: bool
) -> None:
    """Make ``part`` hold the whole body of ``url``, appending to what it already holds."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open_url(url, offset, timeout)
    except HTTPError as error:
        if error.code == 416 and offset > 0:
            # The .part already reaches the end (a run stopped between the last byte and the
            # rename). Keep it if it verifies, otherwise start again from byte 0.
            if md5 is None or md5sum(part) == md5.lower():
                return
            part.unlink()
            _fetch_into_part(url, part, md5, timeout=timeout, progress=progress)
            return
        raise DownloadError(
            f"Downloading {url} failed: the server answered HTTP {error.code} {error.reason}. "
            "Check that the URL (base_url) is right; if the server is busy, try again later."
        ) from error
    except (URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"Could not connect to {url}: {reason}. Check your internet connection and the "
            "URL, then run again"
            + (f"; {part.name} is kept and will be resumed." if offset else ".")
        ) from error
    with response:
        if response.status == 206 and _range_start(response) != offset:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url} answered a Range request for bytes {offset}- with "
                f"'Content-Range: {response.headers.get('Content-Range')}'. The partial file "
                f"{part} was deleted; run again to download from the start."
            )
        # A server that ignores Range answers 200 with the whole file: start over, never append.
        start = offset if response.status == 206 else 0
        _stream_body(response, url, part, start, progress)


def _open_url(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """GET ``url``, asking for bytes from ``offset`` on when resuming."""
    headers = {"User-Agent": _USER_AGENT}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """First byte position of a 206 answer's ``Content-Range: bytes START-END/TOTAL``."""
    content_range = response.headers.get("Content-Range", "")
    unit, _, span = content_range.partition(" ")
    first = span.split("-", 1)[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _stream_body(
    response: http.client.HTTPResponse, url: str, part: Path, start: int, progress: bool
) -> None:
    """Write the response body into ``part`` from byte ``start`` (0 truncates it)."""
    length_header = response.headers.get("Content-Length")
    expected = int(length_header) if length_header and length_header.isdigit() else None
    received = 0
    with (
        open(part, "ab" if start else "wb") as file,
        tqdm(
            total=None if expected is None else start + expected,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
        ) as bar,
    ):
        while chunk := _read_chunk(response, url, part, start + received):
            file.write(chunk)  # a disk error here propagates as itself, not as a cut
            received += len(chunk)
            bar.update(len(chunk))
    # http.client returns b"" instead of raising when the peer closes early: count the bytes.
    if expected is not None and received < expected:
        raise _cut_connection_error(url, part, start + received)


def _read_chunk(
    response: http.client.HTTPResponse, url: str, part: Path, bytes_on_disk: int
) -> bytes:
    """The next piece of the body (b"" at its end); a network failure becomes a DownloadError."""
    try:
        return response.read(_CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as error:
        raise _cut_connection_error(url, part, bytes_on_disk) from error


def _cut_connection_error(url: str, part: Path, bytes_on_disk: int) -> DownloadError:
    return DownloadError(
        f"The connection to {url} was cut after {bytes_on_disk} bytes. The partial download "
        f"{part} is kept: run the same call again to resume from there."
    )


def _publish_if_valid(part: Path, dest: Path, md5: str | None) -> None:
    """Rename ``part`` to ``dest`` if its MD5 matches; otherwise delete it and raise."""
    if md5 is not None:
        actual = md5sum(part)
        if actual != md5.lower():
            part.unlink()
            raise DownloadError(
                f"{dest} failed its checksum: expected md5 {md5.lower()}, got {actual}. The "
                "download was deleted. Run again; if it fails again, the server holds a different "
                "file than expected (check base_url and the archive's md5)."
            )
    os.replace(part, dest)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def extract_zip_atomic(
    zip_path: Path,
    dest_dir: Path,
    *,
    skip_prefixes: Iterable[str] = (MACOS_METADATA,),
    progress: bool = True,
) -> Path:
    """Extract ``zip_path`` into a temp sibling of ``dest_dir``, then rename it to ``dest_dir``.

    Members whose name starts with one of ``skip_prefixes`` (macOS resource forks) are left out.
    Members that would land outside the folder (absolute paths, ``..``: "zip-slip") are refused
    before anything is written. On any error the temp folder is removed, so ``dest_dir`` either
    holds the complete archive or does not exist.

    Raises:
        FileExistsError: ``dest_dir`` already exists.
        zipfile.BadZipFile: the archive is not a zip file or a member is corrupt.
        ValueError: a member would escape the destination folder.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if dest_dir.exists():
        raise FileExistsError(
            f"{dest_dir} already exists; delete it or choose another folder to extract "
            f"{zip_path.name} into."
        )
    prefixes = tuple(skip_prefixes)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = dest_dir.with_name(f".{dest_dir.name}.extracting-{uuid.uuid4().hex[:8]}")
    try:
        with _open_zip(zip_path) as archive:
            members = [m for m in archive.infolist() if not m.filename.startswith(prefixes)]
            for member in members:
                _refuse_escaping_member(zip_path, member.filename)
            temp_dir.mkdir()
            for member in tqdm(members, desc=f"extract {zip_path.name}", disable=not progress):
                _extract_member(archive, member, temp_dir, zip_path)
        os.replace(temp_dir, dest_dir)
    except BaseException:
        # BaseException too: a Ctrl-C in a notebook must not leave a half-extracted folder.
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return dest_dir


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as error:
        raise zipfile.BadZipFile(
            f"{zip_path} is not a valid zip archive ({error}). Delete it and download it again."
        ) from error


def _refuse_escaping_member(zip_path: Path, name: str) -> None:
    """Raise if the member name is absolute or climbs out of the extraction folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise ValueError(
            f"{zip_path} holds a member named {name!r} that would be written outside the "
            "extraction folder; refusing to extract it. Do not use this archive."
        )


def _extract_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, folder: Path, zip_path: Path
) -> None:
    try:
        archive.extract(member, folder)
    except zipfile.BadZipFile as error:  # e.g. a CRC mismatch in a truncated or damaged archive
        raise zipfile.BadZipFile(
            f"{zip_path}: member {member.filename!r} is corrupt ({error}). Delete the archive "
            "and download it again."
        ) from error


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
    with _open_zip(archive_path) as archive:
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
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        temp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


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
    temp = link.with_name(f".{link.name}.link-{uuid.uuid4().hex[:8]}")
    try:
        temp.symlink_to(target, target_is_directory=target.is_dir())
    except OSError as error:
        raise OSError(
            f"Could not create the symlink {link} -> {target} ({error}). On Windows enable "
            "Developer Mode (symlinks need it), or copy the Kaggle folder's Images/ and "
            f"captions.txt into {link.parent} yourself."
        ) from error
    os.replace(temp, link)
