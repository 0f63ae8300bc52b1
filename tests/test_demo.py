"""The demo job end to end on a small synthetic set: it learns, it writes what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from repo_scripts import load_script

from utils.backbones import CourseCLIPBackbone
from utils.course import demo
from utils.course.demo import (
    DemoConfig,
    draw_dataset_in_child_process,
    ensure_demo_dataset,
    format_summary,
    main,
    run_demo,
    segment_splits,
)
from utils.data import load_split, locate_dataset
from utils.models import load_clip
from utils.segmentation import THRESHOLD_RULES
from utils.sources import synthetic
from utils.storage.pacl_io import load_pacl


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


def test_segmentation_is_measured_for_both_methods_and_protocols(fast_run):
    _, metrics = fast_run
    segmentation = metrics["segmentation"]
    assert set(segmentation["methods"]) == {"raw", "pacl"}
    for result in segmentation["methods"].values():
        assert 0.0 <= result["mIoU"] <= 1.0 and 0.0 <= result["objects_only"]["mIoU"] <= 1.0
        assert len(result["per_class_iou"]) == len(segmentation["classes"]) == 6
        # Object pixels only: the background class is never scored.
        assert 0 not in result["objects_only"]["present_classes"]
        # The rule reported is the one with the best dev mIoU among those tried.
        dev = result["dev_mIoU_by_rule"]
        assert set(dev) == set(THRESHOLD_RULES)
        assert result["background"] == max(dev, key=dev.get)


def test_background_rules_are_tuned_on_dev_images_only(fast_run, monkeypatch):
    config, _ = fast_run
    files = locate_dataset(config.data_root)
    dev, test = load_split(files, "dev"), load_split(files, "test")
    model, tokenizer = load_clip(Path(config.out_dir) / "clip")
    backbone = CourseCLIPBackbone(model, tokenizer)
    pacl, _ = load_pacl(Path(config.out_dir) / "pacl", backbone=backbone)
    tuned_on = []

    def recording(run, segmenter, *args, **kwargs):
        tuned_on.append(list(run.image_names))
        return tune_background(run, segmenter, *args, **kwargs)

    tune_background = demo.tune_background
    monkeypatch.setattr(demo, "tune_background", recording)
    runs = segment_splits(config, backbone, pacl, files, dev, test)
    dev_names = [name for name, _ in dev][:config.seg_tune_images]
    assert tuned_on == [dev_names, dev_names]               # raw, then PACL
    for segmenter, run, choice in runs.values():
        assert run.image_names == [name for name, _ in test]
        assert not set(run.image_names) & set(dev_names)
        assert (segmenter.background, segmenter.threshold) == (choice.background,
                                                               choice.threshold)


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


def test_command_line_draws_the_dataset_that_run_demo_expects(tmp_path, monkeypatch):
    # The command line draws the dataset in a child process (``python -m utils.sources.synthetic``);
    # run_demo must then find it complete instead of drawing it a second time.
    config = DemoConfig.fast(data_root=str(tmp_path / "data"), num_train=12, num_dev=4,
                             num_test=4, seed=3, progress=False)
    draw_dataset_in_child_process(config)

    def drawn_again(*args, **kwargs):
        raise AssertionError("ensure_demo_dataset regenerated the dataset")

    monkeypatch.setattr(synthetic, "generate_captioned_shapes", drawn_again)
    root = ensure_demo_dataset(config)
    assert len(load_split(locate_dataset(root), "train")) == 12


def test_patch_probe_auroc_on_hand_computed_cases():
    auroc = load_script("bench/patch_probe.py").auroc
    labels = torch.tensor([False, False, True, True])
    assert auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0         # perfectly separated
    assert auroc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0         # perfectly inverted
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs are ordered right
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), labels) == 0.75


def test_patch_probe_reads_a_finished_demo(fast_run, capsys):
    config, _ = fast_run
    load_script("bench/patch_probe.py").main(["--run", config.out_dir, "--data", config.data_root,
                                       "--images", "20", "--probe-images", "40"])
    out = capsys.readouterr().out
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines()
            if line.startswith(("shape accuracy", "mIoU, true", "AUROC"))}
    assert len(rows) == 4
    assert all(len(v) == 2 and all(0.0 <= float(x) <= 1.0 for x in v) for v in rows.values())
    assert "linear" in out and "MLP" in out


def test_pacl_seeds_bench_reads_a_finished_demo(fast_run, capsys):
    config, metrics = fast_run
    cache_before = sorted(p.name for p in (Path(config.out_dir) / "cache").iterdir())
    load_script("bench/pacl_seeds.py").main(["--run", config.out_dir, "--seeds", "0", "1"])
    out = capsys.readouterr().out
    rows = {}                      # "raw" or "pacl <seed>" -> [mIoU, objects only, rule, threshold]
    for words in map(str.split, out.splitlines()):
        if words[:1] == ["raw"]:
            rows["raw"] = words[1:]
        elif words[:1] == ["pacl"] and words[1].isdigit():
            rows[f"pacl {words[1]}"] = words[2:]
    assert set(rows) == {"raw", "pacl 0", "pacl 1"}
    # The raw patches are tuned and scored as the demo does it: the same numbers.
    raw = metrics["segmentation"]["methods"]["raw"]
    assert float(rows["raw"][0]) == pytest.approx(raw["mIoU"], abs=1e-3)
    # Seed 0 is the demo's own PACL: the same numbers again.
    pacl = metrics["segmentation"]["methods"]["pacl"]
    assert float(rows["pacl 0"][0]) == pytest.approx(pacl["mIoU"], abs=1e-3)
    assert float(rows["pacl 0"][1]) == pytest.approx(pacl["objects_only"]["mIoU"], abs=1e-3)
    assert "mean" in out and "2 seeds" in out
    # It trained from the demo's feature cache instead of building another one.
    assert sorted(p.name for p in (Path(config.out_dir) / "cache").iterdir()) == cache_before
