"""Cases per minute on one cohort: ``medai batch`` (model loaded once) vs a loop of ``medai segment`` processes.

Run: ``.venv/bin/python benchmarks/bench_batch.py [--device cpu|cuda] [--cases N] [--quick]``. Both run the same
UNet card on the same cohort in this run and must give byte-identical outputs; prints the ratio (batch / loop).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_card(folder: Path) -> Path:
    """The benchmarks' UNet card (bench_segment.write_card), z-scored, 64^3 windows."""
    from bench_segment import write_card as write_unet_card

    return write_unet_card(folder, {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
                           {"mode": "sliding_window", "roi_size": [64, 64, 64], "overlap": 0.25, "activation": "softmax"})


def make_cohort(folder: Path, cases: int, size: int) -> list[Path]:
    from medai.geometry import Volume
    from medai.io import write_volume

    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    return [write_volume(Volume(rng.normal(size=(size, size, size)).astype(np.float32), affine, f"case{n:03d}"),
                         folder / f"case{n:03d}.nii.gz") for n in range(cases)]


def medai(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "medai.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"medai {' '.join(args)} failed:\n{proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", type=int, default=None, help="cohort size (default 8; 4 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    args = parser.parse_args()
    cases = args.cases or (4 if args.quick else 8)
    size = 32 if args.quick else 64
    with tempfile.TemporaryDirectory(prefix="medai-bench-batch-") as tmp:
        tmp = Path(tmp)
        card = write_card(tmp / "model")
        images = make_cohort(tmp / "cohort", cases, size)
        start = time.perf_counter()
        for image in images:
            medai("segment", str(image), "-m", str(card), "-o", str(tmp / "loop" / (image.name[:-7] + ".seg.nrrd")), "--device", args.device)
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        medai("batch", str(tmp / "cohort"), "-m", str(card), "-o", str(tmp / "batch"), "--device", args.device)
        batch_s = time.perf_counter() - start
        same = all((tmp / "loop" / (i.name[:-7] + ".seg.nrrd")).read_bytes() == (tmp / "batch" / (i.name[:-7] + ".seg.nrrd")).read_bytes()
                   for i in images)
    row = {"cases": cases, "size": size, "device": args.device, "loop_cases_per_min": 60 * cases / loop_s,
           "batch_cases_per_min": 60 * cases / batch_s, "ratio": loop_s / batch_s, "identical_outputs": same}
    print("medai batch vs a loop of medai segment processes (cases per minute, same cohort; target: ratio > 1)")
    print(f"  {cases} cases of {size}^3 on {args.device}: loop {row['loop_cases_per_min']:.1f}/min, "
          f"batch {row['batch_cases_per_min']:.1f}/min, ratio {row['ratio']:.2f}, identical outputs: {same}")
    print(json.dumps({"batch": row}))
    if not same:
        raise SystemExit("medai batch and medai segment gave different outputs")


if __name__ == "__main__":
    main()
