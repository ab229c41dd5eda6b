"""Intensity operations named in model cards: normalisation, and denoising (``denoise``) before it."""

from __future__ import annotations

import numpy as np
import torch

from ..models.card import ModelCardError


def _quantiles(x: torch.Tensor, lower: float, upper: float) -> tuple[float, float]:
    flat = x.detach().reshape(-1).float()
    if flat.numel() <= 16_000_000:  # torch.quantile's input limit
        q = torch.quantile(flat, torch.tensor([lower / 100.0, upper / 100.0], dtype=flat.dtype, device=flat.device))
        return float(q[0]), float(q[1])
    lo, hi = np.percentile(flat.cpu().numpy(), [lower, upper])
    return float(lo), float(hi)


def denoise(x: torch.Tensor, method: str = "gaussian", sigma: float = 0.75, size: int = 3) -> torch.Tensor:
    """Each channel of ``x`` ``(C, ...)`` smoothed over its spatial axes: Gaussian (``sigma`` voxels) or median (``size`` voxels)."""
    from scipy import ndimage

    arr = x.detach().cpu().float().numpy()
    if method == "gaussian":
        out = np.stack([ndimage.gaussian_filter(c, sigma=float(sigma)) for c in arr])
    elif method == "median":
        out = np.stack([ndimage.median_filter(c, size=int(size)) for c in arr])
    else:
        raise ModelCardError(f"denoise method {method!r} unknown; use gaussian or median")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)


def apply_intensity(x: torch.Tensor, ops: list[dict], stats: dict) -> torch.Tensor:
    """Apply ``ops`` in order to a float tensor ``(C, ...)``; ``stats`` carries values between stages.

    ``percentile_scale`` with ``"statistics": "first_stage"`` computes its percentiles once, on the
    first stage's input, and reuses them in later stages (deepbet normalises both of its
    networks with the percentiles of the whole downsampled head).

    ``x`` itself is never changed: the first op makes a new tensor and later ops work on it in place
    (the same element-wise operations, so the same values, without a full-size temporary per step).
    """
    given = x  # never changed: ops work in place only once an earlier op has made a new tensor
    for op in ops:
        kind = op["op"]
        if kind == "percentile_scale":
            key = ("percentile", op.get("lower", 0.5), op.get("upper", 99.5))
            if op.get("statistics") == "first_stage" and key in stats:
                low, high = stats[key]
            else:
                low, high = _quantiles(x, op.get("lower", 0.5), op.get("upper", 99.5))
                stats[key] = (low, high)
            x = x.sub_(low) if x is not given else x - low
            x.div_(max(high - low, 1e-8))
        elif kind == "scale_range":
            a_min, a_max = float(op["a_min"]), float(op["a_max"])
            b_min, b_max = float(op.get("b_min", 0.0)), float(op.get("b_max", 1.0))
            x = x.sub_(a_min) if x is not given else x - a_min
            x.div_(a_max - a_min).mul_(b_max - b_min).add_(b_min)
            if op.get("clip", False):
                x.clamp_(min(b_min, b_max), max(b_min, b_max))
        elif kind == "clip":
            x = x.clamp_(op.get("min"), op.get("max")) if x is not given else x.clamp(op.get("min"), op.get("max"))
        elif kind == "zscore":
            mean, std = x.mean(), x.std().clamp_min(1e-8)
            x = x.sub_(mean) if x is not given else x - mean
            x.div_(std)
        elif kind == "nonzero_zscore":
            out = x.clone()
            for c in range(x.shape[0]):
                nz = x[c] != 0
                if nz.any():
                    v = x[c][nz]
                    out[c][nz] = (v - v.mean()) / v.std(unbiased=False).clamp_min(1e-8)
            x = out
        elif kind == "denoise":
            x = denoise(x, op.get("method", "gaussian"), op.get("sigma", 0.75), op.get("size", 3))
        elif kind == "affine":
            scale, shift = float(op.get("scale", 1.0)), float(op.get("shift", 0.0))
            x = x.mul_(scale) if x is not given else x * scale
            x.add_(shift)
        else:
            raise ModelCardError(f"intensity op {kind!r} unknown")
    return x
