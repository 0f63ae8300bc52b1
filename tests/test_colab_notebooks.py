"""Notebooks 01-04 with their Colab branch forced, each in a fresh empty folder as a Colab runtime
would start it, offline.

What stands in for Colab and the internet:

- ``google.colab``: a stand-in module, imported before the first cell as Colab's kernel has it;
- the course's repository: a bare git clone of this one, which the set-up cell clones;
- ``pip``: a stand-in that records what the set-up cell asks to install (this environment stays
  as it is; the course package is already installed in it);
- Flickr8k, Pascal VOC and the real photos: archives in their real layout, tiny, served by a
  127.0.0.1 HTTP server, passed to the notebooks through their parameters (``FLICKR8K_URL``,
  ``VOC_LOCATIONS``, ``PHOTO_URLS``), as a mirror would be;
- OpenAI's CLIP ViT-B/16: a tiny Hugging Face CLIP with random weights, saved to a folder and
  passed as ``CLIP_NAME``.

FAST mode keeps the sizes small: the Colab branch's data and models, not its scale. Notebook 03
runs in a runtime where notebook 02 never ran, so it trains its own PACL.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pytest
from colab_stand_ins import write_stand_ins
from http_fixture import LocalHTTPServer
from PIL import Image
from test_voc import _build_tar
from tiny_clips import caption_tokenizer, tiny_hf_clip

from utils.sources.download import md5sum
from utils.sources.flickr8k import FLICKR8K_TEXT_ARCHIVE
from utils.sources.voc import VOC_ARCHIVE

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FLICKR8K_IMAGES = "Flickr8k_Dataset.zip"
SPLIT_SIZES = {"train": 160, "dev": 16, "test": 16}   # a batch of 128, as on Colab
PHOTOS = ("cats_on_sofa.jpg", "dog.jpg")          # names the course's real photos go by
CELL_TIMEOUT_S = 600

NOUNS = ["dog", "man", "woman", "boy", "girl", "ball", "bike", "horse", "car", "child"]
COLOURS = ["black", "brown", "white", "red", "blue", "green"]


def _jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _caption(rng: np.random.Generator) -> str:
    colour, noun, other = rng.choice(COLOURS), rng.choice(NOUNS), rng.choice(NOUNS)
    return f"a {colour} {noun} plays with a {other} on the grass ."


def _flickr8k_archives(folder: Path) -> None:
    """The two official archives' layout, with a few random photos and captions."""
    rng = np.random.default_rng(0)
    names = {split: [f"{split}_{i:04d}_{rng.integers(1 << 40):010x}.jpg" for i in range(count)]
             for split, count in SPLIT_SIZES.items()}
    every = [name for split in names.values() for name in split]
    with zipfile.ZipFile(folder / FLICKR8K_IMAGES, "w") as archive:
        for index, name in enumerate(every):
            archive.writestr(f"Flicker8k_Dataset/{name}", _jpeg(index))
    with zipfile.ZipFile(folder / FLICKR8K_TEXT_ARCHIVE, "w") as archive:
        archive.writestr("Flickr8k.token.txt", "".join(
            f"{name}#{k}\t{_caption(rng)}\n" for name in every for k in range(5)))
        for split, split_names in names.items():
            archive.writestr(f"Flickr_8k.{split}Images.txt", "\n".join(split_names) + "\n")


@pytest.fixture(scope="module")
def colab(tmp_path_factory: pytest.TempPathFactory):
    """Everything the Colab branch reaches for, offline: a served folder, a saved tiny CLIP, a
    git remote and the stand-in modules."""
    root = tmp_path_factory.mktemp("colab")
    served = root / "served"
    served.mkdir()
    _flickr8k_archives(served)
    _build_tar(served / VOC_ARCHIVE)
    for index, name in enumerate(PHOTOS):
        (served / name).write_bytes(_jpeg(1000 + index, (96, 72)))
    clip_dir = root / "tiny-clip"
    tokenizer = caption_tokenizer()
    tiny_hf_clip(tokenizer).save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    remote = root / "remote" / "clip-pacl.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(remote)], check=True)
    stand_ins = write_stand_ins(root / "stand_ins")
    with LocalHTTPServer(served) as server:
        yield {"server": server, "served": served, "clip_dir": clip_dir, "remote": remote,
               "stand_ins": stand_ins, "root": root}


