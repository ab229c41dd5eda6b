"""Fetching pinned files (models, sample data) into MedAI's cache, checked by sha256.

Two kinds of source, both real code paths:

* ``{"url": "https://.../file", "sha256": ...}``: an HTTP(S) or ``file://`` download (or ``"md5"`` where
  the publisher gives only an MD5, as MedMNIST does).
* ``{"pypi": "deepbet==1.0.2", "sha256": <wheel sha256>, "members": {...}}``: a wheel fetched with
  ``pip download --no-deps``, checked, and the listed members extracted from it.
* ``{"zoo": "spleen_ct_segmentation", "version": "0.5.9", "sha1": ...}``: a MONAI model-zoo bundle
  zip, from the sources ``monai.bundle.download`` uses (:mod:`medai.fetch_zoo`).

Downloads resume a cut transfer (HTTP Range), report progress, can be cancelled, and honour
``MEDAI_MODEL_MIRROR`` (a base URL or a local folder holding the same file names). The sha256 of
every downloaded file is recorded in ``<cache>/downloads.json`` on first download and checked on
every later use: a file that changed since is refused.

Offline, a missing file gives an error that names the file and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
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


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


class DownloadCancelled(FetchError):
    """The user cancelled a download; its partial file is kept so that the next try resumes."""


Progress = Callable[[float], None]
Cancel = Callable[[], bool]
MIRROR_ENV = "MEDAI_MODEL_MIRROR"
_RETRIES = 4  # a cut connection is resumed this many times before giving up


def model_mirror() -> str | None:
    """The mirror every model download goes to: ``$MEDAI_MODEL_MIRROR`` (a base URL or a local folder)."""
    value = (os.environ.get(MIRROR_ENV) or "").strip()
    return value or None


def mirror_location(file_name: str, mirror: str | None = None) -> str | None:
    """Where ``file_name`` is in the mirror (URL or local path); None without a mirror."""
    mirror = mirror or model_mirror()
    if not mirror:
        return None
    if re.match(r"^[a-z][a-z0-9+.-]*://", mirror, re.I) and not mirror.lower().startswith("file://"):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(file_name)
    folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(mirror).path)) if mirror.lower().startswith("file://") else Path(mirror).expanduser()
    return str(folder / file_name)


def url_file_name(url: str) -> str:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).name


def _check_cancel(cancel: Cancel | None, url: str) -> None:
    if cancel is not None and cancel():
        raise DownloadCancelled(f"download of {url} cancelled; the part already fetched is kept and the next try resumes it")


def _copy_local(src: Path, tmp: Path, progress: Progress | None, cancel: Cancel | None) -> None:
    total = src.stat().st_size
    done = 0
    with open(src, "rb") as fin, open(tmp, "wb") as out:
        while block := fin.read(1 << 20):
            _check_cancel(cancel, str(src))
            out.write(block)
            done += len(block)
            if progress and total:
                progress(done / total)


def _http_part(url: str, tmp: Path, progress: Progress | None, cancel: Cancel | None) -> bool:
    """One request, resuming ``tmp`` with a Range header; True when the file is complete."""
    offset = tmp.stat().st_size if tmp.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "medai", **({"Range": f"bytes={offset}-"} if offset else {})})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already whole (or bigger than the file): start over
            tmp.unlink()
            return False
        raise
    with response:
        if offset and response.status != 206:  # the server ignored Range: start from the beginning
            offset = 0
        length = int(response.headers.get("Content-Length") or 0)
        total = offset + length if length else 0
        done = offset
        with open(tmp, "ab" if offset else "wb") as out:
            try:
                while block := response.read(1 << 16):
                    _check_cancel(cancel, url)
                    out.write(block)
                    done += len(block)
                    if progress and total:
                        progress(done / total)
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                log.warning("download of %s cut at %d bytes (%s); resuming", url, done, exc)
                return False
    return not total or done >= total


def download_file(url: str, dest: Path, progress: Progress | None = None, cancel: Cancel | None = None) -> Path:
    """Download ``url`` (http(s), ``file://`` or a local path) to ``dest``.

    A cut connection is resumed with an HTTP Range request (also on a later call: the
    ``.partial`` file stays when a download fails or is cancelled). ``cancel()`` returning True
    stops it with :class:`DownloadCancelled`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    _check_cancel(cancel, url)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    try:
        if scheme in ("http", "https"):
            for _ in range(_RETRIES + 1):
                if _http_part(url, tmp, progress, cancel):
                    break
            else:
                raise FetchError(f"download of {url} kept breaking off; try again later")
        else:
            src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)) if scheme == "file" else Path(url)
            if not src.is_file():
                raise FileNotFoundError(f"no file {src}")
            _copy_local(src, tmp, progress, cancel)
    except FetchError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"cannot download {url} ({exc}); download it by hand and put it at {dest}") from exc
    os.replace(tmp, dest)
    return dest


