"""One loader for every model format: catalog name, MONAI Bundle (folder or zip), model card, TorchScript, ONNX.

Security: weights are read with ``torch.load(weights_only=True)`` (no pickled code runs) or
``torch.jit.load``, and checked against the sha256 a card gives. A MONAI Bundle config and a
card's ``network`` section are evaluated by ``monai.bundle.ConfigParser``, whose ``$``
expressions are Python code: :mod:`medai.models.trust` decides (catalog, plain card, or the
user's explicit trust) just before they are parsed, and before a checkpoint needing full pickle.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..fetch import FetchError, cache_dir, check_sha256, safe_extract_member, sha256_of
from ..results import Label
from . import catalog, trust
from .trust import ModelTrustError, scope as trust_scope  # noqa: F401 (re-exported)
from .card import CARD_NAMES, ModelCard, bundle_output, ModelCardError, ModelLoadError, _card_beside, parse_card, read_card, parse_labels

log = logging.getLogger(__name__)


@dataclass
class BundleParts:
    """The in-memory pieces of a MONAI Bundle's inference config (no LoadImage/SaveImage)."""

    parser: Any
    image_key: str
    preprocessing: Any
    inferer: Any
    postprocessing: Any


@dataclass
class LoadedModel:
    """A model ready to run: its card (labels, settings), its networks on ``device``."""

    card: ModelCard
    networks: list[torch.nn.Module]
    device: torch.device
    kind: str  # "card", "torchscript", "onnx" or "bundle"
    source: Path
    bundle: BundleParts | None = None
    notes: list[str] = field(default_factory=list)  # what the loader had to adapt (partial weights, CPU fallback)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def labels(self) -> list[Label]:
        return self.card.labels


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but no CUDA GPU is available here; use --device cpu or auto")
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) present")
        return dev
    if device == "cpu":
        return torch.device("cpu")
    raise ModelLoadError(f"device {device!r} unknown; use auto, cpu or cuda[:N]")


# --- weights --------------------------------------------------------------------------------


def _require_file(path: Path, sha256: str | None, what: str) -> None:
    """The file must exist and, when the card gives a sha256, match it."""
    if not path.exists():
        raise ModelLoadError(f"{what} not found: {path}")
    try:
        check_sha256(path, sha256, what)
    except FetchError as exc:
        raise ModelLoadError(str(exc)) from exc


