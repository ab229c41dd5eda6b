"""The training loop: AdamW with warm-up + cosine schedule, AMP on GPU, cached data, validation every N epochs,
best checkpoint, early stopping, resume, fine-tuning, progress callbacks and cancellation.

Tasks: ``segmentation`` (softmax, Dice + cross-entropy), ``classification`` (softmax, cross-entropy),
``multilabel`` classification (one sigmoid per class, binary cross-entropy; classes may co-occur)
and ``regression``. Classification takes 3D inputs, or single slices when ``roi_size`` has two values.

Random numbers: every epoch starts from a state derived from ``(seed, epoch)`` (python ``random``,
numpy, torch, the augmentation transforms and the loader's shuffling), so a run resumed after
epoch N continues with exactly the random stream an uninterrupted run would have used.

Files in the output folder while training: ``split.json`` (written first), ``checkpoint_last.pt``
(model, optimiser, schedule and history after every epoch; read back with ``weights_only=True``),
``model.pt`` (the best weights so far) and, at the end, the card ``medai.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..engine.common import autocast
from ..engine.progress import Cancelled, CancelToken
from ..metrics import classification_metrics, dice, regression_metrics
from ..models.loader import build_network, load_model, resolve_device
from . import augment
from .data import Case, DataError, Preprocessing, TrainingData, available_memory, estimate_case_bytes, preprocess
from .networks import network_config, size_divisor
from .split import load_split, save_split, split_cases

log = logging.getLogger(__name__)

METRIC_NAMES = {"segmentation": "dice", "classification": "accuracy", "multilabel": "label_accuracy", "regression": "mae"}


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data; written into the card."""

    task: str = "segmentation"
    network: str = "unet"
    network_args: dict = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: int = 1
    roi_size: list[int] | None = None  # segmentation: patch size; classification: the size inputs are resized to
    spacing: list[float] | None = None
    intensity: list[dict] | None = None
    orientation: str | None = "RAS"
    samples_per_case: int = 4
    steps_per_epoch: int | None = None  # default: one pass over the training cases
    val_every: int = 1
    patience: int = 10  # validations without improvement before stopping
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    augmentation: list[str] = field(default_factory=lambda: list(augment.DEFAULT_AUGMENTATION))
    device: str = "auto"
    amp: bool = True
    cache_fraction: float = 0.5  # of the memory available when training starts
    crop_foreground: bool = False
    denoise: str | None = None  # "gaussian" or "median": written into the card as a ``denoise`` intensity op
    finetune_from: str | None = None
    trust: bool = False  # the base model (finetune_from) may run code: the user trusts it (--trust)
    finetune_lr_factor: float = 0.1
    resume: bool = False
    name: str | None = None
    region_margin: float | None = None  # classification: margin around a region at inference (card inference.region_margin)
    overlap: float = 0.25
    evaluate_test: bool = True


