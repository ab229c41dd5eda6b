"""The model catalog (``Resources/Catalog/models.json``): named models and sample images."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..fetch import Cancel, FetchError, cache_dir, fetch_source


def resources_dir() -> Path:
    """The extension's ``Resources`` folder holding ``Catalog/models.json``.

    Found next to the ``medai`` package in both layouts: the source checkout (``<repo>/Resources``)
    and the installed Slicer extension, where CMake puts ``medai/`` and ``Resources/Catalog/``
    side by side in ``lib/Slicer-X.Y/qt-scripted-modules/``. ``$MEDAI_RESOURCES`` overrides both.
    """
    env = os.environ.get("MEDAI_RESOURCES")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents[1:]:  # medai/, then the folder holding medai/, ...
        if (parent / "Resources" / "Catalog" / "models.json").exists():
            return parent / "Resources"
    raise FileNotFoundError("MedAI Resources folder not found; set MEDAI_RESOURCES to the folder holding Catalog/models.json")


def catalog_path() -> Path:
    return Path(os.environ.get("MEDAI_CATALOG") or resources_dir() / "Catalog" / "models.json")


@dataclass
class CatalogEntry:
    name: str
    title: str
    description: str
    task: str
    modality: str
    license: str
    source: dict
    card: str | None
    sample: str | None
    image: str | None = None  # samples only: the image file among the fetched members
    base: str | None = None  # folder that a relative ``source.path`` starts from (models.d entries)
    version: str = ""
    raw: dict | None = None  # the whole catalog entry (inputs, labels, license_flag, runtime, ...)

    @property
    def license_flag(self) -> str | None:
        """"non-commercial" or "data-use agreement" where the weights or their training data restrict use."""
        return (self.raw or {}).get("license_flag")

    @property
    def inputs(self) -> list[dict]:
        """The model's inputs in channel order ({"channel", "name", "modality"}), when the catalog lists them."""
        return list((self.raw or {}).get("inputs") or [])

    @property
    def sha256(self) -> str:
        return self.source.get("sha256", "")

    @property
    def source_text(self) -> str:
        if "zoo" in self.source:
            return f"zoo:{self.source['zoo']}@{self.source.get('version', '')}"
        if "recipe" in self.source:
            return f"train it: medai train --recipe {self.source['recipe']}"
        return self.source.get("url") or (f"pypi:{self.source['pypi']}" if "pypi" in self.source else self.source.get("path", ""))


def _load() -> dict:
    """The catalog, plus any extra entries from ``Catalog/models.d/*.json`` (each {"models": [...], "samples": [...],
    "recipes": [...]})."""
    path = catalog_path()
    data = json.loads(path.read_text())
    for extra in sorted((path.parent / "models.d").glob("*.json")):
        more = json.loads(extra.read_text())
        for entry in more.get("models", []):
            entry.setdefault("_base", str(extra.parent))
        data["models"] = data["models"] + more.get("models", [])
        data["samples"] = data.get("samples", []) + more.get("samples", [])
        data["recipes"] = data.get("recipes", []) + more.get("recipes", [])
    return data


def _entry(raw: dict) -> CatalogEntry:
    return CatalogEntry(
        name=raw["name"], title=raw.get("title", raw["name"]), description=raw.get("description", ""),
        task=raw.get("task", "segmentation"), modality=raw.get("modality", ""), license=raw.get("license", ""),
        source=raw.get("source", {}), card=raw.get("card"), sample=raw.get("sample"), image=raw.get("image"),
        base=raw.get("_base"), version=str(raw.get("version") or raw.get("source", {}).get("version") or ""),
        raw={k: v for k, v in raw.items() if k != "_base"},
    )


def list_models() -> list[CatalogEntry]:
    return [_entry(m) for m in _load()["models"]]


def list_samples() -> list[CatalogEntry]:
    return [_entry(s) for s in _load().get("samples", [])]


def default_model_name() -> str:
    return _load()["default_model"]


def find_model(name: str) -> CatalogEntry | None:
    return next((m for m in list_models() if m.name == name), None)


