"""Every model format through one loader, and every unsafe or broken model refused clearly."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MODEL_ZOO, write_unet_card
from medai.engine.segment import segment
from medai.fetch import sha256_of
from medai.geometry import Volume
from medai.models import catalog
from medai.models.card import ModelCardError
from medai.models.loader import ModelLoadError, clear_cache, load_model


def _volume() -> Volume:
    arr = np.random.default_rng(1).normal(size=(24, 28, 32)).astype(np.float32)
    return Volume(arr, np.diag([1.2, 1.2, 1.5, 1.0]), name="rand")


def test_card_checkpoint_loads_runs_and_is_cached(tmp_path):
    card = write_unet_card(tmp_path / "u")
    clear_cache()
    a = load_model(card, "cpu")
    b = load_model(card, "cpu")
    assert a is b and a.kind == "card"
    result = segment(a, [_volume()])
    assert result.layers[0].shape == (24, 28, 32)


def test_torchscript_with_card_beside_gives_same_output_as_checkpoint(tmp_path):
    card_path = write_unet_card(tmp_path / "u")
    eager = load_model(card_path, "cpu")
    ts_dir = tmp_path / "ts"
    ts_dir.mkdir()
    torch.jit.script(eager.networks[0]).save(str(ts_dir / "unet.ts"))
    card = json.loads(card_path.read_text())
    for key in ("network", "weights", "sha256"):
        card.pop(key)
    (ts_dir / "unet.json").write_text(json.dumps(card))
    scripted = load_model(ts_dir / "unet.ts", "cpu")
    assert scripted.kind == "torchscript"
    vol = _volume()
    assert np.array_equal(segment(eager, [vol]).layers[0], segment(scripted, [vol]).layers[0])


def test_torchscript_without_card_is_refused(tmp_path):
    net = torch.jit.script(torch.nn.Conv3d(1, 2, 1))
    net.save(str(tmp_path / "lonely.ts"))
    with pytest.raises(ModelLoadError, match="needs a model card beside it"):
        load_model(tmp_path / "lonely.ts", "cpu")


def test_sha256_mismatch_is_refused(tmp_path):
    card_path = write_unet_card(tmp_path / "u")
    card = json.loads(card_path.read_text())
    card["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="wrong sha256"):
        load_model(card_path, "cpu")


def test_corrupt_weights_are_refused(tmp_path):
    card_path = write_unet_card(tmp_path / "u")
    (tmp_path / "u" / "model.pt").write_bytes(os.urandom(2048))
    card = json.loads(card_path.read_text())
    card.pop("sha256")
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="not a loadable weights file"):
        load_model(card_path, "cpu")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    card_path = write_unet_card(tmp_path / "u")
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    torch.save({"state_dict": exploit}, tmp_path / "u" / "model.pt")
    card = json.loads(card_path.read_text())
    card.pop("sha256")
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_model(card_path, "cpu")
    assert not marker.exists()


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path):
    card_path = write_unet_card(tmp_path / "u")
    card = json.loads(card_path.read_text())
    card["network"]["channels"] = [8, 16, 32]
    card.pop("sha256")
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(card_path, "cpu")


def test_bad_cards_name_the_field(tmp_path):
    card_path = write_unet_card(tmp_path / "u")
    card = json.loads(card_path.read_text())
    card["preprocessing"]["intensity"] = [{"op": "magic"}]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="intensity op 'magic'"):
        load_model(card_path, "cpu")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_model(tmp_path / "broken.json", "cpu")


def _tiny_bundle(folder: Path) -> Path:
    """A bundle with the spleen bundle's real configs but its network shrunk (real UNet, fresh weights)."""
    if not MODEL_ZOO.is_dir():
        pytest.skip(f"MONAI model-zoo fixtures not found at {MODEL_ZOO}")
    shutil.copytree(MODEL_ZOO / "spleen_ct_segmentation", folder)
    cfg = json.loads((folder / "configs" / "inference.json").read_text())
    cfg["network_def"].update({"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1})
    cfg["inferer"]["roi_size"] = [32, 32, 32]
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=[4, 8, 16], strides=[2, 2], num_res_units=1, norm="batch")
    (folder / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def test_bundle_folder_and_zip_run_with_bundle_labels(tmp_path):
    folder = _tiny_bundle(tmp_path / "spleen")
    vol = _volume()
    from_folder = load_model(folder, "cpu", trust=True)
    assert from_folder.kind == "bundle" and [l.name for l in from_folder.labels] == ["spleen"]
    out = segment(from_folder, [vol])
    assert out.layers[0].shape == vol.array.shape
    archive = tmp_path / "spleen.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in folder.rglob("*"):
            if p.is_file():
                z.write(p, Path("spleen_ct_segmentation") / p.relative_to(folder))
    os.environ["MEDAI_HOME"] = str(tmp_path / "cache")
    try:
        from_zip = load_model(archive, "cpu", trust=True)
    finally:
        os.environ.pop("MEDAI_HOME")
    assert np.array_equal(segment(from_zip, [vol]).layers[0], out.layers[0])


def test_bundle_zip_with_escaping_entry_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "cache"))
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("b/configs/metadata.json", "{}")
        z.writestr("b/../../escaped.txt", "gotcha")
    with pytest.raises(ModelLoadError, match="outside the model folder"):
        load_model(archive, "cpu")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_bundle_without_weights_says_where_to_put_them(tmp_path, model_zoo):
    shutil.copytree(model_zoo / "spleen_ct_segmentation", tmp_path / "b")
    with pytest.raises(ModelLoadError, match="no weights; put the bundle's models/model.pt"):
        load_model(tmp_path / "b", "cpu", trust=True)


