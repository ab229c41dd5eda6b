"""Write a trained model as a MedAI card (``medai.json`` beside ``model.pt``) carrying how it was made.

The card's ``training`` section records the data it saw, the split (case ids), the augmentation,
the training settings, the validation history and the metrics measured on the held-out test cases.
Paths in it are relative to the model folder, and ``data.sha256`` fingerprints the data's content
(case ids and file bytes, or the voxels of in-memory cases), so a card moved to another machine
still says which data made it without naming that machine's temporary folders.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from .. import __version__
from ..fetch import sha256_of
from ..metrics import json_ready
from ..results import Label
from . import augment
from .data import Preprocessing, TrainingData


def relative_to_model(path: str | os.PathLike, out_dir: Path) -> str:
    """``path`` relative to the model folder (POSIX separators); unchanged when it is not a path (a catalog name)
    or has no relative form (another drive)."""
    p = Path(path)
    if not (p.is_absolute() or p.exists()):
        return str(path)
    try:
        return Path(os.path.relpath(p.resolve(), out_dir.resolve())).as_posix()
    except ValueError:
        return str(path)


def data_fingerprint(data: TrainingData) -> str:
    """SHA-256 over every case's id and input/label content (file bytes, or voxels of in-memory volumes)."""
    h = hashlib.sha256()
    for case in sorted(data.cases, key=lambda c: c.id):
        h.update(case.id.encode())
        if case.volumes is not None:
            for v in case.volumes + ([case.label_volume] if case.label_volume is not None else []):
                h.update(v.array.tobytes())
        for f in list(case.images) + ([case.label] if case.label is not None else []):
            h.update(bytes.fromhex(sha256_of(f)))
        h.update(json.dumps(case.target).encode())
    return h.hexdigest()


def data_record(data: TrainingData, out_dir: Path) -> dict:
    """The card's ``training.data``: the data's description, its path relative to the model folder, its fingerprint."""
    rec = dict(data.description)
    if rec.get("path"):
        rec["path"] = relative_to_model(rec["path"], out_dir)
    if "sha256" not in data.description:  # once per run: write_card runs again after the test evaluation
        data.description["sha256"] = data_fingerprint(data)
    rec["sha256"] = data.description["sha256"]
    return rec


def write_history_csv(history: list[dict], path: Path) -> None:
    if not history:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def write_card(out_dir: Path, *, data: TrainingData, config, network: dict, prep: Preprocessing, roi: list[int], split: dict,
               history: list[dict], best_metric: float | None, best_epoch: int | None, metric_name: str, stopped: str,
               lr: float, test: dict | None = None, parent: dict | None = None) -> Path:
    """Write ``out_dir/medai.json`` for ``out_dir/model.pt``; returns the card's path.

    ``parent``: the model this one was fine-tuned from (name, card, weights sha256, learning-rate factor).
    """
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
        activation = {"classification": "softmax", "multilabel": "sigmoid"}.get(task, "none")
        card["inference"] = {"mode": "resize", "roi_size": roi, "activation": activation}
        if task == "multilabel":
            card["inference"]["threshold"] = 0.5
        if config.region_margin is not None:
            card["inference"]["region_margin"] = config.region_margin
        if task in ("classification", "multilabel"):
            card["classes"] = list(data.classes)
    training_prep = {"crop_foreground": prep.crop_foreground}
    settings = config_record(config) | {"effective_lr": lr}
    if settings.get("finetune_from"):
        settings["finetune_from"] = relative_to_model(settings["finetune_from"], out_dir)
    metrics = {"validation": {"metric": metric_name, "best": best_metric, "best_epoch": best_epoch,
                              "cases": len(split.get("validation", []))}}
    if test is not None:
        metrics["test"] = test
    card["training"] = {
        "tool": f"medai {__version__} (medai train)",
        "finished": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "data": data_record(data, out_dir),
        "split": {k: split.get(k, []) for k in ("train", "validation", "test")} | {"method": split.get("method"), "seed": split.get("seed")},
        "metrics": metrics,
        "augmentation": augment.describe(config.augmentation),
        "training_only_preprocessing": training_prep,
        "settings": settings,
        "epochs_run": len(history),
        "stopped": stopped,
        "history": history,
    }
    if parent is not None:
        card["training"]["parent"] = dict(parent, card=relative_to_model(parent["card"], out_dir))
    path = out_dir / "medai.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(json_ready(card), indent=1))
    tmp.replace(path)
    (out_dir / "split.json").write_text(json.dumps(split, indent=1))
    write_history_csv(history, out_dir / "history.csv")
    return path
