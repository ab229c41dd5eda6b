"""Issue 14, the GPU path: AMP on and off, GPU memory peaks, the out-of-memory fallback forced, "auto" window batches.

Run: ``.venv/bin/python benchmarks/bench_gpu.py [--device cuda] [--size 512x512x300]`` (also through
``benchmarks/run.sh --device cuda``). Without a CUDA GPU it says so and exits 0; ``--dry-run`` runs the same steps
on the CPU at a small size without the memory caps, to check this script where there is no GPU.

* the spleen bundle (fresh weights, ../shared/fixtures/model-zoo) on a CT-sized volume, warm: with the bundle's own
  AMP (float16, as ``monai.bundle run``) and with it off (float32): time, GPU memory peak, label agreement; the
  same run on the CPU as the baseline of the ratio;
* the out-of-memory fallback, forced: a card asking for 8 windows per call, with the GPU capped
  (``torch.cuda.set_per_process_memory_fraction``) between what 1 and 8 windows need: it must go on one window
  at a time, with the labels of a 1-window card; capped below 1 window it must stop with the advice;
* ``"sw_batch_size": "auto"`` on CUDA (measured by the allocator's peak): the batch it chose.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing" / "Python"))  # bench_performance uses the tests' bundle writer
sys.path.insert(0, str(REPO / "benchmarks"))


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int):
    """Best of ``repeats`` (after one warm-up), and the GPU memory peak of the last run (MB; 0 on the CPU)."""
    import torch

    out = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return best, peak, out


def unet_card(folder: Path, sw_batch_size) -> Path:
    """The benchmarks' UNet card (bench_segment.write_card): 2 mm, z-scored, 96^3 windows, ``sw_batch_size`` per call."""
    from bench_segment import write_card

    return write_card(folder, {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "intensity": [{"op": "zscore"}]},
                      {"mode": "sliding_window", "roi_size": [96, 96, 96], "overlap": 0.25, "sw_batch_size": sw_batch_size,
                       "activation": "softmax"})


def bench_amp(device, volume, tmp: Path, repeats: int) -> list[dict]:
    from bench_performance import _make_bundle

    from medai.engine.segment import segment
    from medai.metrics import dice
    from medai.models.loader import load_model

    bundle = _make_bundle("spleen_ct_segmentation", tmp)
    rows, labels = [], []
    cpu = load_model(str(bundle), "cpu", trust=True)
    t_cpu, _, on_cpu = timed(lambda: segment(cpu, [volume]), cpu.device, 1)
    model = load_model(str(bundle), str(device), trust=True)
    declared = model.bundle.amp
    for amp in (declared, not declared):
        model.bundle.amp = amp
        t, peak, result = timed(lambda: segment(model, [volume]), device, repeats)
        rows.append({"case": f"spleen bundle, {volume.name}", "amp": amp, "bundle_says": declared, "seconds": t,
                     "gpu_peak_MB": peak, "cpu_seconds": t_cpu, "speedup_vs_cpu": t_cpu / t,
                     "dice_vs_cpu": dice(result.layers[0], on_cpu.layers[0]),
                     "identical_to_cpu": bool(np.array_equal(result.layers[0], on_cpu.layers[0]))})
        labels.append(result.layers[0])
    model.bundle.amp = declared
    rows[0]["dice_vs_other_amp"] = rows[1]["dice_vs_other_amp"] = dice(labels[0], labels[1])
    return rows


