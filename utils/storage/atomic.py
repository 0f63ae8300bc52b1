"""Atomic writes: a reader never sees a half-written file or folder, and nothing is lost.

Every writer in the package goes through these three helpers:

- :func:`atomic_file` yields a temporary path next to the target and renames it over the target
  once the block succeeds; on any failure (Ctrl-C included) the temporary file is deleted and the
  old target is untouched. :func:`write_text_atomic` is its one-line use for text.
- :func:`atomic_folder` does the same for a folder. Replacing a folder takes two renames (the old
  one aside, the new one in); Ctrl-C is held back between them, and a process killed there
  (``kill -9``, power loss) leaves the old folder under a fixed hidden name that the next
  :func:`atomic_folder` or :func:`restore_interrupted_swap` on that path puts back.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``with atomic_file(p) as tmp: write tmp`` -> ``tmp`` renamed to ``p`` on success.

    ``tmp`` sits in ``p``'s folder (a rename across file systems is not atomic) and keeps ``p``'s
    suffix, so writers that choose a format by the suffix (``savefig``, ``np.save``) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder under a temporary name next to ``folder``; swap it into place on success.

    ``with atomic_folder(out) as tmp: ...write into tmp...`` — if the block raises (Ctrl-C
    included), the temporary folder is removed and an existing ``folder`` is left untouched.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_swap(folder)
    # mkdir rather than mkdtemp: the folder keeps the user's usual permissions once it is renamed.
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _swap_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore_interrupted_swap(folder: str | os.PathLike[str]) -> None:
    """Finish what a killed :func:`atomic_folder` left: the old ``folder`` back, or its copy gone.

    Killed between its two renames, a swap leaves ``folder`` missing and the old content in the
    hidden sibling ``.<name>.old``: it is renamed back. Killed after both, only the deletion of
    that sibling is left to do.
    """
    folder = Path(folder)
    aside = _aside_path(folder)
    if not aside.exists():
        return
    if folder.exists():
        shutil.rmtree(aside)
    else:
        os.replace(aside, folder)


def _aside_path(folder: Path) -> Path:
    """Where the old ``folder`` waits during a swap: a fixed name, so a later run can find it."""
    return folder.with_name(f".{folder.name}.old")


def _swap_into_place(new: Path, folder: Path) -> None:
    """Rename ``new`` to ``folder``. A rename cannot replace a non-empty folder, so an existing one
    is moved aside first, and put back if the new one cannot take its place."""
    aside = _aside_path(folder)
    try:
        with _interrupts_held():
            if folder.exists():
                os.replace(folder, aside)
            try:
                os.replace(new, folder)
            except BaseException:
                if aside.exists():
                    os.replace(aside, folder)
                raise
    finally:
        # Also when a held Ctrl-C is delivered: the swap is done, the old copy may go.
        if folder.exists():
            shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block is done, then deliver it.

    Signal handlers can only be set from the main thread; elsewhere Ctrl-C never arrives anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        # None: a handler installed outside Python; Python's own is the closest to put back.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
        if received:
            signal.raise_signal(signal.SIGINT)
