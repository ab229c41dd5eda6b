"""MONAI model-zoo bundles by name and version, from the places ``monai.bundle.download`` uses.

Read from MONAI 1.6.1 ``monai/bundle/scripts.py``: the monaihosting URL
(``MONAI_HOSTING_BASE_URL/<name lower>/versions/<v>/files/<name>_v<v>.zip``), the GitHub release
``Project-MONAI/model-zoo/hosting_storage_v1`` (``<name>_v<v>.zip``) and the Hugging Face
repository ``MONAI/<name>`` at revision ``<v>``. MedAI tries the two zips first, because the
zoo publishes their checksum (``models/model_info.json``), then Hugging Face (a folder; no
published checksum, so only the recorded sha256 guards it). With ``$MEDAI_MODEL_MIRROR`` set,
only the mirror is asked, for ``<name>_v<v>.zip``.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

from .fetch import (Cancel, DownloadCancelled, FetchError, Progress, check_recorded, fetch_file, mirror_location,
                    model_mirror)

MONAI_HOSTING_BASE_URL = "https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting"
GITHUB_RELEASE_BASE_URL = "https://github.com/Project-MONAI/model-zoo/releases/download/hosting_storage_v1"
HF_ORG = "MONAI"


def zoo_file_name(name: str, version: str) -> str:
    return f"{name}_v{version}.zip"


def zoo_urls(name: str, version: str) -> list[str]:
    """The bundle zip's URLs, in the order MedAI tries them."""
    file = zoo_file_name(name, version)
    return [f"{MONAI_HOSTING_BASE_URL}/{name.lower()}/versions/{version}/files/{file}", f"{GITHUB_RELEASE_BASE_URL}/{file}"]


def hf_endpoint() -> str:
    """Hugging Face's address; ``$HF_ENDPOINT`` as for ``huggingface_hub``."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def cached_zoo_path(dest_dir: Path, name: str, version: str) -> Path | None:
    """The cached zip or Hugging Face folder of this bundle version, if any."""
    zip_path = dest_dir / zoo_file_name(name, version)
    folder = dest_dir / f"{name}_v{version}"
    if zip_path.exists():
        return zip_path
    if (folder / ".complete").exists():
        return folder
    return None


def _hf_snapshot(name: str, version: str, folder: Path, what: str, progress: Progress | None, cancel: Cancel | None) -> Path:
    base = f"{hf_endpoint()}/{HF_ORG}/{name}"
    api = f"{hf_endpoint()}/api/models/{HF_ORG}/{name}/revision/{urllib.parse.quote(version)}"
    try:
        with urllib.request.urlopen(api, timeout=60) as response:
            files = [s["rfilename"] for s in json.loads(response.read()).get("siblings", [])]
    except (OSError, ValueError, KeyError) as exc:
        raise FetchError(f"cannot list {base} at {version} ({exc})") from exc
    if not files:
        raise FetchError(f"{base} at {version} lists no files")
    for i, rel in enumerate(files):
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise FetchError(f"{base}: file {rel!r} points outside the bundle folder; refusing it")
        part = (lambda f, i=i: progress((i + f) / len(files))) if progress else None
        fetch_file([f"{base}/resolve/{urllib.parse.quote(version)}/{urllib.parse.quote(rel)}"], folder / rel, what, None, part, cancel)
    (folder / ".complete").write_text(version)
    return folder


def fetch_zoo_bundle(source: dict, dest_dir: Path, what: str, progress: Progress | None = None, cancel: Cancel | None = None) -> Path:
    """The bundle zip (or Hugging Face folder) of ``{"zoo": name, "version": v, "sha1": ...}`` in ``dest_dir``."""
    name, version = source["zoo"], str(source["version"])
    checksums = {"sha1": source.get("sha1", ""), "sha256": source.get("sha256", "")}
    zip_path = dest_dir / zoo_file_name(name, version)
    cached = cached_zoo_path(dest_dir, name, version)
    if cached is not None and cached.is_dir():
        for f in cached.rglob("*"):
            if f.is_file() and f.name != ".complete":
                check_recorded(f, what)
        return cached
    if cached is not None or model_mirror():
        mirrored = mirror_location(zip_path.name)
        return fetch_file([mirrored] if mirrored else [], zip_path, what, checksums, progress, cancel)
    try:
        return fetch_file(zoo_urls(name, version), zip_path, what, checksums, progress, cancel)
    except DownloadCancelled:
        raise
    except FetchError as zip_error:
        try:
            return _hf_snapshot(name, version, dest_dir / f"{name}_v{version}", what, progress, cancel)
        except DownloadCancelled:
            raise
        except FetchError as hf_error:
            raise FetchError(f"{zip_error} Hugging Face: {hf_error}") from hf_error
