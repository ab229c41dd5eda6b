"""Downloads through MedAI's own fetch, against a local HTTP server: resume, cancel, checksums, record, mirror."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from http_fixture import FileServer
from medai.fetch import (CancelToken, DownloadCancelled, FetchError, download_file, fetch_file, fetch_source,
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
