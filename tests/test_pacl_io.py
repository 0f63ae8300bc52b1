"""Tests for utils.storage.pacl_io: a trained PACL survives a save/load round trip, atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from utils.pacl import PACL
from utils.storage import pacl_io
from utils.storage.pacl_io import load_pacl, save_pacl

DIM = 8


def trained_like(seed: int = 0, **kwargs) -> PACL:
    """A PACL whose weights are far from their initial values (as after training)."""
    torch.manual_seed(seed)
    pacl = PACL(DIM, **kwargs)
    with torch.no_grad():
        for parameter in pacl.parameters():
            parameter.add_(torch.randn_like(parameter))
    return pacl.eval()


class FakeBackbone:
    def __init__(self, key: str):
        self.cache_key = key


def test_round_trip_gives_the_same_outputs_and_meta(tmp_path: Path) -> None:
    pacl = trained_like(hidden_dim=5, softmax_temperature=0.5, max_logit_scale=50.0)
    meta = {"backbone": "course", "image_size": 64, "grid_shape": [16, 16], "note": "é"}
    folder = save_pacl(tmp_path / "02_pacl", pacl, meta)

    loaded, loaded_meta = load_pacl(folder)
    assert loaded_meta == meta
    assert not loaded.training
    assert pacl_io.pacl_config(loaded) == pacl_io.pacl_config(pacl)
    patches, texts = torch.randn(3, 7, DIM), torch.randn(4, DIM)
    torch.testing.assert_close(loaded(patches, texts), pacl(patches, texts), rtol=0, atol=0)
    torch.testing.assert_close(loaded.logit_scale, pacl.logit_scale, rtol=0, atol=0)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors",
                                                        "pacl_config.json"]


def test_optional_text_embedder_is_kept(tmp_path: Path) -> None:
    pacl = trained_like(text_embedder=True)
    loaded, meta = load_pacl(save_pacl(tmp_path / "p", pacl))
    assert meta == {}
    assert loaded.text_embedder is not None
    texts = torch.randn(2, DIM)
    torch.testing.assert_close(loaded.embed_texts(texts), pacl.embed_texts(texts))


def test_saving_again_replaces_the_folder_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    folder = tmp_path / "02_pacl"
    save_pacl(folder, trained_like(seed=0), {"run": 1})
    second = trained_like(seed=1)
    save_pacl(folder, second, {"run": 2})
    loaded, meta = load_pacl(folder)
    assert meta == {"run": 2}
    torch.testing.assert_close(loaded.vision_embedder.linear.weight,
                               second.vision_embedder.linear.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["02_pacl"]


def test_a_failed_save_keeps_the_previous_pacl(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "02_pacl"
    first = trained_like(seed=0)
    save_pacl(folder, first, {"run": 1})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pacl_io, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pacl(folder, trained_like(seed=1), {"run": 2})
    loaded, meta = load_pacl(folder)
    assert meta == {"run": 1}
    torch.testing.assert_close(loaded.vision_embedder.linear.weight,
                               first.vision_embedder.linear.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["02_pacl"]


def test_meta_that_is_not_json_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_pacl(tmp_path / "p", trained_like(), {"folder": tmp_path})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="utils.pacl.PACL"):
        save_pacl(tmp_path / "p", torch.nn.Linear(2, 2))


def test_backbone_check(tmp_path: Path) -> None:
    folder = save_pacl(tmp_path / "p", trained_like(), {"backbone_key": "course_clip-abc"})
    load_pacl(folder, backbone=FakeBackbone("course_clip-abc"))
    with pytest.raises(ValueError, match="trained on another frozen CLIP"):
        load_pacl(folder, backbone=FakeBackbone("course_clip-def"))
    # Without a recorded key there is nothing to compare with.
    load_pacl(save_pacl(tmp_path / "q", trained_like()), backbone=FakeBackbone("anything"))


def test_missing_or_damaged_folders_get_errors_that_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Run notebook 02"):
        load_pacl(tmp_path / "nothing")

    folder = save_pacl(tmp_path / "p", trained_like())
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_pacl(folder)

    folder = save_pacl(tmp_path / "p", trained_like())
    config = json.loads((folder / "pacl_config.json").read_text())
    (folder / "pacl_config.json").write_text(json.dumps({**config, "hidden_dim": 3}))
    with pytest.raises(ValueError, match="do not fit"):
        load_pacl(folder)

    (folder / "pacl_config.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        load_pacl(folder)

    (folder / "pacl_config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        load_pacl(folder)

    folder = save_pacl(tmp_path / "p", trained_like())
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_pacl(folder)
