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
import math
import os
import shutil
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..engine.common import autocast
from ..engine.cpu_memory import available_memory, call_network
from ..engine.progress import Cancelled, CancelToken
from ..metrics import classification_metrics, dice, regression_metrics
from ..models.card import DENOISE_METHODS
from ..models.loader import build_network, load_model, resolve_device
from . import augment
from .config import TrainConfig
from .data import Case, DataError, Preprocessing, TrainingData, estimate_case_bytes, preprocess
from .networks import network_config, size_divisor
from .split import load_split, save_split, split_cases

log = logging.getLogger(__name__)

METRIC_NAMES = {"segmentation": "dice", "classification": "accuracy", "multilabel": "label_accuracy", "regression": "mae"}


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
        """The status line of the CLI's progress bar and the Train sections.

        ``epoch 3/20, loss 0.4120, dice 0.7312, best dice 0.7420 (epoch 2), 1.5 min left``; the cache,
        validation and test phases say what is happening instead.
        """
        if self.phase == "cache":
            return "reading and caching the training cases"
        if self.phase == "validate":
            return f"epoch {self.epoch}/{self.epochs}: validating"
        if self.phase == "test":
            return "testing the best model on the test cases"
        parts = [f"epoch {self.epoch}/{self.epochs}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.metric is not None and self.metric == self.metric:  # NaN: not validated this epoch
            parts.append(f"{self.metric_name} {self.metric:.4f}")
        if self.best_metric is not None:
            parts.append(f"best {self.metric_name} {self.best_metric:.4f} (epoch {self.best_epoch})")
        if self.eta_s is not None and self.phase != "done":
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
    stopped: str  # "completed", "early stopping", "cancelled", "interrupted" (Ctrl-C)
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
    if method not in DENOISE_METHODS:
        raise DataError(f"denoise {method!r} unknown; use {' or '.join(DENOISE_METHODS)}")
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
            with autocast(device, amp):
                if task == "segmentation":
                    out = sliding_window_inference(x, roi, 4, lambda w: call_network(net, w), overlap=overlap, mode="gaussian")
                else:
                    out = call_network(net, x)
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


@dataclass
class _Plan:
    """What the configuration and the data decide before training starts: network, preprocessing, sizes."""

    task: str
    net_cfg: dict
    prep: Preprocessing
    roi: list[int]
    channels: int
    out_channels: int
    lr: float
    init_state: dict | None = None  # fine-tuning: the parent model's weights
    parent: dict | None = None  # fine-tuning: the record of the parent model written into the card


def _plan(data: TrainingData, config: TrainConfig) -> _Plan:
    """Check the task against the data and work out the network, preprocessing and patch size (fine-tuning included)."""
    from ..fetch import sha256_of

    task = config.task
    if task != data.task:
        raise DataError(f"the data is for {data.task}, but --task {task} was asked for")
    if task not in METRIC_NAMES:
        raise DataError(f"task {task!r} cannot be trained; use segmentation, classification, multilabel or regression")
    ops = list(config.intensity if config.intensity is not None else [{"op": "nonzero_zscore"}])
    prep = Preprocessing(config.orientation, config.spacing, with_denoise(ops, config.denoise), crop_foreground=config.crop_foreground)
    roi = list(config.roi_size or ([96, 96, 96] if task == "segmentation" else [64, 64, 64]))
    channels = max(1, len(data.modalities))
    if task == "segmentation":
        out_channels = max(data.labels) + 1 if data.labels else 2
    else:
        out_channels = len(data.classes) if task in ("classification", "multilabel") else 1
    plan = _Plan(task, network_config(config.network, task, len(roi), channels, out_channels, config.network_args),
                 prep, roi, channels, out_channels, config.lr)
    if config.finetune_from:
        base = load_model(config.finetune_from, "cpu", trust=config.trust)
        stage = base.card.stages[-1]
        if base.card.task != task or stage.network is None:
            raise DataError(f"--from {config.finetune_from}: a {base.card.task} model (or TorchScript) cannot be fine-tuned for {task}; give a {task} model card")
        plan.net_cfg = dict(stage.network)
        plan.prep = Preprocessing(stage.orientation, stage.spacing, with_denoise(list(stage.intensity), config.denoise),
                                  crop_foreground=config.crop_foreground)
        plan.roi = list(config.roi_size or stage.roi_size or roi)
        plan.init_state = base.networks[-1].state_dict()
        plan.lr = config.lr * config.finetune_lr_factor
        weights = base.card.weights_path(stage)
        plan.parent = {"name": base.card.name, "card": str(base.card.root / "medai.json"),
                       "sha256": stage.sha256 or (sha256_of(weights) if weights is not None and weights.exists() else None),
                       "lr_factor": config.finetune_lr_factor}
        log.info("fine-tuning %s with learning rate %.2g", base.card.name, plan.lr)
    if task != "segmentation":
        plan.prep.resize = plan.roi
    divisor = size_divisor(plan.net_cfg)
    if task == "segmentation" and any(r % divisor for r in plan.roi):
        raise DataError(f"patch size {plan.roi} must be divisible by {divisor} for this network's strides; change --roi")
    return plan


def _split(data: TrainingData, config: TrainConfig, out_dir: Path) -> dict:
    """The train/validation/test split, saved first so that a resumed run uses the same one.

    The output folder is made only now: a refused configuration or base model leaves nothing behind.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    split_path = out_dir / "split.json"
    if config.resume and split_path.exists():
        split = load_split(split_path, data.cases)
    else:
        split = split_cases(data.cases, tuple(config.split), config.seed, stratify=config.task == "classification")
        save_split(split, split_path)
    if not split["train"]:
        raise DataError("no training cases after the split; give more cases or change --split")
    return split


@dataclass
class _Loaders:
    """Training batches (random patches and augmentation per step) and the preprocessed validation cases."""

    loader: object
    transforms: object
    generator: torch.Generator
    val_items: list[dict]
    steps: int
    label_values: list[int]


def _loaders(data: TrainingData, plan: _Plan, config: TrainConfig, split: dict) -> _Loaders:
    """Preprocessing cached in memory (as much as fits the budget); random patches and augmentation per step."""
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd

    cases = data.by_id()
    train_cases, val_cases = [cases[i] for i in split["train"]], [cases[i] for i in split["validation"]]
    start = time.perf_counter()
    need = sum(estimate_case_bytes(c, plan.prep) for c in train_cases + val_cases)
    budget = config.cache_fraction * available_memory()
    cache_rate = 1.0 if need <= budget else budget / need
    if cache_rate < 1.0:
        log.warning("caching %.0f%% of the cases (%.1f GB needed, %.1f GB allowed); the rest are read every epoch",
                    100 * cache_rate, need / 1e9, budget / 1e9)
    loader_t = LoadCased(plan.prep, plan.task, plan.channels)
    segmentation = plan.task == "segmentation"
    if segmentation:
        sampling = [SpatialPadd(keys=["image", "label"], spatial_size=plan.roi),
                    RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=plan.roi, pos=1, neg=1,
                                           num_samples=config.samples_per_case, image_key="image", image_threshold=-1e9)]
        keys = ["image", "label"]
    else:
        sampling, keys = [], ["image"]
    train_tf = Compose([loader_t, *sampling, *augment.random_transforms(config.augmentation, keys, plan.roi)])
    train_ds = CacheDataset([{"case": c} for c in train_cases], train_tf, cache_rate=cache_rate, num_workers=0, progress=False)
    val_items = [loader_t({"case": c}) for c in val_cases]
    batch = config.batch_size if segmentation else max(1, config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_ds, batch_size=max(1, batch // config.samples_per_case) if segmentation else batch, shuffle=True,
                        num_workers=0, collate_fn=list_data_collate, generator=generator)
    log.info("cached %d training and %d validation case(s) in %.1f s", len(train_cases), len(val_items), time.perf_counter() - start)
    return _Loaders(loader, train_tf, generator, val_items, config.steps_per_epoch or len(loader), sorted(data.labels) or [1])


# What a checkpoint holds (its key -> the run's attribute): objects saved through their state_dict, and the counters.
CHECKPOINT_STATE_DICTS = {"model": "net", "optimizer": "optimizer", "scheduler": "scheduler", "scaler": "scaler"}
CHECKPOINT_COUNTERS = {"best_metric": "best_metric", "best_epoch": "best_epoch", "bad_validations": "bad", "history": "history"}


@dataclass
class _Run:
    """One training run's state: network, optimiser, counters; saved and restored as one checkpoint."""

    config: TrainConfig
    plan: _Plan
    out_dir: Path
    device: torch.device
    callback: EventCallback
    cancel: CancelToken
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    use_amp: bool
    loss_fn: object
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    best_metric: float | None = None
    best_epoch: int | None = None
    bad: int = 0
    run_start: float = 0.0
    created_dir: bool = False  # the run made out_dir (an interrupted run before any checkpoint removes it)

    @property
    def metric_name(self) -> str:
        return METRIC_NAMES[self.plan.task]

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint_last.pt"

    def save_checkpoint(self, epoch: int) -> None:
        state = {key: getattr(self, attr).state_dict() for key, attr in CHECKPOINT_STATE_DICTS.items()}
        counters = {key: getattr(self, attr) for key, attr in CHECKPOINT_COUNTERS.items()}
        _save_atomic({**state, **counters, "epoch": epoch}, self.checkpoint_path)

    def restore_checkpoint(self) -> None:
        ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        for key, attr in CHECKPOINT_STATE_DICTS.items():
            getattr(self, attr).load_state_dict(ckpt[key])
        for key, attr in CHECKPOINT_COUNTERS.items():
            setattr(self, attr, ckpt[key])
        self.bad, self.history = int(self.bad), list(self.history)
        self.start_epoch = int(ckpt["epoch"]) + 1

    def event(self, phase: str, epoch: int, step: int, steps: int, loss: float | None, metric: float | None = None,
              eta: float | None = None) -> None:
        self.callback(TrainEvent(phase, epoch, self.config.epochs, step, steps, loss, self.metric_name, metric,
                                 self.best_metric, self.best_epoch, time.perf_counter() - self.run_start, eta))


def _start_run(config: TrainConfig, plan: _Plan, out_dir: Path, device: torch.device, callback: EventCallback,
               cancel: CancelToken) -> _Run:
    """Build the network, optimiser and schedule; continue from the last checkpoint with ``config.resume``."""
    net = build_network(plan.net_cfg, f"network {config.network}")
    if plan.init_state is not None:
        net.load_state_dict(plan.init_state)
    net = net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=plan.lr, weight_decay=config.weight_decay)
    use_amp = config.amp and device.type == "cuda"
    run = _Run(config, plan, out_dir, device, callback, cancel, net, optimizer, _schedule(optimizer, config.warmup_epochs, config.epochs),
               torch.amp.GradScaler("cuda", enabled=use_amp), use_amp, _loss(plan.task, plan.out_channels))
    if config.resume and run.checkpoint_path.exists():
        run.restore_checkpoint()
        log.info("resuming %s at epoch %d", out_dir, run.start_epoch)
    elif config.resume:
        log.warning("--resume: no %s yet; starting from the beginning", run.checkpoint_path)
    return run


