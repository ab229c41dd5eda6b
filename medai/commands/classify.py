"""``medai classify IMAGE [IMAGE ...] --model MODEL -o OUT.csv [--explain HEATMAP.nii.gz] [--region MASK]``."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from .progressbar import ProgressBar

HEATMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def register(sub) -> None:
    p = sub.add_parser("classify", help="classify image files (scores, explanation heatmap, findings)")
    p.add_argument("images", nargs="+", help="input image(s): one case per image, or the channels of one case when the model takes that many")
    p.add_argument("--model", "-m", required=True, help="bundle folder or .zip, model card .json, TorchScript or .onnx file (card beside it), or catalog name")
    p.add_argument("-o", "--output", required=True, help="CSV: one row per image with the predicted class and each class's score")
    p.add_argument("--explain", metavar="HEATMAP", help="write the explanation heatmap on the input's grid (.nii.gz, .nrrd, .mha); several cases get _<name> appended")
    p.add_argument("--method", default="gradcam", help="explanation method: gradcam, gradcam++ or occlusion (occlusion is slow; the only one for ONNX/TorchScript)")
    p.add_argument("--target-class", default=None, help="class (name or index) to explain; default: the predicted class")
    p.add_argument("--region", metavar="MASK", help="classify only this region (non-zero voxels of a mask image), cropped with a margin")
    p.add_argument("--findings", metavar="CSV", help="write the localised findings (hot spots, region components) as CSV")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.set_defaults(handler=run)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def run(args) -> int:
    # imported here so that `medai --help` and `medai models` never load torch
    from ..engine.classify import classify
    from ..explain.gradcam import METHODS
    from ..geometry import Volume
    from ..io import read_image, suffix_of, write_volume
    from ..models.loader import load_model

    if args.method not in METHODS:
        raise ValueError(f"--method {args.method!r} unknown; use one of {', '.join(METHODS)}")
    out = Path(args.output)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"output {out}: use a .csv file")
    if args.explain and suffix_of(args.explain) not in HEATMAP_SUFFIXES:
        raise ValueError(f"--explain {args.explain}: use one of {', '.join(HEATMAP_SUFFIXES)}")
    volumes = [read_image(p) for p in args.images]
    region = None
    if args.region:
        mask = read_image(args.region)
        region = Volume((mask.array > 0).astype("uint8") if mask.array.ndim == 3 else (mask.array > 0).any(axis=3).astype("uint8"),
                        mask.ijk_to_ras, Path(args.region).name, {"kind": "segment"})
    start = time.perf_counter()
    model = load_model(args.model, args.device)
    load_s = time.perf_counter() - start
    with ProgressBar(f"classify {Path(args.images[0]).name}") as bar:
        result = classify(model, volumes, region, bool(args.explain), args.target_class, args.method, bar)
    _write_csv(out, result.rows())
    if args.explain:
        base = Path(args.explain)
        suffix = suffix_of(base)
        for case in result.cases:
            if case.heatmap is None:
                continue
            path = base if len(result.cases) == 1 else base.with_name(base.name[: -len(suffix)] + f"_{case.name}{suffix}")
            write_volume(case.reference, path, case.heatmap)
            print(f"{path}: {result.method_title} heatmap of {result.class_names[case.heatmap_class]}")
    if args.findings:
        _write_csv(Path(args.findings), [
            {"image": f.case, "kind": f.kind, "finding": f.name, "R": f.position_ras[0], "A": f.position_ras[1], "S": f.position_ras[2],
             "size_ml": f.size_ml, "peak_score": f.peak_score} for f in result.findings])
    total = ", ".join(f"{k} {v:.1f}s" for k, v in {"load": load_s, **result.timings}.items() if v >= 0.05)
    print(f"{out}: {len(result.cases)} image(s) on {result.device} ({total})")
    for case in result.cases:
        best = result.ranking(case)[0]
        label = ", ".join(result.predicted_names(case)) or ("-" if result.task != "regression" else f"{best[1]:.4g} {result.unit}".strip())
        print(f"  {case.name}: {label}")
    for warning in result.warnings:
        print(f"  note: {warning}")
    return 0
