"""Class-activation heatmaps with ``monai.visualize``: Grad-CAM, Grad-CAM++ and (slow) occlusion sensitivity.

Every method returns a heatmap on the network input's spatial grid, scaled to [0, 1]
(1 = most evidence for the explained class).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "occlusion")
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "occlusion sensitivity (slow)"}
_CONV = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


class ExplainUnavailable(RuntimeError):
    """This model cannot be explained with the chosen method; the message says what can be done instead."""


def _opaque_kind(net: torch.nn.Module) -> str | None:
    """``"ONNX"`` or ``"TorchScript"`` when ``net`` (or a module inside a wrapper) cannot take Grad-CAM's hooks, else None."""
    for module in net.modules():
        if getattr(module, "is_onnx", False):
            return "ONNX"
        if isinstance(module, torch.jit.ScriptModule):
            return "TorchScript"
    return None


def find_target_layer(net: torch.nn.Module) -> str:
    """Name of the last convolution layer of ``net`` (registration order), the default layer to explain."""
    if _opaque_kind(net):
        raise ExplainUnavailable("Grad-CAM needs a PyTorch network whose layers can be hooked; TorchScript and ONNX models have none")
    name = None
    for n, module in net.named_modules():
        if isinstance(module, _CONV):
            name = n
    if name is None:
        raise ExplainUnavailable("the network has no convolution layer to explain; name one in the card (\"explain\": {\"layer\": ...})")
    return name


class TwoFromOne(torch.nn.Module):
    """A one-output two-class network seen as two outputs ``[-z, z]``: both classes can be explained.

    With a sigmoid, ``sigmoid(-z) = 1 - sigmoid(z)``: output 0 is the first class's probability.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return torch.cat([-z, z], dim=1)


def _normalise(heat: np.ndarray) -> np.ndarray:
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    heat = np.clip(heat, 0.0, None)
    peak = float(heat.max(initial=0.0))
    return heat / peak if peak > 0 else heat


def gradcam(net: torch.nn.Module, x: torch.Tensor, class_index: int, layer: str | None = None, plus: bool = False) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) of ``class_index`` for one input ``x`` ``(1, C, *S)``; returns ``S`` in [0, 1]."""
    from monai.visualize import GradCAM, GradCAMpp

    kind = _opaque_kind(net)
    if kind is not None:
        if kind == "ONNX":
            raise ExplainUnavailable("Grad-CAM is unavailable for ONNX models (onnxruntime gives no gradients); use method 'occlusion' (slow) instead")
        # torch.jit.load'ed modules refuse register_forward_hook / register_full_backward_hook (RuntimeError)
        raise ExplainUnavailable("Grad-CAM is unavailable for TorchScript models (scripted layers take no hooks); use method 'occlusion' "
                                 "(slow) instead, or a card with the network config and a state_dict")
    layer = layer or find_target_layer(net)
    names = dict(net.named_modules())
    if layer not in names:
        raise ExplainUnavailable(f"layer {layer!r} named for explanation is not in the network; some layers: {', '.join(list(names)[-5:])}")
    cam_cls = GradCAMpp if plus else GradCAM
    target = names[layer]
    hooks_before = (set(target._forward_hooks), set(target._backward_hooks))
    try:
        # MONAI's default postprocessing maps the peak to 0 (ScaleIntensity(minv=1, maxv=0)); keep raw values, scale here
        cam = cam_cls(nn_module=net, target_layers=layer, postprocessing=lambda t: t)
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            heat = cam(x=x, class_idx=int(class_index))
    finally:
        # MONAI registers hooks on the (cached, shared) network and never removes them: remove ours, or every later
        # forward pass would run them and keep activations alive
        for hooks, before in ((target._forward_hooks, hooks_before[0]), (target._backward_hooks, hooks_before[1])):
            for handle_id in set(hooks) - before:
                del hooks[handle_id]
    return _normalise(heat[0, 0].detach().float().cpu().numpy())


class _SteppedNetwork(torch.nn.Module):
    """Runs ``net`` and calls ``step(fraction done)`` before each batch: progress and cancellation inside occlusion."""

    def __init__(self, net: torch.nn.Module, step: Callable[[float], None], batches: int) -> None:
        super().__init__()
        self.net, self.step, self.batches, self.calls = net, step, max(1, batches), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.step(min(1.0, self.calls / self.batches))  # raises Cancelled when the job was cancelled
        self.calls += 1
        return self.net(x)


def occlusion_batches(spatial: tuple[int, ...], mask_size: int, n_batch: int, overlap: float = 0.25) -> int:
    """About how many network calls occlusion makes: MONAI's sliding-window count over ``spatial``, ``n_batch`` at a time."""
    windows = 1
    for s in spatial:
        m = min(mask_size, s)
        interval = max(1, int(m * (1 - overlap)))
        windows *= 1 if m == s else math.ceil((s - m) / interval) + 1
    return math.ceil(windows / max(1, n_batch))


def occlusion(net: torch.nn.Module, x: torch.Tensor, class_index: int, activate: Callable[[torch.Tensor], torch.Tensor],
              mask_size: int | None = None, n_batch: int = 8, step: Callable[[float], None] | None = None) -> np.ndarray:
    """Occlusion sensitivity: how much the class score drops when each neighbourhood is blurred away. Slow.

    ``step(fraction)`` is called before every batch of occluded inputs; it may raise (e.g.
    :class:`~medai.engine.progress.Cancelled`) to stop the run there.
    """
    from monai.visualize import OcclusionSensitivity

    spatial = tuple(int(s) for s in x.shape[2:])
    size = mask_size or max(2, min(spatial) // 4)
    onnx = next((m for m in net.modules() if getattr(m, "is_onnx", False)), None)  # also inside TwoFromOne
    if onnx is not None and isinstance(onnx.input_shape[0], int):
        n_batch = 1  # fixed batch dimension in the graph
    with torch.no_grad():
        base = activate(net(x).float())[0, class_index]
    module = net if step is None else _SteppedNetwork(net, step, occlusion_batches(spatial, size, n_batch))
    occ = OcclusionSensitivity(nn_module=module, mask_size=size, n_batch=n_batch, verbose=False, activate=activate, overlap=0.25)
    with torch.no_grad():
        sens, _ = occ(x)
    heat = base - sens[0, class_index].float()
    return _normalise(heat.detach().cpu().numpy())


def explain(net: torch.nn.Module, x: torch.Tensor, class_index: int, method: str, activate: Callable[[torch.Tensor], torch.Tensor],
            layer: str | None = None, step: Callable[[float], None] | None = None, one_output: bool = False) -> np.ndarray:
    """Dispatch to the chosen method; ``x`` is the exact network input ``(1, C, *S)``.

    ``step(fraction)`` reports progress (and may raise to cancel) between occlusion batches;
    Grad-CAM is one forward and backward pass, checked by the caller before and after.
    ``one_output``: the network has one (sigmoid) output for two classes; ``class_index`` 0 or 1
    is explained through :class:`TwoFromOne` (class 0's evidence is the negated logit).
    """
    if method not in METHODS:
        raise ValueError(f"explanation method {method!r} unknown; use one of {', '.join(METHODS)}")
    if one_output:
        net, layer = TwoFromOne(net), (f"net.{layer}" if layer else None)
    if method == "occlusion":
        return occlusion(net, x, class_index, activate, step=step)
    return gradcam(net, x, class_index, layer, plus=method == "gradcam++")
