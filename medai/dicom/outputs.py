"""The command line's DICOM options: ``--series`` for inputs, ``-o OUT.dcm`` (SEG) and ``--sr REPORT.dcm``."""

from __future__ import annotations

from pathlib import Path

from . import ENCODINGS


def add_input_option(parser) -> None:
    parser.add_argument("--series", metavar="UID", default=None,
                        help="SeriesInstanceUID to read from a DICOM folder holding several series")


def add_segment_options(parser) -> None:
    add_input_option(parser)
    parser.add_argument("--sr", metavar="REPORT.dcm", default=None,
                        help="also write a DICOM SR (TID 1500) of the segment volumes (DICOM input only)")
    parser.add_argument("--seg-encoding", default="auto", choices=ENCODINGS,
                        help="DICOM SEG encoding for -o OUT.dcm: binary (auto) or labelmap (non-overlapping labels)")


def _sr_path(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".dcm":
        raise ValueError(f"--sr {out}: a DICOM SR file name ends in .dcm")
    return out


def write_segment_outputs(args, result, model, out: Path) -> list[Path]:
    """``-o OUT.dcm`` as DICOM SEG and ``--sr`` as DICOM SR (the other formats are written by the command itself)."""
    from .codes import algorithm_of
    from .seg import write_seg
    from .sr import write_segmentation_sr

    algorithm = algorithm_of(model)
    written = []
    seg_path = None
    if out.suffix.lower() == ".dcm":
        seg_path = write_seg(result, out, algorithm, args.seg_encoding)
        written.append(seg_path)
    if args.sr:
        written.append(write_segmentation_sr(result, _sr_path(args.sr), algorithm, seg_path))
    return written


def write_classify_sr(args, result, model) -> list[Path]:
    """``--sr REPORT.dcm``: one DICOM SR per case (``_<case>`` appended when there are several)."""
    from .codes import algorithm_of
    from .sr import write_classification_sr

    if not args.sr:
        return []
    base = _sr_path(args.sr)
    written = []
    for n, case in enumerate(result.cases):
        path = base if len(result.cases) == 1 else base.with_name(f"{base.stem}_{case.name}{base.suffix}")
        written.append(write_classification_sr(result, path, algorithm_of(model), n))
    return written
