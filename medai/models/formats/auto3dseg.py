"""SlicerMONAIAuto3DSeg's model zips, run in process with that extension's own inference pipeline.

A model is a zip (or its extracted folder, or a catalog folder holding the zip) with, anywhere
inside, a folder holding ``labels.csv`` and ``model.pt``, as ``MONAIAuto3DSegLib/model_database.py``
finds them. ``model.pt`` is an Auto3DSeg SegResNet checkpoint ``{"config", "state_dict", "epoch",
"best_metric"}``; ``config`` names the network and the preprocessing.

:meth:`Auto3DSegFormat.segment` is ``Scripts/auto3dseg_segresnet_inference.py`` of that extension
restated in memory, with the same MONAI transforms in the same order (normalize modes,
orientation_ras, crop_foreground with margin 10 and ``image1`` as the source, Spacing with
min/max pixdim, SlidingWindowInfererAdapt with overlap 0.625 and Gaussian weights, Invertd, the
BraTS channel merge, the whole-head largest components), so it gives that script's labelmap.
Differences, all on purpose: volumes arrive in memory (no NRRD written or read), a second input on
another grid is resampled onto the first by world position (the script resizes it by array shape
only), progress and cancellation are reported between windows. See ``docs/models-auto3dseg.md``.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...results import Label
from ..card import CARD_NAMES, ModelCard, ModelLoadError
from . import ModelFormat, extract_model_zip, zip_names

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...engine.progress import Progress
    from ...geometry import Volume
    from ...results import SegmentationResult
    from ..loader import LoadedModel

log = logging.getLogger(__name__)

LABELS = "labels.csv"
CHECKPOINT = "model.pt"  # the extension runs <folder of labels.csv>/model.pt
OVERLAP = 0.625
CROP_MARGIN = 10
# Context names the extension falls back to when its own terminology file does not list a code.
TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
# Plain-data globals a checkpoint may hold besides tensors (numpy scalars such as best_metric).
DATA_GLOBALS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
                "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray")


# --- finding the model inside a zip or folder (torch-free) ----------------------------------------


def _model_dirs(names: list[str]) -> tuple[list[str], list[str]]:
    """Folders (inside a zip) holding labels.csv, and those holding model.pt."""
    def folders(base: str) -> list[str]:
        return sorted({n.rsplit("/", 1)[0] if "/" in n else "" for n in names if n.rsplit("/", 1)[-1] == base})
    return folders(LABELS), folders(CHECKPOINT)


def _model_dir_in(names: list[str], where: Path) -> str:
    """The one folder (zip-relative) holding both labels.csv and model.pt; a clear error otherwise."""
    labels, checkpoints = _model_dirs(names)
    if not labels:
        raise ModelLoadError(f"{where}: no {LABELS} in this Auto3DSeg model (label values, names and terminology); "
                             "download the model zip again or add the labels.csv it was trained with")
    if len(labels) > 1:
        raise ModelLoadError(f"{where}: {len(labels)} {LABELS} files ({', '.join(labels)}); an Auto3DSeg model zip holds one model")
    if labels[0] not in checkpoints:
        inside = f" (found {CHECKPOINT} in {', '.join(c or '/' for c in checkpoints)})" if checkpoints else ""
        raise ModelLoadError(f"{where}: no checkpoint {CHECKPOINT} beside {'/'.join(filter(None, [labels[0], LABELS]))}{inside}; "
                             "download the model zip again")
    return labels[0]


def _looks_like(names: list[str]) -> bool:
    labels, checkpoints = _model_dirs(names)
    return bool(labels or checkpoints) and not any(n.endswith("configs/metadata.json") for n in names)


def _folder_names(folder: Path, depth: int = 3) -> list[str]:
    """Relative file names in ``folder`` down to ``depth`` levels (a user may point at a big folder)."""
    names = []
    for level in range(1, depth + 1):
        names += [p.relative_to(folder).as_posix() for p in folder.glob("/".join(["*"] * level)) if p.is_file()]
    return names


def _zip_in(folder: Path) -> Path | None:
    """The Auto3DSeg zip a catalog folder holds (the download itself), if any."""
    zips = [p for p in sorted(folder.glob("*.zip")) if _looks_like(zip_names(p))]
    return zips[0] if len(zips) == 1 else None


def _extract(path: Path) -> Path:
    return extract_model_zip(path, "auto3dseg")


def model_folder(path: Path) -> tuple[Path, str]:
    """The folder holding labels.csv + model.pt, and the model id the extension would see in its path."""
    source = path
    if path.is_dir() and _zip_in(path) is not None and not _model_dirs(_folder_names(path))[0]:
        source = path = _zip_in(path)  # a catalog folder: the downloaded zip itself
    if path.is_file():
        inner = _model_dir_in(zip_names(path), path)
        return _extract(path) / inner, "/".join(filter(None, [path.stem, inner, CHECKPOINT]))
    inner = _model_dir_in(_folder_names(path), path)
    return path / inner, "/".join(filter(None, [source.name, inner, CHECKPOINT]))


# --- labels.csv ---------------------------------------------------------------------------------


def _codes(row: dict, field: str) -> str:
    return "^".join(row.get(f"{field}.{part}", "") or "" for part in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning"))


def read_labels(path: Path) -> list[Label]:
    """Label values, names and Slicer terminology entries from an Auto3DSeg ``labels.csv``.

    The terminology string has the layout the extension builds (category~type~modifier~anatomic
    context~region~region modifier), with DICOM's context names.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelLoadError(f"{path}: cannot read the labels ({exc})") from exc
    labels = []
    for n, row in enumerate(rows, start=2):
        try:
            value = int(row["LabelValue"])
            name = row["Name"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}, line {n}: needs an integer LabelValue and a Name") from exc
        terminology = None
        if row.get("SegmentedPropertyTypeCodeSequence.CodeValue"):
            terminology = "~".join([
                TYPE_CONTEXT, _codes(row, "SegmentedPropertyCategoryCodeSequence"),
                _codes(row, "SegmentedPropertyTypeCodeSequence"), _codes(row, "SegmentedPropertyTypeModifierCodeSequence"),
                REGION_CONTEXT, _codes(row, "AnatomicRegionSequence"), _codes(row, "AnatomicRegionModifierSequence"),
            ])
        labels.append(Label(value, name, Label.default_color(value), 0, terminology))
    if not labels:
        raise ModelLoadError(f"{path}: no labels listed")
    return sorted(labels, key=lambda lab: lab.value)


