"""MedAISegment logic vs the same network called by hand with plain MONAI; volume-to-tensor vs a copy.

Run: ``.venv/bin/python benchmarks/bench_segment.py [--device cpu|cuda] [--quick]``. Prints ratios measured
in this run (median of repeats), never absolute targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_card(folder: Path, preprocessing: dict, inference: dict) -> Path:
    """The benchmarks' UNet (16-128 channels, 3 classes, seed 0) as a card with the given preprocessing and inference."""
    from monai.networks.nets import UNet

    network = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
               "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}
    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in network.items() if k != "_target_"})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "model.pt")
    card = {"name": "bench-unet", "task": "segmentation", "network": network, "weights": "model.pt",
            "preprocessing": preprocessing, "inference": inference, "labels": {"1": "a", "2": "b"}}
    (folder / "medai.json").write_text(json.dumps(card))
    return folder / "medai.json"


def by_hand(net, image_mt, spacing, device):
    """The same pipeline written directly with MONAI transforms and inferer."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, Invertd, Orientationd, ScaleIntensityRanged, Spacingd

    keys = "image"
    steps = [Orientationd(keys, axcodes="RAS")]
    if spacing:
        steps.append(Spacingd(keys, pixdim=spacing, mode="bilinear"))
    steps.append(ScaleIntensityRanged(keys, a_min=-100, a_max=300, b_min=0, b_max=1, clip=True))
    pre = Compose(steps)
    data = pre({"image": image_mt.float()})
    with torch.no_grad(), (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)):
        pred = sliding_window_inference(data["image"][None].to(device), (96, 96, 96), 2, net, overlap=0.25, mode="gaussian")
    data["pred"] = torch.softmax(pred.float(), 1)[0].cpu()
    from monai.data import MetaTensor

    data["pred"] = MetaTensor(data["pred"], affine=data["image"].affine, meta=data["image"].meta)
    data["pred"].applied_operations = list(data["image"].applied_operations)
    data = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)
    return torch.argmax(data["pred"], 0).numpy()


def bench_logic(device: str, shape, repeats: int) -> list[dict]:
    from medai.geometry import Volume, to_metatensor
    from medai.models.loader import load_model
    from medai.slicer import scene as bridge
    from medai.slicer.headless import make_headless_slicer
    from medai.slicer.segment_logic import SegmentLogic

    rows = []
    rng = np.random.default_rng(0)
    arr = rng.normal(50, 80, size=shape).astype(np.int16)
    affine = np.diag([-0.9, -0.9, 1.5, 1.0])
    scene = make_headless_slicer()
    node = bridge.volume_node_from_volume(scene, Volume(arr, affine, name="bench"))
    for spacing in (None, [1.5, 1.5, 1.5]):
        with tempfile.TemporaryDirectory() as tmp:
            card = write_card(Path(tmp), {"orientation": "RAS", "spacing": spacing, "intensity": [
                {"op": "scale_range", "a_min": -100, "a_max": 300, "b_min": 0, "b_max": 1, "clip": True}]},
                {"mode": "sliding_window", "roi_size": [96, 96, 96], "overlap": 0.25, "sw_batch_size": 2, "activation": "softmax"})
            model = load_model(card, device)
            logic = SegmentLogic()
            out = [None]
            logic.segment([node], model)  # warm-up (allocations, kernels)
            t_logic = median_time(lambda: out.__setitem__(0, logic.segment([node], model)), repeats)
            mt = to_metatensor(Volume(arr, affine))
            by_hand(model.networks[0], mt, spacing, model.device)
            t_hand = median_time(lambda: by_hand(model.networks[0], mt, spacing, model.device), repeats)
            rows.append({"case": f"UNet, {'x'.join(map(str, shape))} int16, spacing {spacing or 'native'}",
                         "device": str(model.device), "medai_s": t_logic, "monai_by_hand_s": t_hand, "ratio": t_logic / t_hand})
    return rows


def bench_conversion(repeats: int, shape=(300, 512, 512)) -> dict:
    import tracemalloc

    from medai.geometry import to_metatensor
    from medai.slicer import scene as bridge
    from medai.slicer.headless import make_headless_slicer
    from medai.geometry import Volume

    scene = make_headless_slicer()
    arr = np.random.default_rng(0).integers(-1000, 2000, size=shape, dtype=np.int16)
    node = bridge.volume_node_from_volume(scene, Volume(arr, np.eye(4)))
    del arr

    def convert():
        return to_metatensor(bridge.volume_from_node(node))

    def copy():
        return bridge.volume_from_node(node).array.copy()

    t_convert = median_time(convert, repeats)
    t_copy = median_time(copy, repeats)
    tracemalloc.start()
    mt = convert()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    import slicer

    shared = np.shares_memory(mt.numpy(), slicer.util.arrayFromVolume(node))
    return {"case": f"volume node {shape[2]}x{shape[1]}x{shape[0]} int16 -> MetaTensor", "convert_s": t_convert, "copy_s": t_copy,
            "ratio": t_convert / t_copy, "shares_node_buffer": bool(shared), "peak_python_alloc_MB": peak / 2**20,
            "volume_MB": node.GetImageData().GetPointData().GetScalars().GetNumberOfValues() * 2 / 2**20}


def bench_resampling(repeats: int, shape=(300, 512, 512)) -> dict:
    """SimpleITK (MedAI's choice) vs MONAI Spacing, resampling a CT-sized volume to 1.5 mm."""
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    from medai.resample import resample_channels

    arr = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    ijk = arr.transpose(2, 1, 0)[None]
    mt = MetaTensor(torch.from_numpy(np.ascontiguousarray(ijk)), affine=torch.as_tensor(affine))
    spacing = Spacing(pixdim=(1.5, 1.5, 1.5), mode="bilinear")
    out = [None, None]
    t_monai = median_time(lambda: out.__setitem__(1, spacing(mt)), repeats)
    # SimpleITK onto exactly MONAI's output grid, so that the two results can be compared voxel by voxel
    grid_shape, grid_affine = tuple(out[1].shape[1:]), out[1].affine.numpy()
    t_sitk = median_time(lambda: out.__setitem__(0, resample_channels(ijk, affine, grid_shape, grid_affine)), repeats)
    a, b = out[0][0], out[1].numpy()[0]
    inner = tuple(slice(2, n - 2) for n in a.shape)  # edge voxels differ by padding convention
    diff = float(np.abs(a[inner] - b[inner]).max())
    return {"case": f"resample {shape[2]}x{shape[1]}x{shape[0]} float32 to 1.5 mm", "simpleitk_s": t_sitk, "monai_spacing_s": t_monai,
            "ratio": t_sitk / t_monai, "max_abs_difference_inside": diff, "shape": list(a.shape)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smaller volume, one repeat")
    args, _ = parser.parse_known_args()  # run.sh passes the same flags to every benchmark
    torch.set_num_threads(max(1, torch.get_num_threads()))
    repeats = 1 if args.quick else 3
    shape = (64, 96, 96) if args.quick else (128, 160, 160)
    rows = bench_logic(args.device, shape, repeats)
    print("MedAISegment logic vs the same MONAI calls by hand (target: ratio <= 1.10)")
    for r in rows:
        print(f"  {r['case']} on {r['device']}: medai {r['medai_s']:.2f}s, by hand {r['monai_by_hand_s']:.2f}s, ratio {r['ratio']:.2f}")
    conv = bench_conversion(repeats)
    print("Volume-to-tensor conversion vs a plain copy (target: no copy)")
    print(f"  {conv['case']}: convert {conv['convert_s'] * 1e3:.2f} ms, copy {conv['copy_s'] * 1e3:.1f} ms, ratio {conv['ratio']:.4f}, "
          f"shares the node's buffer: {conv['shares_node_buffer']}, peak extra allocation {conv['peak_python_alloc_MB']:.2f} MB "
          f"for a {conv['volume_MB']:.0f} MB volume")
    res = bench_resampling(1 if args.quick else 2)
    print("Resampling: SimpleITK (used by MedAI) vs MONAI Spacing")
    print(f"  {res['case']}: SimpleITK {res['simpleitk_s']:.2f}s, MONAI {res['monai_spacing_s']:.2f}s, ratio {res['ratio']:.2f}, "
          f"max |difference| inside {res['max_abs_difference_inside']:.2e}, shape {res['shape']}")
    print(json.dumps({"segment": rows, "conversion": conv, "resampling": res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
