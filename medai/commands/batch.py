"""``medai batch INPUT -m MODEL -o OUTDIR``: a whole cohort, resumable, locally or on a Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path

from ..batch import RESULTS, SEGMENT_FORMATS, find_cases, run_batch
from .progressbar import ProgressBar
from .safety import add_trust_argument


class CohortBar(ProgressBar):
    """One bar over the cohort's cases, with the time left."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]"


def register(sub) -> None:
    p = sub.add_parser("batch", help="segment or classify a cohort (folder or CSV of cases), resumable")
    p.add_argument("input", help="folder (one case per image file, DICOM series folder or folder of channel images) or CSV: case,image[,image2...]")
    p.add_argument("--model", "-m", default=None, help="catalog name, bundle folder or .zip, model card .json, or TorchScript file (default: the catalog's default)")
    p.add_argument("-o", "--output", required=True, help="output folder: <case>.seg.nrrd (or <case>.scores.csv) and results.csv")
    p.add_argument("--task", choices=("segment", "classify"), default=None, help="default: from the model's task")
    p.add_argument("--format", default=".seg.nrrd", choices=SEGMENT_FORMATS, help="segmentation output format (default .seg.nrrd)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (or Ray actors), each loading the model once (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    add_trust_argument(p)
    p.add_argument("--ray", metavar="ADDRESS", default=None, help="run on a Ray cluster: auto, ray://host:port, or local (optional: pip install ray==2.60.0)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..models import catalog

    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give 1 or more")
    cases = find_cases(args.input)
    out = Path(args.output)
    with CohortBar(f"batch {len(cases)} case(s)") as bar:
        summary = run_batch(cases, args.model or catalog.default_model_name(), out, args.task, args.workers, args.device,
                            args.format, args.ray, bar, trust=args.trust)
    for row in summary.rows:
        if row["status"] != "ok":
            print(f"  {row['case']}: failed: {row.get('error', '')}", file=sys.stderr)
    print(f"{out / RESULTS}: {summary.ok} ok, {summary.failed} failed, {summary.skipped} done before, "
          f"{summary.total - summary.ok - summary.failed - summary.skipped} not run ({summary.task}, {summary.total} case(s))")
    if summary.interrupted:
        print("medai batch: interrupted; rerun the same command to finish the remaining cases", file=sys.stderr)
        return 130
    return 0 if summary.success else 1