# --- the record of what was downloaded ---------------------------------------------------------

_RECORD_LOCK = threading.Lock()


def record_path() -> Path:
    return cache_dir() / "downloads.json"


def _read_record() -> dict:
    try:
        return json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}


def _record_key(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(cache_dir().resolve()))
    except ValueError:
        return str(path)


def record_download(path: Path, source: str) -> str:
    """Remember the sha256 of a freshly downloaded file (and where it came from)."""
    digest = sha256_of(path)
    with _RECORD_LOCK:
        record = _read_record()
        record[_record_key(path)] = {"sha256": digest, "source": source, "size": Path(path).stat().st_size}
        tmp = record_path().with_suffix(".json.partial")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, record_path())
    return digest


def recorded_sha256(path: Path) -> str | None:
    return _read_record().get(_record_key(path), {}).get("sha256")


def check_recorded(path: Path, what: str) -> None:
    """Refuse a cached download whose content changed since it was first downloaded."""
    expected = recorded_sha256(path)
    if not expected:
        return
    try:
        check_sha256(path, expected, what)
    except FetchError as exc:
        raise FetchError(
            f"{what}: {path} changed since it was downloaded (its sha256 is no longer the one recorded in "
            f"{record_path()}); refusing to use it. Delete the file to download it again"
        ) from exc


def check_digest(path: Path, algorithm: str, expected: str | None, what: str) -> None:
    """Check a published checksum (sha256 / sha1 / md5); a wrong file is deleted and refused."""
    if not expected:
        return
    if algorithm == "sha256":
        try:
            check_sha256(path, expected, what)
            return
        except FetchError:
            got = sha256_of(path)
    else:
        digest = hashlib.new(algorithm)
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        got = digest.hexdigest()
        if got == expected.lower():
            return
    Path(path).unlink(missing_ok=True)
    raise FetchError(f"{what}: the downloaded {Path(path).name} has the wrong {algorithm} ({got}, published: {expected}); "
                     "it was deleted. The source or mirror holds a different file: fix it, then fetch again")


def fetch_file(locations: list[str], dest: Path, what: str, checksums: dict[str, str] | None = None,
               progress: Progress | None = None, cancel: Cancel | None = None) -> Path:
    """``dest`` from the cache, or downloaded from the first of ``locations`` that answers.

    ``checksums`` maps an algorithm (sha256, sha1, md5) to the published value; each is checked
    on download. Every downloaded file's sha256 is recorded and checked on every later call.
    """
    checksums = {k: v for k, v in (checksums or {}).items() if v}
    if dest.exists():
        check_recorded(dest, what)
        if "sha256" in checksums:
            check_sha256(dest, checksums["sha256"], what)
        return dest
    errors = []
    for location in locations:
        try:
            download_file(location, dest, progress, cancel)
        except DownloadCancelled:
            raise
        except FetchError as exc:
            errors.append(str(exc).split(";")[0])
            continue
        for algorithm, value in checksums.items():
            check_digest(dest, algorithm, value, what)
        record_download(dest, location)
        return dest
    tried = "; ".join(errors) or "no source"
    raise FetchError(f"{what}: {tried}; download it by hand and put it at {dest}"
                     + ("" if model_mirror() else f", or set {MIRROR_ENV} to a folder or URL holding {dest.name}"))


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


def fetch_source(source: dict, dest_dir: Path, what: str, progress: Progress | None = None, cancel: Cancel | None = None) -> dict[str, Path]:
    """Make every file of ``source`` present in ``dest_dir``; returns {name: path}.

    ``source["members"]`` maps the local file name to the member inside a wheel or zip;
    a plain URL source yields the single file ``source["file"]`` (default: the URL's basename),
    fetched from ``$MEDAI_MODEL_MIRROR`` (same file name) when one is set; a ``zoo`` source the
    bundle zip. Files already present with the right sha256 are not fetched again.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    if "zoo" in source:
        from .fetch_zoo import fetch_zoo_bundle

        path = fetch_zoo_bundle(source, dest_dir, what, progress, cancel)
        return {path.name: path}
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
        name = source.get("file") or url_file_name(url.split("?")[0])
        mirrored = mirror_location(url_file_name(url.split("?")[0]))
        target = fetch_file([mirrored] if mirrored else [url], dest_dir / name, what,
                            {"sha256": source.get("sha256", ""), "md5": source.get("md5", "")}, progress, cancel)
        return {name: target}
    if "path" in source:
        path = Path(os.path.expanduser(source["path"]))
        if not path.exists():
            raise FetchError(f"{what}: {path} does not exist; put the model files there or fix the catalog entry")
        return {path.name: path}
    raise FetchError(f"{what}: source must give 'url', 'zoo', 'pypi' or 'path'")
