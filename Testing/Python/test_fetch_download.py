"""Downloads through MedAI's own fetch, against a local HTTP server: resume, cancel, checksums, record, mirror."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from http_fixture import FileServer
from medai.engine.progress import CancelToken
from medai.fetch import (DownloadCancelled, FetchError, download_file, fetch_file, fetch_source,
                         record_path, recorded_sha256, sha256_of)

DATA = os.urandom(3 << 20)  # 3 MiB: several read blocks, so a cut and a cancel land mid-file


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDAI_MODEL_MIRROR", raising=False)


def test_download_reports_progress_and_records_the_sha256(server, tmp_path):
    url = server.add("/m/model.zip", DATA)
    seen: list[float] = []
    got = fetch_file([url], tmp_path / "cache" / "model.zip", "model m", {"sha256": hashlib.sha256(DATA).hexdigest()}, seen.append)
    assert got.read_bytes() == DATA
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    assert recorded_sha256(got) == hashlib.sha256(DATA).hexdigest()
    assert json.loads(record_path().read_text())["model.zip"]["source"] == url


def test_a_cut_connection_is_resumed_with_a_range_request(server, tmp_path):
    url = server.add("/m/big.bin", DATA)
    server.cut_once.add("/m/big.bin")
    got = download_file(url, tmp_path / "big.bin")
    assert got.read_bytes() == DATA
    ranges = [r for p, r in server.requests if p == "/m/big.bin"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(DATA) // 2}-"  # the second request asked for the rest only


def test_cancel_stops_the_download_and_the_next_try_resumes(server, tmp_path):
    url = server.add("/m/big.bin", DATA)
    token = CancelToken()

    def progress(fraction: float) -> None:
        if fraction > 0.2:
            token.cancel()

    with pytest.raises(DownloadCancelled, match="cancelled"):
        download_file(url, tmp_path / "big.bin", progress, token)
    partial = tmp_path / "big.bin.partial"
    assert not (tmp_path / "big.bin").exists() and 0 < partial.stat().st_size < len(DATA)
    kept = partial.stat().st_size
    assert download_file(url, tmp_path / "big.bin").read_bytes() == DATA
    assert server.requests[-1] == ("/m/big.bin", f"bytes={kept}-")


def test_a_wrong_published_checksum_is_refused_and_the_file_deleted(server, tmp_path):
    url = server.add("/m/model.zip", DATA)
    with pytest.raises(FetchError, match="wrong sha1"):
        fetch_file([url], tmp_path / "model.zip", "model m", {"sha1": "0" * 40})
    assert not (tmp_path / "model.zip").exists()
    good = hashlib.sha1(DATA).hexdigest()
    assert fetch_file([url], tmp_path / "model.zip", "model m", {"sha1": good}).exists()


def test_a_file_changed_after_download_is_refused(server, tmp_path):
    url = server.add("/m/model.zip", DATA)
    dest = tmp_path / "cache" / "models" / "m" / "model.zip"
    fetch_file([url], dest, "model m")
    assert fetch_file([url], dest, "model m") == dest  # unchanged: reused
    dest.write_bytes(DATA[:-1] + b"x")
    with pytest.raises(FetchError, match="changed since it was downloaded"):
        fetch_file([url], dest, "model m")
    assert server.hits("/m/model.zip") == 1


def test_url_sources_come_from_the_mirror_folder_by_file_name(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "weights.pt").write_bytes(DATA)
    monkeypatch.setenv("MEDAI_MODEL_MIRROR", str(mirror))
    source = {"url": "https://example.invalid/releases/v1/weights.pt", "sha256": sha256_of(mirror / "weights.pt")}
    got = fetch_source(source, tmp_path / "dest", "model w")
    assert got["weights.pt"].read_bytes() == DATA
    with pytest.raises(FetchError, match="wrong sha256"):  # checksums are checked at the mirror too
        fetch_source({**source, "sha256": "1" * 64, "file": "other.pt"}, tmp_path / "dest", "model w")


def test_url_sources_come_from_an_http_mirror(server, tmp_path, monkeypatch):
    server.add("/mirror/weights.pt", DATA)
    monkeypatch.setenv("MEDAI_MODEL_MIRROR", server.url + "/mirror/")
    got = fetch_source({"url": "https://example.invalid/a/weights.pt"}, tmp_path / "dest", "model w")
    assert got["weights.pt"].read_bytes() == DATA and server.hits("/mirror/weights.pt") == 1


def test_an_unreachable_source_names_the_file_and_the_mirror_setting(tmp_path):
    with pytest.raises(FetchError, match="MEDAI_MODEL_MIRROR"):
        fetch_file(["http://127.0.0.1:9/x.zip"], tmp_path / "x.zip", "model x")


def test_zoo_bundle_from_monaihosting_then_hugging_face_when_the_zips_are_missing(server, tmp_path, monkeypatch):
    """The real URL layouts of monai.bundle.download, served locally (the hosts are pointed at the test server)."""
    import medai.fetch_zoo as zoo

    monkeypatch.setattr(zoo, "MONAI_HOSTING_BASE_URL", server.url + "/monaihosting")
    monkeypatch.setattr(zoo, "GITHUB_RELEASE_BASE_URL", server.url + "/gh")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.add("/monaihosting/my_bundle/versions/0.1.0/files/My_Bundle_v0.1.0.zip", DATA)
    got = zoo.fetch_zoo_bundle({"zoo": "My_Bundle", "version": "0.1.0", "sha1": hashlib.sha1(DATA).hexdigest()}, tmp_path / "a", "m")
    assert got.name == "My_Bundle_v0.1.0.zip" and got.read_bytes() == DATA
    files = {"configs/metadata.json": b"{}", "models/model.pt": DATA[:1000]}
    server.add("/api/models/MONAI/hf_bundle/revision/0.2.0", json.dumps({"siblings": [{"rfilename": f} for f in files]}).encode())
    for rel, data in files.items():
        server.add(f"/MONAI/hf_bundle/resolve/0.2.0/{rel}", data)
    folder = zoo.fetch_zoo_bundle({"zoo": "hf_bundle", "version": "0.2.0", "sha1": "0" * 40}, tmp_path / "b", "m")
    assert server.hits("/gh/hf_bundle_v0.2.0.zip") == 1  # the GitHub release was asked before Hugging Face
    assert (folder / "models" / "model.pt").read_bytes() == DATA[:1000] and recorded_sha256(folder / "models" / "model.pt")
    assert zoo.fetch_zoo_bundle({"zoo": "hf_bundle", "version": "0.2.0"}, tmp_path / "b", "m") == folder  # cached
    (folder / "models" / "model.pt").write_bytes(b"changed")
    with pytest.raises(FetchError, match="changed since"):
        zoo.fetch_zoo_bundle({"zoo": "hf_bundle", "version": "0.2.0"}, tmp_path / "b", "m")
