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
# Every intensity operation a card can name: (required arguments, optional arguments). A card that
# names another operation, misses a required argument or gives an unknown one fails when it is read.
INTENSITY_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "percentile_scale": ((), ("lower", "upper", "statistics")),
    "scale_range": (("a_min", "a_max"), ("b_min", "b_max", "clip")),
    "clip": ((), ("min", "max")),
    "zscore": ((), ()),
    "nonzero_zscore": ((), ()),
    "affine": ((), ("scale", "shift")),
    "denoise": ((), ("method", "sigma", "size")),
}
INTENSITY_OPS = tuple(INTENSITY_ARGS)
DENOISE_METHODS = ("gaussian", "median")
TEXT_ARGS = ("statistics", "method", "clip")  # the intensity arguments that are not numbers
DEFAULT_ACTIVATION = {"segmentation": "softmax", "classification": "softmax", "multilabel": "sigmoid", "regression": "none"}
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
    sw_batch_size: int | str = 1  # windows per network call, or "auto": as many as fit in free memory
    amp: bool = True  # float16 autocast on CUDA (automatic mixed precision); false: float32 throughout
    activation: str = "softmax"
    output_channel: int | None = None  # localize: which output channel is the foreground
    threshold: float = 0.5
    crop_margin: float = 0.1  # localize: margin around the found box, as a fraction of its size
    largest_component: bool = True  # localize: keep only the largest blob before taking its box
    region_margin: float = 0.1  # classification: crop margin around a region, as a fraction of its size


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
    classes: list[str] = field(default_factory=list)  # classification: class names, in output order
    class_thresholds: list[float | None] = field(default_factory=list)  # per class; None: the stage's threshold
    unit: str = ""  # regression: the unit of the predicted value
    explain_layer: str | None = None  # Grad-CAM target layer, when the card names one
    strict_weights: bool = True  # False: load the tensors that match by name and shape (backbones)
    version: str = ""  # the model's own version (card "version", bundle metadata "version")
    expected_volume_ml: dict[int, tuple[float, float]] = field(default_factory=dict)  # label value -> plausible mL range
    spatial_dims: int | None = None  # bundles: dimensions of the input image (metadata's spatial_shape)
    training: dict = field(default_factory=dict)  # the training record (split, metrics, data) written by medai train
    raw: dict = field(default_factory=dict)  # bundles: metadata.json; cards: the JSON as read (read it only here)

    @property
    def num_inputs(self) -> int:
        return max(1, len(self.inputs))

    @property
    def threshold(self) -> float:
        """The decision threshold of the model's output (multi-label and single-output models)."""
        return self.stages[-1].threshold if self.stages else 0.5

    def weights_path(self, stage: Stage) -> Path | None:
        return None if stage.weights is None else (self.root / stage.weights)


def _check_intensity(ops: list, where: str) -> list[dict]:
    """Each operation known, with its required arguments, no unknown ones, numbers where numbers go."""
    for n, op in enumerate(ops):
        at = f"{where}: preprocessing.intensity[{n}]"
        if not isinstance(op, dict) or op.get("op") not in INTENSITY_ARGS:
            name = op.get("op") if isinstance(op, dict) else op
            raise ModelCardError(f"{at}: intensity op {name!r} unknown; use one of {', '.join(INTENSITY_OPS)}")
        required, optional = INTENSITY_ARGS[op["op"]]
        missing = [a for a in required if a not in op]
        if missing:
            raise ModelCardError(f"{at}: {op['op']} needs {', '.join(missing)}")
        unknown = sorted(set(op) - {"op", *required, *optional})
        if unknown:
            raise ModelCardError(f"{at}: {op['op']} takes no {', '.join(unknown)} (it takes {', '.join(required + optional) or 'no arguments'})")
        for arg in set(op) - {"op", *TEXT_ARGS}:
            if op[arg] is not None and not isinstance(op[arg], (int, float)):
                raise ModelCardError(f"{at}: {op['op']}.{arg} must be a number, not {op[arg]!r}")
        if op["op"] == "denoise" and op.get("method", "gaussian") not in DENOISE_METHODS:
            raise ModelCardError(f"{at}: denoise method {op.get('method')!r} unknown; use one of {', '.join(DENOISE_METHODS)}")
        if op["op"] == "scale_range" and float(op["a_max"]) == float(op["a_min"]):
            raise ModelCardError(f"{at}: scale_range needs a_max different from a_min")
    return list(ops)


