"""ONNX models (onnxruntime, CPU or CUDA provider) with a model card beside them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..card import ModelLoadError, parse_card, read_card_json
from . import ModelFormat, card_beside

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..loader import LoadedModel


class OnnxFormat(ModelFormat):
    name = "onnx"
    summary = "an .onnx file with a model card beside it"

    def recognise(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".onnx"

    def check(self, path: Path) -> None:
        card_beside(path, "task, classes and preprocessing")

    def load(self, path: Path, device: torch.device) -> LoadedModel:
        from ..loader import LoadedModel, require_file
        from ..onnx_model import OnnxNetwork

        beside = card_beside(path, "task, classes and preprocessing")
        raw = read_card_json(beside)
        raw["weights"] = path.name
        raw.pop("network", None)
        card = parse_card(raw, path.parent, where=str(beside))
        require_file(path, card.stages[-1].sha256, "ONNX model")
        try:
            net = OnnxNetwork(path, device)
        except ImportError as exc:
            raise ModelLoadError(f"{path}: ONNX models need onnxruntime (pip install onnxruntime)") from exc
        except Exception as exc:
            raise ModelLoadError(f"{path}: onnxruntime cannot load this model ({str(exc).splitlines()[0][:300]})") from exc
        return LoadedModel(card, [net], device, self.name, path, notes=[net.note] if net.note else [])


FORMAT = OnnxFormat()
