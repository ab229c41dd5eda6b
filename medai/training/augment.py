"""Random augmentation named in the card (``training.augmentation``), on by default.

Names: ``affine`` (rotation, translation, scaling), ``flip``, ``intensity`` (scale and shift),
``noise`` (Gaussian), ``smooth`` (Gaussian smoothing). Parameters are fixed and written into the
card so that a training run can be repeated.
"""

from __future__ import annotations

import math

from .data import DataError

AUGMENTATION_PARAMS = {
    "affine": {"prob": 0.5, "rotate_deg": 15.0, "translate_fraction": 0.1, "scale": 0.1},
    "flip": {"prob": 0.5},
    "intensity": {"prob": 0.5, "scale": 0.1, "shift": 0.1},
    "noise": {"prob": 0.2, "std": 0.05},
    "smooth": {"prob": 0.2, "sigma": [0.5, 1.0]},
}


def check_names(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in AUGMENTATION_PARAMS]
    if unknown:
        raise DataError(f"augmentation {', '.join(unknown)} unknown; use any of {', '.join(AUGMENTATION_PARAMS)} (or none)")
    return list(names)


def describe(names: list[str]) -> list[dict]:
    """The card's record of the augmentation: each name with its parameters."""
    return [{"name": n, **AUGMENTATION_PARAMS[n]} for n in names]


def random_transforms(names: list[str], keys: list[str], roi: list[int], image_key: str = "image") -> list:
    """MONAI dictionary transforms for ``names``; spatial ones act on ``keys`` (label by nearest neighbour)."""
    from monai import transforms as T

    dims = len(roi)
    out = []
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    for name in check_names(names):
        p = AUGMENTATION_PARAMS[name]
        if name == "affine":
            rot = math.radians(p["rotate_deg"])
            out.append(T.RandAffined(
                keys=keys, prob=p["prob"], rotate_range=[rot] * (3 if dims == 3 else 1),
                translate_range=[r * p["translate_fraction"] for r in roi], scale_range=[p["scale"]] * dims,
                mode=modes, padding_mode="zeros", spatial_size=roi,
            ))
        elif name == "flip":
            out += [T.RandFlipd(keys=keys, prob=p["prob"], spatial_axis=a) for a in range(dims)]
        elif name == "intensity":
            out += [T.RandScaleIntensityd(keys=image_key, factors=p["scale"], prob=p["prob"]),
                    T.RandShiftIntensityd(keys=image_key, offsets=p["shift"], prob=p["prob"])]
        elif name == "noise":
            out.append(T.RandGaussianNoised(keys=image_key, prob=p["prob"], std=p["std"]))
        elif name == "smooth":
            s = p["sigma"]
            out.append(T.RandGaussianSmoothd(keys=image_key, prob=p["prob"], sigma_x=s, sigma_y=s, sigma_z=s))
    return out
