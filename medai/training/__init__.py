"""Training, validation and testing of MONAI networks into MedAI model cards.

``data`` finds cases (Decathlon folder, image/label pairs, CSV, Slicer scene) and preprocesses
them exactly as inference will; ``split`` divides them by case; ``augment`` builds the random
transforms a card names; ``networks`` configures MONAI networks; ``trainer`` runs the loop
(validation, best checkpoint, early stopping, resume, cancel); ``export`` writes the card.
"""

from .trainer import TrainConfig, TrainEvent, TrainResult, train  # noqa: F401
