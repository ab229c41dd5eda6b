"""What a user asks for, as one object carried unchanged from the CLI and the Slicer panels to the engines.

A new option is added here once (with its default) and reaches the command line, the console
API, the panels' jobs and the engine. Torch-free: the panels build requests before PyTorch is
installed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SegmentRequest:
    """How to run a segmentation model."""

    device: str = "auto"  # auto, cpu or cuda[:N]
    trust: bool = False  # run code the model file carries (see medai.models.trust)


@dataclass(frozen=True)
class ClassifyRequest:
    """How to run a classification model: device, explanation and region options."""

    device: str = "auto"  # auto, cpu or cuda[:N]
    explain: bool = True  # compute a heatmap (and hot spots) per case
    target_class: int | str | None = None  # class to explain (name or index); None: the predicted class
    method: str = "gradcam"  # gradcam, gradcam++ or occlusion
    margin: float | None = None  # crop margin around a region (fraction of its size); None: the card's
    hotspot_threshold: float = 0.5  # hot spots: where the heatmap reaches this fraction of its peak
    trust: bool = False  # run code the model file carries (see medai.models.trust)


def request_from(cls, options: dict):
    """``cls(**options)`` with an error that names the unknown option and lists the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; {cls.__name__} takes {', '.join(sorted(known))}")
    return cls(**options)
