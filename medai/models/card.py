"""The MedAI model card: a JSON file that describes one's own checkpoint or TorchScript model.

A card holds everything needed to run the model on a volume in any geometry; see
``docs/model-card.md`` for the full field reference. Minimal segmentation example::

    {
      "schema": "medai.card/1",
      "name": "my-spleen",
      "task": "segmentation",
      "network": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1,
                  "out_channels": 2, "channels": [16, 32, 64], "strides": [2, 2]},
      "weights": "model.pt",
      "sha256": "...",
      "inputs": [{"name": "CT", "modality": "CT"}],
      "preprocessing": {"orientation": "RAS", "spacing": [1.5, 1.5, 2.0],
                        "intensity": [{"op": "scale_range", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": true}]},
      "inference": {"mode": "sliding_window", "roi_size": [96, 96, 96], "overlap": 0.25, "activation": "softmax"},
      "labels": {"1": {"name": "spleen", "color": [0.62, 0.31, 0.24]}},
      "postprocessing": {"largest_component": true, "fill_holes": false}
    }

A cascade (localise, crop, then segment) lists ``stages``; each stage has its own weights,
preprocessing and inference, and a stage with ``"role": "localize"`` crops the image for the
stages after it. The card's top-level network/weights/preprocessing/inference form the single
stage when ``stages`` is absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..results import Label

CARD_SCHEMA = "medai.card/1"
TASKS = ("segmentation", "classification", "multilabel", "regression")
INTENSITY_OPS = ("percentile_scale", "scale_range", "clip", "zscore", "affine", "nonzero_zscore", "denoise")
DENOISE_METHODS = ("gaussian", "median")
ACTIVATIONS = ("softmax", "sigmoid", "none")
MODES = ("sliding_window", "resize", "whole")


class ModelCardError(ValueError):
    """A model card that cannot be used; the message names the card and the field."""


# Torch-free pieces of the loader, here so that the module panels (medai.slicer.panel) can use them
# before PyTorch is installed; medai.models.loader re-exports them.
CARD_NAMES = ("medai.json", "card.json", "model_card.json")


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message names the file and what to do."""


def _card_beside(path: Path) -> Path | None:
    for candidate in (path.with_suffix(".json"), *(path.parent / n for n in CARD_NAMES)):
        if candidate.exists() and candidate != path:
            return candidate
    return None


def _names_from(raw) -> tuple[list[str], list[float | None]]:
    """Class names (and optional thresholds) from a list of names/dicts or an index -> name/dict mapping."""
    if raw is None:
        return [], []
    items = raw if isinstance(raw, list) else [raw[k] for k in sorted(raw, key=lambda k: int(k))]
    names, thresholds = [], []
    for item in items:
        if isinstance(item, dict):
            names.append(str(item.get("name", f"class {len(names)}")))
            thresholds.append(item.get("threshold"))
        else:
            names.append(str(item))
            thresholds.append(None)
    return names, thresholds


