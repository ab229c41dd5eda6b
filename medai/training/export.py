"""Write a trained model as a MedAI card (``medai.json`` beside ``model.pt``) carrying how it was made.

The card's ``training`` section records the data it saw, the split (case ids), the augmentation,
the training settings, the validation history and the metrics measured on the held-out test cases.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from pathlib import Path

from .. import __version__
from ..fetch import sha256_of
from ..results import Label
from . import augment
from .data import Preprocessing, TrainingData


def _clean(value):
    """JSON-safe: NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_history_csv(history: list[dict], path: Path) -> None:
    if not history:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def write_card(out_dir: Path, *, data: TrainingData, config, network: dict, prep: Preprocessing, roi: list[int], split: dict,
               history: list[dict], best_metric: float | None, best_epoch: int | None, metric_name: str, stopped: str,
               lr: float, test: dict | None = None) -> Path:
    """Write ``out_dir/medai.json`` for ``out_dir/model.pt``; returns the card's path."""
    from .trainer import config_record

    task = config.task
    name = config.name or out_dir.name
    card: dict = {
        "schema": "medai.card/1",
        "name": name,
        "title": config.name or name,
        "description": f"{task.capitalize()} model trained with `medai train` ({config.network}) on {data.description.get('name', 'local data')}.",
        "task": task,
        "network": network,
        "weights": "model.pt",
        "sha256": sha256_of(out_dir / "model.pt"),
        "inputs": [{"name": m, "modality": m} for m in (data.modalities or ["image"])],
        "preprocessing": prep.to_card(),
    }
    if task == "segmentation":
        card["inference"] = {"mode": "sliding_window", "roi_size": roi, "overlap": config.overlap, "activation": "softmax"}
        card["labels"] = {str(v): {"name": n, "color": list(Label.default_color(v))} for v, n in sorted(data.labels.items())}
        card["postprocessing"] = {}
    else:
        card["inference"] = {"mode": "resize", "roi_size": roi, "activation": "softmax" if task == "classification" else "none"}
        if task == "classification":
            card["classes"] = list(data.classes)
    training_prep = {"crop_foreground": prep.crop_foreground, "denoise": prep.denoise}
    metrics = {"validation": {"metric": metric_name, "best": best_metric, "best_epoch": best_epoch,
                              "cases": len(split.get("validation", []))}}
    if test is not None:
        metrics["test"] = test
    card["training"] = {
        "tool": f"medai {__version__} (medai train)",
        "finished": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "data": data.description,
        "split": {k: split.get(k, []) for k in ("train", "validation", "test")} | {"method": split.get("method"), "seed": split.get("seed")},
        "metrics": metrics,
        "augmentation": augment.describe(config.augmentation),
        "training_only_preprocessing": training_prep,
        "settings": config_record(config) | {"effective_lr": lr},
        "epochs_run": len(history),
        "stopped": stopped,
        "history": history,
    }
    if prep.denoise:
        card["training"]["notes"] = ("denoising was applied in training only; the inference engine does not apply it, "
                                     "so denoise inputs the same way before inference")
    path = out_dir / "medai.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(_clean(card), indent=1))
    tmp.replace(path)
    (out_dir / "split.json").write_text(json.dumps(split, indent=1))
    write_history_csv(history, out_dir / "history.csv")
    return path
