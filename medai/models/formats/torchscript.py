"""TorchScript models with a model card beside them (``model.ts`` + ``model.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..card import parse_card, read_card_json
from . import ModelFormat, card_beside

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..loader import LoadedModel

SUFFIXES = (".ts", ".pt", ".pth", ".torchscript")


class TorchScriptFormat(ModelFormat):
    name = "torchscript"
    summary = "a TorchScript file (.ts, .pt) with a model card beside it (model.json)"

    def recognise(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in SUFFIXES

    def check(self, path: Path) -> None:
        card_beside(path, "labels and preprocessing")

    def load(self, path: Path, device: torch.device) -> LoadedModel:
        from ..loader import LoadedModel, card_networks

        beside = card_beside(path, "labels and preprocessing")
        raw = read_card_json(beside)
        raw.setdefault("weights", path.name)
        card = parse_card(raw, path.parent, where=str(beside))
        notes: list[str] = []
        return LoadedModel(card, card_networks(card, device, notes), device, self.name, path, notes=notes)


FORMAT = TorchScriptFormat()
