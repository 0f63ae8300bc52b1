"""The README is the course's front page: its links, images and badges must lead somewhere, every
notebook must be reachable from it, and its diagrams must be what ``scripts/draw_figures.py``
draws today."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from repo_scripts import load_script
from tiny_clips import EMBED_DIM, IMAGE_SIZE, caption_tokenizer, course_clip

from utils.backbones import CourseCLIPBackbone
from utils.models import save_clip
from utils.pacl import PACL
from utils.segmentation import load_mask
from utils.sources.synthetic import ensure_captioned_shapes
from utils.storage.pacl_io import BACKBONE_KEY, save_pacl

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

draw_figures = load_script("scripts/draw_figures.py")
readme_results = load_script("scripts/readme_results.py")
COLAB_NOTEBOOKS = load_script("scripts/sync_notebooks.py").COLAB_NOTEBOOKS

# Markdown link or image targets, "[text](target)" or "[text](target "title")", and HTML src/href.
MARKDOWN_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_TARGET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
FENCED_CODE = re.compile(r"^```.*?^```", re.S | re.M)


def readme_text() -> str:
    """The README without its fenced code blocks (commands there are not links)."""
    return FENCED_CODE.sub("", README.read_text(encoding="utf-8"))


def link_targets(text: str) -> list[str]:
    return MARKDOWN_TARGET.findall(text) + HTML_TARGET.findall(text)


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) is not None   # http:, https:, mailto:


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def course_notebooks() -> list[Path]:
    return sorted(REPO.glob("notebooks/[0-9][0-9]_*.ipynb"))


# --------------------------------------------------------------------------------------------
# The parsers themselves, on known text (so a README check cannot pass by finding nothing)
# --------------------------------------------------------------------------------------------

def test_link_parser_finds_links_images_badges_and_html():
    text = ('see [nb](notebooks/01_x.ipynb) and ![fig](Images/a.png "title")\n'
            "[![Open In Colab](https://colab/badge.svg)](https://colab/github/nb.ipynb)\n"
            '<img src="Images/b.png" width="300"> [top](#the-notebooks)')
    assert link_targets(text) == ["notebooks/01_x.ipynb", "Images/a.png",
                                  "https://colab/badge.svg", "https://colab/github/nb.ipynb",
                                  "#the-notebooks", "Images/b.png"]


def test_heading_anchor_follows_github():
    assert heading_anchor("Scaling out: several GPUs and machines") == \
        "scaling-out-several-gpus-and-machines"
    assert heading_anchor("What `make demo` does") == "what-make-demo-does"
    assert heading_anchor("The `utils` package") == "the-utils-package"


# --------------------------------------------------------------------------------------------
# The README
# --------------------------------------------------------------------------------------------

def test_relative_links_and_images_resolve_inside_the_repository():
    targets = [t for t in link_targets(readme_text()) if not is_external(t)]
    assert targets, "the README links to no file of the repository"
    broken = []
    for target in targets:
        path = unquote(target.split("#", 1)[0])
        if not path:
            continue                                   # a same-page anchor, checked below
        resolved = (REPO / path).resolve()
        if not resolved.is_relative_to(REPO) or not resolved.exists():
            broken.append(target)
    assert not broken, f"README.md links to files that do not exist in the repository: {broken}"


def test_same_page_anchors_name_a_heading():
    text = readme_text()
    anchors = {heading_anchor(h) for h in re.findall(r"^#+\s+(.+)$", text, re.M)}
    missing = [t for t in link_targets(text) if t.startswith("#") and t[1:] not in anchors]
    assert not missing, f"README.md links to headings that do not exist: {missing}"


def test_every_notebook_is_linked_with_a_colab_badge():
    notebooks = course_notebooks()
    assert len(notebooks) >= 4, "expected the course's numbered notebooks in notebooks/"
    targets = set(link_targets(readme_text()))
    for notebook in notebooks:
        relative = notebook.relative_to(REPO).as_posix()
        assert relative in targets, f"README.md does not link to {relative}"
        assert COLAB_NOTEBOOKS + notebook.name in targets, \
            f"README.md has no Open-in-Colab link for {notebook.name} ({COLAB_NOTEBOOKS}...)"


def test_colab_links_open_notebooks_that_exist():
    colab = [t for t in link_targets(readme_text()) if t.startswith(COLAB_NOTEBOOKS)]
    missing = [t for t in colab if not (REPO / "notebooks" / t[len(COLAB_NOTEBOOKS):]).is_file()]
    assert not missing, f"Colab badges open notebooks that are not in notebooks/: {missing}"


# --------------------------------------------------------------------------------------------
# The figures
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(draw_figures.FIGURES))
def test_committed_diagram_is_what_the_script_draws(name, tmp_path):
    drawn = np.asarray(Image.open(draw_figures.render(name, tmp_path)))
    committed_path = REPO / "Images" / f"{name}.png"
    assert committed_path.is_file(), f"run `python scripts/draw_figures.py {name}`"
    committed = np.asarray(Image.open(committed_path))
    assert drawn.shape == committed.shape and np.array_equal(drawn, committed), (
        f"Images/{name}.png is not what scripts/draw_figures.py draws now: run "
        f"`.venv/bin/python scripts/draw_figures.py {name}` and commit the PNG")


def test_results_mode_explains_a_missing_demo_run(tmp_path):
    with pytest.raises(SystemExit, match="run `make demo` first"):
        draw_figures.write_demo_figures(tmp_path / "no_demo_here", tmp_path / "images")
    (tmp_path / "clip_only").mkdir()
    (tmp_path / "clip_only" / "metrics.json").write_text('{"test": {}}')
    with pytest.raises(SystemExit, match="stopped after CLIP"):
        draw_figures.write_demo_figures(tmp_path / "clip_only", tmp_path / "images")
    assert not (tmp_path / "images").exists()


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """What `make demo` leaves behind, in miniature: a synthetic set, a saved (untrained) CLIP and
    a PACL saved for it, ``metrics.json`` and the figures the demo draws (here stand-in PNGs)."""
    root = tmp_path_factory.mktemp("demo")
    data = ensure_captioned_shapes(root / "data", num_train=4, num_dev=2, num_test=12,
                                   image_size=IMAGE_SIZE, progress=False)
    out = root / "demo"
    tokenizer = caption_tokenizer()
    model = course_clip(tokenizer)
    save_clip(out / "clip", model, tokenizer)
    save_pacl(out / "pacl", PACL(EMBED_DIM),
              meta={BACKBONE_KEY: CourseCLIPBackbone(model, tokenizer).cache_key})
    methods = {"raw": {"background": "entropy", "threshold": 0.5},
               "pacl": {"background": "cosine", "threshold": 0.1}}
    (out / "metrics.json").write_text(json.dumps({
        "config": {"data_root": str(data), "image_size": IMAGE_SIZE},
        "segmentation": {"methods": methods}}))
    for k, name in enumerate(draw_figures.DEMO_FIGURES):
        Image.fromarray(np.full((8, 8, 3), 30 * k, dtype=np.uint8)).save(out / name)
    return out, data


def test_results_mode_copies_the_demo_figures_and_draws_the_heatmaps(demo_folder, tmp_path):
    out, _ = demo_folder
    written = draw_figures.write_demo_figures(out, tmp_path / "images")
    assert [p.name for p in written] == [*draw_figures.DEMO_FIGURES.values(),
                                         draw_figures.HEATMAPS_FIGURE]
    for source, target in draw_figures.DEMO_FIGURES.items():
        assert (tmp_path / "images" / target).read_bytes() == (out / source).read_bytes()
    heatmaps = np.asarray(Image.open(tmp_path / "images" / draw_figures.HEATMAPS_FIGURE))
    assert heatmaps.shape[0] > 300 and heatmaps.shape[1] > 600
    assert not list((tmp_path / "images").glob(".*")), "temporary files left behind"


def test_heatmaps_compare_both_methods_on_images_with_several_shapes(demo_folder):
    out, data = demo_folder
    metrics = json.loads((out / "metrics.json").read_text())
    fig = draw_figures.plot_pacl_vs_clip(out, metrics, count=2)
    rows = np.array(fig.axes[:-1]).reshape(4, -1)         # the last axes is the colour bar
    assert [ax.get_title() for ax in rows[0]] == [
        "image", "p(circle)", "p(square)", "p(triangle)", "p(star)", "p(cross)", "mask",
        "ground truth"]
    labels = [rows[r, 0].get_ylabel() for r in range(4)]
    assert [label.split("\n")[0] for label in labels] == ["raw CLIP patches", "PACL"] * 2
    for label in labels:
        shapes = set(np.unique(load_mask(data / "masks" / label.split("\n")[1]))) - {0}
        assert len(shapes) >= 2


# --------------------------------------------------------------------------------------------
# The results block: written from a run's output
# --------------------------------------------------------------------------------------------

def test_readme_results_are_what_the_script_renders_from_the_committed_record():
    record = json.loads(readme_results.RECORD.read_text())
    runs = json.loads(readme_results.RUNS.read_text())
    assert readme_results.readme_block(README.read_text(encoding="utf-8")) == \
        readme_results.render(record, runs), (
        "README.md's results block is not what scripts/readme_results.py writes from "
        "results/: run `.venv/bin/python scripts/readme_results.py` after `make demo`, never "
        "edit the block by hand")
    # The notebooks' times are those of the executed copies committed today.
    assert runs == readme_results.notebook_runs(readme_results.EXECUTED), (
        "results/notebook_runs.json is not what notebooks/executed/ took: run "
        "`.venv/bin/python scripts/readme_results.py --keep-demo`")
    assert sorted(runs) == ["01_clip_from_scratch.ipynb", "02_pacl_patch_alignment.ipynb",
                            "03_open_vocab_segmentation.ipynb"]
    # The record is a full run's: the demo's test split and both methods.
    assert record["num_test_images"] == 1000 and set(record["segmentation"]) == {"raw", "pacl"}


def fake_run(folder: Path, with_seeds: bool) -> Path:
    folder.mkdir()
    result = {"background": "cosine", "threshold": 0.25, "mIoU": 0.4, "pixel_accuracy": 0.9,
              "objects_only": {"mIoU": 0.6}}
    (folder / "metrics.json").write_text(json.dumps({
        "test": {f"{d}_R@{k}": 0.5 + k / 100 for d in ("text_to_image", "image_to_text")
                 for k in (1, 5, 10)},
        "num_test_images": 10, "num_test_captions": 50, "chance_text_to_image_R@1": 0.015,
        "segmentation": {"methods": {"raw": {**result, "background": "entropy", "mIoU": 0.2},
                                     "pacl": result}},
        "total_seconds": 280.4,
        "config": {"cnn_width": 48, "epochs": 20, "pacl_epochs": 4,
                   "pacl_softmax_temperature": 0.1, "seed": 0, "data_root": "x"}}))
    if with_seeds:
        (folder / "pacl_seeds.json").write_text(json.dumps({
            "seeds": [0, 1], "mIoU": {"mean": 0.41, "std": 0.01, "min_lead": 0.2},
            "objects_only_mIoU": {"mean": 0.6, "std": 0.02, "min_lead": 0.18}}))
    return folder


@pytest.mark.parametrize("with_seeds", [False, True])
def test_results_script_rewrites_only_the_block(tmp_path, with_seeds):
    run = fake_run(tmp_path / "run", with_seeds)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{readme_results.BEGIN}\nstale 99.9\n"
                      f"{readme_results.END}\nafter\n")
    executed = tmp_path / "executed"
    executed.mkdir()
    (executed / "01_x.ipynb").write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "metadata": {}},
        {"cell_type": "code", "metadata": {"execution": {
            "iopub.execute_input": "2026-11-30T05:00:00.000Z",
            "shell.execute_reply": "2026-11-30T05:00:30.000Z"}}},
        {"cell_type": "code", "metadata": {"execution": {
            "iopub.execute_input": "2026-11-30T05:00:31.000Z",
            "shell.execute_reply": "2026-11-30T05:05:00.000Z"}}}]}))
    paths = dict(record_path=tmp_path / "record.json", runs_path=tmp_path / "runs.json",
                 executed=executed)
    record = readme_results.write(run, readme, **paths)
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith("after\n")
    block = readme_results.readme_block(text)
    assert "stale" not in block and block == readme_results.render(record, {"01_x.ipynb": 300.0})
    assert json.loads((tmp_path / "record.json").read_text()) == record
    assert json.loads((tmp_path / "runs.json").read_text()) == {"01_x.ipynb": 300.0}
    assert "ran offline in full: 01 5 min." in block
    assert "| text -> image | 51.0 | 55.0 | 60.0 |" in block
    assert "| PACL on the same CLIP | cosine, threshold 0.25 | 40.0 | 60.0 |" in block
    assert ("seeds [0, 1]" in block) == with_seeds
    readme.write_text("no markers here")
    with pytest.raises(ValueError, match="marker lines"):
        readme_results.write(run, readme, **paths)


def test_every_message_the_readme_explains_is_one_the_package_can_raise():
    """The "When something goes wrong" table quotes phrases of real messages: each must still be
    in the package's source, so the table cannot drift from the code."""
    section = README.read_text(encoding="utf-8").split("## When something goes wrong", 1)[1]
    table = section.split("\n\n")[2]
    phrases = [phrase for row in table.splitlines()[2:]
               for phrase in re.findall(r"`([^`]+)`", row.split(" | ")[0])]
    assert len(phrases) >= 15
    source = "\n".join(path.read_text(encoding="utf-8") for path in (REPO / "utils").rglob("*.py"))
    missing = [phrase for phrase in phrases if phrase not in source]
    assert not missing, f"README quotes messages the package no longer has: {missing}"


