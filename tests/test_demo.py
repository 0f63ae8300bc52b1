"""The demo job end to end on a small synthetic set: it learns, it writes what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.backbones import CourseCLIPBackbone
from utils.demo import DemoConfig, format_summary, main, run_demo
from utils.models import load_clip
from utils.pacl_io import load_pacl


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    config = DemoConfig.fast(data_root=str(root / "data"), out_dir=str(root / "out"),
                             progress=False)
    return config, run_demo(config)


def test_short_training_lowers_the_loss(fast_run):
    _, metrics = fast_run
    assert metrics["final_train_loss"] < 0.8 * metrics["first_train_loss"]


def test_retrieval_beats_chance_by_a_wide_margin(fast_run):
    _, metrics = fast_run
    test = metrics["test"]
    chance_r1 = metrics["chance_text_to_image_R@1"]
    assert test["text_to_image_R@1"] > 5 * chance_r1
    assert test["image_to_text_R@1"] > 5 * chance_r1
    assert 0 <= test["text_to_image_R@1"] <= test["text_to_image_R@5"] <= test["text_to_image_R@10"]


def test_outputs_are_written(fast_run):
    config, metrics = fast_run
    out = config.out_dir
    on_disk = json.loads((Path(out) / "metrics.json").read_text())
    assert on_disk["test"] == metrics["test"]
    for figure in ("training_curves.png", "similarity_matrix.png", "retrieval_gallery.png",
                   "segmentation_miou.png", "segmentation_example_0.png",
                   "segmentation_worst_cases.png"):
        assert (Path(out) / figure).stat().st_size > 10_000
    model, tokenizer = load_clip(Path(out) / "clip")
    assert model.config.vocab_size == len(tokenizer)
    # The saved PACL belongs to the saved CLIP (load_pacl checks the backbone's key).
    pacl, meta = load_pacl(Path(out) / "pacl", backbone=CourseCLIPBackbone(model, tokenizer))
    assert meta["grid_shape"] == [16, 16]


def test_pacl_training_lowers_its_loss(fast_run):
    _, metrics = fast_run
    assert metrics["pacl"]["final_train_loss"] < metrics["pacl"]["first_train_loss"]


def test_segmentation_is_measured_for_both_methods(fast_run):
    _, metrics = fast_run
    segmentation = metrics["segmentation"]
    assert set(segmentation["methods"]) == {"raw", "pacl"}
    for result in segmentation["methods"].values():
        assert 0.0 <= result["mIoU"] <= 1.0 and 0.0 < result["threshold"] < 1.0
        assert len(result["per_class_iou"]) == len(segmentation["classes"]) == 6


def test_summary_table_names_both_directions(fast_run):
    _, metrics = fast_run
    table = format_summary(metrics)
    assert "text to image" in table and "image to text" in table and "R@10" in table
    assert "pacl" in table and "mIoU" in table


def test_command_line_reuses_the_dataset(fast_run, capsys):
    config, _ = fast_run
    marker = Path(config.data_root) / "dataset.json"
    before = marker.stat().st_mtime_ns
    main(["--fast", "--epochs", "1", "--clip-only", "--no-progress", "--data", config.data_root,
          "--out", config.out_dir + "_cli"])
    assert marker.stat().st_mtime_ns == before
    assert "text to image" in capsys.readouterr().out