@dataclass
class TrainEvent:
    """What a progress callback receives, after every step and every epoch."""

    phase: str  # "cache", "train", "validate", "epoch", "test", "done"
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    metric_name: str = ""
    metric: float | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        if self.phase == "done":
            return 1.0
        within = self.step / self.steps if self.steps else 1.0
        return min(1.0, (self.epoch - 1 + within) / max(self.epochs, 1))

    def text(self) -> str:
        parts = [f"epoch {self.epoch}/{self.epochs}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.best_metric is not None:
            parts.append(f"best {self.metric_name} {self.best_metric:.4f} (epoch {self.best_epoch})")
        if self.eta_s is not None:
            parts.append(f"{self.eta_s / 60:.1f} min left" if self.eta_s >= 60 else f"{self.eta_s:.0f} s left")
        return ", ".join(parts)


@dataclass
class TrainResult:
    model_dir: Path
    card_path: Path | None
    history: list[dict]
    best_metric: float | None
    best_epoch: int | None
    metric_name: str
    stopped: str  # "completed", "early stopping", "cancelled"
    test_summary: dict | None = None
    samples_per_s: float = 0.0


EventCallback = Callable[[TrainEvent], None]


def _better(task: str, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new < old if task == "regression" else new > old


def _load_cased_base():
    from monai.transforms import Transform

    return Transform


class LoadCased(_load_cased_base()):
    """MONAI deterministic transform (so CacheDataset caches its output): ``{"case": Case}`` -> ``{"image": (C,...), "label": ...}`` (cached)."""

    def __init__(self, prep: Preprocessing, task: str, channels: int) -> None:
        self.prep, self.task, self.channels = prep, task, channels

    def __call__(self, item: dict) -> dict:
        case: Case = item["case"]
        label = case.load_label() if self.task == "segmentation" else None
        x, y, _ = preprocess(case.load_volumes(), self.prep, label, self.channels, case.id)
        out = {"image": x, "id": case.id}
        if self.task == "segmentation":
            if y is None:
                raise DataError(f"case {case.id}: no label; segmentation training needs a label for every case")
            out["label"] = y
        else:
            out["label"] = torch.tensor(case.target, dtype=torch.long if self.task == "classification" else torch.float32)
        return out


def with_denoise(ops: list[dict], method: str | None) -> list[dict]:
    """``ops`` with a ``denoise`` op first (before normalisation), unless ``method`` is None or one is already there."""
    if not method or any(op.get("op") == "denoise" for op in ops):
        return list(ops)
    if method not in ("gaussian", "median"):
        raise DataError(f"denoise {method!r} unknown; use gaussian or median")
    op = {"op": "denoise", "method": method, **({"sigma": 0.75} if method == "gaussian" else {"size": 3})}
    return [op, *ops]


def _seed_epoch(seed: int, epoch: int, transforms, generator: torch.Generator) -> None:
    """Every random-number source training uses, set from ``(seed, epoch)`` alone (see the module docstring)."""
    s = (seed * 1_000_003 + epoch) % (2**32)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    transforms.set_random_state(seed=s)
    generator.manual_seed(s)


def _loss(task: str, num_outputs: int):
    from monai.losses import DiceCELoss

    if task == "segmentation":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if task == "classification":
        return torch.nn.CrossEntropyLoss()
    if task == "multilabel":
        return torch.nn.BCEWithLogitsLoss()
    return lambda out, y: torch.nn.functional.mse_loss(out[:, 0], y)


def _schedule(optimizer, warmup: int, epochs: int):
    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        t = (epoch - warmup) / max(1, epochs - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _validate(net, items: list[dict], task: str, roi: list[int], overlap: float, num_labels: list[int],
              device: torch.device, amp: bool, cancel: CancelToken) -> float:
    """The task's metric on preprocessed validation items (whole volumes, sliding windows for segmentation)."""
    from monai.inferers import sliding_window_inference

    net.eval()
    scores, y_true, outputs = [], [], []
    with torch.no_grad():
        for item in items:
            cancel.check()
            x = item["image"][None].to(device)
            with autocast(device) if amp else nullcontext():
                if task == "segmentation":
                    out = sliding_window_inference(x, roi, 4, net, overlap=overlap, mode="gaussian")
                else:
                    out = net(x)
            out = torch.as_tensor(out).float().cpu()
            if task == "multilabel":
                scores.append(float(((torch.sigmoid(out[0]) > 0.5).float() == item["label"]).float().mean()))
            elif task == "segmentation":
                pred = out.argmax(1)[0].numpy()
                ref = np.asarray(item["label"][0])
                scores.append(np.mean([dice(pred == v, ref == v) for v in num_labels]))
            else:
                outputs.append(out[0])
                y_true.append(float(item["label"]))
    net.train()
    if task in ("segmentation", "multilabel"):
        return float(np.mean(scores))
    if task == "classification":
        probs = torch.softmax(torch.stack(outputs), 1).numpy()
        return classification_metrics([int(t) for t in y_true], probs, [str(i) for i in range(probs.shape[1])])["accuracy"]
    return regression_metrics(y_true, [float(o[0]) for o in outputs])["mae"]


def train(data: TrainingData, out_dir: str | Path, config: TrainConfig, callback: EventCallback | None = None,
          cancel: CancelToken | None = None) -> TrainResult:
    """Train a network on ``data`` into ``out_dir`` (card + weights); see the module docstring for the files."""
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd
    from monai.utils import set_determinism

    from ..fetch import sha256_of
    from .export import write_card

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    cancel = cancel or CancelToken()
    callback = callback or (lambda e: None)
    task = config.task
    if task != data.task:
        raise DataError(f"the data is for {data.task}, but --task {task} was asked for")
    if task not in METRIC_NAMES:
        raise DataError(f"task {task!r} cannot be trained; use segmentation, classification, multilabel or regression")
    device = resolve_device(config.device)
    set_determinism(seed=config.seed)
    lr = config.lr
    ops = list(config.intensity if config.intensity is not None else [{"op": "nonzero_zscore"}])
    prep = Preprocessing(config.orientation, config.spacing, with_denoise(ops, config.denoise), crop_foreground=config.crop_foreground)
    roi = list(config.roi_size or ([96, 96, 96] if task == "segmentation" else [64, 64, 64]))
    channels = max(1, len(data.modalities))
    if task == "segmentation":
        out_channels = max(data.labels) + 1 if data.labels else 2
    else:
        out_channels = len(data.classes) if task in ("classification", "multilabel") else 1
    net_cfg = network_config(config.network, task, len(roi), channels, out_channels, config.network_args)
    init_state, parent = None, None
    if config.finetune_from:
        base = load_model(config.finetune_from, "cpu", trust=config.trust)
        stage = base.card.stages[-1]
        if base.card.task != task or stage.network is None:
            raise DataError(f"--from {config.finetune_from}: a {base.card.task} model (or TorchScript) cannot be fine-tuned for {task}; give a {task} model card")
        net_cfg = dict(stage.network)
        prep = Preprocessing(stage.orientation, stage.spacing, with_denoise(list(stage.intensity), config.denoise),
                             crop_foreground=config.crop_foreground)
        roi = list(config.roi_size or stage.roi_size or roi)
        init_state = base.networks[-1].state_dict()
        lr = config.lr * config.finetune_lr_factor
        weights = base.card.weights_path(stage)
        parent = {"name": base.card.name, "card": str(base.card.root / "medai.json"),
                  "sha256": stage.sha256 or (sha256_of(weights) if weights is not None and weights.exists() else None),
                  "lr_factor": config.finetune_lr_factor}
        log.info("fine-tuning %s with learning rate %.2g", base.card.name, lr)
    if task != "segmentation":
        prep.resize = roi
    divisor = size_divisor(net_cfg)
    if task == "segmentation" and any(r % divisor for r in roi):
        raise DataError(f"patch size {roi} must be divisible by {divisor} for this network's strides; change --roi")

    # split, saved first so that a resumed run uses the same one (the folder is made only now: a refused
    # configuration or base model leaves nothing behind)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_path = out_dir / "split.json"
    if config.resume and split_path.exists():
        split = load_split(split_path, data.cases)
    else:
        split = split_cases(data.cases, tuple(config.split), config.seed, stratify=task == "classification")
        save_split(split, split_path)
    cases = data.by_id()
    train_cases = [cases[i] for i in split["train"]]
    val_cases = [cases[i] for i in split["validation"]]
    if not train_cases:
        raise DataError("no training cases after the split; give more cases or change --split")

    net = build_network(net_cfg, f"network {config.network}")
    if init_state is not None:
        net.load_state_dict(init_state)
    net = net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config.warmup_epochs, config.epochs)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = _loss(task, out_channels)
    metric_name = METRIC_NAMES[task]

    history: list[dict] = []
    start_epoch, best_metric, best_epoch, bad = 1, None, None, 0
    ckpt_path = out_dir / "checkpoint_last.pt"
    if config.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"]) + 1
        best_metric, best_epoch, bad = ckpt["best_metric"], ckpt["best_epoch"], int(ckpt["bad_validations"])
        history = list(ckpt["history"])
        log.info("resuming %s at epoch %d", out_dir, start_epoch)
    elif config.resume:
        log.warning("--resume: no %s yet; starting from the beginning", ckpt_path)

    # data: preprocessing cached in memory (as much as fits), random patches and augmentation per step
    start = time.perf_counter()
    callback(TrainEvent("cache", start_epoch, config.epochs))
    need = sum(estimate_case_bytes(c, prep) for c in train_cases + val_cases)
    budget = config.cache_fraction * available_memory()
    cache_rate = 1.0 if need <= budget else budget / need
    if cache_rate < 1.0:
        log.warning("caching %.0f%% of the cases (%.1f GB needed, %.1f GB allowed); the rest are read every epoch",
                    100 * cache_rate, need / 1e9, budget / 1e9)
    loader_t = LoadCased(prep, task, channels)
    if task == "segmentation":
        sampling = [SpatialPadd(keys=["image", "label"], spatial_size=roi),
                    RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=roi, pos=1, neg=1,
                                           num_samples=config.samples_per_case, image_key="image", image_threshold=-1e9)]
        keys = ["image", "label"]
    else:
        sampling, keys = [], ["image"]
    train_tf = Compose([loader_t, *sampling, *augment.random_transforms(config.augmentation, keys, roi)])
    train_ds = CacheDataset([{"case": c} for c in train_cases], train_tf, cache_rate=cache_rate, num_workers=0, progress=False)
    val_items = [loader_t({"case": c}) for c in val_cases]
    per_case = config.samples_per_case if task == "segmentation" else 1
    batch = config.batch_size if task == "segmentation" else max(1, config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_ds, batch_size=max(1, batch // per_case) if task == "segmentation" else batch, shuffle=True,
                        num_workers=0, collate_fn=list_data_collate, generator=generator)
    steps = config.steps_per_epoch or len(loader)
    label_values = sorted(data.labels) or [1]
    log.info("cached %d training and %d validation case(s) in %.1f s", len(train_cases), len(val_items), time.perf_counter() - start)

    run_start, samples_done, train_time = time.perf_counter(), 0, 0.0
    stopped = "completed"
    epoch = start_epoch - 1
    net.train()
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            epoch_start, losses, n_samples, step = time.perf_counter(), [], 0, 0
            _seed_epoch(config.seed, epoch, train_tf, generator)
            while step < steps:
                for batch_data in loader:
                    cancel.check()
                    x = batch_data["image"].to(device)
                    y = batch_data["label"].to(device)
                    optimizer.zero_grad(set_to_none=True)
                    with autocast(device) if use_amp else nullcontext():
                        loss = loss_fn(net(x), y)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    losses.append(float(loss.detach()))
                    n_samples += int(x.shape[0])
                    step += 1
                    done = (epoch - start_epoch) + step / steps
                    elapsed = time.perf_counter() - run_start
                    eta = elapsed / done * (config.epochs - start_epoch + 1 - done) if done else None
                    callback(TrainEvent("train", epoch, config.epochs, step, steps, float(np.mean(losses)), metric_name, None,
                                        best_metric, best_epoch, elapsed, eta))
                    if step >= steps:
                        break
            scheduler.step()
            train_s = time.perf_counter() - epoch_start
            samples_done += n_samples
            train_time += train_s
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"],
                   "samples_per_s": n_samples / max(train_s, 1e-9), "time_s": train_s, metric_name: float("nan")}
            if val_items and (epoch % config.val_every == 0 or epoch == config.epochs):
                callback(TrainEvent("validate", epoch, config.epochs, steps, steps, row["loss"], metric_name))
                value = _validate(net, val_items, task, roi, config.overlap, label_values, device, use_amp, cancel)
                row[metric_name] = value
                if _better(task, value, best_metric):
                    best_metric, best_epoch, bad = value, epoch, 0
                    _save_atomic(net.state_dict(), out_dir / "model.pt")
                else:
                    bad += 1
            elif not val_items:  # without validation cases the last weights are the result
                _save_atomic(net.state_dict(), out_dir / "model.pt")
                best_epoch = epoch
            history.append(row)
            _save_atomic({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch,
                        "bad_validations": bad, "history": history}, ckpt_path)
            elapsed = time.perf_counter() - run_start
            left = config.epochs - epoch
            callback(TrainEvent("epoch", epoch, config.epochs, steps, steps, row["loss"], metric_name, row[metric_name],
                                best_metric, best_epoch, elapsed, elapsed / (epoch - start_epoch + 1) * left))
            log.info("epoch %d: loss %.4f, %s %.4f, %.1f samples/s", epoch, row["loss"], metric_name, row[metric_name], row["samples_per_s"])
            if val_items and bad >= config.patience:
                stopped = "early stopping"
                log.info("early stopping after %d validations without improvement", bad)
                break
    except (Cancelled, KeyboardInterrupt) as exc:  # Ctrl-C: a loadable model folder (best checkpoint + card) or nothing
        stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "cancelled"
        log.info("training %s in epoch %d; keeping the best checkpoint (epoch %s)", stopped, epoch, best_epoch)
        if stopped == "interrupted" and not (out_dir / "model.pt").exists():
            if created:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
    throughput = samples_done / max(train_time, 1e-9)

    card_path = None
    test_summary = None
    if (out_dir / "model.pt").exists():
        card_path = write_card(out_dir, data=data, config=config, network=net_cfg, prep=prep, roi=roi, split=split,
                               history=history, best_metric=best_metric, best_epoch=best_epoch, metric_name=metric_name,
                               stopped=stopped, lr=lr, parent=parent)
        if task == "multilabel" and config.evaluate_test and split.get("test"):
            log.warning("multi-label models are not evaluated on the test cases yet; use `medai classify` on them")
        elif stopped not in ("cancelled", "interrupted") and config.evaluate_test and split.get("test"):
            from ..evaluate import evaluate_model

            callback(TrainEvent("test", epoch, config.epochs, steps, steps, None, metric_name, None, best_metric, best_epoch))
            report = evaluate_model(card_path, data, split["test"], out_dir / "test", device=str(device), cancel=cancel)
            test_summary = report.summary
            write_card(out_dir, data=data, config=config, network=net_cfg, prep=prep, roi=roi, split=split, history=history,
                       best_metric=best_metric, best_epoch=best_epoch, metric_name=metric_name, stopped=stopped, lr=lr,
                       test=report.card_metrics(), parent=parent)
    try:
        from ..plots import training_curves

        training_curves(history, metric_name, out_dir / "training_curves.png")
    except Exception as exc:  # plots are a convenience; never lose a trained model over one
        log.warning("could not draw training curves: %s", exc)
    callback(TrainEvent("done", epoch, config.epochs, steps, steps, history[-1]["loss"] if history else None, metric_name,
                        None, best_metric, best_epoch, time.perf_counter() - run_start, 0.0))
    return TrainResult(out_dir, card_path, history, best_metric, best_epoch, metric_name, stopped, test_summary, throughput)


def _save_atomic(obj, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file under ``path`` (Ctrl-C, full disk)."""
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def config_record(config: TrainConfig) -> dict:
    """The config as written into the card (JSON-friendly)."""
    rec = asdict(config)
    rec["split"] = list(config.split)
    return rec
