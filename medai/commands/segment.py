"""``medai segment IMAGE [IMAGE ...] --model MODEL -o OUT``."""

from __future__ import annotations

import time
from pathlib import Path

from ..dicom.outputs import add_segment_options, write_segment_outputs
from .progressbar import ProgressBar
from .safety import add_trust_argument, check_outputs, print_warnings

OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment image files with a model")
    p.add_argument("images", nargs="+", help="input image(s): NRRD, NIfTI, MHA or a DICOM series folder; several = channels, first defines the grid")
    p.add_argument("--model", "-m", default=None, help="catalog name, bundle folder or .zip, model card .json, or TorchScript file (default: the catalog's default)")
    p.add_argument("-o", "--output", required=True, help="output: .seg.nrrd (named segments), .nii.gz, .nrrd or .mha labelmap, or .dcm (DICOM SEG; DICOM input only)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    add_segment_options(p)
    add_trust_argument(p)
    p.set_defaults(handler=run)


def _load(args):
    """The model (torch and MONAI imported here, in the loading thread)."""
    from ..models import catalog
    from ..models.loader import load_model

    return load_model(args.model or catalog.default_model_name(), args.device, None, args.trust)


def run(args) -> int:
    # imported here so that `medai --help` and `medai models` never load torch
    from concurrent.futures import ThreadPoolExecutor

    from . import fast_start
    from ..io import suffix_of

    out = Path(args.output)
    if suffix_of(out) not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {out}: use one of {', '.join(OUTPUT_SUFFIXES)}")
    check_outputs([out, args.sr], args.images)
    start = time.perf_counter()
    with fast_start.loading(), ThreadPoolExecutor(1) as pool:
        loading = pool.submit(_load, args)  # torch, MONAI and the model load while the images are read and checked
        try:
            from ..dicom.seg import require_source
            from ..io import check_format_holds_grid, read_image

            volumes = [read_image(p, args.series) for p in args.images]
            if out.suffix.lower() == ".dcm" or args.sr:
                require_source(volumes[0], "DICOM SEG/SR")  # before the model runs
            check_format_holds_grid(volumes[0], out)
        except BaseException:
            loading.cancel()  # a load already under way finishes; its result is dropped
            raise
        model = loading.result()
        from ..engine.segment import segment
        from ..results import write_segmentation
    load_s = time.perf_counter() - start
    with ProgressBar(f"segment {Path(args.images[0]).name}") as bar:
        result = segment(model, volumes, bar)
    if out.suffix.lower() != ".dcm":
        write_segmentation(result, out)
    for extra in write_segment_outputs(args, result, model, out):
        if extra != out:
            print(f"{extra}: DICOM SR")
    total = ", ".join(f"{k} {v:.1f}s" for k, v in {"read+load": load_s, **result.timings}.items())
    print(f"{out}: {len(result.labels)} label(s) on {result.device} ({total})")
    for row in result.summary():
        print(f"  {row['label']}: {row['voxels']} voxels, {row['volume_ml']:.1f} mL")
    print_warnings(result.warnings)
    return 0
