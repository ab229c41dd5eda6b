"""What the module panels show, computed without Qt: model and device choices, input names, hints, timings.

The widgets in ``MedAILib`` only put these strings and lists into Qt controls, so all of it is
tested headless.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..models import catalog
from ..models.formats import format_for
from ..models.card import CARD_NAMES, ModelLoadError, _card_beside, bundle_class_names, read_card  # noqa: F401 (panel.ModelLoadError: what the widgets catch)

IMPORT_FILTER = "MONAI models (*.zip *.json *.ts *.pt *.pth);;All files (*)"
TIMING_ORDER = (("load", "load"), ("preprocess", "preprocess"), ("inference", "inference"),
                ("postprocess", "post-process"), ("explain", "explain"), ("localize", "localize"), ("scene", "scene"))
CLASSIFY_TASKS = ("classification", "multilabel", "regression")  # as medai.engine.classify.CLASSIFY_TASKS
EXPLAIN_METHODS = (("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcam++"), ("Occlusion (slow)", "occlusion"))
PREDICTED = "(predicted class)"
GIB = 1024**3


@dataclass
class ModelChoice:
    """One entry of the model selector: what the user sees and what ``load_model`` gets."""

    title: str
    spec: str
    tooltip: str = ""
    sample: str | None = None


def model_choices(task: str = "segmentation", imported: list[str] | None = None) -> list[ModelChoice]:
    """Catalog models for ``task`` (segmentation includes multilabel segmentation; classification includes
    multi-label classification and regression), then the user's imported models."""
    tasks = {"segmentation": ("segmentation", "multilabel"), "classification": CLASSIFY_TASKS}.get(task, (task,))
    choices = [ModelChoice(e.title, e.name, _tooltip(e), e.sample) for e in catalog.list_models() if e.task in tasks]
    for path in imported or []:
        if _model_task(str(path)) in (None, *tasks):  # a trained model is listed by the panel of its task only
            kind = "trained" if _is_trained(str(path)) else "imported"
            choices.append(ModelChoice(f"{Path(path).name} ({kind})", str(path), str(path)))
    return choices


def _tooltip(e: catalog.CatalogEntry) -> str:
    lines = [e.description, f"Modality: {e.modality}", f"Licence: {licence_text(e)}"]
    if e.version:
        lines.append(f"Version: {e.version}")
    runtime = (e.raw or {}).get("runtime") or {}
    if runtime:
        lines.append(f"Run time: GPU {runtime.get('gpu', 'not measured')}; CPU {runtime.get('cpu', 'not measured')}")
    lines.append(cached_text(e))
    return "\n".join(lines)


def licence_text(e: catalog.CatalogEntry) -> str:
    """The licence, led by a visible flag where the weights or their data are non-commercial or need a data-use agreement."""
    return f"⚠ {e.license_flag.upper()}: {e.license}" if e.license_flag else e.license


def cached_text(e: catalog.CatalogEntry) -> str:
    """``cached (123.4 MB)`` or ``not downloaded`` (the zoo publishes no sizes, so none is guessed before download)."""
    if not catalog.is_cached(e):
        return "not downloaded (downloads on first use, or with Download)"
    folder = catalog.model_dir(e.name)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".partial")) if folder.exists() else 0
    note = catalog.update_note(e)
    return (f"cached ({size / 1e6:.1f} MB)" if size else "cached") + (f"; {note}" if note else "")


@dataclass
class ModelGroup:
    """One group of the model list: models of one modality and task."""

    title: str
    choices: list[ModelChoice]


