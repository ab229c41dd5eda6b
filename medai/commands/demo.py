"""``medai demo``: the default model on the sample image, in a headless Slicer scene."""

from __future__ import annotations

from .progressbar import ProgressBar
from .safety import print_warnings


def register(sub) -> None:
    p = sub.add_parser("demo", help="segment the sample image with the default model; writes out/")
    p.add_argument("-o", "--output", default="out", help="output folder (default out/)")
    p.add_argument("--model", default=None, help="catalog model (default: the catalog's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..demo import run_demo

    with ProgressBar("demo") as bar:
        report = run_demo(args.output, args.model, args.device, progress=bar)
    print(f"model {report['model']} on {report['device']}")
    for k, v in report["timings_s"].items():
        print(f"  {k}: {v:.2f} s")
    for row in report["labels"]:
        print(f"  {row['label']}: {row['voxels']} voxels, {row['volume_ml']:.1f} mL")
    for k, v in report.get("check", {}).items():
        print(f"  {k}: {v}")
    print_warnings(report.get("warnings", []))
    print("written:")
    for k, v in report["files"].items():
        print(f"  {k}: {v}")
    return 0
