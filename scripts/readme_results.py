"""The README's table of the demo's results, written from the run's own output, never by hand.

    .venv/bin/python scripts/readme_results.py [--run outputs/demo]

Reads ``<run>/metrics.json`` (what ``make demo`` wrote) and, when present,
``<run>/pacl_seeds.json`` (what ``bench/pacl_seeds.py`` wrote for the same run), and the cell
timings of the executed notebooks in ``notebooks/executed/`` (what ``scripts/run_notebooks.py``
wrote); keeps the figures the README quotes in ``results/demo.json`` and
``results/notebook_runs.json``, and rewrites the README's block between the two marker lines from
those files. ``--keep-demo`` refreshes the notebook figures alone, from the committed record.
``tests/test_readme.py`` checks that the block is exactly what this script renders from the
committed record. Run it after ``make demo`` (and ``bench/pacl_seeds.py --save``), beside
``scripts/draw_figures.py --results outputs/demo``, which redraws the figures of the same run.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from utils.storage.atomic import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]

README = REPO_ROOT / "README.md"
RESULTS = REPO_ROOT / "results"
RECORD = RESULTS / "demo.json"
RUNS = RESULTS / "notebook_runs.json"
EXECUTED = REPO_ROOT / "notebooks" / "executed"
BEGIN = "<!-- demo results: written by scripts/readme_results.py from results/ -->"
END = "<!-- end of demo results -->"
METHOD_LABELS = {"raw": "raw patches of the demo's frozen CLIP", "pacl": "PACL on the same CLIP"}


def record_from_run(run: Path) -> dict:
    """The figures the README quotes, taken from a finished demo run's files."""
    metrics = json.loads((run / "metrics.json").read_text())
    if "segmentation" not in metrics:
        raise SystemExit(f"{run}/metrics.json has no segmentation results (a --clip-only run?): "
                         "run `make demo` in full")
    record = {
        "retrieval": dict(metrics["test"]),
        "num_test_images": metrics["num_test_images"],
        "num_test_captions": metrics["num_test_captions"],
        "chance_text_to_image_R@1": metrics["chance_text_to_image_R@1"],
        "segmentation": {method: {"background": result["background"],
                                  "threshold": result["threshold"],
                                  "mIoU": result["mIoU"],
                                  "objects_only_mIoU": result["objects_only"]["mIoU"]}
                         for method, result in metrics["segmentation"]["methods"].items()},
        "total_seconds": metrics["total_seconds"],
        "config": {key: metrics["config"][key] for key in
                   ("cnn_width", "epochs", "pacl_epochs", "pacl_softmax_temperature", "seed")},
    }
    seeds = run / "pacl_seeds.json"
    if seeds.is_file():
        record["pacl_seeds"] = json.loads(seeds.read_text())
    return record


def notebook_runs(executed: Path) -> dict[str, float]:
    """Seconds each executed notebook took, from its cells' own timing: from the first cell's
    start to the last cell's reply (nbclient records both in every cell's metadata)."""
    runs = {}
    for path in sorted(executed.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        times = [cell["metadata"]["execution"] for cell in cells if cell["cell_type"] == "code"]
        if not times:
            raise SystemExit(f"{path} holds no cell timings: is it an executed notebook?")
        runs[path.name] = round((_timestamp(times[-1]["shell.execute_reply"])
                                 - _timestamp(times[0]["iopub.execute_input"])), 1)
    return runs


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def render(record: dict, runs: dict[str, float]) -> str:
    """The README block (without its marker lines) for a record of :func:`record_from_run` and
    the notebook times of :func:`notebook_runs`."""
    retrieval, config = record["retrieval"], record["config"]
    lines = [
        f"From one `make demo` run (CLIP width {config['cnn_width']}, {config['epochs']} epochs; "
        f"PACL {config['pacl_epochs']} epochs, softmax temperature "
        f"{config['pacl_softmax_temperature']}; seed {config['seed']}), on the synthetic test "
        f"split of {record['num_test_images']} images and {record['num_test_captions']} "
        "captions:",
        "",
        "| retrieval | R@1 | R@5 | R@10 |",
        "|---|---|---|---|",
    ]
    for direction in ("text_to_image", "image_to_text"):
        lines.append(f"| {direction.replace('_to_', ' -> ')} | " + " | ".join(
            percent(retrieval[f"{direction}_R@{k}"]) for k in (1, 5, 10)) + " |")
    lines += [
        "",
        "| segmentation, mIoU (%) | background rule (tuned on dev) | all pixels | objects only "
        "(VOC-20 protocol) |",
        "|---|---|---|---|",
    ]
    for method, result in record["segmentation"].items():
        lines.append(f"| {METHOD_LABELS.get(method, method)} | {result['background']}, threshold "
                     f"{result['threshold']:.2f} | {percent(result['mIoU'])} | "
                     f"{percent(result['objects_only_mIoU'])} |")
    lines += ["", f"Chance for text -> image R@1: {percent(record['chance_text_to_image_R@1'])} %. "
                  f"The whole job took {record['total_seconds']:.0f} s on the machine it ran on."]
    seeds = record.get("pacl_seeds")
    if seeds:
        lines.append(
            f"PACL retrained on the same frozen CLIP with seeds {seeds['seeds']} "
            f"(`bench/pacl_seeds.py`): all pixels {percent(seeds['mIoU']['mean'])} ± "
            f"{percent(seeds['mIoU']['std'])}, objects only "
            f"{percent(seeds['objects_only_mIoU']['mean'])} ± "
            f"{percent(seeds['objects_only_mIoU']['std'])} (mean ± standard deviation); its "
            f"smallest lead over the raw patches {percent(seeds['mIoU']['min_lead'])} and "
            f"{percent(seeds['objects_only_mIoU']['min_lead'])} points.")
    if runs:
        times = ", ".join(f"{name[:2]} {seconds / 60:.0f} min" for name, seconds in runs.items())
        lines += ["", f"The executed notebooks in [notebooks/executed/](notebooks/executed/) ran "
                      f"offline in full: {times}."]
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The lines between the README's markers."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"README.md must hold the marker lines {BEGIN!r} and {END!r} once each")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write(run: Path | None, readme: Path = README, record_path: Path = RECORD,
          runs_path: Path = RUNS, executed: Path = EXECUTED) -> dict:
    """Record the run's figures (``run=None``: keep ``record_path`` as it is) and the executed
    notebooks' times, and rewrite the README's block; returns the record."""
    record = json.loads(record_path.read_text()) if run is None else record_from_run(run)
    runs = notebook_runs(executed)
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
    write_text_atomic(runs_path, json.dumps(runs, indent=2) + "\n")
    old = readme.read_text(encoding="utf-8")
    readme_block(old)                                     # the markers must be there
    before, rest = old.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    write_text_atomic(readme, f"{before}{BEGIN}\n{render(record, runs)}\n{END}{after}")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO_ROOT / "outputs" / "demo")
    parser.add_argument("--keep-demo", action="store_true",
                        help="keep results/demo.json; refresh only the notebooks' times")
    args = parser.parse_args(argv)
    write(None if args.keep_demo else args.run)
    print(f"wrote {RECORD}, {RUNS} and the results block of {README}")


if __name__ == "__main__":
    main()