def model_groups(task: str = "segmentation", search: str = "", imported: list[str] | None = None) -> list[ModelGroup]:
    """The model list grouped by modality and task (``CT - segmentation``), filtered by a search text.

    The search matches every word (case-insensitive) against the name, title, description,
    modality, body part and label names; imported models form the last group.
    """
    words = search.lower().split()
    entries = {e.name: e for e in catalog.list_models()}
    groups: dict[str, list[ModelChoice]] = {}
    for choice in model_choices(task, imported):
        entry = entries.get(choice.spec)
        if entry is not None:
            raw = entry.raw or {}
            labels = raw.get("labels") or {}
            text = " ".join([entry.name, entry.title, entry.description, entry.modality, str(raw.get("body_part", "")),
                             " ".join(str(v) for v in (labels.values() if isinstance(labels, dict) else labels))]).lower()
            key = f"{_modality_group(entry.modality)} - {entry.task}"
        else:
            text, key = choice.spec.lower(), "Imported and trained models"
        if all(w in text for w in words):
            groups.setdefault(key, []).append(choice)
    imported_key = "Imported and trained models"
    order = sorted((k for k in groups if k != imported_key)) + ([imported_key] if imported_key in groups else [])
    return [ModelGroup(k, sorted(groups[k], key=lambda c: c.title.lower()) if k != imported_key else groups[k]) for k in order]


def _modality_group(modality: str) -> str:
    """``MR (T1-weighted)`` and ``MRI`` group under ``MR``; ``CT`` under ``CT``; others as given."""
    head = (modality or "other").split("(")[0].split()[0] if modality else "other"
    return {"MRI": "MR"}.get(head.upper(), head.upper() if head.upper() in ("CT", "MR", "PET") else head)


