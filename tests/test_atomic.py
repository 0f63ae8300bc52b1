"""Atomic writes: all or nothing, Ctrl-C and a killed process included."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from utils.storage import atomic
from utils.storage.atomic import (
    atomic_file,
    atomic_folder,
    restore_interrupted_swap,
    write_text_atomic,
)


def test_success_replaces_the_folder_with_normal_permissions(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()      # nothing visible before the end
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert target.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failure_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_write_text_atomic(tmp_path):
    path = tmp_path / "LATEST"
    write_text_atomic(path, "a")
    write_text_atomic(path, "b")
    assert path.read_text() == "b" and [p.name for p in tmp_path.iterdir()] == ["LATEST"]


def test_write_text_atomic_that_fails_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old")

    def half_written_then_disk_full(self, text, **kwargs):
        with open(self, "w") as file:
            file.write(text[:2])
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", half_written_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(path, "new content")
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_file_keeps_the_suffix_for_writers_that_choose_a_format_by_it(tmp_path):
    with atomic_file(tmp_path / "array.npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))                   # np.save would append .npy to another name
    assert np.load(tmp_path / "array.npy").tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["array.npy"]


def _interrupt_after_first_rename(monkeypatch):
    """Make a real Ctrl-C (SIGINT) arrive right after the swap's first rename."""
    renames = []

    def replace_then_interrupt(source, target):
        os_replace(source, target)
        renames.append(target)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    os_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    return renames


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal or Jupyter, even where this test process
    was started with SIGINT ignored (a background job of a script, as CI may run)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_between_the_two_renames_of_a_swap_loses_nothing(tmp_path, monkeypatch,
                                                                  ctrl_c_raises):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    renames = _interrupt_after_first_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as tmp:
        (tmp / "new.txt").write_text("new")
    # The interrupt is delivered once the new folder is in place, never in between.
    assert len(renames) == 2
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_swap_killed_between_its_renames_is_undone_by_the_next_writer(tmp_path):
    target = tmp_path / "model"
    # What `kill -9` between the renames leaves: no target, the old content under the fixed name.
    aside = tmp_path / ".model.old"
    aside.mkdir()
    (aside / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target):
        raise RuntimeError("the next run fails too")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_restore_interrupted_swap_removes_a_stale_copy_once_the_swap_was_complete(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "new.txt").write_text("new")
    (tmp_path / ".model.old").mkdir()           # killed while deleting the old copy
    restore_interrupted_swap(tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new.txt"]
    restore_interrupted_swap(tmp_path / "absent")     # nothing to do: no error
