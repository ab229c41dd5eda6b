"""Which models may run code, and the user's explicit decision to trust one (torch-free).

A MONAI Bundle config and a card's ``network`` are evaluated by ``monai.bundle.ConfigParser``:
``$`` expressions are Python, ``%`` reads other files, ``@`` refers to other config items and a
``_target_`` names any callable. A pickled checkpoint can run code when unpickled. The rule:

* models from the catalog (fetched by name and checked against their pinned sha256) are trusted;
* a *plain* card needs no trust: its networks are classes of ``monai.networks.nets`` or
  ``torch.nn``, with literal arguments only;
* anything else that can run code (a card with expressions or another ``_target_``, any bundle
  not in the catalog, a checkpoint that needs full pickle) is refused with :class:`ModelTrustError`
  naming what would run, unless the caller trusts it: ``--trust`` on the command line,
  ``trust=True`` in Python, or a decision remembered per sha256 by :func:`trust_model`
  (``trusted.json`` in MedAI's cache; Slicer asks once and remembers).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from ..fetch import cache_dir, sha256_of
from .card import CARD_NAMES, ModelLoadError, _card_beside

ALLOWED_TARGETS = re.compile(r"^(monai\.networks\.nets|torch\.nn)\.(?!get_)[A-Za-z][A-Za-z0-9_]*$")
EXPRESSION_PREFIXES = ("$", "%", "@")
WEIGHT_SUFFIXES = (".pt", ".pth", ".ts", ".onnx", ".ckpt", ".bin", ".safetensors", ".torchscript")
STORE_NAME = "trusted.json"


class ModelTrustError(ModelLoadError):
    """A model that would run code and is not trusted; the message names the code and how to trust it."""


# --- what would run ----------------------------------------------------------------------------


def code_in_config(config: Any, where: str = "network", limit: int = 5) -> list[str]:
    """What evaluating ``config`` with ConfigParser would run beyond plain MONAI/PyTorch networks."""
    found: list[str] = []

    def visit(node: Any, at: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and not (isinstance(value, str) and ALLOWED_TARGETS.match(value.strip())):
                    found.append(f"{at}._target_ = {str(value)[:120]!r} (not a monai.networks.nets / torch.nn class)")
                elif key in ("_mode_", "_requires_") and value not in (None, "default"):
                    found.append(f"{at}.{key} = {str(value)[:120]!r}")
                else:
                    visit(value, f"{at}.{key}")
        elif isinstance(node, (list, tuple)):
            for n, value in enumerate(node):
                visit(value, f"{at}[{n}]")
        elif isinstance(node, str) and node.lstrip().startswith(EXPRESSION_PREFIXES):
            kind = {"$": "Python expression", "%": "file reference", "@": "config reference"}[node.lstrip()[0]]
            found.append(f"{at} = {node[:120]!r} ({kind})")

    visit(config, where)
    return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


def _read_config(path: Path) -> Any:
    text = path.read_text(errors="replace")
    if path.suffix == ".json":
        return json.loads(text)
    try:
        import yaml  # a MONAI dependency

        return yaml.safe_load(text)
    except Exception:
        return {"unparsed": text}


def bundle_code(folder: Path) -> list[str]:
    """What loading a bundle folder runs: its configs' expressions and custom targets, its scripts."""
    found = [f"{folder.name}: any MONAI Bundle config builds Python objects (not in the MedAI catalog)"]
    for cfg in sorted((folder / "configs").glob("*")):
        if cfg.suffix in (".json", ".yaml", ".yml") and cfg.name != "metadata.json":
            try:
                found += code_in_config(_read_config(cfg), cfg.name, limit=3)
            except (OSError, ValueError):
                found.append(f"{cfg.name} (unreadable)")
    scripts = sorted(p.name for p in (folder / "scripts").glob("*.py")) if (folder / "scripts").is_dir() else []
    if scripts:
        found.append(f"Python files in scripts/: {', '.join(scripts[:5])}")
    return found


# --- identity and the remembered decisions -------------------------------------------------------


def code_files(path: Path) -> list[Path]:
    """The files that decide what a model runs: the card or zip itself, a bundle's configs and scripts (not its weights)."""
    path = Path(path)
    if path.is_dir():
        from .formats import nnunet  # torch-free

        pickled = (".pth",) if nnunet.FORMAT.recognise(path) else ()  # nnU-Net checkpoints are full pickles: code
        return sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix.lower() in pickled or p.suffix.lower() not in WEIGHT_SUFFIXES)
                      and not p.name.startswith(".") and "docs" not in p.relative_to(path).parts)
    if path.suffix.lower() in (".json", ".zip"):
        return [path]
    beside = _card_beside(path)
    return [beside] if beside is not None else [path]


def model_digest(path: str | Path) -> str:
    """The sha256 a trust decision is remembered by: of the file itself for a card or zip, else of its code files."""
    path = Path(path).resolve()
    files = code_files(path)
    if len(files) == 1 and not path.is_dir():
        return sha256_of(files[0])
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        digest.update(sha256_of(f).encode())
    return digest.hexdigest()