def find_sample(name: str) -> CatalogEntry | None:
    return next((s for s in list_samples() if s.name == name), None)


def list_recipes() -> list[dict]:
    """Training recipes (``"recipes"`` in ``models.d/*.json``): data, settings and the figures to expect."""
    return list(_load().get("recipes", []))


def find_recipe(name: str) -> dict | None:
    return next((r for r in list_recipes() if r["name"] == name), None)


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def fetch_model(entry: CatalogEntry, progress: Callable[[float], None] | None = None, cancel: Cancel | None = None) -> Path:
    """Fetch a catalog model's files into the cache; returns its folder (with the card copied in).

    A ``{"path": ...}`` source is a local model folder (or card) used where it is; a relative
    path starts from the catalog file's folder (``models.d`` for extension entries). A model-zoo
    source returns the cached bundle zip (or folder). A ``{"recipe": ...}`` source is a model the
    user trains with ``medai train --recipe NAME`` into :func:`model_dir`.
    """
    if "recipe" in entry.source:
        folder = model_dir(entry.name)
        if not (folder / "medai.json").exists():
            raise FetchError(f"model {entry.name} is trained by you, not downloaded: run `medai train --recipe "
                             f"{entry.source['recipe']}` (or the Train section's recipe button) first; it writes {folder}")
        return folder
    if "path" in entry.source:
        local = Path(os.path.expanduser(entry.source["path"]))
        if not local.is_absolute():
            local = Path(entry.base or catalog_path().parent) / local
        fetch_source({**entry.source, "path": str(local)}, model_dir(entry.name), f"model {entry.name}", progress)
        return local.resolve()
    folder = model_dir(entry.name)
    files = fetch_source(entry.source, folder, f"model {entry.name}", progress, cancel)
    if "zoo" in entry.source:
        return next(iter(files.values()))
    if entry.card:
        card_text = (catalog_path().parent / entry.card).read_text()
        target = folder / "medai.json"
        if not target.exists() or target.read_text() != card_text:  # rewriting would look like a changed model
            target.write_text(card_text)
    return folder


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-]", version))


def cached_versions(entry: CatalogEntry) -> list[str]:
    """Versions of a model-zoo bundle in the cache, oldest first."""
    if "zoo" not in entry.source:
        return []
    name = entry.source["zoo"]
    found = set()
    for p in model_dir(entry.name).glob(f"{name}_v*"):
        if p.suffix == ".zip" or (p / ".complete").exists():
            found.add(p.name.removeprefix(f"{name}_v").removesuffix(".zip"))
    return sorted(found, key=_version_key)


def is_cached(entry: CatalogEntry) -> bool:
    """True when the catalog's version of the model is already on this computer."""
    if "path" in entry.source:
        path = Path(os.path.expanduser(entry.source["path"]))
        return (path if path.is_absolute() else Path(entry.base or catalog_path().parent) / path).exists()
    if "zoo" in entry.source:
        return entry.version in cached_versions(entry)
    folder = model_dir(entry.name)
    if "url" in entry.source:
        from ..fetch import url_file_name

        return (folder / (entry.source.get("file") or url_file_name(entry.source["url"]))).exists()
    if "pypi" in entry.source:
        return all((folder / n).exists() for n in entry.source.get("members", {}))
    return False


def update_note(entry: CatalogEntry) -> str | None:
    """A note when the catalog lists a newer version than the newest one in the cache."""
    versions = cached_versions(entry)
    if not versions or not entry.version or entry.version in versions:
        return None
    newest = versions[-1]
    if _version_key(newest) >= _version_key(entry.version):
        return None
    return f"{entry.name}: the catalog lists version {entry.version}, the cache holds {newest}; run `medai fetch {entry.name}` to update"


def fetch_sample(name: str) -> dict[str, Path]:
    """Fetch a catalog sample's files into the cache; returns {file name: path}."""
    entry = find_sample(name)
    if entry is None:
        raise KeyError(f"sample {name!r} is not in the catalog; known: {', '.join(s.name for s in list_samples())}")
    return fetch_source(entry.source, cache_dir() / "samples" / name, f"sample {name}")
