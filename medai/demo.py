"""The demo: the default model segments the MNI152 T1 template inside a headless Slicer scene.

Writes, under ``out/``: ``demo.mrb`` (scene with the input volume and the segmentation),
``segmentation.seg.nrrd``, ``overlay.png`` and ``report.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .io import read_image
from .metrics import dice
from .models import catalog
from .models.loader import load_model
from .overlay import overlay_png
from .results import write_segmentation

# Plausible intracranial / brain-mask volume of an adult head (mL); the MNI152 template is
# built from enlarged, registered brains, so it sits at the upper end.
PLAUSIBLE_MASK_ML = (1000.0, 2300.0)


def tissue_coverage(mask: np.ndarray, gm: np.ndarray, wm: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """Fraction of grey+white matter voxels (probability sum > threshold) inside ``mask``, and their volume in voxels.

    ``gm``/``wm`` are probabilities in [0, 1], or uint8 maps scaled 0..255 as nilearn ships them.
    """
    scale = 255.0 if gm.dtype == np.uint8 else 1.0
    tissue = (gm.astype(np.float32) + wm.astype(np.float32)) / scale > threshold
    return float((mask & tissue).sum() / max(tissue.sum(), 1)), float(tissue.sum())


def mni_checks(result, files: dict) -> dict:
    """Sanity checks against the MNI152 template's own tissue maps (what they can show, said plainly).

    A "brain" label must cover grey + white matter and have a plausible volume; "grey matter" /
    "white matter" labels are compared (Dice) with the thresholded maps, which for MedAI's shipped
    tissue models were also their (derived) training labels, so this is not an independent test.
    """
    gm = read_image(files["mni152_gm.nii.gz"]).array.astype(np.float32) / 255.0
    wm = read_image(files["mni152_wm.nii.gz"]).array.astype(np.float32) / 255.0
    check: dict = {}
    for label in result.labels:
        mask = result.mask(label)
        name = label.name.lower()
        if name == "brain":
            coverage, tissue_vox = tissue_coverage(mask, gm, wm)
            volume_ml = result.volume_ml(label)
            check.update({
                "grey+white matter covered": round(coverage, 5),
                "grey+white matter volume_ml": round(tissue_vox * result.reference.voxel_volume_ml, 1),
                "mask volume_ml": round(volume_ml, 1),
                "mask volume plausible": bool(PLAUSIBLE_MASK_ML[0] <= volume_ml <= PLAUSIBLE_MASK_ML[1]),
            })
        elif name in ("grey matter", "white matter"):
            own, other = (gm, wm) if name == "grey matter" else (wm, gm)
            truth = (own > 0.5) & (own >= other)
            check[f"{name} Dice vs template map (training-derived labels, not independent)"] = round(dice(mask, truth), 4)
    return check


def run_demo(out_dir: str | Path = "out", model_name: str | None = None, device: str = "auto", progress=None) -> dict:
    from .slicer.headless import make_headless_slicer
    from .slicer import scene as bridge
    from .slicer.segment_logic import SegmentLogic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_name = model_name or catalog.default_model_name()
    entry = catalog.find_model(model_name)
    sample_name = entry.sample if entry and entry.sample else "mni152-t1"
    t0 = time.perf_counter()
    files = catalog.fetch_sample(sample_name)
    image_file = files[catalog.find_sample(sample_name).image]
    model = load_model(model_name, device)
    fetch_s = time.perf_counter() - t0

    scene = make_headless_slicer()
    volume_node = bridge.volume_node_from_volume(scene, read_image(image_file), name="MNI152_T1")
    logic = SegmentLogic()
    seg_node = logic.segment([volume_node], model, device=device, progress=progress)
    result = logic.last_result
    seg_node.SetName(f"MNI152_T1 {model.name}")

    paths = {
        "scene": out / "demo.mrb",
        "segmentation": out / "segmentation.seg.nrrd",
        "overlay": out / "overlay.png",
        "report": out / "report.md",
    }
    bridge.save_scene_bundle(scene, str(paths["scene"]))
    write_segmentation(result, paths["segmentation"])
    overlay_png(result, paths["overlay"])

    rows = result.summary()
    report = {
        "model": model.name, "device": result.device, "input": str(image_file),
        "timings_s": {"fetch+load": round(fetch_s, 2), **{k: round(v, 2) for k, v in result.timings.items()}},
        "labels": rows,
        "warnings": list(result.warnings),  # doubts about the input or the result (medai.checks), e.g. an implausible volume
    }
    if "mni152_gm.nii.gz" in files:
        report["check"] = mni_checks(result, files)
    lines = [f"# MedAI demo: {model.name} on {Path(image_file).name}", "", f"- device: {result.device}"]
    lines += [f"- {k}: {v:.2f} s" for k, v in report["timings_s"].items()]
    lines += [f"- {r['label']}: {r['voxels']} voxels, {r['volume_ml']:.1f} mL" for r in rows]
    lines += [f"- {k}: {v}" for k, v in report.get("check", {}).items()]
    lines += [f"- **warning**: {w}" for w in report["warnings"]]
    lines += ["", "```json", json.dumps(report, indent=2), "```", ""]
    paths["report"].write_text("\n".join(lines))
    report["files"] = {k: str(v) for k, v in paths.items()}
    return report