def _train_epoch(run: _Run, epoch: int, data: _Loaders) -> tuple[float, int, float]:
    """One epoch of optimiser steps; returns (mean loss, samples seen, seconds)."""
    config = run.config
    epoch_start, losses, n_samples, step = time.perf_counter(), [], 0, 0
    _seed_epoch(config.seed, epoch, data.transforms, data.generator)
    while step < data.steps:
        for batch_data in data.loader:
            run.cancel.check()
            x = batch_data["image"].to(run.device)
            y = batch_data["label"].to(run.device)
            run.optimizer.zero_grad(set_to_none=True)
            with autocast(run.device, run.use_amp):
                loss = run.loss_fn(run.net(x), y)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            losses.append(float(loss.detach()))
            n_samples += int(x.shape[0])
            step += 1
            done = (epoch - run.start_epoch) + step / data.steps
            elapsed = time.perf_counter() - run.run_start
            eta = elapsed / done * (config.epochs - run.start_epoch + 1 - done) if done else None
            run.event("train", epoch, step, data.steps, float(np.mean(losses)), eta=eta)
            if step >= data.steps:
                break
    run.scheduler.step()
    return float(np.mean(losses)), n_samples, time.perf_counter() - epoch_start


def _validate_epoch(run: _Run, epoch: int, data: _Loaders, row: dict) -> None:
    """Validate when due and keep the best weights as ``model.pt`` (the last ones when there is no validation)."""
    config = run.config
    if data.val_items and (epoch % config.val_every == 0 or epoch == config.epochs):
        run.event("validate", epoch, data.steps, data.steps, row["loss"])
        value = _validate(run.net, data.val_items, run.plan.task, run.plan.roi, config.overlap, data.label_values, run.device,
                          run.use_amp, run.cancel)
        row[run.metric_name] = value
        if _better(run.plan.task, value, run.best_metric):
            run.best_metric, run.best_epoch, run.bad = value, epoch, 0
            _save_atomic(run.net.state_dict(), run.out_dir / "model.pt")
        else:
            run.bad += 1
    elif not data.val_items:  # without validation cases the last weights are the result
        _save_atomic(run.net.state_dict(), run.out_dir / "model.pt")
        run.best_epoch = epoch


