"""Measure `make demo`'s job: wall time and peak memory (RSS) against the course's bars.

Runs ``python -m utils.course.demo`` in a child process (the one-time install is not part of it) and
prints the wall time, the child's peak resident memory, the retrieval metrics and the segmentation
mIoU it wrote, each against its bar.

    .venv/bin/python bench/demo_budget.py [--out outputs/bench_demo] [--fresh-data]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BARS = {"wall_seconds": 300.0, "peak_rss_gb": 3.0, "text_to_image_R@1": 0.65,
        "text_to_image_R@5": 0.94, "pacl_mIoU": 0.33, "pacl_minus_raw_mIoU": 0.12,
        "pacl_objects_only_mIoU": 0.47, "pacl_minus_raw_objects_only_mIoU": 0.15}
AT_MOST = ("wall_seconds", "peak_rss_gb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench_demo")
    parser.add_argument("--data", default="outputs/bench_demo_data")
    parser.add_argument("--fresh-data", action="store_true",
                        help="delete the dataset first, so generating it is part of the time")
    args = parser.parse_args()
    if args.fresh_data:
        shutil.rmtree(args.data, ignore_errors=True)

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "utils.course.demo", "--out", args.out, "--data", args.data,
                    "--no-progress"], check=True)
    wall = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux: the largest resident set of any finished child.
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    metrics = json.loads((Path(args.out) / "metrics.json").read_text())
    methods = metrics["segmentation"]["methods"]
    raw, pacl = methods["raw"], methods["pacl"]
    measured = {"wall_seconds": wall, "peak_rss_gb": peak_gb, **metrics["test"],
                "raw_mIoU": raw["mIoU"], "pacl_mIoU": pacl["mIoU"],
                "pacl_minus_raw_mIoU": pacl["mIoU"] - raw["mIoU"],
                "raw_objects_only_mIoU": raw["objects_only"]["mIoU"],
                "pacl_objects_only_mIoU": pacl["objects_only"]["mIoU"],
                "pacl_minus_raw_objects_only_mIoU": (pacl["objects_only"]["mIoU"]
                                                     - raw["objects_only"]["mIoU"])}
    print(f"\n{'figure':<34}{'measured':>10}{'bar':>10}  verdict")
    for name, value in measured.items():
        bar = BARS.get(name)
        if bar is None:
            print(f"{name:<34}{value:>10.3f}")
            continue
        ok = value <= bar if name in AT_MOST else value >= bar
        print(f"{name:<34}{value:>10.3f}{bar:>10.2f}  {'meets' if ok else 'MISSES'}")


if __name__ == "__main__":
    main()
