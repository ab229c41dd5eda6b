"""``medai segment IMAGE [IMAGE ...] --model MODEL -o OUT``."""

from __future__ import annotations

import time
from pathlib import Path

from .progressbar import ProgressBar

OUTPUT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def register(sub) -> None:
    p = sub.add_parser("segment", help="segment image files with a model")
    p.add_argument("images", nargs="+", help="input image(s): NRRD, NIfTI, MHA or a DICOM series folder; several = channels, first defines the grid")
    p.add_argument("--model", "-m", default=None, help="catalog name, bundle folder or .zip, model card .json, or TorchScript file (default: the catalog's default)")
    p.add_argument("-o", "--output", required=True, help="output: .seg.nrrd (named segments), .nii.gz, .nrrd or .mha labelmap")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.set_defaults(handler=run)


def run(args) -> int:
    # imported here so that `medai --help` and `medai models` never load torch
    from concurrent.futures import ThreadPoolExecutor

    from ..engine.segment import segment
    from ..io import read_image, suffix_of
    from ..models import catalog
    from ..models.loader import load_model
    from ..results import write_segmentation

    out = Path(args.output)
    if suffix_of(out) not in OUTPUT_SUFFIXES:
        raise ValueError(f"output {out}: use one of {', '.join(OUTPUT_SUFFIXES)}")
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:  # the model loads while the images are read
        loading = pool.submit(load_model, args.model or catalog.default_model_name(), args.device)
        try:
            volumes = [read_image(p) for p in args.images]
        except BaseException:
            loading.cancel()  # a load already under way finishes; its result is dropped
            raise
        model = loading.result()
    load_s = time.perf_counter() - start
    with ProgressBar(f"segment {Path(args.images[0]).name}") as bar:
        result = segment(model, volumes, bar)
    write_segmentation(result, out)
    total = ", ".join(f"{k} {v:.1f}s" for k, v in {"read+load": load_s, **result.timings}.items())
    print(f"{out}: {len(result.labels)} label(s) on {result.device} ({total})")
    for row in result.summary():
        print(f"  {row['label']}: {row['voxels']} voxels, {row['volume_ml']:.1f} mL")
    return 0
