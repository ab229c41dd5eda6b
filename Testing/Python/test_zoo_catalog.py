"""The model-zoo catalog (Resources/Catalog/models.d/model-zoo.json): its facts, and every entry with fixture
configs downloaded by name through a mirror (folder or HTTP) and run, with fresh weights of the right network."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import MODEL_ZOO, MODEL_ZOO_LOCAL, REPO, oblique_affine, zoo_bundle
from http_fixture import FileServer

ZOO_JSON = REPO / "Resources" / "Catalog" / "models.d" / "model-zoo.json"
REQUIRED = ["spleen_ct_segmentation", "swin_unetr_btcv_segmentation", "wholeBody_ct_segmentation",
            "pancreas_ct_dints_segmentation", "pediatric_abdominal_ct_segmentation", "prostate_mri_anatomy",
            "brats_mri_segmentation", "renalStructures_UNEST_segmentation", "wholeBrainSeg_Large_UNEST_segmentation",
            "mindgrab"]
# every zoo entry, run from its configs in ../shared/fixtures/model-zoo or Testing/Data/model-zoo:
# (input volumes, test spacing, slow on 2 cores); each pads to its network's window (96^3; mindgrab 256^3)
RUNNABLE = {
    "spleen_ct_segmentation": (1, (3.0, 3.0, 4.0), True),  # also run, not slow-marked, by the CLI test below
    "prostate_mri_anatomy": (1, (2.0, 2.0, 2.0), False),
    "brats_mri_segmentation": (4, (1.0, 1.0, 1.0), True),  # pads to its 240x240x160 window
    "wholeBody_ct_segmentation": (1, (4.0, 4.0, 4.0), True),
    "swin_unetr_btcv_segmentation": (1, (3.0, 3.0, 4.0), True),
    "pancreas_ct_dints_segmentation": (1, (4.0, 4.0, 4.0), True),  # DiNTS: a search code built in the test
    "multi_organ_segmentation": (1, (4.0, 4.0, 4.0), True),
    "pediatric_abdominal_ct_segmentation": (1, (3.0, 3.0, 3.0), True),  # weights in models/dynunet_FT.pt
    "renalStructures_UNEST_segmentation": (1, (3.0, 3.0, 3.0), True),  # UNesT from its scripts/
    "renalStructures_CECT_segmentation": (3, (2.0, 2.0, 2.0), True),  # three phases, one volume each
    "wholeBrainSeg_Large_UNEST_segmentation": (1, (1.0, 1.0, 1.0), True),
    "mindgrab": (1, (2.0, 2.0, 2.0), True),  # a smaller MindGrabNet (SMALLER_NETWORK)
}


def zoo_entries() -> list[dict]:
    return json.loads(ZOO_JSON.read_text())["models"]


def test_every_required_bundle_is_listed_with_pinned_facts():
    entries = {e["name"]: e for e in zoo_entries()}
    assert set(REQUIRED) <= set(entries)
    for e in entries.values():
        assert re.fullmatch(r"\d+\.\d+\.\d+", e["version"]) and e["source"]["version"] == e["version"]
        assert e["source"]["zoo"] == e["name"], e["name"]
        # the zip's published sha1; mindgrab is newer than the model_info.json at hand: none, and its commit is named
        assert re.fullmatch(r"[0-9a-f]{40}", e["source"]["sha1"]) or (e["source"]["sha1"] == "" and e["source"]["commit"]), e["name"]
        assert e["modality"] in ("CT", "MR", "any") and e["license"] and e["labels"] and e["inputs"]
        assert e["runtime"]["cpu"] and e["runtime"]["gpu"]
    assert [i["name"] for i in entries["brats_mri_segmentation"]["inputs"]] == ["T1c", "T1", "T2", "FLAIR"]
    assert "MNI305" in entries["wholeBrainSeg_Large_UNEST_segmentation"]["description"]
    assert entries["wholeBrainSeg_Large_UNEST_segmentation"]["requires_registration"] == "MNI305"
    assert entries["mindgrab"]["labels"] == {"1": "brain"} and "MIT" in entries["mindgrab"]["license"]
    assert entries["mindgrab"]["large_files"][0]["hash_type"] == "sha256"
    assert set(RUNNABLE) == set(entries)  # every zoo entry is run below
    assert entries["multi_organ_segmentation"]["license_flag"] == "non-commercial"
    assert entries["spleen_ct_segmentation"]["license_flag"] is None


def test_catalog_facts_match_the_bundles_own_metadata():
    checked = 0
    for e in zoo_entries():
        found = [root / e["name"] for root in (MODEL_ZOO, MODEL_ZOO_LOCAL) if (root / e["name"] / "configs" / "metadata.json").exists()]
        if not found:
            continue
        checked += 1
        model_zoo = found[0].parent
        meta = json.loads((found[0] / "configs" / "metadata.json").read_text())
        chans = meta["network_data_format"]["outputs"]["pred"].get("channel_def")
        if chans is None:  # pediatric names its labels in its inference config
            from monai.bundle import ConfigParser

            parser = ConfigParser()
            parser.read_config(str(next((found[0] / "configs").glob("inference.*"))))
            chans = {str(v): k for k, v in parser["labels"].items()}
        assert sorted(e["labels"].values()) == sorted(v for v in chans.values() if v.lower() != "background")
        assert len(e["inputs"]) == meta["network_data_format"]["inputs"]["image"]["num_channels"]
        large = next(iter(sorted((model_zoo / e["name"]).glob("large_files.y*ml"))), None)
        if large is not None and e["large_files"]:
            assert e["large_files"][0]["hash_val"] in large.read_text()
    if not checked:
        pytest.skip(f"no model-zoo configs in {MODEL_ZOO} or {MODEL_ZOO_LOCAL}")


def medai(env: dict, *args: str) -> subprocess.CompletedProcess:
    """The real command line, as a process (for the one end-to-end check)."""
    return subprocess.run([sys.executable, "-m", "medai.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``medai ARGS`` in this process (the same parser and handlers; no interpreter start-up)."""
    from medai.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_all_lists_every_model_name_first(capsys):
    code, out, err = cli(capsys, "models", "--all")
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()[1:]]
    names = [r[0] for r in rows]
    zoo = [r for r in rows if r[0] in {e["name"] for e in zoo_entries()}]
    assert len(zoo) == len(zoo_entries()) >= 11
    assert all(len(r) == 6 and r[3] != "-" and r[5] in ("cached", "not cached") for r in zoo)
    assert any("[NON-COMMERCIAL]" in r[4] for r in zoo)
    if (ZOO_JSON.parent / "auto3dseg.json").exists():
        assert len(names) >= 40
    assert len(names) == len(set(names))


