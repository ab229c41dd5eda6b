"""ONNX models run through ``onnxruntime``, wrapped as a ``torch.nn.Module`` so engines treat them like any network.

The CUDA execution provider is used when the device is CUDA and onnxruntime offers it;
otherwise the CPU provider runs the model (and the fallback is noted). Gradients do not flow
through an ONNX model: Grad-CAM is unavailable, occlusion sensitivity works.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def onnx_providers(device: torch.device) -> tuple[list, str | None]:
    """Execution providers for ``device`` and a note when CUDA was asked for but is not available."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"], None
        return ["CPUExecutionProvider"], (
            "device is CUDA but this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); running the ONNX model on the CPU"
        )
    return ["CPUExecutionProvider"], None


class OnnxNetwork(torch.nn.Module):
    """``forward(x)`` runs the ONNX graph on ``x`` (first graph input) and returns its first output as a tensor."""

    is_onnx = True

    def __init__(self, path: str | Path, device: torch.device) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        providers, self.note = onnx_providers(device)
        if self.note:
            log.warning("%s: %s", self.path.name, self.note)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, list(inp.shape)
        self.output_name = self.session.get_outputs()[0].name
        self.device = device

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixed = self.input_shape
        if len(fixed) == x.ndim and any(isinstance(f, int) and f != s for f, s in zip(fixed[1:], x.shape[1:])):
            raise ValueError(f"ONNX model {self.path.name} takes input of shape {fixed}, got {list(x.shape)}")
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = self.session.run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device)
