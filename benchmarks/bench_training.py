"""Training throughput: `medai train`'s loop against the same MONAI loop written by hand, in one run.

Both train the same UNet with the same loss, optimiser, patch sampling and augmentation on the
same cached cases (axial slabs of the MNI152 T1 with derived GM/WM labels). Reported: training
samples (patches) per second, first epoch excluded (caching, warm-up). Run:

    .venv/bin/python benchmarks/bench_training.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

EPOCHS, STEPS, ROI, SAMPLES, CASES_PER_STEP = 6, 4, [32, 32, 8], 4, 2
NET = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


def medai_loop(data, out: Path, device: str) -> float:
    from medai.training import TrainConfig, train

    cfg = TrainConfig(network="unet", network_args=NET, epochs=EPOCHS, roi_size=ROI, spacing=[2.0, 2.0, 2.0],
                      intensity=[{"op": "percentile_scale", "lower": 0.5, "upper": 99.5}], samples_per_case=SAMPLES,
                      batch_size=SAMPLES * CASES_PER_STEP, steps_per_epoch=STEPS, device=device, val_every=10_000,
                      split=(1.0, 0.0, 0.0), evaluate_test=False, warmup_epochs=0)
    result = train(data, out, cfg)
    return statistics.median(r["samples_per_s"] for r in result.history[1:])


def hand_loop(folder: Path, device: str) -> float:
    import json

    from monai import transforms as T
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    meta = json.loads((folder / "dataset.json").read_text())
    items = [{"image": str(folder / e["image"]), "label": str(folder / e["label"])}
             for k in ("training", "validation", "test") for e in meta[k]]
    keys = ["image", "label"]
    deterministic = [
        T.LoadImaged(keys), T.EnsureChannelFirstd(keys), T.Orientationd(keys, axcodes="RAS"),
        T.Spacingd(keys, pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
        T.ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, relative=False),
        T.SpatialPadd(keys, spatial_size=ROI),
    ]
    rot = 15 * 3.14159 / 180
    rand = [
        T.RandCropByPosNegLabeld(keys, "label", ROI, pos=1, neg=1, num_samples=SAMPLES),
        T.RandAffined(keys, prob=0.5, rotate_range=[rot] * 3, translate_range=[r * 0.1 for r in ROI], scale_range=[0.1] * 3,
                      mode=["bilinear", "nearest"], padding_mode="zeros", spatial_size=ROI),
        *[T.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
        T.RandScaleIntensityd("image", factors=0.1, prob=0.5), T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        T.RandGaussianNoised("image", prob=0.2, std=0.05),
        T.RandGaussianSmoothd("image", prob=0.2, sigma_x=[0.5, 1.0], sigma_y=[0.5, 1.0], sigma_z=[0.5, 1.0]),
    ]
    ds = CacheDataset(items, T.Compose(deterministic + rand), cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(ds, batch_size=CASES_PER_STEP, shuffle=True, num_workers=0, collate_fn=list_data_collate)
    torch.manual_seed(0)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, norm="INSTANCE", **NET).to(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    rates = []
    for epoch in range(EPOCHS):
        start, n, step = time.perf_counter(), 0, 0
        while step < STEPS:
            for batch in loader:
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", enabled=dev.type == "cuda"):
                    loss = loss_fn(net(batch["image"].to(dev)), batch["label"].to(dev))
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                n += batch["image"].shape[0]
                step += 1
                if step >= STEPS:
                    break
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def main() -> None:
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (both loops use it; AMP on CUDA)")
    args, _ = parser.parse_known_args()

    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    from medai.models.catalog import fetch_sample
    from medai.training.data import discover
    from medai.training.sample_data import make_tissue_slabs

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tissue_slabs(fetch_sample("mni152-t1"), Path(tmp) / "slabs", slab_mm=12, crop=(48, 64, 64))
        data = discover(folder, "segmentation")
        for c in data.cases:
            c.split = None  # all cases train in both loops
        t0 = time.perf_counter()
        hand = hand_loop(folder, args.device)
        t1 = time.perf_counter()
        ours = medai_loop(data, Path(tmp) / "model", args.device)
        t2 = time.perf_counter()
    print(f"{'loop':<28}{'samples/s':>12}{'wall s':>9}")
    print(f"{'MONAI by hand':<28}{hand:>12.1f}{t1 - t0:>9.1f}")
    print(f"{'medai train (Trainer)':<28}{ours:>12.1f}{t2 - t1:>9.1f}")
    print(f"ratio medai / hand: {ours / hand:.2f} ({EPOCHS} epochs x {STEPS} steps of {SAMPLES * CASES_PER_STEP} patches {ROI}, "
          f"{torch.get_num_threads()} threads, {args.device})")


if __name__ == "__main__":
    main()