def _epochs(run: _Run, data: _Loaders) -> tuple[str, int, float]:
    """The epoch loop; returns (how it stopped, the last epoch, samples per second)."""
    config, metric_name = run.config, run.metric_name
    samples_done, train_time, stopped, epoch = 0, 0.0, "completed", run.start_epoch - 1
    run.net.train()
    try:
        for epoch in range(run.start_epoch, config.epochs + 1):
            loss, n_samples, train_s = _train_epoch(run, epoch, data)
            samples_done += n_samples
            train_time += train_s
            row = {"epoch": epoch, "loss": loss, "lr": run.optimizer.param_groups[0]["lr"],
                   "samples_per_s": n_samples / max(train_s, 1e-9), "time_s": train_s, metric_name: float("nan")}
            _validate_epoch(run, epoch, data, row)
            run.history.append(row)
            run.save_checkpoint(epoch)
            elapsed = time.perf_counter() - run.run_start
            run.event("epoch", epoch, data.steps, data.steps, row["loss"], row[metric_name],
                      elapsed / (epoch - run.start_epoch + 1) * (config.epochs - epoch))
            log.info("epoch %d: loss %.4f, %s %.4f, %.1f samples/s", epoch, row["loss"], metric_name, row[metric_name], row["samples_per_s"])
            if data.val_items and run.bad >= config.patience:
                stopped = "early stopping"
                log.info("early stopping after %d validations without improvement", run.bad)
                break
    except (Cancelled, KeyboardInterrupt) as exc:  # Ctrl-C: a loadable model folder (best checkpoint + card) or nothing
        stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "cancelled"
        log.info("training %s in epoch %d; keeping the best checkpoint (epoch %s)", stopped, epoch, run.best_epoch)
        if stopped == "interrupted" and not (run.out_dir / "model.pt").exists():
            if run.created_dir:
                shutil.rmtree(run.out_dir, ignore_errors=True)
            raise
    return stopped, epoch, samples_done / max(train_time, 1e-9)