def test_unknown_model_and_device_errors_are_clear():
    with pytest.raises(ModelLoadError, match="no such file, folder or catalog name"):
        load_model("no-such-model", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_model("no-such-model", "cuda")


def test_catalog_entries_are_complete():
    models = catalog.list_models()
    assert catalog.default_model_name() in [m.name for m in models]
    for m in models:
        assert m.name and m.title and m.task and m.license and m.source_text
        if "pypi" in m.source or "url" in m.source:
            # SlicerMONAIAuto3DSeg publishes no checksums: its zips' sha256 is recorded on first download
            assert len(m.sha256) == 64 or m.name.startswith("auto3dseg-")
        if m.card:
            assert (catalog.catalog_path().parent / m.card).exists()


def test_offline_url_source_names_where_to_put_the_file(tmp_path, monkeypatch):
    from medai.fetch import FetchError, fetch_source

    with pytest.raises(FetchError, match="put it at"):
        fetch_source({"url": "http://127.0.0.1:9/model.pt", "sha256": "0" * 64}, tmp_path, "model x")


def test_file_url_source_is_fetched_and_checked(tmp_path):
    from medai.fetch import FetchError, fetch_source

    src = tmp_path / "w.bin"
    src.write_bytes(b"weights")
    got = fetch_source({"url": src.as_uri(), "sha256": sha256_of(src)}, tmp_path / "dest", "w")
    assert got["w.bin"].read_bytes() == b"weights"
    with pytest.raises(FetchError, match="wrong sha256"):
        fetch_source({"url": src.as_uri(), "sha256": "1" * 64, "file": "other.bin"}, tmp_path / "dest", "w")


def test_catalog_model_is_loaded_once_and_reloaded_when_its_files_change(tmp_path):
    from medai.models.catalog import fetch_model, find_model

    clear_cache()
    first = load_model(catalog.default_model_name(), "cpu")
    assert load_model(catalog.default_model_name(), "cpu") is first  # fetching again must not look like a change
    folder = fetch_model(find_model(catalog.default_model_name()))
    card = folder / "medai.json"
    os.utime(card, ns=(card.stat().st_atime_ns, card.stat().st_mtime_ns + 10**9))
    reloaded = load_model(catalog.default_model_name(), "cpu")
    assert reloaded is not first
    from medai.models import loader

    assert sum(1 for key in loader._CACHE if key[0] == str(folder.resolve()) or key[0] == str(folder)) == 1


def test_concurrent_first_loads_share_one_model(tmp_path):
    import threading

    card = write_unet_card(tmp_path / "u")
    clear_cache()
    got = []
    threads = [threading.Thread(target=lambda: got.append(load_model(card, "cpu"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(m is got[0] for m in got)
