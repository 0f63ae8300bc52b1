"""Download and unpack archives safely: resumable verified downloads, atomic extraction.

Shared by every dataset the course fetches (:mod:`utils.sources.flickr8k`, :mod:`utils.sources.voc`):

- :func:`download_file` streams a URL into ``<dest>.part``, resumes a cut download with an HTTP
  Range request, checks the MD5 and only then renames the file to its final name;
- :func:`download_from_mirrors` tries several URLs of the same file in order (the MD5 proves any
  mirror's copy), saying what failed at each;
- :func:`extract_zip_atomic` / :func:`extract_tar_atomic` unpack into a hidden temporary folder
  that is renamed into place at the end, so an interrupted run leaves no half-extracted folder;
  members that would land outside the folder ("zip-slip") are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from utils.storage.atomic import atomic_folder

MACOS_METADATA = "__MACOSX/"  # resource-fork copies ("._name") zipped on a Mac: not data

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


def download_from_mirrors(urls: Iterable[str], dest: Path, md5: str, *, timeout: float = 60,
                          progress: bool = True) -> Path:
    """:func:`download_file` from the first of ``urls`` that delivers the file with this ``md5``.

    Each failure is printed with the next URL to try; a download cut on one mirror resumes on
    the next (the same bytes, checked by the same MD5). Raises :class:`DownloadError` listing
    every URL and what went wrong there when none delivers.
    """
    urls = list(urls)
    failures = []
    for position, url in enumerate(urls):
        try:
            return download_file(url, dest, md5, timeout=timeout, progress=progress)
        except DownloadError as error:
            failures.append(f"  {url}: {error}")
            if position + 1 < len(urls):
                print(f"Could not download from {url} ({error}); trying {urls[position + 1]}")
    raise DownloadError(
        f"None of the {len(urls)} locations delivered {Path(dest).name}:\n" + "\n".join(failures)
        + f"\nCheck the connection, or download the file yourself (MD5 {md5}) and put it at "
        f"{dest}; the next run uses it without downloading.")


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
    _refuse_existing(dest_dir, zip_path)
    prefixes = tuple(skip_prefixes)
    with open_zip(zip_path) as archive:
        members = [m for m in archive.infolist() if not m.filename.startswith(prefixes)]
        for member in members:
            _refuse_escaping_member(zip_path, member.filename)
        # atomic_folder removes the temp folder on any exception, Ctrl-C in a notebook included.
        with atomic_folder(dest_dir) as temp_dir:
            for member in tqdm(members, desc=f"extract {zip_path.name}", disable=not progress):
                _extract_zip_member(archive, member, temp_dir, zip_path)
    return dest_dir


def extract_tar_atomic(
    tar_path: Path,
    dest_dir: Path,
    *,
    keep: Callable[[str], bool] | None = None,
    progress: bool = True,
) -> Path:
    """Extract the folders and regular files of a tar archive (plain or compressed), atomically.

    ``keep(name)`` chooses members by their path inside the archive (default: all), so a few
    thousand files can be taken out of a 2 GB archive without writing the rest. As for zips, names
    escaping the folder are refused before anything is written, and ``dest_dir`` either holds
    every chosen member or does not exist. Links and device files are refused, not followed.

    Raises:
        FileExistsError: ``dest_dir`` already exists.
        tarfile.TarError: the archive is not a tar file or is truncated.
        ValueError: a member would escape the destination folder or is a link.
    """
    tar_path, dest_dir = Path(tar_path), Path(dest_dir)
    _refuse_existing(dest_dir, tar_path)
    with _open_tar(tar_path) as archive:
        members = [m for m in _tar_members(archive, tar_path) if keep is None or keep(m.name)]
        for member in members:
            _refuse_escaping_member(tar_path, member.name)
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{tar_path} holds {member.name!r}, a link or special file; "
                                 "refusing to extract it. Do not use this archive.")
        with atomic_folder(dest_dir) as temp_dir:
            for member in tqdm(members, desc=f"extract {tar_path.name}", disable=not progress):
                _extract_tar_member(archive, member, temp_dir, tar_path)
    return dest_dir


def tar_member_names(tar_path: Path) -> list[str]:
    """Paths of every member of a tar archive (reads only the headers)."""
    with _open_tar(Path(tar_path)) as archive:
        return [member.name for member in _tar_members(archive, Path(tar_path))]


def open_zip(zip_path: Path) -> zipfile.ZipFile:
    """``zipfile.ZipFile(zip_path)`` with an error that says what to do about a bad file."""
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as error:
        raise zipfile.BadZipFile(
            f"{zip_path} is not a valid zip archive ({error}). Delete it and download it again."
        ) from error


def _open_tar(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path)
    except tarfile.TarError as error:
        raise tarfile.TarError(
            f"{tar_path} is not a valid tar archive ({error}). Delete it and download it again."
        ) from error


def _tar_members(archive: tarfile.TarFile, tar_path: Path) -> list[tarfile.TarInfo]:
    """Every member's header, after checking the archive is complete.

    ``tarfile`` reads an archive cut between two members as a shorter, valid one; only the
    end-of-archive block (zeros) that follows the last member shows that nothing is missing.
    """
    try:
        members = archive.getmembers()
        archive.fileobj.seek(archive.offset)
        complete = archive.fileobj.read(tarfile.BLOCKSIZE) == tarfile.NUL * tarfile.BLOCKSIZE
    except (tarfile.TarError, EOFError) as error:   # cut inside a header or a compressed stream
        raise tarfile.TarError(
            f"{tar_path} is truncated or damaged ({error}). Delete it and download it again."
        ) from error
    if not complete:
        raise tarfile.TarError(f"{tar_path} is truncated: it ends without the end-of-archive "
                               "block. Delete it and download it again.")
    return members


def _refuse_existing(dest_dir: Path, archive_path: Path) -> None:
    if dest_dir.exists():
        raise FileExistsError(
            f"{dest_dir} already exists; delete it or choose another folder to extract "
            f"{archive_path.name} into."
        )


def _refuse_escaping_member(archive_path: Path, name: str) -> None:
    """Raise if the member name is absolute or climbs out of the extraction folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise ValueError(
            f"{archive_path} holds a member named {name!r} that would be written outside the "
            "extraction folder; refusing to extract it. Do not use this archive."
        )


def _extract_zip_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, folder: Path, zip_path: Path
) -> None:
    try:
        archive.extract(member, folder)
    except zipfile.BadZipFile as error:  # e.g. a CRC mismatch in a truncated or damaged archive
        raise zipfile.BadZipFile(
            f"{zip_path}: member {member.filename!r} is corrupt ({error}). Delete the archive "
            "and download it again."
        ) from error


def _extract_tar_member(
    archive: tarfile.TarFile, member: tarfile.TarInfo, folder: Path, tar_path: Path
) -> None:
    """Write one folder or regular file ourselves: no links, owners or modes from the archive."""
    target = folder / member.name
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with archive.extractfile(member) as source, open(target, "wb") as file:
            shutil.copyfileobj(source, file, _CHUNK_BYTES)
    except (tarfile.TarError, EOFError) as error:  # a truncated archive ends mid-file
        raise tarfile.TarError(
            f"{tar_path}: member {member.name!r} could not be read ({error}). Delete the archive "
            "and download it again."
        ) from error