# --- the checkpoint -------------------------------------------------------------------------------


def _resolve(qualified: str) -> Any:
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def read_checkpoint(path: Path) -> dict:
    """``torch.load(weights_only=True)``, also allowing numpy scalars/arrays (plain data); never full pickle."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        needed = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    code = [g for g in needed if g not in DATA_GLOBALS and not g.startswith("numpy.dtypes.")]
    if code:
        raise ModelLoadError(
            f"{path}: reading this checkpoint needs full pickle, which can run code (it refers to {', '.join(code[:5])}). "
            "MedAI reads Auto3DSeg checkpoints with torch.load(weights_only=True) only; load it only from a source you trust, "
            "or re-save it as {'config': <plain dict>, 'state_dict': model.state_dict()}")
    allowed: list = [(_resolve(g), g) for g in needed]
    if "numpy.dtype" in needed:  # a dtype unpickles into its numpy.dtypes.*DType class, which torch checks too
        import numpy as np

        allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ModelLoadError(f"{path}: cannot read this checkpoint with torch.load(weights_only=True) "
                                 f"({str(exc).splitlines()[-1][:200]}); it needs full pickle, which MedAI does not do") from exc


REQUIRED = ("network", "roi_size", "normalize_mode", "intensity_bounds")


def check_config(checkpoint: Any, path: Path) -> dict:
    """The checkpoint's ``config``, with what the inference script reads from it."""
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise ModelLoadError(f"{path}: no 'config' in the checkpoint; not an Auto3DSeg SegResNet model")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise ModelLoadError(f"{path}: no 'state_dict' in the checkpoint")
    config = checkpoint["config"]
    missing = [k for k in REQUIRED if not isinstance(config, dict) or k not in config]
    if missing:
        raise ModelLoadError(f"{path}: the checkpoint's config lacks {', '.join(missing)}")
    if not isinstance(config["network"], dict) or "_target_" not in config["network"]:
        raise ModelLoadError(f"{path}: config['network'] must be a MONAI network config with '_target_'")
    return config


# --- catalog facts (input names, licence) for known models ------------------------------------------


