"""Does PACL's lead over the raw patches hold beyond one seed? PACL trained with several seeds on
the demo's frozen CLIP.

Reads a finished demo run (``make demo`` -> ``outputs/demo``: its ``metrics.json`` config, its
CLIP and its PACL feature cache) and, for each seed, trains PACL's embedder again from the same
cached features and texts (only the initialisation and the order of batches change), tunes the
background rule and threshold on the dev images and scores the test split, background included and
on object pixels only. The raw patches have no seed: they are scored once, tuned the same way.

    .venv/bin/python bench/pacl_seeds.py [--run outputs/demo] [--seeds 0 1 2] [--save]
        [--temperature 0.1 | --temperature none] [--pacl-epochs 4] [--with-captions]

``--save`` keeps the summary in ``<run>/pacl_seeds.json``, where ``scripts/readme_results.py``
finds it for the README (only for the demo's own recipe). ``--temperature``, ``--pacl-epochs``
and ``--with-captions`` (captions as training texts too) try variants of the recipe on the same
CLIP; ``--with-captions`` builds a second feature cache.

Not a test: a measurement for the README and the issue notes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from utils.backbones import CourseCLIPBackbone
from utils.course.demo import DemoConfig, segment_splits, segmentation_metrics, train_pacl
from utils.data import load_split, locate_dataset
from utils.models import load_clip


def summary_row(label: str, result: dict) -> str:
    return (f"{label:<10}{result['mIoU']:>8.3f}{result['objects_only']['mIoU']:>14.3f}"
            f"{result['background']:>10} {result['threshold']:>6.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="outputs/demo", help="a finished demo's output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--temperature", default=None,
                        help="PACL's softmax temperature ('none': plain cosines); default: the run's")
    parser.add_argument("--pacl-epochs", type=int, default=None)
    parser.add_argument("--with-captions", action="store_true",
                        help="train on the captions as well as on the object phrases")
    parser.add_argument("--save", action="store_true",
                        help="write the summary to <run>/pacl_seeds.json (the demo's recipe only)")
    args = parser.parse_args(argv)
    variant = (args.temperature, args.pacl_epochs, args.with_captions) != (None, None, False)
    if args.save and variant:
        parser.error("--save keeps the demo's own recipe only: drop the variant options")

    run = Path(args.run)
    saved = json.loads((run / "metrics.json").read_text())["config"]
    config = replace(DemoConfig(**saved), progress=False)
    if args.temperature is not None:
        config.pacl_softmax_temperature = (None if args.temperature.lower() == "none"
                                           else float(args.temperature))
    if args.pacl_epochs is not None:
        config.pacl_epochs = args.pacl_epochs
    config.pacl_with_captions = args.with_captions
    model, tokenizer = load_clip(run / "clip")
    backbone = CourseCLIPBackbone(model, tokenizer)
    files = locate_dataset(config.data_root)
    train_items, dev_items, test_items = (load_split(files, s) for s in ("train", "dev", "test"))
    train_images = run / "cache" / f"train_{config.image_size}px.npy"
    print(f"CLIP of {run}; PACL temperature {config.pacl_softmax_temperature}, "
          f"{config.pacl_epochs} epochs, texts: object phrases"
          f"{' and captions' if args.with_captions else ''}")

    header = f"{'':<10}{'mIoU':>8}{'objects only':>14}{'background rule':>17}"
    raw = segmentation_metrics(segment_splits(config, backbone, None, files, dev_items,
                                              test_items, methods=("raw",)))["raw"]
    print(header)
    print(summary_row("raw", raw))
    results = []
    for seed in args.seeds:
        pacl, _ = train_pacl(replace(config, pacl_seed=seed), backbone, files, train_items,
                             train_images, run)
        results.append(segmentation_metrics(segment_splits(
            config, backbone, pacl, files, dev_items, test_items, methods=("pacl",)))["pacl"])
        print(summary_row(f"pacl {seed}", results[-1]))

    summary = {"seeds": args.seeds}
    for key, name, values, raw_value in (
            ("mIoU", "all pixels", [r["mIoU"] for r in results], raw["mIoU"]),
            ("objects_only_mIoU", "objects only", [r["objects_only"]["mIoU"] for r in results],
             raw["objects_only"]["mIoU"])):
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[key] = {"values": values, "mean": statistics.mean(values), "std": spread,
                        "raw": raw_value, "min_lead": min(values) - raw_value}
        print(f"PACL {name}: mean {statistics.mean(values):.3f} +- {spread:.3f} (std over "
              f"{len(values)} seeds), min {min(values):.3f}; raw {raw_value:.3f}; "
              f"smallest lead {min(values) - raw_value:+.3f}")
    if args.save:
        (run / "pacl_seeds.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {run / 'pacl_seeds.json'}")


if __name__ == "__main__":
    main()