def bench_out_of_memory(device, volume, tmp: Path) -> dict:
    import torch

    from medai.engine.out_of_memory import OutOfMemory
    from medai.engine.segment import segment
    from medai.models.loader import load_model

    one = load_model(str(unet_card(tmp / "one", sw_batch_size=1)), str(device))
    eight = load_model(str(unet_card(tmp / "eight", sw_batch_size=8)), str(device))
    _, peak1, want = timed(lambda: segment(one, [volume]), device, 1)
    _, peak8, _ = timed(lambda: segment(eight, [volume]), device, 1)
    row: dict = {"case": f"card, 96^3 windows, {volume.name}", "gpu_peak_1_window_MB": peak1, "gpu_peak_8_windows_MB": peak8}
    if device.type != "cuda":
        return {**row, "skipped": "no memory cap on the CPU (dry run)"}
    handler = Captured()
    logging.getLogger("medai.engine.out_of_memory").addHandler(handler)
    total = torch.cuda.get_device_properties(device).total_memory
    base = torch.cuda.memory_allocated(device)  # the networks' weights
    try:
        torch.cuda.empty_cache()
        cap = base + (peak1 + peak8) / 2 * 2**20
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        start = time.perf_counter()
        got = segment(eight, [volume])
        sync(device)
        row.update({"capped_MB": cap / 2**20, "capped_seconds": time.perf_counter() - start,
                    "fell_back": any("trying again with 1 window per call" in line for line in handler.lines),
                    "identical_to_1_window_card": bool(np.array_equal(got.layers[0], want.layers[0]))})
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, (base + peak1 * 2**20 / 4) / total), device)
        try:
            segment(eight, [volume])
            row["below_1_window"] = "ran (the cap did not bind)"
        except OutOfMemory as exc:
            row["below_1_window"] = str(exc)[-300:]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        logging.getLogger("medai.engine.out_of_memory").removeHandler(handler)
    return row


def bench_auto_batch(device, volume, tmp: Path) -> dict:
    from medai.engine.segment import segment
    from medai.models.loader import load_model

    handler = Captured()
    logging.getLogger("medai.engine.window_batch").addHandler(handler)
    logging.getLogger("medai.engine.window_batch").setLevel(logging.INFO)
    try:
        model = load_model(str(unet_card(tmp / "auto", sw_batch_size="auto")), str(device))
        t, peak, _ = timed(lambda: segment(model, [volume]), device, 1)
    finally:
        logging.getLogger("medai.engine.window_batch").removeHandler(handler)
    return {"case": f"card, \"auto\" batch, {volume.name}", "seconds": t, "gpu_peak_MB": peak,
            "chosen": [line for line in handler.lines if "window(s) per batch" in line][-1:]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="512x512x300", help="CT size XxYxZ")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at 96x96x40, without memory caps")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    args, _ = parser.parse_known_args()  # run.sh passes every benchmark the same options
    from medai.models.loader import resolve_device

    device = resolve_device("cpu" if args.dry_run else args.device)
    if device.type != "cuda" and not args.dry_run:
        print(f"bench_gpu: skipped, no CUDA GPU in this run (device {device}); see docs/performance.md for what it measures")
        return 0
    from bench_performance import _write_ct

    from medai.io import read_image

    size = (96, 96, 40) if args.dry_run else tuple(int(s) for s in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _write_ct(tmp / "ct.nii.gz", size, (0.8, 0.8, 2.5))
        volume = read_image(tmp / "ct.nii.gz")
        volume.name = "x".join(map(str, size))
        amp = bench_amp(device, volume, tmp, 1 if args.dry_run else args.repeats)
        oom = bench_out_of_memory(device, volume, tmp)
        auto = bench_auto_batch(device, volume, tmp)
    print("AMP (spleen bundle, warm):")
    for r in amp:
        print(f"  amp={r['amp']!s:5} (bundle says {r['bundle_says']}): {r['seconds']:.2f} s, GPU peak {r['gpu_peak_MB']:.0f} MB, "
              f"{r['speedup_vs_cpu']:.1f}x the CPU ({r['cpu_seconds']:.1f} s), Dice vs CPU {r['dice_vs_cpu']:.5f}")
    print("Out-of-memory fallback:", json.dumps(oom))
    print("Auto batch:", json.dumps(auto))
    print(json.dumps({"amp": amp, "out_of_memory": oom, "auto_batch": auto}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