# --- downloading by name through a mirror, then running --------------------------------------------


def bundle_zip(name: str, version: str, dest: Path) -> Path:
    """The bundle as the zoo publishes it (``<name>/configs ...`` in ``<name>_v<version>.zip``), fresh weights."""
    from test_model_zoo import SMALLER_NETWORK, bundle_with_fresh_weights

    folder = bundle_with_fresh_weights(zoo_bundle(name), dest.parent / "build" / f"{name}_v{version}", SMALLER_NETWORK.get(name))
    zpath = dest / f"{name}_v{version}.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f"{name}/{f.relative_to(folder)}")
    return zpath


@pytest.fixture
def zoo_env(tmp_path, monkeypatch):
    """A catalog copy whose zoo checksums are those of zips built here; an own cache; a mirror folder."""
    catalog = tmp_path / "catalog"
    shutil.copytree(REPO / "Resources" / "Catalog", catalog)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("MEDAI_CATALOG", str(catalog / "models.json"))
    monkeypatch.setenv("MEDAI_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDAI_MODEL_MIRROR", str(mirror))
    from medai.models.loader import clear_cache

    clear_cache()
    return catalog, mirror


def publish(catalog: Path, mirror: Path, name: str, version: str | None = None) -> Path:
    """Build the zip into the mirror and put its sha1 (and version) into the catalog copy, as the zoo publishes them."""
    zoo = catalog / "models.d" / "model-zoo.json"
    doc = json.loads(zoo.read_text())
    entry = next(e for e in doc["models"] if e["name"] == name)
    version = version or entry["version"]
    zpath = bundle_zip(name, version, mirror)
    entry["version"] = entry["source"]["version"] = version
    entry["source"]["sha1"] = hashlib.sha1(zpath.read_bytes()).hexdigest()
    zoo.write_text(json.dumps(doc))
    return zpath


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if RUNNABLE[n][2] else []) for n in RUNNABLE])
def test_zoo_entry_downloads_through_the_mirror_folder_and_runs(zoo_env, name):
    from medai.engine.segment import segment
    from medai.geometry import GeometryError, Volume
    from medai.models import catalog as cat
    from medai.models.loader import load_model

    catalog, mirror = zoo_env
    publish(catalog, mirror, name)
    entry = cat.find_model(name)
    assert not cat.is_cached(entry)
    model = load_model(name, "cpu")
    assert cat.is_cached(entry)
    assert [lab.name for lab in model.labels] == [entry.raw["labels"][k] for k in sorted(entry.raw["labels"], key=int)]
    channels, spacing, _ = RUNNABLE[name]
    assert len(model.card.inputs) == channels == len(entry.inputs)
    shape = (18, 20, 22)
    rng = np.random.default_rng(0)
    if any(i.get("bundle_key") for i in model.card.inputs):  # one volume per input (renalStructures_CECT's phases)
        volumes = [Volume(rng.normal(100, 30, size=shape).astype(np.float32), oblique_affine(spacing=spacing), name=i["name"])
                   for i in model.card.inputs]
    else:
        arr = rng.normal(100, 30, size=shape + ((channels,) if channels > 1 else ())).astype(np.float32)
        volumes = [Volume(arr, oblique_affine(spacing=spacing), name=name)]
    result = segment(model, volumes)
    assert result.reference is volumes[0] and all(layer.shape == shape for layer in result.layers)
    if len(volumes) > 1:  # renalStructures_CECT: its own keys, in order; every phase is needed
        assert [i["name"] for i in model.card.inputs] == ["artery", "vein", "excret"]
        assert set(np.unique(result.layers[0])) <= {lab.value for lab in result.labels} | {0}
        with pytest.raises(GeometryError, match="expects 3 volumes"):
            segment(model, volumes[:2])