def _stage_from(raw: dict, name: str, where: str, default_activation: str = "softmax") -> Stage:
    """One stage; a field the card leaves out keeps :class:`Stage`'s default (defaults live there alone)."""
    pre = raw.get("preprocessing", {})
    inf = raw.get("inference", {})
    intensity = pre.get("intensity", [])
    if isinstance(intensity, dict):
        intensity = [intensity]
    mode = inf.get("mode", Stage.mode)
    if mode not in MODES:
        raise ModelCardError(f"{where}: inference mode {mode!r} unknown; use one of {', '.join(MODES)}")
    activation = inf.get("activation", default_activation)
    if activation not in ACTIVATIONS:
        raise ModelCardError(f"{where}: activation {activation!r} unknown; use one of {', '.join(ACTIVATIONS)}")
    roi = inf.get("roi_size")
    if mode in ("sliding_window", "resize") and roi is None:
        raise ModelCardError(f"{where}: inference.roi_size is required for mode {mode!r}")
    if raw.get("network") is None and raw.get("weights") is None:
        raise ModelCardError(f"{where}: give 'network' (a MONAI network config) and 'weights', or a TorchScript 'weights' file")
    given = {
        "orientation": pre.get("orientation", Stage.orientation), "spacing": pre.get("spacing"),
        "resize_mode": inf.get("resize_mode"), "overlap": _number(inf, "overlap", where), "sw_batch_size": inf.get("sw_batch_size"),
        "output_channel": inf.get("output_channel"), "threshold": _number(inf, "threshold", where),
        "crop_margin": _number(raw, "crop_margin", where), "largest_component": raw.get("largest_component"),
        "region_margin": _number(inf, "region_margin", where), "amp": inf.get("amp"),
    }
    if given["amp"] is not None and not isinstance(given["amp"], bool):
        raise ModelCardError(f"{where}: inference.amp {given['amp']!r} must be true (float16 on a GPU) or false (float32)")
    batch = given["sw_batch_size"]
    if batch is not None and batch != "auto" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ModelCardError(f"{where}: inference.sw_batch_size {batch!r} must be a whole number of windows (1 or more) "
                             "or \"auto\" (as many as fit in free memory)")
    if given["region_margin"] is not None and not 0.0 <= given["region_margin"] <= 10.0:
        raise ModelCardError(f"{where}: inference.region_margin {given['region_margin']!r} is not a fraction of the region's size "
                             "between 0 and 10 (e.g. 0.1, or 0 for patch classifiers)")
    return Stage(
        name=name, role=raw.get("role", "segment"), network=raw.get("network"), weights=raw.get("weights"), sha256=raw.get("sha256"),
        intensity=_check_intensity(intensity, where), mode=mode, roi_size=[int(r) for r in roi] if roi is not None else None,
        activation=activation, **{k: v for k, v in given.items() if v is not None or k in ("orientation",)},
    )


def _number(section: dict, key: str, where: str) -> float | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelCardError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)


def _expected_volumes(expected, where: str) -> dict[int, tuple[float, float]]:
    """``expected.volume_ml``: ``{"1": [min, max]}`` in mL per label value, checked when the card is read."""
    ranges = (expected or {}).get("volume_ml") if isinstance(expected, dict) else None
    if expected is not None and not isinstance(expected, dict):
        raise ModelCardError(f"{where}: expected must be an object such as {{\"volume_ml\": {{\"1\": [900, 2300]}}}}")
    out = {}
    for key, bounds in (ranges or {}).items():
        ok = isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
        if not (str(key).isdigit() and ok and bounds[0] <= bounds[1]):
            raise ModelCardError(f"{where}: expected.volume_ml[{key!r}] must map a label value to [min, max] in mL, not {bounds!r}")
        out[int(key)] = (float(bounds[0]), float(bounds[1]))
    return out


