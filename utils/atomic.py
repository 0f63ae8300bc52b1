"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name next to ``folder``; rename it into place on success.

    ``with atomic_folder(out) as tmp: ...write into tmp...`` — if the block raises (Ctrl-C
    included), the temporary folder is removed and an existing ``folder`` is left untouched.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; the result should look like any folder
    try:
        yield tmp
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(new: Path, folder: Path) -> None:
    """Rename ``new`` to ``folder``. A rename cannot replace a non-empty folder, so an existing one
    is moved aside first and put back if the new one cannot take its place."""
    if not folder.exists():
        os.replace(new, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, aside / folder.name)
    try:
        os.replace(new, folder)
    except OSError:
        os.replace(aside / folder.name, folder)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