def _finish(run: _Run, data: TrainingData, split: dict, stopped: str, epoch: int, steps: int) -> tuple[Path | None, dict | None]:
    """Write the card for the best weights, evaluate them on the test cases, draw the training curves."""
    from .export import write_card

    config, plan, out_dir = run.config, run.plan, run.out_dir
    card_path, test_summary = None, None
    card_args = dict(data=data, config=config, network=plan.net_cfg, prep=plan.prep, roi=plan.roi, split=split, history=run.history,
                     best_metric=run.best_metric, best_epoch=run.best_epoch, metric_name=run.metric_name, stopped=stopped,
                     lr=plan.lr, parent=plan.parent)
    if (out_dir / "model.pt").exists():
        card_path = write_card(out_dir, **card_args)
        if plan.task == "multilabel" and config.evaluate_test and split.get("test"):
            log.warning("multi-label models are not evaluated on the test cases yet; use `medai classify` on them")
        elif stopped not in ("cancelled", "interrupted") and config.evaluate_test and split.get("test"):
            from ..evaluate import evaluate_model

            run.event("test", epoch, steps, steps, None)
            report = evaluate_model(card_path, data, split["test"], out_dir / "test", device=str(run.device), cancel=run.cancel)
            test_summary = report.summary
            write_card(out_dir, **card_args, test=report.card_metrics())
    try:
        from ..plots import training_curves

        training_curves(run.history, run.metric_name, out_dir / "training_curves.png")
    except Exception as exc:  # plots are a convenience; never lose a trained model over one
        log.warning("could not draw training curves: %s", exc)
    return card_path, test_summary


def train(data: TrainingData, out_dir: str | Path, config: TrainConfig, callback: EventCallback | None = None,
          cancel: CancelToken | None = None) -> TrainResult:
    """Train a network on ``data`` into ``out_dir`` (card + weights); see the module docstring for the files."""
    from monai.utils import set_determinism

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    cancel = cancel or CancelToken()
    callback = callback or (lambda e: None)
    device = resolve_device(config.device)
    set_determinism(seed=config.seed)
    plan = _plan(data, config)
    split = _split(data, config, out_dir)
    run = _start_run(config, plan, out_dir, device, callback, cancel)
    run.created_dir = created
    callback(TrainEvent("cache", run.start_epoch, config.epochs))
    loaders = _loaders(data, plan, config, split)
    run.run_start = time.perf_counter()
    stopped, epoch, throughput = _epochs(run, loaders)
    card_path, test_summary = _finish(run, data, split, stopped, epoch, loaders.steps)
    run.event("done", epoch, loaders.steps, loaders.steps, run.history[-1]["loss"] if run.history else None, eta=0.0)
    return TrainResult(out_dir, card_path, run.history, run.best_metric, run.best_epoch, run.metric_name, stopped, test_summary, throughput)


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
