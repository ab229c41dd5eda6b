"""MedAI model cards (``medai.json``): one's own checkpoint with a JSON description, single network or cascade."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..card import CARD_NAMES, read_card
from . import ModelFormat

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..loader import LoadedModel


def card_in(folder: Path) -> Path | None:
    """The model card inside a model folder, if any."""
    return next((folder / n for n in CARD_NAMES if (folder / n).exists()), None)


class CardFormat(ModelFormat):
    name = "card"
    summary = f"a model card .json (or a folder holding {', '.join(CARD_NAMES)})"

    def recognise(self, path: Path) -> bool:
        if path.is_dir():
            return card_in(path) is not None
        return path.suffix.lower() == ".json"

    def load(self, path: Path, device: torch.device) -> LoadedModel:
        from ..loader import LoadedModel, card_networks

        card_path = card_in(path) if path.is_dir() else path
        card = read_card(card_path)
        notes: list[str] = []
        return LoadedModel(card, card_networks(card, device, notes), device, self.name, card_path, notes=notes)


FORMAT = CardFormat()
