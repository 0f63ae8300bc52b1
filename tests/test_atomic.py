"""Atomic folder writes: all or nothing."""

from __future__ import annotations

import pytest

from utils.atomic import atomic_folder, write_text_atomic


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
