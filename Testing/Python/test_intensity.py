"""Card intensity ops: the same values as the plain out-of-place formulas, and the input left untouched."""

from __future__ import annotations

import torch

from medai.engine.intensity import apply_intensity


def reference(x: torch.Tensor, ops: list[dict]) -> torch.Tensor:
    """Each op written out of place, as the engine did before it worked in place."""
    for op in ops:
        kind = op["op"]
        if kind == "percentile_scale":
            flat = x.reshape(-1)
            q = torch.quantile(flat, torch.tensor([op["lower"] / 100, op["upper"] / 100]))
            low, high = float(q[0]), float(q[1])
            x = (x - low) / max(high - low, 1e-8)
        elif kind == "scale_range":
            x = (x - op["a_min"]) / (op["a_max"] - op["a_min"]) * (op["b_max"] - op["b_min"]) + op["b_min"]
            x = x.clamp(op["b_min"], op["b_max"])
        elif kind == "clip":
            x = x.clamp(op["min"], op["max"])
        elif kind == "zscore":
            x = (x - x.mean()) / x.std().clamp_min(1e-8)
        elif kind == "affine":
            x = x * op["scale"] + op["shift"]
    return x


def test_in_place_chain_equals_the_out_of_place_formulas_and_keeps_the_input():
    x = torch.randn(2, 17, 19, 23) * 300 + 40
    before = x.clone()
    chains = [
        [{"op": "percentile_scale", "lower": 0.5, "upper": 99.5}, {"op": "clip", "min": 0.0, "max": 1.0},
         {"op": "zscore"}, {"op": "affine", "scale": 0.226, "shift": 0.449}],  # deepbet's normalisation
        [{"op": "scale_range", "a_min": -57.0, "a_max": 164.0, "b_min": 0.0, "b_max": 1.0, "clip": True}, {"op": "zscore"}],
        [{"op": "affine", "scale": 2.0, "shift": -1.0}, {"op": "clip", "min": -5.0, "max": 5.0}],
        [{"op": "clip", "min": -100.0, "max": 100.0}, {"op": "affine", "scale": 0.5, "shift": 3.0}, {"op": "zscore"}],
    ]
    for ops in chains:
        got = apply_intensity(x, ops, {})
        assert torch.equal(got, reference(x, ops)), ops
        assert torch.equal(x, before), f"the input was changed by {ops}"
        assert got.data_ptr() != x.data_ptr()
