"""nnU-Net v2 result folders (TotalSegmentator's included), run in process by nnunetv2's own ``nnUNetPredictor``.

A model is a folder holding ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth``
(nnU-Net's ``Trainer__Plans__configuration`` folder), a ``DatasetXXX_Name`` folder holding one
such folder, or a ``.zip`` of either (unpacked once into the cache). Recognition reads names only
(no torch, no nnunetv2).

Inference is nnU-Net's: ``initialize_from_trained_model_folder`` (folds, checkpoint) and
``predict_single_npy_array`` (its preprocessing, sliding windows with Gaussian weighting and
mirroring, fold ensembling, resampling back). :func:`nnunet_input` feeds it the array and the
``{'spacing': ...}`` properties that nnU-Net's ``SimpleITKIO`` reads from a file of the same
volume, so the labelmap equals ``predict_from_files`` on that file. Options (:data:`DEFAULTS`)
come from ``medai_nnunet.json`` in the result folder or :func:`configure`; see ``docs/nnunet.md``.

nnU-Net checkpoints are full pickles (``torch.load(weights_only=False)``), which can run code:
they are loaded only when trusted (:mod:`medai.models.trust`: ``--trust``, ``trust=True``, a
remembered decision; see :func:`trusted`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...results import Label
from ..card import ModelCard, ModelLoadError
from . import ModelFormat, extract_model_zip, zip_names

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...engine.progress import Progress
    from ...geometry import Volume
    from ...results import SegmentationResult
    from ..loader import LoadedModel

# nnunetv2 and what its prediction path imports, installed with --no-deps (its full dependency set
# would replace torch and pull torchvision, timm and CUDA wheels); requirements-nnunet.txt lists the same.
NNUNET_REQUIREMENTS = (
    "nnunetv2==2.8.1", "acvl_utils==0.2.6", "dynamic_network_architectures==0.4.4", "batchgenerators==0.25.5",
    "batchgeneratorsv2==0.3.6", "threadpoolctl==3.8.0", "blosc2==4.14.1", "numexpr==2.14.2", "msgpack==1.2.4",
    "ndindex==1.10.1", "httpx==0.28.1", "idna==3.20", "pandas==3.1.1", "connected-components-3d==4.1.1",
    "seaborn==0.13.2", "scikit-learn==1.9.1", "joblib==1.6.0", "cloudpickle==3.1.3", "narwhals==2.29.0",
)
INSTALL_HINT = "python -m pip install --no-deps " + " ".join(NNUNET_REQUIREMENTS)
OPTIONS_FILE = "medai_nnunet.json"
# What a run may change; medai_nnunet.json in the result folder or configure() sets them.
DEFAULTS: dict[str, Any] = {
    "folds": None,  # None: every fold_N present (nnU-Net's default); or e.g. [0, 1] or ["all"]
    "checkpoint": "checkpoint_final.pth",
    "use_mirroring": True,  # test-time mirroring along the axes the trainer allows
    "tile_step_size": 0.5,  # sliding-window step as a fraction of the patch (nnU-Net's default)
    "device": None,  # None: the device the model was loaded on; or "cpu", "cuda:N", "mps"
    "trusted": False,  # the caller trusts the checkpoints (full pickle); only from code, never from the file
}
log = logging.getLogger(__name__)
_FOLD = re.compile(r"^fold_(\d+|all)$")


# --- finding the result folder (torch-free) ---------------------------------------------------------


def result_dirs(names: list[str]) -> list[str]:
    """Folders (relative, '' for the top) holding dataset.json, plans.json and a fold_N/checkpoint_*.pth."""
    files = set(names)
    folds = {n.rsplit("/", 2)[0] if n.count("/") >= 2 else "" for n in names
             if n.endswith(".pth") and len(parts := n.split("/")) >= 2 and _FOLD.match(parts[-2])}
    return sorted(d for d in folds if all(("/".join(filter(None, [d, f]))) in files for f in ("dataset.json", "plans.json")))


def _folder_names(folder: Path, depth: int = 4) -> list[str]:
    names = []
    for level in range(1, depth + 1):
        names += [p.relative_to(folder).as_posix() for p in folder.glob("/".join(["*"] * level))
                  if p.suffix in (".json", ".pth") and p.is_file()]
    return names


def _one(dirs: list[str], where: Path) -> str:
    if not dirs:
        raise ModelLoadError(f"{where}: no nnU-Net v2 result folder (dataset.json, plans.json and fold_N/checkpoint_final.pth) inside")
    if len(dirs) > 1:
        raise ModelLoadError(f"{where}: {len(dirs)} nnU-Net result folders ({', '.join(dirs)}); give the path of the one to run")
    return dirs[0]


def _extract(path: Path) -> Path:
    return extract_model_zip(path, "nnunet")


def result_folder(path: Path) -> Path:
    """The result folder (dataset.json, plans.json, fold_N/) a path, Dataset folder or zip holds."""
    if path.is_file():
        return _extract(path) / _one(result_dirs(zip_names(path)), path)
    return path / _one(result_dirs(_folder_names(path)), path)


def input_names(path: Path) -> list[str]:
    """The model's input channel names from dataset.json's ``channel_names`` (torch-free, nothing unpacked).

    For input selectors before loading; empty when ``path`` holds no single readable result folder.
    """
    path = Path(path)
    try:
        if path.is_file():
            with zipfile.ZipFile(path) as archive:
                inner = _one(result_dirs(zip_names(path)), path)
                dataset = json.loads(archive.read("/".join(filter(None, [inner, "dataset.json"]))))
        else:
            dataset = read_json(path / _one(result_dirs(_folder_names(path)), path) / "dataset.json")
    except (ModelLoadError, OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    return [str(channels[k]) for k in sorted(channels, key=int)] if isinstance(channels, dict) else []


# --- labels, options, trust ----------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def dataset_labels(dataset: dict, where: str) -> tuple[list[Label], bool]:
    """Labels from dataset.json's ``labels``; region-based (lists of values): one layer per region.

    Returns ``(labels, region_based)``. Plain labels share layer 0 with their own values
    (background and nnU-Net's ``ignore`` label left out); regions get value 1 on their own layer,
    in ``regions_class_order`` order, as nnU-Net's sigmoid outputs are.
    """
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ModelLoadError(f"{where}: dataset.json has no 'labels' mapping (name -> value)")
    regions = any(isinstance(v, (list, tuple)) for v in raw.values())
    try:
        if regions:
            named = [(n, v) for n, v in raw.items() if not (isinstance(v, int) and v == 0) and n != "ignore"]
            return [Label(1, str(n), Label.default_color(i + 1), i) for i, (n, _) in enumerate(named)], True
        values = sorted((int(v), str(n)) for n, v in raw.items() if int(v) != 0 and n != "ignore")
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: dataset.json 'labels' must map names to integers or lists of integers") from exc
    return [Label(v, n, Label.default_color(v)) for v, n in values], False


def trusted(options: dict) -> bool:
    """True when the caller trusted this model in code (``configure(model, trusted=True)`` or ``load(..., options)``).

    Never from medai_nnunet.json (a model folder cannot trust itself). Otherwise
    :func:`medai.models.trust.require` decides: ``--trust`` / ``load_model(..., trust=True)``, a
    catalog model, or a decision remembered by ``trust_model``.
    """
    return options.get("trusted") is True


def pickle_code(path: Path, checkpoint: str = DEFAULTS["checkpoint"]) -> list[str]:
    """What loading would run: the fold checkpoints (folder or zip), which nnU-Net reads with full pickle (torch-free)."""
    names = sorted(n for n in (zip_names(path) if path.is_file() else _folder_names(path))
                   if n.split("/")[-1] == checkpoint and n.count("/") >= 1 and _FOLD.match(n.split("/")[-2]))
    return [f"nnU-Net checkpoint(s) {', '.join(names[:5])} need full pickle (torch.load weights_only=False), "
            "which runs any code they hold"] if names else []


def read_options(folder: Path, overrides: dict | None = None) -> dict:
    options = dict(DEFAULTS)
    if (folder / OPTIONS_FILE).exists():
        from_file = read_json(folder / OPTIONS_FILE)
        if "trusted" in from_file:
            raise ModelLoadError(f"{folder / OPTIONS_FILE}: 'trusted' cannot be set by the model's own folder; "
                                 "use --trust, load_model(..., trust=True) or medai.models.trust.trust_model")
        options.update(from_file)
    options.update(overrides or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ModelLoadError(f"{folder}: unknown nnU-Net option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    return options


def require_nnunet() -> Any:
    """nnunetv2's predictor class; a ModelLoadError saying how to install it when missing."""
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as exc:
        raise ModelLoadError(f"nnU-Net v2 models need the nnunetv2 package, which is not installed ({exc}). "
                             f"Install it (it keeps your torch) with:\n  {INSTALL_HINT}") from exc
    return nnUNetPredictor


# --- the loaded model ------------------------------------------------------------------------------------


@dataclass
class NNUNetModel:
    """What :meth:`NNUNetFormat.load` keeps beside the LoadedModel: the predictor and its options."""

    folder: Path
    predictor: Any
    options: dict = field(default_factory=dict)
    region_based: bool = False


def state_of(model: LoadedModel) -> NNUNetModel:
    """The predictor and options of a model this format loaded."""
    state = getattr(model, "nnunet", None)
    if not isinstance(state, NNUNetModel):
        raise ModelLoadError(f"model {model.name} was not loaded as an nnU-Net model")
    return state


def _device(options: dict, device: torch.device) -> torch.device:
    import torch

    return torch.device(options["device"]) if options.get("device") else device


def make_predictor(folder: Path, options: dict, device: torch.device) -> Any:
    """nnU-Net's own predictor for this folder, folds and checkpoint (refused unless trusted)."""
    nnUNetPredictor = require_nnunet()
    checkpoints = sorted(folder.glob(f"fold_*/{options['checkpoint']}"))
    if not checkpoints:
        raise ModelLoadError(f"{folder}: no fold_N/{options['checkpoint']}; train or download the model's checkpoints")
    if not trusted(options):
        from .. import trust

        trust.require("nnU-Net model", pickle_code(folder, options["checkpoint"]), unscoped_trusted=False)
    dev = _device(options, device)
    folds = options["folds"]
    folds = tuple(f if f == "all" else int(f) for f in ([folds] if isinstance(folds, (int, str)) else folds)) if folds is not None else None
    said = io.StringIO()
    try:
        # nnU-Net prints its device choice and the folds it found: they go to the log instead of stdout
        with contextlib.redirect_stdout(said):
            predictor = nnUNetPredictor(tile_step_size=float(options["tile_step_size"]), use_gaussian=True,
                                        use_mirroring=bool(options["use_mirroring"]),
                                        perform_everything_on_device=dev.type == "cuda", device=dev,
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(folder), folds, options["checkpoint"])
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{folder}: {exc.strerror or exc}: {exc.filename}; check the folds option") from exc
    except Exception as exc:
        raise ModelLoadError(f"{folder}: nnU-Net cannot initialise this model ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from exc
    finally:
        if said.getvalue().strip():
            log.info("nnU-Net: %s", " ".join(said.getvalue().split()))
    return predictor


def configure(model: LoadedModel, **options: Any) -> None:
    """Change a loaded nnU-Net model's options (folds, checkpoint, use_mirroring, tile_step_size, device, trusted)."""
    state = state_of(model)
    new = read_options(state.folder, {**state.options, **options})
    if any(new[k] != state.options[k] for k in ("folds", "checkpoint", "device", "trusted")):
        state.predictor = make_predictor(state.folder, new, model.device)
        model.networks = [state.predictor.network]
    state.predictor.use_mirroring = bool(new["use_mirroring"])
    state.predictor.tile_step_size = float(new["tile_step_size"])
    state.options = new


# --- geometry: the one place where nnU-Net's axis conventions meet MedAI's ------------------------------------


def nnunet_input(volumes: list[Volume], reader: str) -> tuple[np.ndarray, dict, Any]:
    """``(array (C, z, y, x) float32, {'spacing': [sz, sy, sx]}, back)`` as nnU-Net's reader gives them for files of ``volumes``.

    SimpleITKIO (and NibabelIO, which transposes to the same order) gives ``GetArrayFromImage``
    ([k, j, i], MedAI's own array order) and the spacing reversed; NibabelIOWithReorient first
    turns the voxels to the closest RAS orientation. ``back(seg)`` maps a result on that array's
    grid to the first volume's ``[k, j, i]`` grid. Every input is on the first one's grid (others
    are resampled onto it by world position).
    """
    from ...geometry import check_voxels, reorient_to_ras, same_grid, to_ijk_array
    from ...resample import resample_volume_to

    ref = volumes[0]
    channels = []
    for v in volumes:
        check_voxels(v)
        if v.num_components != 1:
            raise ModelLoadError(f"{v.name}: nnU-Net takes scalar volumes, one per input channel; this one has {v.num_components} components")
        channels.append((v if same_grid(v, ref) else resample_volume_to(v, ref)).array)
    affine, undo = ref.ijk_to_ras, None
    if reader == "NibabelIOWithReorient":
        ijk, affine, undo = reorient_to_ras(np.stack([to_ijk_array(ref.with_array(c))[0] for c in channels]), ref.ijk_to_ras)
        channels = list(ijk.transpose(0, 3, 2, 1))

    def back(seg: np.ndarray) -> np.ndarray:
        """[z, y, x] on nnU-Net's grid -> [k, j, i] on the first volume's (the same array unless reoriented)."""
        if undo is None:
            return seg
        return np.ascontiguousarray(undo(seg.transpose(2, 1, 0)[None])[0].transpose(2, 1, 0))

    spacing = [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)[::-1]]
    return np.stack([np.asarray(c, dtype=np.float32) for c in channels]), {"spacing": spacing}, back


# --- the format ---------------------------------------------------------------------------------------------


class NNUNetFormat(ModelFormat):
    name = "nnunet"
    summary = "an nnU-Net v2 result folder or .zip (dataset.json, plans.json, fold_N/checkpoint_final.pth)"

    def recognise(self, path: Path) -> bool:
        if path.is_dir():
            return bool(result_dirs(_folder_names(path)))
        return path.suffix.lower() == ".zip" and bool(result_dirs(zip_names(path)))

    def check(self, path: Path) -> None:
        _one(result_dirs(zip_names(path) if path.is_file() else _folder_names(path)), path)

    def load(self, path: Path, device: torch.device, options: dict | None = None) -> LoadedModel:
        from ..loader import LoadedModel

        folder = result_folder(path)
        dataset = read_json(folder / "dataset.json")
        plans = read_json(folder / "plans.json")
        labels, regions = dataset_labels(dataset, str(folder))
        opts = read_options(folder, options)
        predictor = make_predictor(folder, opts, device)
        inputs = [{"name": n, "modality": n} for n in input_names(folder)] or [{"name": "image", "modality": ""}]
        name = plans.get("dataset_name") or folder.parent.name
        card = ModelCard(
            name=f"{name}/{folder.name}", task="segmentation", stages=[], labels=labels, inputs=inputs, root=folder,
            title=str(name), description=str(dataset.get("description", "")), license=str(dataset.get("licence", dataset.get("license", ""))),
            discretize="threshold" if regions else "argmax",
            raw={"dataset": dataset, "plans_name": plans.get("plans_name"), "trainer": predictor.trainer_name,
                 "configuration": folder.name.split("__")[-1], "reader": plans.get("image_reader_writer", "SimpleITKIO")},
        )
        model = LoadedModel(card, [predictor.network], _device(opts, device), self.name, folder)
        # it passed the trust check: configure() may re-initialise the same folder (other folds) without asking again
        model.nnunet = NNUNetModel(folder, predictor, {**opts, "trusted": True}, regions)  # type: ignore[attr-defined]
        return model

    def segment(self, model: LoadedModel, volumes: list[Volume], progress: Progress) -> SegmentationResult:
        return segment_nnunet(model, volumes, progress)


FORMAT = NNUNetFormat()


# --- inference ------------------------------------------------------------------------------------------------


class _Tiles:
    """Progress and cancel between nnU-Net's sliding-window tiles.

    Wraps the predictor's per-tile call. After a cancel the remaining tiles return zeros at
    once (nnU-Net's tile producer thread then ends normally instead of blocking forever), and
    :class:`~medai.engine.progress.Cancelled` is raised when the fold's windows are done.
    """

    def __init__(self, predictor: Any, progress: Progress, folds: int) -> None:
        self.predictor, self.progress, self.folds = predictor, progress, max(folds, 1)
        self.per_fold = 1
        self.done = 0
        self.originals = {n: getattr(predictor, n) for n in ("_internal_maybe_mirror_and_predict",
                                                             "_internal_get_sliding_window_slicers",
                                                             "predict_sliding_window_return_logits")}

    def __enter__(self) -> "_Tiles":
        p, o = self.predictor, self.originals

        def slicers(image_size):
            out = o["_internal_get_sliding_window_slicers"](image_size)
            self.per_fold = max(len(out), 1)
            return out

        def tile(x):
            if self.progress.cancel.cancelled:
                return x.new_zeros((x.shape[0], p.label_manager.num_segmentation_heads, *x.shape[2:]))
            out = o["_internal_maybe_mirror_and_predict"](x)
            self.done += 1
            self.progress.update(self.done / (self.per_fold * self.folds))
            return out

        def windows(data):
            out = o["predict_sliding_window_return_logits"](data)
            self.progress.cancel.check()
            return out

        p._internal_get_sliding_window_slicers, p._internal_maybe_mirror_and_predict = slicers, tile
        p.predict_sliding_window_return_logits = windows
        return self

    def __exit__(self, *exc: Any) -> None:
        for n in self.originals:
            self.predictor.__dict__.pop(n, None)


def segment_nnunet(model: LoadedModel, volumes: list[Volume], progress: Progress) -> SegmentationResult:
    """nnU-Net's labelmap on the first volume's grid (regions: one layer per region)."""
    from ...engine.segment import require_3d
    from ...results import SegmentationResult

    state = state_of(model)
    predictor = state.predictor
    n_inputs = len(model.card.inputs)
    if len(volumes) != n_inputs:
        names = ", ".join(i["name"] for i in model.card.inputs)
        raise ModelLoadError(f"model {model.name} takes {n_inputs} input volume(s) ({names}); {len(volumes)} given")
    require_3d(volumes, model.name)
    ref = volumes[0]
    with progress.stage("input", 0.02):  # nnU-Net's own preprocessing runs inside "inference", before the tiles
        array, props, back = nnunet_input(volumes, model.card.raw.get("reader", "SimpleITKIO"))
    with progress.stage("inference", 0.93), _Tiles(predictor, progress, len(predictor.list_of_parameters)):
        out = predictor.predict_single_npy_array(array, props, None, None, state.region_based)
    with progress.stage("postprocessing", 0.05):
        labels = list(model.card.labels)
        if state.region_based:
            seg, probs = out
            layers = [back((probs[r] > 0.5).astype(np.uint8)) for r in range(len(labels))]
        else:
            layers = [back(np.asarray(out).astype(np.uint8 if max((lab.value for lab in labels), default=0) < 256 else np.uint16))]
    for layer in layers:
        if layer.shape != ref.array.shape[:3]:
            raise RuntimeError(f"nnU-Net returned shape {layer.shape} for {ref.name} of shape {ref.array.shape[:3]}")
    return SegmentationResult(ref, layers, labels, model.card.name, str(model.device), dict(progress.timings))