def _migrate(raw: dict) -> dict:
    """Older spellings, rewritten to the one each concept has now (the card on disk is not changed).

    * a top-level ``threshold`` (multi-label segmentation) is the last stage's ``inference.threshold``;
    * top-level ``thresholds`` (a list, or class name -> value) are per-class ``threshold``s in ``classes``.
    """
    raw = dict(raw)
    if "threshold" in raw:
        target = raw["stages"][-1] if raw.get("stages") else raw
        target_inf = dict(target.get("inference") or {})
        target_inf.setdefault("threshold", raw.pop("threshold"))
        if raw.get("stages"):
            raw["stages"] = [*raw["stages"][:-1], {**target, "inference": target_inf}]
        else:
            raw["inference"] = target_inf
    per_class = raw.pop("thresholds", None)
    if per_class is not None:
        names, old = _names_from(raw.get("classes"))
        if isinstance(per_class, dict):
            values = [per_class.get(n) for n in names]
        else:
            values = list(per_class)
            names = names or [f"class {i}" for i in range(len(values))]
        raw["classes"] = [{"name": n, "threshold": values[i] if i < len(values) and values[i] is not None else (old[i] if i < len(old) else None)}
                          for i, n in enumerate(names)]
    return raw


def parse_card(raw: dict, root: Path, where: str = "model card") -> ModelCard:
    """Validate a card dict; ``root`` is the folder that relative weight paths start from.

    This is the one reader of a card's JSON: engines, the CLI and the panels use the typed
    :class:`ModelCard` it returns.
    """
    if not isinstance(raw, dict):
        raise ModelCardError(f"{where}: a model card must be a JSON object")
    schema = raw.get("schema", CARD_SCHEMA)
    if schema != CARD_SCHEMA:
        raise ModelCardError(f"{where}: schema {schema!r} is not one this MedAI reads ({CARD_SCHEMA}); update MedAI or the card")
    raw = _migrate(raw)
    task = raw.get("task", "segmentation")
    if task not in TASKS:
        raise ModelCardError(f"{where}: task {task!r} unknown; use one of {', '.join(TASKS)}")
    if "stages" in raw:
        stages = [_stage_from(s, s.get("name", f"stage{n}"), f"{where}, stage {n}",
                              DEFAULT_ACTIVATION[task] if n == len(raw["stages"]) - 1 else "softmax")
                  for n, s in enumerate(raw["stages"])]
    else:
        stages = [_stage_from(raw, "model", where, DEFAULT_ACTIVATION[task])]
    if not stages or stages[-1].role == "localize":
        raise ModelCardError(f"{where}: the last stage must segment or classify, not localise")
    labels = parse_labels(raw.get("labels"), where)
    if task == "segmentation" and not labels:
        raise ModelCardError(f"{where}: a segmentation card needs 'labels' (value -> name)")
    classes, class_thresholds = _names_from(raw.get("classes"))
    explain = raw.get("explain")
    expected = _expected_volumes(raw.get("expected"), where)
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
        classes=classes,
        class_thresholds=[None if t is None else float(t) for t in class_thresholds],
        unit=str(raw.get("unit", "")),
        explain_layer=explain.get("layer") if isinstance(explain, dict) else None,
        strict_weights=bool(raw.get("strict_weights", True)),
        training=dict(raw.get("training") or {}),
        version=str(raw.get("version") or ""),
        expected_volume_ml=expected,
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


def bundle_class_names(meta: dict) -> list[str]:
    """A classification bundle's class names (its output ``channel_def``), in output order."""
    names, _ = _names_from({k: v for k, v in (bundle_output(meta).get("channel_def") or {}).items() if str(k).isdigit()})
    return names