def _overrides(colab: dict) -> str:
    """The parameters a Colab user would change to use a mirror and another CLIP."""
    server, served = colab["server"], colab["served"]
    archives = {name: md5sum(served / name) for name in (FLICKR8K_TEXT_ARCHIVE, FLICKR8K_IMAGES)}
    photos = {name: server.url(name) for name in PHOTOS}
    return "\n".join([
        "# Added by the test: mirrors on 127.0.0.1 and a tiny CLIP in place of the hub's",
        f"FLICKR8K_URL, FLICKR8K_MD5S = {server.base_url!r}, {archives!r}",
        f"CLIP_NAME = {str(colab['clip_dir'])!r}",
        f"PHOTO_URLS = {photos!r}",
        f"VOC_LOCATIONS = [{server.url('missing.tar')!r}, {server.url(VOC_ARCHIVE)!r}]",
        f"VOC_ARCHIVE_MD5 = {md5sum(served / VOC_ARCHIVE)!r}",
    ])


def _as_on_colab(notebook: nbformat.NotebookNode, colab: dict) -> nbformat.NotebookNode:
    cells = notebook.cells
    setup = next(i for i, c in enumerate(cells) if 'REPO_URL = "' in c.source)
    cells[setup].source = cells[setup].source.replace(
        '"https://github.com/clip-pacl/clip-pacl"', repr(colab["remote"].as_uri()))
    parameters = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    if parameters:
        cells.insert(parameters[0] + 1, nbformat.v4.new_code_cell(_overrides(colab)))
    cells.insert(0, nbformat.v4.new_code_cell("import google.colab  # loaded in Colab's kernels"))
    return notebook


def _text(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells
                   for output in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_top_to_bottom_on_a_fresh_colab_runtime(
        path: Path, colab: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    runtime = tmp_path / "content"              # empty, like /content in a new runtime
    runtime.mkdir()
    for name, value in {
            "CLIP_PACL_FAST": "1", "CLIP_PACL_DATA": str(runtime / "data"),
            "CLIP_PACL_OUTPUTS": str(runtime / "outputs"), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg", "NO_ALBUMENTATIONS_UPDATE": "1",
            "PIP_CALLS": str(tmp_path / "pip_calls.jsonl"), "GIT_TERMINAL_PROMPT": "0",
            "PYTHONPATH": os.pathsep.join([str(colab["stand_ins"]),
                                           os.environ.get("PYTHONPATH", "")])}.items():
        monkeypatch.setenv(name, value)          # the kernel inherits this environment
    notebook = _as_on_colab(nbformat.read(path, as_version=4), colab)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(runtime)}})
    try:
        client.execute()
    except CellExecutionError as error:
        failed = colab["root"] / f"failed_{path.name}"
        nbformat.write(notebook, failed)
        pytest.fail(f"{path.name} failed on the forced Colab branch (executed copy: {failed}):"
                    f"\n{error}", pytrace=False)
    printed = _text(notebook)
    clone = runtime / "clip-pacl"
    assert (clone / "utils").is_dir()                        # the set-up cell cloned the course
    pip_calls = (tmp_path / "pip_calls.jsonl").read_text().splitlines()
    assert [json.loads(call)[-1] for call in pip_calls] == [str(clone / "requirements.txt"),
                                                            str(clone)]
    if path.name.startswith(("01", "02")):
        assert "flickr8k" in printed                          # Colab's data, not the synthetic set
    if path.name.startswith("03"):
        assert "No PACL in" in printed                        # 02 ran in another runtime
        assert "methods: ['raw', 'maskclip', 'pacl']" in printed
        assert "Could not download from" in printed          # the first VOC location is missing
        for method in ("raw", "maskclip", "pacl"):
            assert any(line.split()[:1] == [method] for line in printed.splitlines()
                       if "VOC" not in line), f"no {method} row in the VOC table"
