"""``medai classify IMAGE [IMAGE ...] --model MODEL -o OUT.csv [--explain HEATMAP.nii.gz] [--region MASK]``."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from ..dicom.outputs import add_input_option, write_classify_sr
from ..requests import ClassifyRequest
from .progressbar import ProgressBar
from .safety import add_trust_argument, check_outputs, print_warnings

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
    p.add_argument("--margin", type=float, default=None, help="crop margin around --region, as a fraction of its size (default: the model card's, else 0.1)")
    p.add_argument("--hotspot-threshold", type=float, default=0.5, help="hot spots are where the heatmap reaches this fraction (0-1) of its peak (default 0.5)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--sr", metavar="REPORT.dcm", default=None, help="also write a DICOM SR (TID 1500): scores, findings (DICOM input only)")
    add_input_option(p)
    add_trust_argument(p)
    p.set_defaults(handler=run)


def request_from_args(args) -> ClassifyRequest:
    """The command line's options as the request the engine gets."""
    return ClassifyRequest(device=args.device, explain=bool(args.explain), target_class=args.target_class, method=args.method,
                           margin=args.margin, hotspot_threshold=args.hotspot_threshold, trust=args.trust)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)  # never a half-written file under the user's name


def run(args) -> int:
    # imported here so that `medai --help` and `medai models` never load torch
    from ..dicom.seg import require_source
    from ..engine.classify import classify
    from ..explain.gradcam import METHODS
    from ..geometry import Volume
    from ..io import check_format_holds_grid, read_image, suffix_of, write_volume
    from ..models.loader import load_model

    if args.method not in METHODS:
        raise ValueError(f"--method {args.method!r} unknown; use one of {', '.join(METHODS)}")
    out = Path(args.output)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"output {out}: use a .csv file")
    if args.explain and suffix_of(args.explain) not in HEATMAP_SUFFIXES:
        raise ValueError(f"--explain {args.explain}: use one of {', '.join(HEATMAP_SUFFIXES)}")
    check_outputs([out, args.explain, args.findings, args.sr], [*args.images, args.region])
    volumes = [read_image(p, args.series) for p in args.images]
    if args.sr:
        for volume in volumes:
            require_source(volume, "DICOM SR")  # before the model runs
    for volume in volumes if args.explain else []:
        check_format_holds_grid(volume, args.explain)
    region = None
    if args.region:
        mask = read_image(args.region)
        region = Volume((mask.array > 0).astype("uint8") if mask.array.ndim == 3 else (mask.array > 0).any(axis=3).astype("uint8"),
                        mask.ijk_to_ras, Path(args.region).name, {"kind": "segment"})
    start = time.perf_counter()
    request = request_from_args(args)
    model = load_model(args.model, request.device, trust=request.trust)
    load_s = time.perf_counter() - start
    with ProgressBar(f"classify {Path(args.images[0]).name}") as bar:
        result = classify(model, volumes, region, request, bar)
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
    for path in write_classify_sr(args, result, model):
        print(f"{path}: DICOM SR")
    total = ", ".join(f"{k} {v:.1f}s" for k, v in {"load": load_s, **result.timings}.items() if v >= 0.05)
    print(f"{out}: {len(result.cases)} image(s) on {result.device} ({total})")
    for case in result.cases:
        best = result.ranking(case)[0]
        label = ", ".join(result.predicted_names(case)) or ("-" if result.task != "regression" else f"{best[1]:.4g} {result.unit}".strip())
        print(f"  {case.name}: {label}")
    print_warnings(result.warnings)
    return 0
