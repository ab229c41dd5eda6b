"""Training, validation and testing of MONAI networks into MedAI model cards.

``data`` finds cases (Decathlon folder, image/label pairs, CSV, Slicer scene) and preprocesses
them exactly as inference will; ``split`` divides them by case; ``augment`` builds the random
transforms a card names; ``networks`` configures MONAI networks; ``trainer`` runs the loop
(validation, best checkpoint, early stopping, resume, cancel); ``export`` writes the card.
"""

from .config import TrainConfig  # noqa: F401  (torch-free)

_FROM_TRAINER = ("TrainEvent", "TrainResult", "train")


def __getattr__(name: str):
    """The trainer (which imports torch) loads when one of its names is first asked for."""
    if name in _FROM_TRAINER:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
