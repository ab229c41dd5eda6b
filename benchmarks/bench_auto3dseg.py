"""An Auto3DSeg model: MedAI warm in process vs SlicerMONAIAuto3DSeg's way (file, new process, file).

The extension writes the input volume to an uncompressed NRRD, starts a Python process running
``Scripts/auto3dseg_segresnet_inference.py`` (here its restatement, Testing/Python/auto3dseg_reference.py),
which imports torch and MONAI, loads the checkpoint, infers and writes a NRRD that Slicer reads
back. MedAI keeps the model loaded and runs the same pipeline on the volume in memory.

Same model (a SegResNetDS shaped like the extension's "quick" 3 mm models, fresh weights), same CT-like
volume, both labelmaps compared voxel for voxel. Run: ``.venv/bin/python benchmarks/bench_auto3dseg.py
[--device cpu|cuda] [--quick]``. Prints ratios measured in this run, never absolute targets.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCRIPT = REPO / "Testing" / "Python" / "auto3dseg_reference.py"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_model(folder: Path, classes: int, filters: int) -> Path:
    """A model zip as the extension publishes them: model/model.pt (config + state_dict) and model/labels.csv."""
    from monai.networks.nets import SegResNetDS

    torch.manual_seed(0)
    network = {"_target_": "SegResNetDS", "init_filters": filters, "blocks_down": [1, 2, 2, 4, 4], "norm": "INSTANCE",
               "in_channels": 1, "out_channels": classes, "dsdepth": 4}
    net = SegResNetDS(**{k: v for k, v in network.items() if k != "_target_"})
    config = {"network": network, "roi_size": [96, 96, 96], "normalize_mode": "range", "intensity_bounds": [-200.0, 400.0],
              "orientation_ras": True, "crop_foreground": True, "resample_resolution": [3.0, 3.0, 3.0], "sigmoid": False}
    buffer = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "config": config, "epoch": 1, "best_metric": 0.0}, buffer)
    labels = "LabelValue,Name\n" + "".join(f"{v},organ {v}\n" for v in range(1, classes))
    path = folder / "bench-organs-3mm-v1.0.0.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/model.pt", buffer.getvalue())
        z.writestr("model/labels.csv", labels)
    return path


def make_volume(shape_ijk: tuple[int, int, int]):
    from medai.geometry import Volume

    rng = np.random.default_rng(0)
    i, j, k = shape_ijk
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    r = ((ii - i / 2) / (0.4 * i)) ** 2 + ((jj - j / 2) / (0.35 * j)) ** 2
    arr = np.where(r < 1, 40 + 80 * np.sin(ii / 7.0) * np.cos(jj / 9.0) + 0.5 * kk, -1000) + rng.normal(0, 20, (k, j, i))
    return Volume(arr.astype(np.int16), np.diag([-0.8, -0.8, 1.5, 1.0]), name="ct")  # LPS-stored, as DICOM CT


def extension_way(model_pt: Path, volume, work: Path, device: str):
    """Write the volume, run the script in a new Python process, read the result back."""
    import SimpleITK as sitk

    from medai.io import read_image, sitk_from_volume

    start = time.perf_counter()
    image = work / "input-volume0.nrrd"
    sitk.WriteImage(sitk_from_volume(volume), str(image), useCompression=False)  # the extension writes uncompressed
    out = work / "output-segmentation.nrrd"
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": "-1"} if device == "cpu" else {}))
    subprocess.run([sys.executable, str(SCRIPT), "--model-file", str(model_pt), "--image-file", str(image), "--result-file", str(out)],
                   check=True, env=env, capture_output=True, timeout=900)
    labelmap = read_image(out).array
    return time.perf_counter() - start, labelmap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smaller volume and model, one repeat")
    args = parser.parse_args()
    from medai.engine.segment import segment
    from medai.models.loader import load_model, resolve_device

    device = str(resolve_device(args.device))
    shape = (128, 128, 64) if args.quick else (192, 192, 96)
    filters, classes = (8, 8) if args.quick else (16, 24)
    repeats = 1 if args.quick else 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MEDAI_HOME", str(tmp / "home"))
        model_zip = make_model(tmp, classes, filters)
        volume = make_volume(shape)
        start = time.perf_counter()
        model = load_model(model_zip, device)
        result = segment(model, [volume])
        sync()
        cold = time.perf_counter() - start
        warm_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = segment(model, [volume])
            sync()
            warm_times.append(time.perf_counter() - start)
        warm = statistics.median(warm_times)
        extracted = tmp / "extension"
        with zipfile.ZipFile(model_zip) as z:
            z.extractall(extracted)
        ext_times = []
        for _ in range(1 if args.quick else 2):
            seconds, reference = extension_way(extracted / "model" / "model.pt", volume, tmp, device)
            ext_times.append(seconds)
        ext = statistics.median(ext_times)
    same = bool(np.array_equal(result.layers[0], reference))
    row = {"case": f"SegResNetDS {filters} filters, {classes} classes, 3 mm, CT {'x'.join(map(str, shape))} LPS", "device": device,
           "medai_warm_s": round(warm, 3), "medai_cold_s": round(cold, 3), "extension_way_s": round(ext, 3),
           "speedup": round(ext / warm, 2), "identical_labelmap": same,
           "medai_stages_s": {k: round(v, 3) for k, v in result.timings.items()}}
    print("Auto3DSeg model: MedAI warm in process vs the extension's way (write NRRD, new process, load, infer, write, read back)")
    print(f"  {row['case']} on {device}: MedAI warm {warm:.2f}s (cold, with loading {cold:.2f}s), extension's way {ext:.2f}s, "
          f"speedup {row['speedup']:.2f}x, identical labelmap: {same}; MedAI stages: {row['medai_stages_s']}")
    print(json.dumps({"auto3dseg": row}))


if __name__ == "__main__":
    main()