class ModelDownload:
    """A catalog model downloading in a background thread; the widget polls it (no Qt here).

    ``fraction`` and ``text`` for the progress bar, ``done`` when finished, ``error`` when it
    failed or was cancelled, ``path`` when it succeeded; :meth:`cancel` stops it (the partial
    file is kept, so the next download resumes it).
    """

    def __init__(self, name: str, start: bool = True) -> None:
        import threading

        from ..engine.progress import CancelToken

        entry = catalog.find_model(name)
        if entry is None:
            raise KeyError(f"model {name!r} is not in the catalog")
        self.entry = entry
        self.fraction = 0.0
        self.done = False
        self.error: str | None = None
        self.path: Path | None = None
        self._token = CancelToken()
        self._thread = threading.Thread(target=self._run, name=f"medai-download-{name}", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start a download created with ``start=False``."""
        self._thread.start()

    def _run(self) -> None:
        try:
            self.path = catalog.fetch_model(self.entry, self._progress, self._token)
            self.fraction = 1.0
        except Exception as exc:  # shown in the panel's status line
            self.error = str(exc)
        finally:
            self.done = True

    def _progress(self, fraction: float) -> None:
        self.fraction = max(0.0, min(1.0, fraction))

    @property
    def text(self) -> str:
        if self.error:
            return f"{self.entry.name}: {self.error}"
        if self.done:
            return f"{self.entry.name} {self.entry.version}: downloaded"
        return f"downloading {self.entry.name} {self.entry.version}: {self.fraction * 100:.0f}%"

    def cancel(self) -> None:
        self._token.cancel()

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return self.done


def add_model(imported: list[str], spec: str | Path) -> list[str]:
    """``imported`` with ``spec`` (an imported or freshly trained model) checked and moved to the end.

    The one list of user models behind every model selector: the widgets keep it in the
    application settings and pass it to :func:`model_choices`, so a model added here is listed
    at once. Raises :class:`ModelLoadError` naming the path when it is not a loadable model.
    """
    checked = check_import(spec)
    return [p for p in imported if p != checked] + [checked]


def _card_json(spec: str) -> dict | None:
    card = _card_path(spec)
    if card is None or not card.exists() or card.suffix.lower() != ".json":
        return None
    try:
        return json.loads(card.read_text())
    except (OSError, ValueError):
        return None


def _model_task(spec: str) -> str | None:
    """The task a user model's card names (None when it has no readable card, e.g. a MONAI Bundle)."""
    card = _card_json(spec)
    return str(card.get("task")) if card and card.get("task") else None


def _is_trained(spec: str) -> bool:
    card = _card_json(spec)
    return bool(card and "training" in card)


def check_import(path: str | Path) -> str:
    """The path as a model spec, or an error that says which kinds can be imported (asks the format registry)."""
    p = Path(path).expanduser()
    format_for(p).check(p)
    return str(p.resolve())


def _card_path(spec: str) -> Path | None:
    entry = catalog.find_model(spec)
    if entry is not None:
        return catalog.catalog_path().parent / entry.card if entry.card else None
    p = Path(spec).expanduser()
    if p.is_dir():
        return next((p / n for n in CARD_NAMES if (p / n).exists()), None)
    if p.suffix.lower() == ".json":
        return p
    return _card_beside(p) if p.exists() else None


def model_inputs(spec: str) -> list[str]:
    """Names of the model's inputs (one volume selector each), from the catalog, its card or bundle metadata."""
    entry = catalog.find_model(spec)
    if entry is not None and entry.inputs:
        return [str(i.get("name") or f"input {n + 1}") for n, i in enumerate(entry.inputs)]
    card = _card_path(spec)
    if card is not None and card.exists():
        parsed = read_card(card)
        return [str(i.get("name") or f"input {n + 1}") for n, i in enumerate(parsed.inputs)] or ["input"]
    meta = Path(spec).expanduser() / "configs" / "metadata.json"
    if meta.exists():
        image = json.loads(meta.read_text()).get("network_data_format", {}).get("inputs", {}).get("image", {})
        channels = int(image.get("num_channels", 1) or 1)
        names = image.get("channel_def") or {}
        return ["image"] if channels == 1 else [str(names.get(str(c)) or f"channel {c}") for c in range(channels)]
    return ["input"]


def model_classes(spec: str) -> list[str]:
    """Class names of a classification model, read from its card or bundle metadata without loading weights.

    Empty when the model names no classes (the engine then calls them ``class 0``, ``class 1``...).
    """
    card = _card_path(spec)
    if card is not None and card.exists():
        parsed = read_card(card)
        names = parsed.classes
        return names or [lab.name for lab in parsed.labels]
    meta = Path(spec).expanduser() / "configs" / "metadata.json"
    if meta.exists():
        return bundle_class_names(json.loads(meta.read_text()))
    return []


def target_class_choices(spec: str) -> list[tuple[str, str]]:
    """(label, value) pairs for the target-class combo: the predicted class (value ``""``), then each class."""
    return [(PREDICTED, "")] + [(name, name) for name in (model_classes(spec) if spec else [])]


def estimated_gpu_bytes(spec: str) -> int | None:
    """A rough upper bound of GPU memory one inference window needs (None when the card is unknown)."""
    card = _card_path(spec)
    if card is None or not card.exists():
        return None
    parsed = read_card(card)
    voxels = max((int(a) * int(b) * int(c) for s in parsed.stages if s.roi_size for a, b, c in [s.roi_size[:3]]),
                 default=128**3)
    return voxels * 4 * 64 + GIB // 2  # activations of a typical 3D U-Net, plus CUDA context


def device_choices() -> list[tuple[str, str]]:
    """(label, device) pairs: auto, cpu, then every CUDA GPU with its name and memory.

    Without PyTorch installed (a fresh Slicer, before the dependency check) only auto and cpu,
    and torch is not imported.
    """
    choices = [("auto (GPU if available)", "auto"), ("CPU", "cpu")]
    if importlib.util.find_spec("torch") is None:
        return choices
    import torch

    if torch.cuda.is_available():
        for n in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(n)
            choices.append((f"cuda:{n} {props.name} ({props.total_memory / GIB:.0f} GiB)", f"cuda:{n}"))
    return choices


@functools.lru_cache(maxsize=1)
def _gpu_free_bytes() -> int:
    """Free GPU memory, read once per session: reading it creates a CUDA context, not worth paying per model click."""
    import torch

    return int(torch.cuda.mem_get_info()[0])


def device_hint(spec: str | None = None, gpu_bytes: int | None = None) -> str:
    """A hint when no GPU is found or its memory is below what the model needs; empty when all is well."""
    if importlib.util.find_spec("torch") is None:  # before the dependency check: do not import torch
        return "PyTorch is not installed yet: Apply offers to install it."
    import torch

    if not torch.cuda.is_available():
        return "No CUDA GPU found: the model runs on the CPU, which can take minutes for a large volume."
    free = gpu_bytes if gpu_bytes is not None else _gpu_free_bytes()
    needed = estimated_gpu_bytes(spec) if spec else None
    if needed is not None and free < needed:
        return (f"The GPU has {free / GIB:.1f} GiB free but this model needs about {needed / GIB:.1f} GiB; "
                "close other GPU programs or choose the CPU device.")
    return ""


def format_timings(timings: dict[str, float], device: str, elapsed: float | None = None) -> str:
    """``Device cpu | load 0.1 s | preprocess ... | total 2.3 s`` with stages summed over cascade steps and cases."""
    parts = [f"Device {device}"] if device else []
    for key, label in TIMING_ORDER:
        total = sum(v for k, v in timings.items() if _stage(k) == key or _stage(k).startswith(key + " ("))
        if total or key in timings:
            parts.append(f"{label} {total:.2f} s")
    if elapsed is not None:
        parts.append(f"total {elapsed:.2f} s")
    return " | ".join(parts)


def _stage(key: str) -> str:
    """``"case0: inference"`` (a classification cohort's per-case stage) -> ``"inference"``."""
    return key.rsplit(": ", 1)[-1]


def train_networks(task: str) -> list[str]:
    """The network names the Train section offers for ``task`` (see :mod:`medai.training.networks`)."""
    from ..training.networks import CLASSIFICATION_NETWORKS, SEGMENTATION_NETWORKS

    return list(SEGMENTATION_NETWORKS if task == "segmentation" else CLASSIFICATION_NETWORKS)


def train_recipes(task: str) -> list[dict]:
    """The catalog recipes the Train section of ``task``'s panel offers a button for (classification: also
    multi-label and regression recipes)."""
    tasks = CLASSIFY_TASKS if task != "segmentation" else ("segmentation", "multilabel_segmentation")
    return [r for r in catalog.list_recipes() if r.get("task", "classification") in tasks]


def default_train_folder(name: str, root: str | Path | None = None) -> Path:
    """A new folder for a trained model: ``<root or cache>/trained/<name>``, numbered when it exists."""
    from ..fetch import cache_dir

    base = Path(root) if root else cache_dir() / "trained"
    folder, n = base / name, 2
    while folder.exists():
        folder, n = base / f"{name}-{n}", n + 1
    return folder


def format_elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def load_sample_volume(name: str, scene=None):
    """Fetch a catalog sample (cached) and add its image to the scene as a volume node."""
    import slicer

    from ..io import read_image
    from .scene import volume_node_from_volume

    entry = catalog.find_sample(name)
    if entry is None:
        raise KeyError(f"sample {name!r} is not in the catalog; known: {', '.join(s.name for s in catalog.list_samples())}")
    files = catalog.fetch_sample(name)
    path = files[entry.image] if entry.image else next(iter(files.values()))
    volume = read_image(path)
    return volume_node_from_volume(scene or slicer.mrmlScene, volume, name=entry.name)


def classify_summary(result) -> str:
    """One line for the status label: the first case's top classes (``malignant 0.82, benign 0.12``), and the cohort size."""
    if not result.cases:
        return "No case was classified."
    case = result.cases[0]
    unit = f" {result.unit}" if result.unit else ""
    top = ", ".join(f"{name} {score:.2f}{unit}" for name, score, _ in result.ranking(case)[:3])
    predicted = ", ".join(result.predicted_names(case)) or "none above threshold"
    more = f" ({len(result.cases)} cases: see the table)" if len(result.cases) > 1 else ""
    return f"{case.name}: {predicted} | {top}{more}"
