"""Model formats as plugins: one reader per format behind one interface, asked through one registry.

A format recognises a path (folder, zip or file), loads it into a
:class:`~medai.models.loader.LoadedModel` (checking what it can when the file is read, not
mid-run) and runs it. Adding a format means one new module in this package that defines
``FORMAT`` (a :class:`ModelFormat`) and one line in :data:`FORMAT_MODULES`; the loader, the
catalog, the CLI and the Slicer panels ask :func:`format_for`, never a format directly.

This module is torch-free: recognising a path needs no PyTorch (the panels use it before
PyTorch is installed); a format's module is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..card import ModelLoadError, _card_beside

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...engine.progress import Progress
    from ...geometry import Volume
    from ...results import SegmentationResult
    from ..loader import LoadedModel

# Asked in this order; the first format that recognises a path reads it.
FORMAT_MODULES = ("bundle", "auto3dseg", "nnunet", "card", "torchscript", "onnx")


class ModelFormat:
    """One model format: how to recognise it, load it and run it."""

    name: str = ""
    summary: str = ""  # what a user gives, e.g. "a MONAI Bundle folder or .zip (configs/metadata.json)"

    def recognise(self, path: Path) -> bool:
        """True when ``path`` is a model of this format (cheap: names and small files only)."""
        raise NotImplementedError

    def check(self, path: Path) -> None:
        """Torch-free checks of a recognised path that can fail early (the panel's Import model...)."""

    def load(self, path: Path, device: "torch.device") -> "LoadedModel":
        """Read and check the model; errors name the file and what to do about it."""
        raise NotImplementedError

    def segment(self, model: "LoadedModel", volumes: list["Volume"], progress: "Progress") -> "SegmentationResult":
        """Segment ``volumes`` (the first defines the output grid); default: the model-card engine."""
        from ...engine.segment import segment_with_card

        return segment_with_card(model, volumes, progress)


def zip_names(path: Path) -> list[str]:
    """The file names inside a zip (empty when ``path`` is not a readable zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [n for n in archive.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError):
        return []


def card_beside(path: Path, what: str) -> Path:
    """The model card beside a network file (``model.ts`` + ``model.json``); an error saying so when missing."""
    beside = _card_beside(path)
    if beside is None:
        raise ModelLoadError(f"{path}: a {path.suffix} model needs a model card beside it ({path.with_suffix('.json').name}) naming its {what}")
    return beside


def extract_model_zip(path: Path, kind: str) -> Path:
    """Unpack a model zip into ``<cache>/<kind>/<stem>-<hash>`` once per content hash, refusing entries that escape it."""
    from ...fetch import cache_dir, safe_extract_member, sha256_of

    dest = cache_dir() / kind / f"{path.stem}-{sha256_of(path)[:16]}"
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            for n in names:
                if n.startswith("/") or ".." in Path(n).parts:
                    raise ModelLoadError(f"{path}: entry {n!r} points outside the model folder; refusing this zip")
            if not (dest / ".complete").exists():
                for n in names:
                    safe_extract_member(archive, n, dest / n)
                (dest / ".complete").write_text("ok")
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{path}: not a valid zip file; download the model again") from exc
    return dest


def all_formats() -> list[ModelFormat]:
    """Every registered format, in recognition order."""
    return [importlib.import_module(f"{__name__}.{name}").FORMAT for name in FORMAT_MODULES]


def format_for(path: str | Path) -> ModelFormat:
    """The format that reads ``path``; a clear error listing what MedAI reads when none does."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model {path}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".zip" and not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path}: not a valid zip file; download or export the model again")
    formats = all_formats()
    for fmt in formats:
        if fmt.recognise(path):
            return fmt
    kinds = "; ".join(f.summary for f in formats)
    raise ModelLoadError(f"{path}: not a model format MedAI reads. Give one of: {kinds}")
