"""A training run's settings (:class:`TrainConfig`), importable without torch: ``medai train``'s options take
their defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_AUGMENTATION = ("affine", "flip", "intensity", "noise", "smooth")


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
    augmentation: list[str] = field(default_factory=lambda: list(DEFAULT_AUGMENTATION))
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