def catalog_entry(model_id: str) -> dict | None:
    """This model's entry in ``Catalog/models.d/auto3dseg.json``, matched by its zip name."""
    from .. import catalog

    try:
        entries = json.loads((catalog.catalog_path().parent / "models.d" / "auto3dseg.json").read_text())["models"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None
    first = model_id.split("/")[0]
    for entry in entries:
        zips = [entry["source"]["url"]] + [v["url"] for v in entry.get("previous_versions", [])]
        if first in (entry["name"], *(Path(u).stem for u in zips)):
            return entry
    return None


def input_names(path: Path) -> list[str]:
    """Names of a model's inputs in channel order (e.g. T2F, T1C, T1N, T2W), from the catalog; empty when unknown.

    Torch-free, for input selectors named after the model's inputs before anything is loaded.
    """
    path = Path(path)
    if path.is_dir() and _zip_in(path) is not None:
        path = _zip_in(path)
    entry = catalog_entry(path.stem if path.is_file() else path.name)
    return [str(i.get("name") or f"input {n + 1}") for n, i in enumerate((entry or {}).get("inputs") or [])]


# --- the format -----------------------------------------------------------------------------------


class Auto3DSegFormat(ModelFormat):
    name = "auto3dseg"
    summary = "a SlicerMONAIAuto3DSeg model .zip or folder (labels.csv + model.pt with config and state_dict)"

    def recognise(self, path: Path) -> bool:
        if path.is_dir():
            if any((path / n).exists() for n in CARD_NAMES) or (path / "configs" / "metadata.json").exists():
                return False
            return _zip_in(path) is not None or _looks_like(_folder_names(path))
        return path.suffix.lower() == ".zip" and _looks_like(zip_names(path))

    def check(self, path: Path) -> None:
        if path.is_dir() and _zip_in(path) is not None:
            path = _zip_in(path)
        _model_dir_in(zip_names(path) if path.is_file() else _folder_names(path), path)

    def load(self, path: Path, device: torch.device) -> LoadedModel:
        from ..loader import LoadedModel, build_network, load_weights

        folder, model_id = model_folder(path)
        labels = read_labels(folder / LABELS)
        ckpt_path = folder / CHECKPOINT
        checkpoint = read_checkpoint(ckpt_path)
        config = check_config(checkpoint, ckpt_path)
        where = f"Auto3DSeg model {model_id}"
        net = build_network(config["network"], where)
        load_weights(net, checkpoint["state_dict"], True, str(ckpt_path))
        import torch

        net = net.to(device=device, memory_format=torch.channels_last_3d).eval()
        entry = catalog_entry(model_id) or {}
        channels = int(config["network"].get("in_channels", 1))
        if channels > 1 and "brats" not in model_id and len(config.get("extra_modalities") or {}) != channels - 1:
            raise ModelLoadError(f"{ckpt_path}: {channels} input channels but config['extra_modalities'] names "
                                 f"{len(config.get('extra_modalities') or {})} extra input(s); the script needs one per extra input")
        inputs = entry.get("inputs") or [{"channel": c, "name": f"image {c + 1}"} for c in range(channels)]
        if len(inputs) != channels:
            raise ModelLoadError(f"{where}: the network takes {channels} input channel(s) but the catalog lists {len(inputs)} inputs")
        card = ModelCard(
            name=entry.get("name") or model_id.split("/")[0], task="segmentation", stages=[], labels=labels, inputs=inputs,
            root=folder, title=entry.get("title", ""), description=entry.get("description", ""),
            license=entry.get("license", ""),
            raw={"config": config, "model_id": model_id, "epoch": checkpoint.get("epoch", 0),
                 "best_metric": checkpoint.get("best_metric", 0), "license_flag": entry.get("license_flag")},
        )
        return LoadedModel(card, [net], device, self.name, folder)

    def segment(self, model: LoadedModel, volumes: list[Volume], progress: Progress) -> SegmentationResult:
        return segment_auto3dseg(model, volumes, progress)


FORMAT = Auto3DSegFormat()


# --- inference: auto3dseg_segresnet_inference.py restated in memory -----------------------------------------


def normalization(key: str, mode: str, bounds: list[float]) -> list:
    """The script's ``_add_normalization_transforms``: the transforms for one normalize mode."""
    import torch
    from monai.transforms import Lambdad, NormalizeIntensityd, ScaleIntensityRanged

    if mode == "none":
        return []
    if mode in ("range", "ct"):
        return [ScaleIntensityRanged(keys=key, a_min=bounds[0], a_max=bounds[1], b_min=-1, b_max=1, clip=False),
                Lambdad(keys=key, func=lambda x: torch.sigmoid(x))]
    if mode in ("meanstd", "mri"):
        return [NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True)]
    if mode == "meanstdtanh":
        return [NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True),
                Lambdad(keys=key, func=lambda x: 3 * torch.tanh(x / 3))]
    if mode == "pet":
        return [Lambdad(keys=key, func=lambda x: torch.sigmoid((x - x.min()) / x.std()))]
    raise ModelLoadError(f"normalize_mode {mode!r} unsupported (the Auto3DSeg script knows none, range, ct, meanstd, mri, meanstdtanh, pet)")


