"""`medai --help` and `medai models` answer without importing torch, MONAI, SimpleITK or scipy; `medai segment` imports MONAI lean."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

HEAVY = ("torch", "monai", "SimpleITK", "scipy", "numpy")

PROBE = """
import json, sys
from medai import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exc:  # --help exits through argparse
    code = exc.code
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["segment", "--help"], ["classify", "--help"], ["train", "--help"]])
def test_light_commands_do_not_import_torch(argv):
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    assert report["heavy"] == [], f"medai {' '.join(argv)} imported {report['heavy']}"
    assert proc.stdout.strip()  # it answered
    if argv == ["models"]:
        assert "deepbet-brain" in proc.stdout


def test_classify_rejects_an_unknown_explanation_method(tmp_path, capsys):
    from medai import cli

    assert cli.main(["classify", str(tmp_path / "x.nii.gz"), "--model", "m", "-o", str(tmp_path / "o.csv"), "--method", "shap"]) == 1
    assert "--method 'shap' unknown; use one of gradcam" in capsys.readouterr().err


# --- `medai segment` as its own process: MONAI imported lean (medai/commands/fast_start.py) ------------------------

SEGMENT_PROBE = """
import gc, importlib.util, json, sys
from medai import cli
from medai.commands import fast_start
sys.argv = ["medai", *sys.argv[1:]]
code = cli.main()  # argv=None: the command line, as the `medai` script runs it
print(json.dumps({"code": code, "imported": [m for m in fast_start.HIDDEN if m in sys.modules],
                  "installed": [m for m in fast_start.HIDDEN if importlib.util.find_spec(m) is not None],
                  "gc_enabled": gc.isenabled()}), file=sys.stderr)
"""


def tiny_monai_bundle(folder, pre_extra: list | None = None):
    """A MONAI Bundle like the zoo's spleen one (Orientationd, Spacingd, ScaleIntensityRanged, sliding window,
    softmax, Invertd, argmax) with a tiny UNet and fixed random weights."""
    import torch
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny", "network_data_format": {
        "inputs": {"image": {"num_channels": 1, "modality": "CT"}},
        "outputs": {"pred": {"type": "image", "channel_def": {"0": "background", "1": "organ"}}}}}))
    net = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 1}
    pre = [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
           {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"},
           {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 100, "b_min": 0, "b_max": 1, "clip": True},
           *(pre_extra or []), {"_target_": "EnsureTyped", "keys": "image"}]
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": False},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    (folder / "configs" / "inference.json").write_text(json.dumps({
        "image_key": "image", "network_def": {"_target_": "UNet", **net},
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": post}}))
    torch.manual_seed(0)
    torch.save(UNet(**net).state_dict(), folder / "models" / "model.pt")
    return folder


def ct_file(path):
    import numpy as np

    from medai.geometry import Volume
    from medai.io import write_volume

    arr = np.random.default_rng(1).normal(40, 30, (20, 22, 24)).astype(np.float32)  # [k, j, i]
    arr[6:14, 8:16, 9:17] += 60
    return write_volume(Volume(arr, np.diag([-1.2, -1.0, 2.0, 1.0]), "ct"), path)


def _segment_process(*args, env=None):
    proc = subprocess.run([sys.executable, "-c", SEGMENT_PROBE, "segment", *map(str, args), "--device", "cpu", "--trust"],
                          cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])


def test_segment_process_imports_monai_lean_with_identical_labels(tmp_path):
    """The packages MONAI would import for nothing stay out of a `medai segment` process; labels are those of a full import."""
    from medai.cli import main
    from medai.io import read_image

    bundle, image = tiny_monai_bundle(tmp_path / "tiny"), ct_file(tmp_path / "ct.nii.gz")
    proc, report = _segment_process(image, "-m", bundle, "-o", tmp_path / "lean.nii.gz")
    assert report["code"] == 0, proc.stderr
    if not report["installed"]:
        pytest.skip("none of the packages fast_start hides is installed here: nothing to check")
    assert report["imported"] == [], f"medai segment imported {report['imported']}"
    assert report["gc_enabled"], "garbage collection was left off after loading"
    # this pytest process imported MONAI fully: the same labels
    assert main(["segment", str(image), "-m", str(bundle), "-o", str(tmp_path / "full.nii.gz"), "--device", "cpu", "--trust"]) == 0
    lean, full = read_image(tmp_path / "lean.nii.gz").array, read_image(tmp_path / "full.nii.gz").array
    assert lean.any() and np.array_equal(lean, full)


def test_monai_feature_needing_a_hidden_package_reruns_with_full_imports(tmp_path):
    """scipy.signal is hidden from MONAI; a bundle transform calling MONAI's scipy.signal import makes the command run again."""
    import importlib.util

    if importlib.util.find_spec("scipy.signal") is None:
        pytest.skip("scipy.signal is not installed")
    uses_hilbert = {"_target_": "Lambdad", "keys": "image",
                    "func": "$lambda x: x + 0.0 * float(monai.data.ultrasound_confidence_map.hilbert([1.0, 2.0]).real[0])"}
    bundle, image = tiny_monai_bundle(tmp_path / "tiny", [uses_hilbert]), ct_file(tmp_path / "ct.nii.gz")
    proc, report = _segment_process(image, "-m", bundle, "-o", tmp_path / "out.nii.gz")
    assert report["code"] == 0, proc.stderr
    assert "running again with MEDAI_FULL_IMPORTS=1" in proc.stderr and "scipy.signal" in proc.stderr
    assert (tmp_path / "out.nii.gz").exists()
    env = {**os.environ, "MEDAI_FULL_IMPORTS": "1"}  # asked for: no lean import, no rerun
    proc, report = _segment_process(image, "-m", bundle, "-o", tmp_path / "out2.nii.gz", env=env)
    assert report["code"] == 0 and "running again" not in proc.stderr, proc.stderr
    assert set(report["imported"]) >= {"scipy.signal"}