def test_a_mirror_zip_with_another_checksum_is_refused(model_zoo, zoo_env):
    from medai.models.card import ModelLoadError
    from medai.models.loader import load_model

    catalog, mirror = zoo_env
    zpath = publish(catalog, mirror, "spleen_ct_segmentation")
    with zipfile.ZipFile(zpath, "a") as z:
        z.writestr("spleen_ct_segmentation/extra.txt", "tampered")
    with pytest.raises(ModelLoadError, match="wrong sha1"):
        load_model("spleen_ct_segmentation", "cpu")


def test_http_mirror_download_is_cached_and_an_update_is_noted(model_zoo, zoo_env, monkeypatch, capsys):
    catalog, mirror = zoo_env
    name = "spleen_ct_segmentation"
    old = publish(catalog, mirror, name, "0.5.8")
    with FileServer() as server:
        server.add(f"/zoo/{old.name}", old)
        monkeypatch.setenv("MEDAI_MODEL_MIRROR", server.url + "/zoo")
        code, out, err = cli(capsys, "fetch", name)
        assert code == 0 and out.startswith(f"{name}\t0.5.8\t"), err
        assert cli(capsys, "fetch", name)[0] == 0
        assert server.hits(f"/zoo/{old.name}") == 1  # the second fetch used the cache
        new = publish(catalog, mirror, name, "0.5.9")
        server.add(f"/zoo/{new.name}", new)
        code, out, err = cli(capsys, "models", "--all")
        assert re.search(rf"^{name}\t.*\t0\.5\.9\t.*\tnot cached$", out, re.M)
        assert "catalog lists version 0.5.9, the cache holds 0.5.8" in err
        code, out, err = cli(capsys, "fetch", name)
        assert code == 0 and "updated" in err and server.hits(f"/zoo/{new.name}") == 1
        assert "catalog lists" not in cli(capsys, "models", "--all")[2]