def spatial_transforms(config: dict, crop_source: str) -> list:
    """orientation_ras, crop_foreground (margin 10) and resample_resolution (min/max pixdim), as the script orders them."""
    import numpy as np
    import torch
    from monai.transforms import CropForegroundd, Orientationd, Spacingd

    ts: list = []
    if config.get("orientation_ras", False):
        ts.append(Orientationd(keys="image", axcodes="RAS"))
    if config.get("crop_foreground", True):
        ts.append(CropForegroundd(keys="image", source_key=crop_source, margin=CROP_MARGIN, allow_smaller=True))
    if config.get("resample_resolution", None) is not None:
        pixdim = list(config["resample_resolution"])
        ts.append(Spacingd(keys=["image"], pixdim=list(pixdim), mode=["bilinear"], dtype=torch.float,
                           min_pixdim=np.array(pixdim) * 0.75, max_pixdim=np.array(pixdim) * 1.25, allow_missing_keys=True))
    return ts


def input_transforms(config: dict, keys: list[str], brats: bool):
    """The script's preprocessing Compose for the BraTS, single-input and multi-input cases."""
    import torch
    from monai.transforms import Compose, ConcatItemsd, EnsureTyped

    mode, bounds = config["normalize_mode"], config["intensity_bounds"]
    ensure = EnsureTyped(keys="image", data_type="tensor", dtype=torch.float, allow_missing_keys=True)
    if brats:
        return Compose([ensure, *spatial_transforms(config, "image"), *normalization("image", mode, bounds)])
    if len(keys) == 1:
        ts = [ConcatItemsd(keys=keys, name="image", dim=0), ensure, *normalization("image", mode, bounds)]
    else:
        modes = [mode] + list(OrderedDict(config["extra_modalities"]).values())
        ts = [t for key, m in zip(keys, modes) for t in normalization(key, m, bounds)]
        ts += [ConcatItemsd(keys=keys, name="image", dim=0), ensure]
    return Compose(ts + spatial_transforms(config, keys[0]))


def logits_to_pred(logits: Any, sigmoid: bool) -> torch.Tensor:
    """The script's ``logits2pred``: threshold 0.5 after a sigmoid, else argmax of the softmax."""
    import torch

    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    if sigmoid:
        return torch.sigmoid(logits) >= 0.5
    return torch.argmax(torch.softmax(logits, dim=1), dim=1, keepdim=True).to(dtype=torch.uint8)


def brats_merge(seg: torch.Tensor) -> torch.Tensor:
    """Three overlapping BraTS channels (whole tumour, core, enhancing) -> one labelmap 2/1/3."""
    import torch

    merged = 2 * seg.any(0).to(dtype=torch.uint8)
    merged[seg[1:].any(0)] = 1
    merged[seg[2:].any(0)] = 3
    return merged


def _input_dict(volumes: list[Volume], keys: list[str], brats: bool, expected: int, name: str) -> dict:
    """The loaded inputs as the script's LoadImaged gives them: channel-first MetaTensors with a RAS affine."""
    import torch

    from ...engine.common import on_first_grid
    from ...geometry import GeometryError, to_metatensor

    if len(volumes) != expected:
        raise GeometryError(f"model {name} takes {expected} input volume(s), got {len(volumes)} "
                            f"({', '.join(v.name for v in volumes)}); select matching inputs")
    aligned = [to_metatensor(v) for v in on_first_grid(volumes)]
    if brats:  # LoadImaged of a list of files: one image, the files as channels, the first file's metadata
        from monai.data import MetaTensor

        return {"image": MetaTensor(torch.cat([a.as_tensor() for a in aligned], dim=0), meta=dict(aligned[0].meta))}
    return dict(zip(keys, aligned))