def _color(value: Any, index: int) -> tuple[float, float, float]:
    if value is None:
        return Label.default_color(index)
    if isinstance(value, str) and value.startswith("#") and len(value) == 7:
        return tuple(int(value[i : i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
    rgb = [float(c) for c in value]
    if len(rgb) != 3:
        raise ModelCardError(f"label colour {value!r} must be '#rrggbb' or [r, g, b]")
    if max(rgb) > 1.0:
        rgb = [c / 255.0 for c in rgb]
    return (rgb[0], rgb[1], rgb[2])


def parse_labels(raw: dict | list | None, where: str) -> list[Label]:
    """Labels from ``{"1": "liver"}``, ``{"1": {"name": ..., "color": ...}}`` or a list of names (1, 2, ...)."""
    if raw is None:
        return []
    if isinstance(raw, list):
        raw = {str(i + 1): v for i, v in enumerate(raw)}
    labels = []
    for key, value in raw.items():
        try:
            index = int(key)
        except ValueError as exc:
            raise ModelCardError(f"{where}: label key {key!r} must be an integer label value") from exc
        entry = {"name": value} if isinstance(value, str) else dict(value)
        if "name" not in entry:
            raise ModelCardError(f"{where}: label {key} has no name")
        labels.append(Label(
            value=index, name=str(entry["name"]), color=_color(entry.get("color"), index),
            layer=int(entry.get("layer", 0)), terminology=entry.get("terminology"),
        ))
    return sorted(labels, key=lambda lab: (lab.layer, lab.value))


@dataclass
class Stage:
    """One network of a model, with the preprocessing and inference settings it was trained with."""

    name: str
    role: str  # "segment" or "localize"
    network: dict | None  # ConfigParser dict (checkpoint) or None (TorchScript)
    weights: str | None
    sha256: str | None
    orientation: str | None = "RAS"
    spacing: list[float] | None = None
    intensity: list[dict] = field(default_factory=list)
    mode: str = "sliding_window"
    roi_size: list[int] | None = None
    resize_mode: str = "trilinear"
    overlap: float = 0.25
    sw_batch_size: int = 1
    activation: str = "softmax"
    output_channel: int | None = None  # localize: which output channel is the foreground
    threshold: float = 0.5
    crop_margin: float = 0.1  # localize: margin around the found box, as a fraction of its size
    largest_component: bool = True  # localize: keep only the largest blob before taking its box


@dataclass
class ModelCard:
    """A parsed, validated model card. Paths in it are resolved against ``root``."""

    name: str
    task: str
    stages: list[Stage]
    labels: list[Label]
    inputs: list[dict]
    root: Path
    title: str = ""
    description: str = ""
    license: str = ""
    discretize: str = "argmax"  # or "threshold" (multi-label)
    postprocessing: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return max(1, len(self.inputs))

    def weights_path(self, stage: Stage) -> Path | None:
        return None if stage.weights is None else (self.root / stage.weights)


def _stage_from(raw: dict, name: str, where: str) -> Stage:
    pre = raw.get("preprocessing", {})
    inf = raw.get("inference", {})
    intensity = pre.get("intensity", [])
    if isinstance(intensity, dict):
        intensity = [intensity]
    for op in intensity:
        if op.get("op") not in INTENSITY_OPS:
            raise ModelCardError(f"{where}: intensity op {op.get('op')!r} unknown; use one of {', '.join(INTENSITY_OPS)}")
        if op["op"] == "denoise" and op.get("method", "gaussian") not in DENOISE_METHODS:
            raise ModelCardError(f"{where}: denoise method {op.get('method')!r} unknown; use one of {', '.join(DENOISE_METHODS)}")
    mode = inf.get("mode", "sliding_window")
    if mode not in MODES:
        raise ModelCardError(f"{where}: inference mode {mode!r} unknown; use one of {', '.join(MODES)}")
    activation = inf.get("activation", "softmax")
    if activation not in ACTIVATIONS:
        raise ModelCardError(f"{where}: activation {activation!r} unknown; use one of {', '.join(ACTIVATIONS)}")
    roi = inf.get("roi_size")
    if mode in ("sliding_window", "resize") and roi is None:
        raise ModelCardError(f"{where}: inference.roi_size is required for mode {mode!r}")
    if raw.get("network") is None and raw.get("weights") is None:
        raise ModelCardError(f"{where}: give 'network' (a MONAI network config) and 'weights', or a TorchScript 'weights' file")
    return Stage(
        name=name,
        role=raw.get("role", "segment"),
        network=raw.get("network"),
        weights=raw.get("weights"),
        sha256=raw.get("sha256"),
        orientation=pre.get("orientation", "RAS"),
        spacing=pre.get("spacing"),
        intensity=list(intensity),
        mode=mode,
        roi_size=[int(r) for r in roi] if roi is not None else None,
        resize_mode=inf.get("resize_mode", "trilinear"),
        overlap=float(inf.get("overlap", 0.25)),
        sw_batch_size=int(inf.get("sw_batch_size", 1)),
        activation=activation,
        output_channel=inf.get("output_channel"),
        threshold=float(inf.get("threshold", 0.5)),
        crop_margin=float(raw.get("crop_margin", 0.1)),
        largest_component=bool(raw.get("largest_component", True)),
    )


def parse_card(raw: dict, root: Path, where: str = "model card") -> ModelCard:
    """Validate a card dict; ``root`` is the folder that relative weight paths start from."""
    if not isinstance(raw, dict):
        raise ModelCardError(f"{where}: a model card must be a JSON object")
    task = raw.get("task", "segmentation")
    if task not in TASKS:
        raise ModelCardError(f"{where}: task {task!r} unknown; use one of {', '.join(TASKS)}")
    if "stages" in raw:
        stages = [_stage_from(s, s.get("name", f"stage{n}"), f"{where}, stage {n}") for n, s in enumerate(raw["stages"])]
    else:
        stages = [_stage_from(raw, "model", where)]
    if not stages or stages[-1].role == "localize":
        raise ModelCardError(f"{where}: the last stage must segment or classify, not localise")
    labels = parse_labels(raw.get("labels"), where)
    if task == "segmentation" and not labels:
        raise ModelCardError(f"{where}: a segmentation card needs 'labels' (value -> name)")
    return ModelCard(
        name=str(raw.get("name") or root.name),
        task=task,
        stages=stages,
        labels=labels,
        inputs=list(raw.get("inputs") or [{"name": "image"}]),
        root=root,
        title=raw.get("title", ""),
        description=raw.get("description", ""),
        license=raw.get("license", ""),
        discretize=raw.get("discretize", "threshold" if task == "multilabel" else "argmax"),
        postprocessing=dict(raw.get("postprocessing") or {}),
        raw=raw,
    )


def read_card_json(path: str | Path) -> dict:
    """A card file's JSON; a clear error naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelCardError(f"{path}: not valid JSON ({exc})") from exc


def read_card(path: str | Path) -> ModelCard:
    path = Path(path)
    return parse_card(read_card_json(path), path.parent, where=str(path))


def bundle_output(meta: dict) -> dict:
    """A MONAI Bundle's main output description (``network_data_format.outputs.pred``, else the first one)."""
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    return outputs.get("pred") or next(iter(outputs.values()), {})