def test_segment_cli_accepts_a_zoo_name(model_zoo, zoo_env, tmp_path):
    import os

    from medai.geometry import Volume
    from medai.io import write_volume

    catalog, mirror = zoo_env
    publish(catalog, mirror, "spleen_ct_segmentation")
    image = tmp_path / "ct.nii.gz"
    write_volume(Volume(np.random.default_rng(1).normal(0, 100, (16, 18, 20)).astype(np.float32), oblique_affine(spacing=(3, 3, 4))), image)
    proc = medai(dict(os.environ), "segment", str(image), "-m", "spleen_ct_segmentation", "-o", str(tmp_path / "out.seg.nrrd"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.seg.nrrd").exists()


def test_pinned_device_replaces_hard_coded_cuda():
    from medai.models.formats.bundle import pin_device

    config = {"arch_ckpt": "$torch.load(@p, map_location=torch.device('cuda'))",
              "dints_space": {"device": "$torch.device('cuda')"},
              "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')"}
    pinned = pin_device(config, "cpu")
    assert pinned["arch_ckpt"] == "$torch.load(@p, map_location=torch.device('cpu'))"
    assert pinned["dints_space"]["device"] == "$torch.device('cpu')"
    assert pinned["device"] == config["device"]


# --- the panel's model list (torch-free core of MedAILib's selector) --------------------------------


def test_panel_groups_models_by_modality_and_task_and_searches():
    from medai.slicer import panel

    groups = {g.title: [c.spec for c in g.choices] for g in panel.model_groups("segmentation")}
    assert "spleen_ct_segmentation" in groups["CT - segmentation"]
    assert "brats_mri_segmentation" in groups["MR - segmentation"] and "deepbet-brain" in groups["MR - segmentation"]
    found = [c.spec for g in panel.model_groups("segmentation", "kidney cortex") for c in g.choices]
    assert found == ["renalStructures_UNEST_segmentation"]  # matched by its label names
    assert panel.model_groups("segmentation", "no-such-organ-xyz") == []
    assert panel.model_inputs("brats_mri_segmentation") == ["T1c", "T1", "T2", "FLAIR"]
    tip = next(c.tooltip for c in panel.model_choices() if c.spec == "multi_organ_segmentation")
    assert "NON-COMMERCIAL" in tip and "Version: 0.0.4" in tip and "not downloaded" in tip


def test_panel_download_shows_progress_can_be_cancelled_and_resumes(model_zoo, zoo_env, monkeypatch):
    from medai.models import catalog as cat
    from medai.slicer import panel

    catalog, mirror = zoo_env
    name = "spleen_ct_segmentation"
    zpath = publish(catalog, mirror, name)
    with FileServer() as server:
        server.add(f"/zoo/{zpath.name}", zpath)
        server.cut_once.add(f"/zoo/{zpath.name}")  # the first transfer breaks off half-way
        monkeypatch.setenv("MEDAI_MODEL_MIRROR", server.url + "/zoo")
        job = panel.ModelDownload(name, start=False)
        job.cancel()  # as the dialog's Cancel does (here before the first block, so that the test is deterministic)
        job.start()
        assert job.wait(30) and "cancelled" in job.error and not cat.is_cached(cat.find_model(name))
        job = panel.ModelDownload(name)
        assert job.wait(60) and job.error is None, job.error
        assert job.fraction == 1.0 and job.path.name == zpath.name and "downloaded" in job.text
        assert any(r and r.startswith("bytes=") for p, r in server.requests)  # resumed after the cut
    assert panel.cached_text(cat.find_model(name)).startswith("cached (")


def test_bundles_import_their_own_scripts_package(model_zoo, tmp_path):
    """UNesT bundles build their network from the bundle's own ``scripts/``; two bundles' ``scripts`` must not mix."""
    import torch

    from medai.models.loader import load_model

    models = []
    for n, channels in ((1, 2), (2, 3)):
        folder = tmp_path / f"bundle{n}"
        shutil.copytree(model_zoo / "spleen_ct_segmentation", folder)
        (folder / "scripts").mkdir()
        (folder / "scripts" / "__init__.py").write_text("")
        (folder / "scripts" / "net.py").write_text(
            f"import torch\n\nclass Tiny(torch.nn.Conv3d):\n    def __init__(self):\n        super().__init__(1, {channels}, 1)\n")
        cfg = json.loads((folder / "configs" / "inference.json").read_text())
        cfg["network_def"] = {"_target_": "scripts.net.Tiny"}
        (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
        (folder / "models").mkdir()
        torch.save(torch.nn.Conv3d(1, channels, 1).state_dict(), folder / "models" / "model.pt")
        models.append(load_model(folder, "cpu", trust=True))
    assert [m.networks[0].out_channels for m in models] == [2, 3]
    assert str(tmp_path / "bundle1") not in sys.path


def test_bundle_weights_and_labels_named_by_its_inference_config(model_zoo, tmp_path):
    """pediatric_abdominal_ct_segmentation keeps its weights in models/dynunet_FT.pt, named by a CheckpointLoader handler."""
    from medai.models.loader import load_model
    from test_model_zoo import bundle_with_fresh_weights

    folder = bundle_with_fresh_weights(model_zoo / "spleen_ct_segmentation", tmp_path / "spleen")
    (folder / "models" / "model.pt").rename(folder / "models" / "dynunet_FT.pt")
    cfg = json.loads((folder / "configs" / "inference.json").read_text())
    cfg["handlers"] = [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/dynunet_FT.pt'",
                        "load_dict": {"model": "@network"}}]
    cfg["labels"] = {"background": 0, "liver": 1}  # pediatric names its labels here; its metadata has no channel_def
    (folder / "configs" / "inference.json").write_text(json.dumps(cfg))
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"].pop("channel_def")
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    model = load_model(folder, "cpu", trust=True)
    assert [(lab.value, lab.name) for lab in model.labels] == [(1, "liver")]
    import torch

    saved = torch.load(folder / "models" / "dynunet_FT.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.networks[0].state_dict().items())