def crop_loss(config: dict, transformed: dict, brats: bool) -> int:
    """Foreground voxels that the script's crop drops (0 when its crop is sound).

    The script takes the crop box from ``image1`` as stored but crops the reoriented ``image``;
    for a volume not stored close to RAS the box is mirrored and can miss the body.
    """
    if brats or not config.get("orientation_ras", False) or not config.get("crop_foreground", True):
        return 0
    import torch
    from monai.transforms import Orientation
    from monai.transforms.utils import generate_spatial_bounding_box

    source = transformed["image1"]
    start, end = generate_spatial_bounding_box(source, margin=CROP_MARGIN, allow_smaller=True)
    foreground = Orientation(axcodes="RAS")((source > 0).any(0, keepdim=True).to(torch.uint8)).as_tensor()[0].bool()
    inside = foreground[tuple(slice(max(0, a), b) for a, b in zip(start, end))].sum()
    return int(foreground.sum() - inside)


def segment_auto3dseg(model: LoadedModel, volumes: list[Volume], progress: Progress) -> SegmentationResult:
    """Run an Auto3DSeg model exactly as ``auto3dseg_segresnet_inference.py`` does, on volumes in memory."""
    import numpy as np
    import torch
    from monai.data import decollate_batch, list_data_collate
    from monai.inferers import SlidingWindowInfererAdapt
    from monai.transforms import Compose, Invertd, KeepLargestConnectedComponentd
    from monai.utils import convert_to_dst_type

    from ...engine.common import autocast
    from ...engine.segment import _count_windows, _Predictor, require_3d
    from ...geometry import array_from_ijk
    from ...results import SegmentationResult

    config, model_id = model.card.raw["config"], model.card.raw["model_id"]
    brats, whole_head = "brats" in model_id, "whole-head" in model_id  # the script's own tests on the model path
    ref = volumes[0]
    device = model.device
    with progress.stage("preprocess", 0.15), torch.no_grad():
        require_3d(volumes, model.name)
        keys = [f"image{n + 1}" for n in range(len(volumes))]
        data = _input_dict(volumes, keys, brats, model.card.num_inputs, model.name)
        inf_transform = input_transforms(config, keys, brats)
        transformed = inf_transform(data)
        lost = crop_loss(config, transformed, brats)
        if lost:
            log.warning("%s: SlicerMONAIAuto3DSeg's crop (box from the first input as stored, applied after reorienting to RAS) "
                        "leaves %d foreground voxels of %s outside; MedAI reproduces the extension's result, which may miss "
                        "structures there. Resampling the volume to RAS axes first avoids this.", model.name, lost, ref.name)
        batch = list_data_collate([transformed])
        image = batch["image"].as_subclass(torch.Tensor).to(memory_format=torch.channels_last_3d, device=device)
    with progress.stage("inference", 0.7), torch.no_grad():
        roi = list(config["roi_size"])
        inferer = SlidingWindowInfererAdapt(roi_size=roi, sw_batch_size=1, overlap=OVERLAP, mode="gaussian",
                                            cache_roi_weight_map=False, progress=False)
        predictor = _Predictor(model.networks[0], progress, _count_windows(tuple(image.shape[2:]), roi, OVERLAP, 1))
        with autocast(device):
            logits = inferer(inputs=image, network=predictor)
        try:
            pred = logits_to_pred(logits, bool(config.get("sigmoid", False)))
        except RuntimeError:
            if not torch.as_tensor(logits).is_cuda:
                raise
            pred = logits_to_pred(logits.cpu(), bool(config.get("sigmoid", False)))  # as the script retries
        del logits
    with progress.stage("postprocess", 0.15), torch.no_grad():
        post = [Invertd(keys="pred", orig_keys="image", transform=inf_transform, nearest_interp=True)]
        if whole_head and not brats:
            post.append(KeepLargestConnectedComponentd(keys="pred", num_components=2))
        batch["pred"] = convert_to_dst_type(pred, batch["image"], dtype=pred.dtype, device=pred.device)[0]
        seg = [Compose(post)(x)["pred"] for x in decollate_batch(batch)][0]
        seg = brats_merge(seg) if brats else seg[0]
        out = seg.cpu().numpy().astype(np.uint8)
        if out.shape != tuple(ref.shape_ijk):
            raise RuntimeError(f"model {model.name}: the inverted labelmap has shape {out.shape}, not the input's {ref.shape_ijk}")
        layer = array_from_ijk(out)
    return SegmentationResult(ref, [layer], list(model.card.labels), model.name, str(device), dict(progress.timings))