def load_state_dict(path: Path, sha256: str | None = None) -> dict:
    """Read a checkpoint safely (``weights_only=True``) and unwrap common containers."""
    _require_file(path, sha256, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError for corrupt zips, EOFError...
        unsafe = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        if not (isinstance(exc, pickle.UnpicklingError) and unsafe):
            raise ModelLoadError(
                f"{path}: not a loadable weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                "MedAI only reads plain tensors (torch.load weights_only=True); re-save the checkpoint with torch.save(model.state_dict())"
            ) from exc
        # needs full pickle, which can run any code: only for a trusted model
        trust.require("checkpoint", [f"{path.name} needs full pickle ({unsafe[0][:200]})"], unscoped_trusted=False)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "network", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: expected a state_dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_torchscript(path: Path, sha256: str | None = None) -> torch.nn.Module:
    _require_file(path, sha256, "TorchScript file")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a TorchScript model ({str(exc).splitlines()[0][:200]})") from exc


def build_network(config: dict, where: str) -> torch.nn.Module:
    """Instantiate a network from a ConfigParser dict (e.g. ``{"_target_": "monai.networks.nets.UNet", ...}``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network": config})
    try:
        net = parser.get_parsed_content("network")
    except Exception as exc:
        raise ModelCardError(f"{where}: cannot build the network ({str(exc).splitlines()[0][:300]})") from exc
    if not isinstance(net, torch.nn.Module):
        raise ModelCardError(f"{where}: 'network' did not build a torch.nn.Module")
    return net


def _stage_network(card: ModelCard, index: int, notes: list[str] | None = None) -> torch.nn.Module:
    stage = card.stages[index]
    weights = card.weights_path(stage)
    where = f"model {card.name}, stage {stage.name}"
    if stage.network is None:
        if weights is None:
            raise ModelCardError(f"{where}: needs 'weights'")
        return load_torchscript(weights, stage.sha256)
    trust.require("model card", trust.code_in_config(stage.network, f"{stage.name} network"))
    net = build_network(stage.network, where)
    if weights is not None:
        state = load_state_dict(weights, stage.sha256)
        strict = bool(card.raw.get("strict_weights", True))
        note = load_weights(net, state, strict, str(weights))
        if note and notes is not None:
            notes.append(note)
    return net


def load_weights(net: torch.nn.Module, state: dict, strict: bool, where: str) -> str | None:
    """Load ``state`` into ``net``; returns a note on what a partial load skipped.

    ``strict`` (the default, card field ``"strict_weights": true``): every key must match.
    Partial (``"strict_weights": false``, e.g. MedicalNet 3D ResNet checkpoints, whose
    ``conv_seg`` head is unused and whose classifier ``fc`` is absent): tensors whose name and
    shape match are loaded, the rest is listed; refused when nothing matches.
    """
    if strict:
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{where}: weights do not fit the card's network ({str(exc).splitlines()[0][:300]}); "
                "if the checkpoint is a backbone without this network's head, set \"strict_weights\": false in the card"
            ) from exc
        return None
    own = net.state_dict()
    matched = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matched:
        raise ModelLoadError(f"{where}: no tensor of the checkpoint matches the network by name and shape; check the card's network")
    net.load_state_dict(matched, strict=False)
    missing = sorted(k for k in own if k not in matched)
    skipped = sorted(k for k in state if k not in matched)
    note = (f"{Path(where).name}: partial load, {len(matched)}/{len(own)} network tensors from the checkpoint; "
            f"left initialised: {_summarise(missing)}; ignored from the checkpoint: {_summarise(skipped)}")
    log.warning(note)
    return note


def _summarise(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "none"
    heads = sorted({k.rsplit(".", 1)[0] for k in keys})
    return ", ".join(heads[:n]) + (f" (+{len(heads) - n} more)" if len(heads) > n else "")


# --- bundles --------------------------------------------------------------------------------


def _find_config(folder: Path, stem: str) -> Path | None:
    for ext in (".json", ".yaml", ".yml"):
        p = folder / "configs" / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def extract_bundle_zip(path: Path) -> Path:
    """Unpack a bundle zip into the cache (once per content hash), refusing escaping entries."""
    digest = sha256_of(path)[:16]
    dest = cache_dir() / "bundles" / f"{path.stem}-{digest}"
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            for n in names:
                if n.startswith("/") or ".." in Path(n).parts:
                    raise ModelLoadError(f"{path}: entry {n!r} points outside the bundle folder; refusing this zip")
            if not (dest / ".complete").exists():
                for n in names:
                    safe_extract_member(z, n, dest / n)
                (dest / ".complete").write_text("ok")
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{path}: not a valid zip file") from exc
    roots = {p.parent.parent for p in dest.rglob("configs/metadata.json")}
    if len(roots) != 1:
        raise ModelLoadError(f"{path}: expected one bundle (configs/metadata.json) in the zip, found {len(roots)}")
    return roots.pop()


def _strip(parser: Any, key: str, names: tuple[str, ...]) -> None:
    """Remove file I/O transforms from a bundle Compose config (call before parsing anything).

    They are removed from the config before parsing, so that e.g. an ITK-based LoadImaged is never
    instantiated (the image arrives in memory). Invertd keeps referring to the parsed Compose.
    """
    config = parser[key]
    if isinstance(config, dict) and isinstance(config.get("transforms"), list):
        kept = [t for t in config["transforms"] if not (isinstance(t, dict) and str(t.get("_target_", "")).split(".")[-1] in names)]
        parser[key] = {**config, "transforms": kept}


def bundle_labels(meta: dict) -> list[Label]:
    """Label names from ``network_data_format.outputs.pred.channel_def``.

    With a "background" channel, channel N is label value N; without one (sigmoid multi-label
    outputs such as BraTS), every channel is a class and channel N becomes value N + 1.
    """
    out = bundle_output(meta)
    channel_def = {str(k): v for k, v in (out.get("channel_def") or {}).items() if str(k).isdigit()}
    if any(str(v).lower() == "background" for v in channel_def.values()):
        raw = {k: v for k, v in channel_def.items() if str(v).lower() != "background"}
    else:
        raw = {str(int(k) + 1): v for k, v in channel_def.items()}
    return parse_labels(raw, "bundle metadata")


# Network arguments that newer MONAI versions removed; bundles published earlier still pass them.
REMOVED_NETWORK_ARGS = ("img_size",)


def parse_network_def(parser: Any, key: str = "network_def") -> torch.nn.Module:
    """Instantiate a bundle's network, dropping arguments the installed MONAI no longer accepts."""
    try:
        return parser.get_parsed_content(key)
    except Exception as exc:
        text = "".join(str(e) for e in (exc, exc.__cause__) if e)
        dropped = [a for a in REMOVED_NETWORK_ARGS if f"unexpected keyword argument '{a}'" in text and a in parser[key]]
        if not dropped:
            raise
        log.warning("%s: dropping %s, which this MONAI version no longer accepts", key, ", ".join(dropped))
        config = dict(parser[key])
        for a in dropped:
            config.pop(a)
        parser[key] = config
        return parser.get_parsed_content(key, lazy=False)


def load_bundle(folder: Path, device: torch.device) -> LoadedModel:
    from monai.bundle import ConfigParser

    meta_path = folder / "configs" / "metadata.json"
    infer_path = _find_config(folder, "inference")
    if not meta_path.exists() or infer_path is None:
        raise ModelLoadError(f"{folder}: not a MONAI Bundle (needs configs/metadata.json and configs/inference.json|yaml)")
    trust.require("MONAI Bundle", trust.bundle_code(folder))
    parser = ConfigParser()
    parser.read_meta(str(meta_path))
    parser.read_config(str(infer_path))
    parser["bundle_root"] = str(folder)
    parser["device"] = f"$torch.device('{device}')"
    meta = json.loads(meta_path.read_text())
    where = f"bundle {folder.name}"
    # the image arrives in memory and the result goes to the scene: no file I/O transforms
    # (classification inputs also arrive channel-first already, and scores go to tables, not files)
    classification = _bundle_task(meta) == "classification"
    _strip(parser, "preprocessing", ("LoadImaged", "LoadImage") + (("EnsureChannelFirstd", "EnsureChannelFirst") if classification else ()))
    if "postprocessing" in parser:
        _strip(parser, "postprocessing", ("SaveImaged", "SaveImage", "SaveClassificationd", "SaveClassification"))
    try:
        ts_path, pt_path = folder / "models" / "model.ts", folder / "models" / "model.pt"
        if pt_path.exists():
            net_def = parser.get("network_def")
            if isinstance(net_def, dict) and net_def.get("pretrained"):
                parser["network_def"]["pretrained"] = False  # models/model.pt replaces them; nothing is downloaded
            network = parse_network_def(parser)
            state = load_state_dict(pt_path)
            try:
                network.load_state_dict(state)
            except RuntimeError as exc:
                raise ModelLoadError(f"{pt_path}: weights do not fit the bundle's network_def ({str(exc).splitlines()[0][:300]})") from exc
        elif ts_path.exists():
            network = load_torchscript(ts_path)
        else:
            raise ModelLoadError(
                f"{where}: no weights; put the bundle's models/model.pt (or model.ts) into {folder / 'models'} "
                "(configs/large_files.yml names where the published weights are)"
            )
        preprocessing = parser.get_parsed_content("preprocessing")
        inferer = parser.get_parsed_content("inferer")
        # parsed after preprocessing, so its Invertd refers to that very Compose object
        postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{where}: cannot parse its inference config ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from exc
    fmt = meta.get("network_data_format", {})
    image_in = fmt.get("inputs", {}).get("image", {})
    channels = int(image_in.get("num_channels", 1))
    card = ModelCard(
        name=meta.get("name") or folder.name,
        task=_bundle_task(meta),
        stages=[],
        labels=bundle_labels(meta),
        inputs=[{"name": str(n), "modality": image_in.get("modality", "")} for n in (image_in.get("channel_def") or {str(i): f"channel {i}" for i in range(channels)}).values()],
        root=folder,
        title=meta.get("name", folder.name),
        description=meta.get("description", ""),
        license=(folder / "LICENSE").read_text().splitlines()[0] if (folder / "LICENSE").exists() else "",
        raw=meta,
    )
    parts = BundleParts(parser, parser.get("image_key", "image") or "image", preprocessing, inferer, postprocessing)
    return LoadedModel(card, [network.to(device).eval()], device, "bundle", folder, parts)


def _bundle_task(meta: dict) -> str:
    out = bundle_output(meta)
    return "classification" if out.get("type") in ("probabilities", "logits") or "classif" in meta.get("task", "").lower() else "segmentation"


# --- entry point ------------------------------------------------------------------------------


def _read_card_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelCardError(f"{path}: not valid JSON ({exc})") from exc


def resolve_model_path(spec: str | Path, progress: Callable[[float], None] | None = None) -> Path:
    """A catalog name becomes its cached folder (fetched if needed); paths are returned as they are."""
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve()
    entry = catalog.find_model(str(spec))
    if entry is None:
        names = ", ".join(m.name for m in catalog.list_models())
        raise ModelLoadError(f"model {spec!r}: no such file, folder or catalog name (catalog: {names})")
    try:
        return catalog.fetch_model(entry, progress)
    except FetchError as exc:
        raise ModelLoadError(str(exc)) from exc


def _load_uncached(path: Path, device: torch.device) -> LoadedModel:
    if path.is_dir():
        if (path / "configs" / "metadata.json").exists():
            return load_bundle(path, device)
        card_path = next((path / n for n in CARD_NAMES if (path / n).exists()), None)
        if card_path is None:
            raise ModelLoadError(f"{path}: neither a MONAI Bundle (configs/metadata.json) nor a folder with a model card ({', '.join(CARD_NAMES)})")
        path = card_path
    if path.suffix.lower() == ".zip":
        return load_bundle(extract_bundle_zip(path), device)
    if path.suffix.lower() == ".json":
        card = read_card(path)
        kind = "card"
    elif path.suffix.lower() in (".ts", ".pt", ".pth", ".torchscript"):
        beside = _card_beside(path)
        if beside is None:
            raise ModelLoadError(f"{path}: a TorchScript model needs a model card beside it ({path.with_suffix('.json').name}) naming its labels and preprocessing")
        raw = _read_card_json(beside)
        raw.setdefault("weights", path.name)
        card = parse_card(raw, path.parent, where=str(beside))
        kind = "torchscript"
    elif path.suffix.lower() == ".onnx":
        from .onnx_model import OnnxNetwork

        beside = _card_beside(path)
        if beside is None:
            raise ModelLoadError(f"{path}: an ONNX model needs a model card beside it ({path.with_suffix('.json').name}) naming its task, classes and preprocessing")
        raw = _read_card_json(beside)
        raw["weights"] = path.name
        raw.pop("network", None)
        card = parse_card(raw, path.parent, where=str(beside))
        _require_file(path, card.stages[-1].sha256, "ONNX model")
        try:
            net = OnnxNetwork(path, device)
        except ImportError as exc:
            raise ModelLoadError(f"{path}: ONNX models need onnxruntime (pip install onnxruntime)") from exc
        except Exception as exc:
            raise ModelLoadError(f"{path}: onnxruntime cannot load this model ({str(exc).splitlines()[0][:300]})") from exc
        return LoadedModel(card, [net], device, "onnx", path, notes=[net.note] if net.note else [])
    else:
        raise ModelLoadError(f"{path}: unknown model format; give a bundle folder or .zip, a .json model card, a TorchScript file or an .onnx file with a card")
    notes: list[str] = []
    networks = [_stage_network(card, i, notes).to(device).eval() for i in range(len(card.stages))]
    return LoadedModel(card, networks, device, kind, path, notes=notes)


_CACHE: dict[tuple[str, str, bool], tuple[int, LoadedModel]] = {}  # (path, device) -> (files' newest mtime, model)
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple[str, str, bool], threading.Lock] = {}


