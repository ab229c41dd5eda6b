"""Fetching pinned files (models, sample data) into MedAI's cache, checked by sha256.

Two kinds of source, both real code paths:

* ``{"url": "https://.../file", "sha256": ...}``: an HTTP(S) or ``file://`` download (or ``"md5"`` where
  the publisher gives only an MD5, as MedMNIST does).
* ``{"pypi": "deepbet==1.0.2", "sha256": <wheel sha256>, "members": {...}}``: a wheel fetched with
  ``pip download --no-deps``, checked, and the listed members extracted from it.

Offline, a missing file gives an error that names the file and where to put it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A file could not be fetched or failed its checksum; the message says what to do."""


def cache_dir() -> Path:
    """MedAI's cache: ``$MEDAI_HOME`` or ``~/.cache/medai``."""
    root = Path(os.environ.get("MEDAI_HOME") or Path.home() / ".cache" / "medai")
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_of(path: str | Path, chunk: int = 1 << 20, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_md5(path: Path, expected: str | None, what: str) -> None:
    """Raise when ``path`` does not hash to the MD5 ``expected`` (for data sets that publish MD5s only, e.g. MedMNIST)."""
    if expected and sha256_of(path, algorithm="md5") != expected.lower():
        raise FetchError(f"{what}: {path} has the wrong MD5 (expected {expected}); delete it and fetch again")


_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime, sha256) already checked in this process


def check_sha256(path: Path, expected: str | None, what: str) -> None:
    """Raise when ``path`` does not hash to ``expected``; an unchanged file is hashed once per process."""
    if not expected:
        return
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, expected.lower())
    if key in _VERIFIED:
        return
    if sha256_of(path) != expected.lower():
        raise FetchError(f"{what}: {path} has the wrong sha256 (expected {expected}); delete it and fetch again")
    _VERIFIED.add(key)


def safe_extract_member(archive: zipfile.ZipFile, member: str, dest: Path) -> Path:
    """Extract one member to ``dest`` (a file path), refusing names that escape their folder."""
    if member.startswith("/") or ".." in Path(member).parts:
        raise FetchError(f"archive entry {member!r} points outside its folder; refusing to extract it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    with archive.open(member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tmp, dest)
    return dest


def _download_url(url: str, dest: Path, progress: Callable[[float], None] | None, md5: str | None = None) -> None:
    """Download ``url`` to ``dest`` through a ``.partial`` file; with ``md5``, a download that does not match is
    deleted and refused before it takes ``dest``'s name."""
    tmp = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress and total:
                    progress(done / total)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"cannot download {url} ({exc}); download it by hand and put it at {dest}") from exc
    if md5:
        try:
            check_md5(tmp, md5, url)
        except FetchError:
            tmp.unlink(missing_ok=True)
            raise FetchError(f"{url}: the download has the wrong MD5 (expected {md5}); refused, nothing kept. "
                             "The server (or a mirror) serves a different file; try again later or another mirror") from None
    os.replace(tmp, dest)


def _download_wheel(requirement: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), requirement]
    log.info("fetching %s with pip", requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if proc.returncode != 0 or not found:
        raise FetchError(
            f"cannot fetch {requirement} from the package index ({(proc.stderr or proc.stdout).strip().splitlines()[-1:]}); "
            f"run `pip download --no-deps {requirement} -d {folder}` where the index is reachable"
        )
    return found[0]


def fetch_source(source: dict, dest_dir: Path, what: str, progress: Callable[[float], None] | None = None) -> dict[str, Path]:
    """Make every file of ``source`` present in ``dest_dir``; returns {name: path}.

    ``source["members"]`` maps the local file name to the member inside a wheel or zip;
    a plain URL source yields the single file ``source["file"]`` (default: the URL's basename).
    Files already present with the right sha256 are not fetched again.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    if "pypi" in source:
        members: dict[str, str] = source["members"]
        targets = {name: dest_dir / name for name in members}
        member_sums = source.get("member_sha256", {})
        if all(p.exists() for p in targets.values()):
            for name, p in targets.items():
                check_sha256(p, member_sums.get(name), what)
            return targets
        wheel = _download_wheel(source["pypi"], cache_dir() / "wheels")
        check_sha256(wheel, source.get("sha256"), what)
        with zipfile.ZipFile(wheel) as archive:
            for name, member in members.items():
                safe_extract_member(archive, member, targets[name])
                check_sha256(targets[name], member_sums.get(name), what)
        return targets
    if "url" in source:
        url = source["url"]
        name = source.get("file") or Path(urllib.request.url2pathname(url.split("?")[0])).name
        target = dest_dir / name
        if not target.exists():
            _download_url(url, target, progress, source.get("md5"))
        check_sha256(target, source.get("sha256"), what)
        check_md5(target, source.get("md5"), what)
        return {name: target}
    if "path" in source:
        path = Path(os.path.expanduser(source["path"]))
        if not path.exists():
            raise FetchError(f"{what}: {path} does not exist; put the model files there or fix the catalog entry")
        return {path.name: path}
    raise FetchError(f"{what}: source must give 'url', 'pypi' or 'path'")
