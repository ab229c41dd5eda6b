"""Cancelling a classification from its progress callback: between cases, before Grad-CAM, inside occlusion.

Each run is a real ClassifyLogic run in a headless MRML scene; the network counts its own forward
passes, so a test fails when work that should have been skipped still ran.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classify_helpers import masked_model, two_squares
from medai.engine.progress import CancelToken, Cancelled
from medai.explain.gradcam import occlusion_batches
from medai.geometry import Volume
from medai.slicer.classify_logic import ClassifyLogic
from medai.slicer.scene import volume_node_from_volume


def _snapshot(scene) -> list[str]:
    return sorted(scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes()))


def _counted_model(tmp_path):
    """The masked-evidence 2D model (40x40 input) with a forward hook counting network calls."""
    mask = torch.zeros(40, 40)
    mask[4:20, 4:20] = 1
    model = masked_model(tmp_path, mask)
    calls = []
    model.networks[0].register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    return model, calls


def _cohort(scene) -> list:
    return [volume_node_from_volume(scene, Volume(two_squares() * (1 + s), np.diag([0.7, 0.7, 1.0, 1.0]), f"case{s}"))
            for s in range(2)]


def _cancel_when(token: CancelToken, stages: list, predicate):
    """A progress callback that records (fraction, stage) and cancels ``token`` once ``predicate(stage, nth call in it)``."""
    def callback(fraction: float, stage: str) -> None:
        stages.append((fraction, stage))
        if predicate(stage, sum(1 for _, s in stages if s == stage)):
            token.cancel()
    return callback


@pytest.mark.parametrize("where", ["between cases", "before Grad-CAM", "inside occlusion"])
def test_cancel_from_progress_callback_stops_and_adds_nothing(scene, tmp_path, where):
    model, calls = _counted_model(tmp_path)
    nodes = _cohort(scene)
    logic = ClassifyLogic()
    method = "occlusion" if where == "inside occlusion" else "gradcam"
    full = logic.compute(nodes, model, method=method)  # uncancelled: the work a cancel must cut short
    full_calls = len(calls)
    assert len(full.cases) == 2 and all(c.heatmap is not None for c in full.cases)
    calls.clear()
    before = _snapshot(scene)
    token, stages = CancelToken(), []
    predicate = {
        "between cases": lambda stage, n: stage.startswith("case1:"),
        "before Grad-CAM": lambda stage, n: stage == "case0: explain (Grad-CAM)",
        "inside occlusion": lambda stage, n: stage.startswith("case0: explain") and n == 3,  # after the 1st occluded batch
    }[where]
    with pytest.raises(Cancelled):
        logic.classify(nodes, model, method=method, progress=_cancel_when(token, stages, predicate), cancel=token)
    assert _snapshot(scene) == before, f"cancelled {where}: the scene changed"
    assert logic.last_output is None
    seen = [s for _, s in stages]
    if where == "between cases":
        assert "case1: inference" not in seen and len(calls) == full_calls // 2  # case 0 finished, case 1 never ran
    elif where == "before Grad-CAM":
        assert len(calls) == 1, f"Grad-CAM ran after the cancel ({len(calls)} forward passes)"
    else:
        batches = occlusion_batches((40, 40), 10, 8)
        assert full_calls == 2 * (2 + batches), "the occlusion batch estimate is off"
        inside = [f for f, s in stages if s.startswith("case0: explain")]
        assert inside == sorted(inside) and inside[-1] > inside[0], "no progress reported inside occlusion"
        assert len(calls) == 2 + 2, f"occlusion went on after the cancel ({len(calls)} forward passes)"
    # the model is free again (its lock released) and a fresh run completes
    assert len(logic.classify(nodes, model, explain=False).result.cases) == 2