def test_every_module_of_the_package_is_in_the_readme_and_the_package_index():
    """A module added without a line in the README's map or in utils/__init__.py's index fails."""
    import utils

    section = README.read_text(encoding="utf-8").split("## The `utils` package", 1)[1]
    section = section.split("\n## ", 1)[0]
    index = utils.__doc__
    package = REPO / "utils"
    for path in sorted(package.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(package).with_suffix("")
        if len(relative.parts) == 1:
            name = relative.parts[0]
            assert f"`utils.{name}`" in section, f"README's package map lacks utils.{name}"
            assert f"``{name}``" in index, f"utils/__init__.py's index lacks {name}"
        else:
            folder, name = relative.parts
            row = next((line for line in section.splitlines()
                        if line.startswith(f"| `utils/{folder}/`")), "")
            assert f"`{name}`" in row, f"README's row for utils/{folder}/ lacks {name}"
            assert f"``{folder}``" in index, f"utils/__init__.py's index lacks {folder}"


def test_the_quick_start_time_of_make_demo_agrees_with_the_recorded_run():
    """The front page rounds the demo's time by hand ("about N min"): it must stay within a
    factor of 1.5 of the committed run's own figure (machines differ by up to 2 times)."""
    row = next(line for line in README.read_text(encoding="utf-8").splitlines()
               if line.startswith("| `make demo` |"))
    minutes = float(re.search(r"about (\d+) min", row).group(1))
    recorded = json.loads(readme_results.RECORD.read_text())["total_seconds"] / 60
    assert recorded / 1.5 <= minutes <= recorded * 1.5, (
        f"README says about {minutes:.0f} min for `make demo`; the recorded run took "
        f"{recorded:.1f} min (results/demo.json)")

