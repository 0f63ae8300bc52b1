"""The notebooks' set-up cell with its Colab branch forced: a stand-in ``google.colab`` module, the
course cloned from a local git remote (or unzipped from an upload, or found in Drive), and a
stand-in ``pip`` that records what it was asked to install instead of touching this environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from colab_stand_ins import write_stand_ins

REPO = Path(__file__).resolve().parents[1]
SETUP = (REPO / "notebooks" / "setup_cell.py").read_text()
NAME = "clip-pacl"

@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare git repository holding the course's committed files, named like the real one."""
    bare = tmp_path_factory.mktemp("remote") / f"{NAME}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(bare)], check=True)
    return bare


def _run_setup(tmp_path: Path, repo_url: str, drive: Path | None = None
               ) -> tuple[subprocess.CompletedProcess, Path, list[list[str]]]:
    """Run the set-up cell as a fresh Colab runtime would, in an empty working folder."""
    stand_ins, work = write_stand_ins(tmp_path / "stand_ins"), tmp_path / "content"
    work.mkdir(exist_ok=True)
    source = SETUP.replace('REPO_URL = "https://github.com/clip-pacl/clip-pacl"',
                           f"REPO_URL = {repo_url!r}")
    if drive is not None:
        source = source.replace('Path("/content/drive/MyDrive")', f"Path({str(drive)!r})")
    assert source != SETUP
    calls = tmp_path / "pip_calls.jsonl"
    env = {**os.environ, "PIP_CALLS": str(calls), "GIT_TERMINAL_PROMPT": "0",
           "PYTHONPATH": os.pathsep.join([str(stand_ins), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", "import google.colab\n" + source], cwd=work,
                         env=env, capture_output=True, text=True, timeout=120)
    logged = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return run, work, logged


def _installed(folder: Path) -> list[list[str]]:
    return [["install", "-q", "-r", str(folder / "requirements.txt")],
            ["install", "-q", "--no-deps", "-e", str(folder)]]


def test_it_clones_the_course_and_installs_it(remote: Path, tmp_path: Path) -> None:
    run, work, pip_calls = _run_setup(tmp_path, remote.as_uri())
    assert run.returncode == 0, run.stderr
    assert (work / NAME / "utils" / "course" / "grading.py").is_file()
    assert pip_calls == _installed(work / NAME)
    again, _, pip_calls = _run_setup(tmp_path, (tmp_path / f"gone/{NAME}.git").as_uri())
    assert again.returncode == 0, again.stderr      # already there: no clone needed
    assert pip_calls == _installed(work / NAME) * 2


def test_a_failed_clone_says_what_to_do(tmp_path: Path) -> None:
    run, work, pip_calls = _run_setup(tmp_path, (tmp_path / f"missing/{NAME}.git").as_uri())
    assert run.returncode != 0 and pip_calls == []
    for advice in ("Could not download the course from", "Set REPO_URL", "Download ZIP",
                   f"{NAME}-main.zip", f"MyDrive/{NAME}", "drive.mount"):
        assert advice in run.stderr
    assert not (work / NAME).exists()


def test_an_uploaded_zip_is_used_when_the_clone_is_not_possible(tmp_path: Path) -> None:
    work = tmp_path / "content"
    work.mkdir()
    with zipfile.ZipFile(work / f"{NAME}-main.zip", "w") as archive:   # GitHub's layout
        for relative in ("requirements.txt", "pyproject.toml", "utils/__init__.py"):
            archive.write(REPO / relative, f"{NAME}-main/{relative}")
    run, _, pip_calls = _run_setup(tmp_path, (tmp_path / f"missing/{NAME}.git").as_uri())
    assert run.returncode == 0, run.stderr
    assert (work / NAME / "utils" / "__init__.py").is_file()
    assert sorted(p.name for p in work.iterdir()) == [NAME, f"{NAME}-main.zip"]
    assert pip_calls == _installed(work / NAME)


def test_a_copy_in_drive_is_used_when_the_clone_is_not_possible(tmp_path: Path) -> None:
    drive = tmp_path / "MyDrive"
    (drive / NAME).mkdir(parents=True)
    (drive / NAME / "requirements.txt").write_text((REPO / "requirements.txt").read_text())
    run, work, pip_calls = _run_setup(tmp_path, (tmp_path / f"missing/{NAME}.git").as_uri(), drive)
    assert run.returncode == 0, run.stderr
    assert pip_calls == _installed(drive / NAME) and not (work / NAME).exists()