def _store_path() -> Path:
    return cache_dir() / STORE_NAME


def _store() -> dict:
    try:
        data = json.loads(_store_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def trust_model(path: str | Path) -> str:
    """Remember that the user trusts the model at ``path`` (by the sha256 of its code); returns that sha256."""
    path = Path(path).expanduser().resolve()
    digest = model_digest(path)
    data = _store()
    data[digest] = {"source": str(path), "trusted_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = _store_path().with_suffix(".partial")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, _store_path())
    return digest


def is_remembered(path: str | Path) -> bool:
    """Whether the user trusted exactly this content before (a changed card or bundle asks again)."""
    data = _store()
    return bool(data) and model_digest(path) in data


def from_catalog(path: str | Path) -> bool:
    """Whether ``path`` is a catalog model's folder (fetched and hash-checked, or the catalog's own local path)."""
    from . import catalog

    path = Path(path).resolve()
    try:
        entries = catalog.list_models()
    except (OSError, ValueError):
        return False
    for entry in entries:
        roots = [catalog.model_dir(entry.name).resolve()]
        if "path" in entry.source:
            local = Path(os.path.expanduser(entry.source["path"]))
            roots.append((local if local.is_absolute() else Path(entry.base or catalog.catalog_path().parent) / local).resolve())
        if any(path == r or r in path.parents for r in roots):
            return True
    return False


# --- the decision --------------------------------------------------------------------------------


def check_trusted(kind: str, path: str | Path, found: list[str], trusted: bool = False) -> None:
    """Raise :class:`ModelTrustError` when ``found`` (what would run) is not empty and nobody trusted ``path``.

    ``kind`` names the model part for the message ("model card", "MONAI Bundle", "checkpoint").
    Trusted are: ``trusted=True``, catalog models, and contents remembered by :func:`trust_model`.
    """
    if not found or trusted:
        return
    path = Path(path)
    if from_catalog(path) or is_remembered(path):
        return
    digest = model_digest(path) if path.exists() else "?"
    raise ModelTrustError(
        f"{kind} {path} would run code when loaded: {'; '.join(found)}. Refused: it is not from the MedAI catalog. "
        f"If you trust its source, run it with --trust (command line) or trust=True (Python), or remember the decision "
        f"with medai.models.trust.trust_model({str(path)!r}) (sha256 {digest})"
    )


def untrusted_code(spec: str | Path) -> list[str]:
    """Without loading anything: what the model at ``spec`` would run that needs trust (empty: nothing, or trusted).

    Used by Slicer to ask before a run; the loader checks again (and also finds full-pickle checkpoints).
    """
    path = Path(spec).expanduser()
    if not path.exists() or from_catalog(path) or is_remembered(path):
        return []
    if path.is_dir() and (path / "configs" / "metadata.json").exists():
        return bundle_code(path)
    from .formats import nnunet  # torch-free: nnU-Net folders and zips hold full-pickle checkpoints

    if nnunet.FORMAT.recognise(path):
        return nnunet.pickle_code(path)
    if path.suffix.lower() == ".zip":
        return [f"{path.name}: a MONAI Bundle not in the MedAI catalog; its configs build Python objects"]
    card = next((path / n for n in CARD_NAMES if (path / n).exists()), None) if path.is_dir() else (
        path if path.suffix.lower() == ".json" else _card_beside(path))
    if card is None:
        return []
    try:
        raw = json.loads(card.read_text())
    except (OSError, ValueError):
        return []
    return card_code(raw)


def card_code(raw: dict) -> list[str]:
    """What a card's networks would run (all stages)."""
    if not isinstance(raw, dict):
        return []
    stages = raw.get("stages") if isinstance(raw.get("stages"), list) else [raw]
    found: list[str] = []
    for n, stage in enumerate(stages):
        if isinstance(stage, dict) and stage.get("network") is not None:
            found += code_in_config(stage["network"], "network" if stage is raw else f"stages[{n}].network")
    return found


# --- the loader's scope: which model is being loaded, and whether the caller trusts it -------------

_SCOPE: contextvars.ContextVar[tuple[Path, bool] | None] = contextvars.ContextVar("medai_trust_scope", default=None)


@contextlib.contextmanager
def scope(path: str | Path, trusted: bool) -> Iterator[None]:
    """While loading the model at ``path``: :func:`require` checks against it and ``trusted``."""
    token = _SCOPE.set((Path(path), bool(trusted)))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def require(kind: str, found: list[str], unscoped_trusted: bool = True) -> None:
    """The loader's hook: refuse ``found`` unless the model being loaded is trusted.

    Outside :func:`scope` (a direct call such as ``build_network`` on the caller's own config) the
    caller is trusted unless ``unscoped_trusted`` is False (full pickle: always refused there).
    """
    current = _SCOPE.get()
    if current is not None:
        check_trusted(kind, current[0], found, current[1])
    elif found and not unscoped_trusted:
        raise ModelTrustError(f"{kind}: would run code ({'; '.join(found)}); load the model with load_model(..., trust=True)")
