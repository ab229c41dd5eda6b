"""Every SlicerMONAIAuto3DSeg catalog entry, downloaded by name through a mirror folder and run.

For each entry of ``Resources/Catalog/models.d/auto3dseg.json`` (read through the catalog), a zip
in that extension's format (a tiny SegResNetDS with fresh weights, built by
:func:`test_auto3dseg.make_zip`) is put into a mirror folder under the file name of the entry's URL,
with the entry's labels and its number of inputs and output classes. ``load_model(NAME)`` must fetch
it from the mirror into the cache and segment tiny random volumes onto the first input's grid.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import oblique_affine  # noqa: E402
from test_auto3dseg import make_zip  # noqa: E402

from medai.models import catalog  # noqa: E402

ROI = [16, 16, 16]
SHAPE = (24, 26, 28)  # the first input, [i, j, k]
OTHER_SHAPE = (28, 24, 26)  # further inputs, on another grid (resampled onto the first by world position)


def auto3dseg_entries() -> list[catalog.CatalogEntry]:
    return [e for e in catalog.list_models() if (e.raw or {}).get("format") == "auto3dseg"]


def zip_config(entry: catalog.CatalogEntry) -> dict:
    """``make_zip`` arguments giving the entry's inputs and outputs, as the extension's models have them."""
    channels, segments = len(entry.inputs), list(entry.raw["segments"])
    file_name = Path(entry.source["url"]).stem
    config: dict = {"in_channels": channels, "roi_size": ROI, "resample_resolution": None, "label_names": segments}
    if "brats" in file_name:  # three overlapping sigmoid channels merged into labels 2/1/3 (see brats_merge)
        return {**config, "classes": 3, "sigmoid": True, "normalize_mode": "meanstd"}
    config["classes"] = len(segments) + 1  # softmax with background
    if channels > 1:
        config |= {"normalize_mode": "meanstd", "extra_modalities": {f"image{c + 1}": "meanstd" for c in range(1, channels)}}
    return config


@pytest.fixture
def mirror_env(tmp_path, monkeypatch):
    from medai.models.loader import clear_cache

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDAI_MODEL_MIRROR", str(mirror))
    monkeypatch.delenv("MEDAI_CATALOG", raising=False)
    clear_cache()
    yield mirror
    clear_cache()


def test_the_catalog_lists_every_auto3dseg_model():
    assert len(auto3dseg_entries()) == 33  # the count test_auto3dseg.py pins to the extension's Models.json


@pytest.mark.parametrize("name", [e.name for e in auto3dseg_entries()])
def test_auto3dseg_entry_downloads_through_the_mirror_folder_and_runs(mirror_env, name):
    from medai.engine.segment import segment
    from medai.fetch import record_path, recorded_sha256, sha256_of, url_file_name
    from medai.geometry import Volume
    from medai.models.loader import load_model

    entry = catalog.find_model(name)
    file_name = url_file_name(entry.source["url"])
    served = make_zip(mirror_env, file_name, seed=len(entry.raw["segments"]), **zip_config(entry))
    assert not catalog.is_cached(entry)

    model = load_model(name, "cpu")

    cached = catalog.model_dir(name) / file_name
    assert catalog.is_cached(entry) and cached.is_file()
    assert recorded_sha256(cached) == sha256_of(served) == sha256_of(cached)  # the mirror's file, recorded
    assert json.loads(record_path().read_text())[f"models/{name}/{file_name}"]["source"] == str(served)  # only the mirror asked
    with zipfile.ZipFile(cached) as z:
        assert "model/model.pt" in z.namelist()
    assert model.kind == "auto3dseg" and model.name == name
    assert [lab.name for lab in model.labels] == entry.raw["segments"]
    assert len(model.card.inputs) == len(entry.inputs) == model.card.num_inputs
    assert [i["name"] for i in model.card.inputs] == [i["name"] for i in entry.inputs]

    rng = np.random.default_rng(0)
    first = Volume(rng.normal(100, 40, SHAPE).astype(np.float32), oblique_affine(spacing=(1.5, 1.5, 2.0)), name="input1")
    others = [Volume(rng.normal(50, 20, OTHER_SHAPE).astype(np.float32), oblique_affine(spacing=(1.4, 1.6, 1.8)), name=f"input{n + 2}")
              for n in range(len(entry.inputs) - 1)]
    result = segment(model, [first, *others])

    assert result.reference is first
    assert [layer.shape for layer in result.layers] == [first.array.shape]
    assert [lab.name for lab in result.labels] == entry.raw["segments"]
    assert set(np.unique(result.layers[0])) <= set(range(len(entry.raw["segments"]) + 1))