def _newest_mtime(path: Path) -> int:
    files = [path] + (list(path.rglob("*")) if path.is_dir() else [])
    return max((p.stat().st_mtime_ns for p in files if p.is_file()), default=0)


def load_model(spec: str | Path, device: str | torch.device = "auto", progress: Callable[[float], None] | None = None,
               trust: bool = False) -> LoadedModel:
    """Load (or return the cached) model named by ``spec`` on ``device``.

    ``spec`` is a catalog name, a MONAI Bundle folder or zip, a JSON model card, or a
    TorchScript or ONNX file with a card beside it. One model per file and device stays cached
    until its files change; concurrent callers of the same model wait for one load. A model that
    would run code (see :mod:`medai.models.trust`) loads only from the catalog, with ``trust=True``
    or when remembered by ``trust_model``; else :class:`ModelTrustError` says what would run.
    """
    dev = resolve_device(device)
    path = resolve_model_path(spec, progress)
    key = (str(path), str(dev), bool(trust))
    with _CACHE_LOCK:
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        stamp = _newest_mtime(path)
        cached = _CACHE.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with trust_scope(path, trust):
            model = _load_uncached(path, dev)
        with _CACHE_LOCK:
            _CACHE[key] = (stamp, model)  # a stale entry for the same file is replaced, not kept
        return model


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
