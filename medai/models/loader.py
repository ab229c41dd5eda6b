"""Loading models by catalog name or path: the format registry (:mod:`medai.models.formats`) picks the reader.

This module holds what every format shares: the :class:`LoadedModel` it returns, the device
choice, safe weight reading and network building, and one cache of loaded models.

Security: weights are read with ``torch.load(weights_only=True)`` (no pickled code runs) or
``torch.jit.load``, and checked against the sha256 a card gives. A MONAI Bundle config and a
card's ``network`` section are evaluated by ``monai.bundle.ConfigParser``, whose ``$``
expressions are Python code: :mod:`medai.models.trust` decides (catalog, plain card, or the
user's explicit trust) just before they are parsed, and before a checkpoint needing full pickle.
"""

from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..fetch import FetchError, check_sha256
from ..results import Label
from . import catalog, trust
from .trust import ModelTrustError, scope as trust_scope  # noqa: F401 (re-exported)
from .card import ModelCard, ModelCardError, ModelLoadError

log = logging.getLogger(__name__)


@dataclass
class BundleParts:
    """The in-memory pieces of a MONAI Bundle's inference config (no LoadImage/SaveImage)."""

    parser: Any
    image_key: str
    preprocessing: Any
    inferer: Any
    postprocessing: Any
    amp: bool = False  # the evaluator's ``amp`` (SupervisedEvaluator's default: False): float16 autocast on CUDA


@dataclass
class LoadedModel:
    """A model ready to run: its card (labels, settings), its networks on ``device``."""

    card: ModelCard
    networks: list[torch.nn.Module]
    device: torch.device
    kind: str  # the format's name: "card", "torchscript", "onnx", "bundle", ...
    source: Path
    bundle: BundleParts | None = None
    format: Any = None  # the medai.models.formats.ModelFormat that read it (set by load_model)
    notes: list[str] = field(default_factory=list)  # what the loader had to adapt (partial weights, CPU fallback)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def labels(self) -> list[Label]:
        return self.card.labels

    @property
    def amp(self) -> bool:
        """float16 autocast on CUDA as the model says: a bundle's evaluator, a card's (first) stage."""
        if self.bundle is not None:
            return self.bundle.amp
        return self.card.stages[0].amp if self.card.stages else True


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


def require_file(path: Path, sha256: str | None, what: str) -> None:
    """The file must exist and, when the card gives a sha256, match it."""
    if not path.exists():
        raise ModelLoadError(f"{what} not found: {path}")
    try:
        check_sha256(path, sha256, what)
    except FetchError as exc:
        raise ModelLoadError(str(exc)) from exc


def load_state_dict(path: Path, sha256: str | None = None) -> dict:
    """Read a checkpoint safely (``weights_only=True``) and unwrap common containers."""
    require_file(path, sha256, "weights file")
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
    require_file(path, sha256, "TorchScript file")
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
        note = load_weights(net, state, card.strict_weights, str(weights))
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


# --- entry point ------------------------------------------------------------------------------


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


def card_networks(card: ModelCard, device: torch.device, notes: list[str]) -> list[torch.nn.Module]:
    """Every stage's network of a card (checkpoint or TorchScript), on ``device``, in eval mode."""
    return [_stage_network(card, i, notes).to(device).eval() for i in range(len(card.stages))]


def _load_uncached(path: Path, device: torch.device) -> LoadedModel:
    from .formats import format_for

    fmt = format_for(path)
    model = fmt.load(path, device)
    model.format = fmt
    return model


_CACHE: dict[tuple[str, str, bool], tuple[int, LoadedModel]] = {}  # (path, device, trust) -> (files' newest mtime, model)
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
