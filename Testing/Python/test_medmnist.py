"""MedMNIST as a data source, offline: a tiny MedMNIST-format .npz made here and served from 127.0.0.1
(download, MD5 check, refusal of a wrong MD5, cache reuse), and the pneumonia recipe trained on it end to end
(`medai train --recipe pneumonia`, then `medai classify -m pneumonia` with Grad-CAM on a PNG chest image)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medai.cli import main
from medai.fetch import FetchError
from medai.training import medmnist
from medai.training.data import DataError, discover

SIZE = 64


def tiny_npz(path: Path, seed: int = 0, counts=(16, 6, 8)) -> Path:
    """A MedMNIST-format file: ``{train,val,test}_{images,labels}``, uint8 (N, 64, 64), labels (N, 1).

    Class 1 ("pneumonia") images carry a bright blob in the left half; class 0 images do not.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = np.array([i % 2 for i in range(n)], dtype=np.uint8)[:, None]
        images = rng.integers(20, 60, size=(n, SIZE, SIZE)).astype(np.uint8)
        for img, lab in zip(images, labels[:, 0]):
            if lab:
                img[20:44, 8:30] = 220
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez_compressed(path, **arrays)
    return path


@contextlib.contextmanager
def serve(folder: Path):
    """A local HTTP server for ``folder`` on 127.0.0.1 (stopped on exit); yields (base URL, list of paths requested)."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(folder), **kw)

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A served folder holding a tiny pneumoniamnist_64.npz, MEDAI_HOME in tmp, and the table's MD5 set to the tiny file's."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    npz = tiny_npz(folder / "pneumoniamnist_64.npz")
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(medmnist.DATASETS["pneumoniamnist"]["md5"], SIZE, md5(npz))
    with serve(folder) as (url, requests):
        monkeypatch.setenv(medmnist.MIRROR_ENV, url)
        yield folder, requests


def test_table_matches_medmnist_3_0_2_facts():
    assert len(medmnist.DATASETS) == 18
    pneu = medmnist.DATASETS["pneumoniamnist"]
    assert pneu["md5"][28] == "28209eda62fecd6e6a2d98b1501bb15f" and pneu["licence"] == "CC BY 4.0"
    assert pneu["labels"] == ["normal", "pneumonia"] and pneu["samples"] == {"train": 4708, "val": 524, "test": 624}
    assert set(medmnist.DATASETS["nodulemnist3d"]["md5"]) == {28, 64}
    assert medmnist.parse("medmnist:PneumoniaMNIST_224") == ("pneumoniamnist", 224)
    with pytest.raises(DataError, match="published as"):
        medmnist.parse("medmnist:nodulemnist3d_224")
    with pytest.raises(DataError, match="known"):
        medmnist.parse("medmnist:nosuchmnist")
    assert medmnist.source("pneumoniamnist", 28)["url"].startswith("https://zenodo.org/records/10519652/files/pneumoniamnist.npz")


def test_download_checks_md5_caches_and_keeps_the_official_split(mirror):
    folder, requests = mirror
    data = discover("medmnist:pneumoniamnist_64", "classification")
    assert requests == ["/pneumoniamnist_64.npz"]
    cached = Path(data.description["path"])
    assert cached.parent.name == "medmnist" and md5(cached) == md5(folder / "pneumoniamnist_64.npz")
    assert data.classes == ["normal", "pneumonia"]
    assert [sum(c.split == s for c in data.cases) for s in ("train", "validation", "test")] == [16, 6, 8]
    assert data.description["licence"] == "CC BY 4.0" and "Scientific Data" in data.description["reference"]
    vol = data.cases[1].volumes[0]
    assert vol.array.shape == (1, SIZE, SIZE) and data.cases[1].target == 1.0 and vol.array[0, 30, 10] == 220
    again = discover("medmnist:pneumoniamnist_64", "classification")  # from the cache: no second request
    assert requests == ["/pneumoniamnist_64.npz"] and len(again.cases) == len(data.cases)
    with pytest.raises(DataError, match="use --task classification"):
        discover("medmnist:pneumoniamnist_64", "segmentation")


def test_wrong_md5_is_refused_and_nothing_is_kept(mirror, tmp_path):
    folder, requests = mirror
    tiny_npz(folder / "breastmnist.npz", seed=1)  # served, but not the file whose MD5 medmnist publishes
    with pytest.raises(FetchError, match="(?i)wrong md5"):
        medmnist.fetch("medmnist:breastmnist")
    assert requests == ["/breastmnist.npz"]
    assert not list((tmp_path / "home" / "medmnist").glob("breastmnist*"))
    # a corrupted file already in the cache is refused too, not silently used
    cached = medmnist.fetch("medmnist:pneumoniamnist_64")
    cached.write_bytes(b"not the file")
    with pytest.raises(FetchError, match="changed since it was downloaded"):  # its recorded sha256 no longer matches
        medmnist.fetch("medmnist:pneumoniamnist_64")


def test_unreachable_host_names_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path))
    monkeypatch.setenv(medmnist.MIRROR_ENV, "http://127.0.0.1:9")
    with pytest.raises(FetchError, match="put it at"):
        medmnist.fetch("medmnist:pneumoniamnist")


def test_pneumonia_recipe_trains_reports_and_registers_the_model(mirror, tmp_path, capsys):
    code = main(["train", "--recipe", "pneumonia", "--epochs", "2", "--batch-size", "8", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    home = tmp_path / "home"
    card = json.loads((home / "models" / "pneumonia" / "medai.json").read_text())
    assert card["name"] == "pneumonia" and card["classes"] == ["normal", "pneumonia"]
    assert card["training"]["data"]["licence"] == "CC BY 4.0" and card["training"]["data"]["source"] == "medmnist"
    assert card["training"]["split"]["method"] == "given by the dataset" and len(card["training"]["split"]["test"]) == 8
    assert [a["name"] for a in card["training"]["augmentation"]] == ["affine"]
    test = card["training"]["metrics"]["test"]
    assert test["cases"] == 8 and len(test["confusion_matrix"]) == 2 and sum(map(sum, test["confusion_matrix"])) == 8
    assert "accuracy" in out and "precision" in out and "recall" in out and "F1" in out and "ROC AUC" in out
    assert "confusion matrix" in out and "published:" in out
    assert (home / "models" / "pneumonia" / "test" / "confusion_matrix.png").exists()
    # retraining does not overwrite the model silently
    assert main(["train", "--recipe", "pneumonia", "--epochs", "1", "--device", "cpu"]) == 1
    assert "already holds a trained model" in capsys.readouterr().err

    # registered: `medai classify chest.png -m pneumonia` uses it at once, with Grad-CAM on the image's grid
    image = np.full((SIZE, SIZE), 40, np.uint8)
    image[20:44, 8:30] = 220
    Image.fromarray(image).save(tmp_path / "chest.png")
    scores, heat = tmp_path / "scores.csv", tmp_path / "heat.nii.gz"
    assert main(["classify", str(tmp_path / "chest.png"), "-m", "pneumonia", "-o", str(scores), "--explain", str(heat),
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader(open(scores)))
    assert rows[0]["predicted"] in ("normal", "pneumonia")
    from medai.io import read_image

    assert read_image(heat).array.shape == (1, SIZE, SIZE)
    # and `medai evaluate` reads the same data source, using the card's test split
    assert main(["evaluate", "-m", "pneumonia", "--data", "medmnist:pneumoniamnist_64", "-o", str(tmp_path / "rep"),
                 "--device", "cpu"]) == 0
    assert "on 8 case(s)" in capsys.readouterr().out


def test_untrained_recipe_model_says_how_to_train_it(tmp_path, monkeypatch):
    from medai.models.loader import load_model

    monkeypatch.setenv("MEDAI_HOME", str(tmp_path))
    with pytest.raises(Exception, match="medai train --recipe pneumonia"):
        load_model("pneumonia", "cpu")


def test_recipe_trains_through_the_slicer_bridge_off_the_main_thread(mirror, tmp_path):
    """The Train section's recipe button path: TrainRunner with a RecipeSource (data fetched on the worker),
    chart and table in the scene, the model registered."""
    from medai.slicer.headless import make_headless_slicer
    from medai.slicer.jobs import TrainRunner
    from medai.training import recipes

    scene = make_headless_slicer()
    folder, requests = mirror
    recipe = recipes.get("pneumonia")
    config = recipes.config(recipe, {"epochs": 1, "batch_size": 8, "device": "cpu", "evaluate_test": False})
    registered: list[str] = []
    out = TrainRunner().train(recipes.RecipeSource("pneumonia"), recipes.output_folder(recipe), config,
                              register=registered.append)
    assert requests == ["/pneumoniamnist_64.npz"]
    assert registered == [str(out.model_dir)] and (out.model_dir / "medai.json").exists()
    assert out.chart.GetScene() is scene and out.table.GetNumberOfRows() == 1
