"""utils.course.standalone: notebook 03 rebuilds PACL when notebook 02's is not there (a fresh
Colab runtime), offline: Flickr8k's archives from 127.0.0.1, a tiny random Hugging Face CLIP."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from http_fixture import LocalHTTPServer
from test_flickr8k import DATASET_ARCHIVE, SPLITS, _build_dataset_zip, _build_text_zip
from tiny_clips import IMAGE_SIZE, caption_tokenizer, tiny_hf_clip

from utils.backbones import HFCLIPBackbone
from utils.course import notebook, standalone
from utils.sources.download import md5sum
from utils.sources.flickr8k import FLICKR8K_TEXT_ARCHIVE
from utils.storage.pacl_io import load_pacl


@pytest.fixture
def flickr8k_server(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    _build_dataset_zip(served / DATASET_ARCHIVE)
    _build_text_zip(served / FLICKR8K_TEXT_ARCHIVE)
    archives = {name: md5sum(served / name) for name in (FLICKR8K_TEXT_ARCHIVE, DATASET_ARCHIVE)}
    with LocalHTTPServer(served) as server:
        yield server, archives


def test_rebuild_pacl_trains_on_flickr8k_and_saves_what_notebook_03_loads(
        flickr8k_server, tmp_path: Path, capsys) -> None:
    server, archives = flickr8k_server
    tokenizer = caption_tokenizer()
    backbone = HFCLIPBackbone(tiny_hf_clip(tokenizer), tokenizer)
    pacl_dir = tmp_path / "outputs" / "02_pacl" / "pacl"
    recipe = standalone.PACLRecipe(epochs=2, batch_size=4)
    saved = standalone.rebuild_pacl(backbone, pacl_dir, tmp_path / "data" / "flickr8k",
                                    IMAGE_SIZE, recipe, base_url=server.base_url,
                                    archives=archives, progress=False)
    assert saved == pacl_dir
    pacl, meta = load_pacl(pacl_dir, backbone=backbone)     # checks the backbone's key
    assert meta["dataset"] == "flickr8k" and meta["epochs"] == 2
    assert pacl.vision_embedder is not None and not pacl.training
    assert f"{len(SPLITS['train'])} Flickr8k training images" in capsys.readouterr().out
    other = HFCLIPBackbone(tiny_hf_clip(tokenizer, seed=1), tokenizer)
    with pytest.raises(ValueError):
        load_pacl(pacl_dir, backbone=other)                 # an embedder belongs to its CLIP
    requests = len(server.requests)
    standalone.rebuild_pacl(backbone, tmp_path / "again" / "pacl", tmp_path / "data" / "flickr8k",
                            IMAGE_SIZE, recipe, base_url=server.base_url, archives=archives,
                            progress=False)
    assert len(server.requests) == requests                 # the data is downloaded once


def test_keep_outputs_in_drive_mounts_drive_and_moves_every_notebooks_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=lambda point: mounted.append(point))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.delenv(notebook.OUTPUTS_ENV, raising=False)
    outputs = standalone.keep_outputs_in_drive(mount_point=str(tmp_path / "drive"))
    assert mounted == [str(tmp_path / "drive")]
    assert outputs == tmp_path / "drive" / "MyDrive" / "clip-pacl-outputs" and outputs.is_dir()
    assert notebook.outputs_dir("02_pacl") == outputs / "02_pacl"
