"""Training recipes from the catalog (``"recipes"`` in ``Resources/Catalog/models.d/*.json``).

A recipe names its data (e.g. ``medmnist:pneumoniamnist_64``), the training settings, the class
whose precision / recall / F1 to report, and the test figures published for the same data. Training
one writes the model into MedAI's cache under the recipe's name (:func:`medai.models.catalog.model_dir`),
where the catalog entry with ``"source": {"recipe": NAME}`` finds it: ``medai classify IMAGE -m NAME``
and the Classify panel use it as soon as training ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.progress import CancelToken
from ..models import catalog
from .data import DataError, TrainingData, discover
from .trainer import TrainConfig, TrainEvent, TrainResult, train

# recipe "train" keys -> TrainConfig fields (same names unless listed)
_FIELDS = {f for f in TrainConfig.__dataclass_fields__}


def get(name: str) -> dict:
    """The catalog recipe ``name``; the error lists the known ones."""
    recipe = catalog.find_recipe(name)
    if recipe is None:
        known = ", ".join(r["name"] for r in catalog.list_recipes()) or "none"
        raise DataError(f"recipe {name!r} is not in the catalog; known recipes: {known}")
    return recipe


def config(recipe: dict, overrides: dict | None = None) -> TrainConfig:
    """The recipe's :class:`TrainConfig`, with ``overrides`` (TrainConfig fields) taking precedence."""
    settings = {"task": recipe.get("task", "classification"), "name": recipe["name"], **recipe.get("train", {}),
                **(overrides or {})}
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise DataError(f"recipe {recipe['name']}: unknown training settings {', '.join(unknown)}")
    return TrainConfig(**settings)


@dataclass
class RecipeSource:
    """A recipe's data as a training source for the Slicer bridge (:class:`medai.slicer.jobs.TrainJob`):
    fetched and read on the worker thread, so a download never blocks the GUI."""

    name: str
    data: str | None = None  # another data spec than the recipe's (a mirror's file, a smaller size)

    @property
    def recipe(self) -> dict:
        return get(self.name)

    @property
    def task(self) -> str:
        return self.recipe.get("task", "classification")

    def load(self) -> TrainingData:
        return discover(self.data or self.recipe["data"], self.task)


def output_folder(recipe: dict) -> Path:
    """Where a recipe's model goes by default: the catalog's cache folder for the model of the same name."""
    return catalog.model_dir(recipe["name"])


def run(name: str, output: str | Path | None = None, data: str | None = None, overrides: dict | None = None,
        callback: Callable[[TrainEvent], None] | None = None, cancel: CancelToken | None = None,
        replace: bool = False) -> tuple[TrainResult, TrainingData, dict]:
    """Train recipe ``name`` (data and settings from the catalog, ``overrides`` on top) into ``output``.

    A model already trained into the default folder is kept unless ``replace``: nothing the user had
    is overwritten without being asked. Returns the training result, the data and the recipe.
    """
    recipe = get(name)
    cfg = config(recipe, overrides)
    out = Path(output) if output else output_folder(recipe)
    if (out / "medai.json").exists() and not (replace or cfg.resume):
        raise DataError(f"{out} already holds a trained model; give another output folder, --resume, or --replace to retrain it")
    training_data = discover(data or recipe["data"], cfg.task)
    result = train(training_data, out, cfg, callback=callback, cancel=cancel)
    return result, training_data, recipe


def report_lines(recipe: dict, summary: dict | None) -> list[str]:
    """The measured test figures beside the figures the recipe says are published for the same data."""
    lines = []
    if summary and "accuracy" in summary:
        positive = recipe.get("positive_class")
        row = next((r for r in summary["per_class"] if r["class"] == positive), None) or summary["macro"]
        which = f"class '{positive}'" if positive and row is not summary["macro"] else "macro average"
        lines.append(f"measured on the test split ({summary['cases']} images): accuracy {summary['accuracy']:.3f}, "
                     f"{which}: precision {row['precision']:.3f}, recall {row['recall']:.3f}, F1 {row['f1']:.3f}, "
                     f"ROC AUC {row['auc']:.3f}")
        classes = [r["class"] for r in summary["per_class"]]
        lines.append(f"confusion matrix (rows true, columns predicted; {', '.join(classes)}): {summary['confusion_matrix']}")
    else:
        lines.append("no test figures (training was cancelled, --no-test, or the data has no test split)")
    expected = recipe.get("expected_test") or {}
    for fig in expected.get("figures", []):
        values = ", ".join(f"{k} {v:.3f}" for k, v in fig.items() if isinstance(v, (int, float)))
        lines.append(f"published: {fig.get('method', '?')}: {values}")
    if expected.get("source"):
        lines.append(f"  ({expected['source']})")
    return lines
