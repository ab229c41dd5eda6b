"""An untrusted model cannot run code: cards with expressions, bundles, full-pickle checkpoints; explicit trust runs them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from medai.cli import main
from medai.geometry import Volume
from medai.io import write_volume
from medai.models import trust
from medai.models.loader import load_model
from medai.models.trust import ModelTrustError
from medai.slicer import scene as bridge
from medai.slicer.segment_logic import SegmentLogic


pytestmark = pytest.mark.usefixtures("fresh_medai_home")  # remembered decisions and models: a fresh MEDAI_HOME, an empty cache


def _expression(marker: Path) -> str:
    return f"$open({str(marker)!r}, 'w').write('x')"  # evaluates to 1 (one character written)


def conv_card(folder: Path, kernel_size=1, target: str = "torch.nn.Conv3d", weights: dict | None = None) -> Path:
    """A 1x1x1 Conv3d card (label 1 where the voxel is bright); ``kernel_size`` may be an expression."""
    folder.mkdir(parents=True, exist_ok=True)
    net = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1)
        net.bias.zero_()
    torch.save(weights if weights is not None else net.state_dict(), folder / "model.pt")
    card = {"name": folder.name, "task": "segmentation",
            "network": {"_target_": target, "in_channels": 1, "out_channels": 2, "kernel_size": kernel_size},
            "weights": "model.pt", "inputs": [{"name": "img"}],
            "preprocessing": {"orientation": "RAS", "intensity": [{"op": "scale_range", "a_min": 0, "a_max": 100, "b_min": -1, "b_max": 1}]},
            "inference": {"mode": "whole", "activation": "softmax"}, "labels": {"1": "bright"}}
    path = folder / "medai.json"
    path.write_text(json.dumps(card))
    return path


def tiny_bundle(folder: Path, marker: Path | None = None) -> Path:
    """A hand-written MONAI Bundle (Conv3d network_def); with ``marker``, its network_def holds a ``$`` expression."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny", "network_data_format": {
        "inputs": {"image": {"num_channels": 1, "modality": "MR"}},
        "outputs": {"pred": {"type": "image", "channel_def": {"0": "background", "1": "bright"}}}}}))
    net_def = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2,
               "kernel_size": _expression(marker) if marker else 1}
    (folder / "configs" / "inference.json").write_text(json.dumps({
        "image_key": "image", "network_def": net_def,
        "preprocessing": {"_target_": "Compose", "transforms": []}, "inferer": {"_target_": "SimpleInferer"}}))
    torch.save(torch.nn.Conv3d(1, 2, 1).state_dict(), folder / "models" / "model.pt")
    return folder


def image_file(path: Path) -> Path:
    arr = np.zeros((12, 14, 16), np.float32)
    arr[3:9, 4:10, 5:11] = 100
    arr += np.random.default_rng(0).random(arr.shape).astype(np.float32)
    write_volume(Volume(arr, np.diag([1.5, 1.5, 2.0, 1.0]), "img"), path)
    return path


def test_card_expression_runs_only_after_explicit_trust(tmp_path):
    marker = tmp_path / "marker"
    card = conv_card(tmp_path / "evil", kernel_size=_expression(marker))
    with pytest.raises(ModelTrustError, match=r"would run code.*\$open.*--trust"):
        load_model(card, "cpu")
    assert not marker.exists()
    model = load_model(card, "cpu", trust=True)
    assert marker.exists() and model.networks[0].kernel_size == (1, 1, 1)


def test_cli_refuses_code_by_default_and_runs_it_with_trust(tmp_path, capsys):
    marker = tmp_path / "marker"
    card = conv_card(tmp_path / "evil", kernel_size=_expression(marker))
    img = image_file(tmp_path / "img.nrrd")
    out = tmp_path / "out" / "seg.seg.nrrd"
    assert main(["segment", str(img), "-m", str(card), "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "would run code" in err and "--trust" in err and "$open" in err
    assert not marker.exists() and not out.exists() and not (tmp_path / "out").exists()
    assert main(["segment", str(img), "-m", str(card), "-o", str(out), "--device", "cpu", "--trust"]) == 0
    assert marker.exists() and out.exists()


def test_remembered_decision_is_per_sha256(tmp_path):
    marker = tmp_path / "marker"
    card = conv_card(tmp_path / "evil", kernel_size=_expression(marker))
    assert trust.untrusted_code(card)  # what Slicer asks about before a run
    digest = trust.trust_model(card)
    assert json.loads((tmp_path / "home" / "trusted.json").read_text())[digest]["source"] == str(card.resolve())
    assert trust.untrusted_code(card) == []
    load_model(card, "cpu")
    assert marker.exists()
    marker.unlink()
    raw = json.loads(card.read_text())
    raw["title"] = "changed"  # another content: asks again
    card.write_text(json.dumps(raw))
    with pytest.raises(ModelTrustError, match="sha256"):
        load_model(card, "cpu")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "monai.networks.nets.get_pretrained_resnet_medicalnet",
                                    "monai.networks.nets.unet.torch.load"])
def test_targets_outside_monai_and_torch_networks_need_trust(tmp_path, target):
    card = conv_card(tmp_path / "t", target=target)
    with pytest.raises(ModelTrustError, match=f"_target_ = '{target}'"):
        load_model(card, "cpu")


def test_plain_card_needs_no_trust(tmp_path):
    model = load_model(conv_card(tmp_path / "plain"), "cpu")
    assert model.kind == "card"
    assert trust.untrusted_code(tmp_path / "plain" / "medai.json") == []


def test_bundle_runs_code_only_after_trust(tmp_path):
    marker = tmp_path / "marker"
    folder = tiny_bundle(tmp_path / "tiny", marker)
    with pytest.raises(ModelTrustError, match=r"MONAI Bundle .*tiny would run code.*not in the MedAI catalog"):
        load_model(folder, "cpu")
    assert not marker.exists()
    assert any("$open" in line for line in trust.untrusted_code(folder))
    model = load_model(folder, "cpu", trust=True)
    assert marker.exists() and model.kind == "bundle"


def test_even_a_bundle_without_expressions_needs_trust(tmp_path, capsys):
    folder = tiny_bundle(tmp_path / "plain_bundle")
    img = image_file(tmp_path / "img.nii.gz")
    out = tmp_path / "seg.nrrd"
    assert main(["segment", str(img), "-m", str(folder), "-o", str(out), "--device", "cpu"]) == 1
    assert "MONAI Bundle" in capsys.readouterr().err and not out.exists()
    assert main(["segment", str(img), "-m", str(folder), "-o", str(out), "--device", "cpu", "--trust"]) == 0
    assert out.exists()


class _Marker:
    """Unpickling this writes a file: what a hostile checkpoint could do."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_full_pickle_checkpoint_needs_trust(tmp_path):
    marker = tmp_path / "marker"
    _Marker.path = str(marker)
    state = torch.nn.Conv3d(1, 2, 1).state_dict()
    card = conv_card(tmp_path / "pickled", weights={"state_dict": state, "extra": _Marker()})
    with pytest.raises(ModelTrustError, match="needs full pickle"):
        load_model(card, "cpu")
    assert not marker.exists()
    load_model(card, "cpu", trust=True)
    assert marker.exists()


def test_catalog_models_are_trusted(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    card = conv_card(tmp_path / "listed", kernel_size=_expression(marker))
    cat = tmp_path / "catalog" / "models.json"
    cat.parent.mkdir()
    cat.write_text(json.dumps({"default_model": "listed", "models": [
        {"name": "listed", "task": "segmentation", "source": {"path": str(card.parent)}}]}))
    monkeypatch.setenv("MEDAI_CATALOG", str(cat))
    load_model("listed", "cpu")
    assert marker.exists()


def test_slicer_logic_refuses_without_trust_and_leaves_the_scene(tmp_path, scene):
    marker = tmp_path / "marker"
    card = conv_card(tmp_path / "evil", kernel_size=_expression(marker))
    arr = np.zeros((12, 14, 16), np.float32)
    arr[3:9, 4:10, 5:11] = 100
    node = bridge.volume_node_from_volume(scene, Volume(arr, np.eye(4), "v"), name="v")
    before = scene.GetNumberOfNodes()
    with pytest.raises(ModelTrustError):
        SegmentLogic().segment([node], str(card), device="cpu")
    assert scene.GetNumberOfNodes() == before and not marker.exists()
    seg = SegmentLogic().segment([node], str(card), device="cpu", trust=True)
    assert marker.exists() and seg.GetSegmentation().GetNumberOfSegments() == 1


def test_pickle_module_is_what_torch_refuses():
    """The guard relies on torch's weights_only unpickler refusing unknown globals (UnpicklingError)."""
    import io

    buf = io.BytesIO()
    torch.save({"x": _Marker()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        torch.load(buf, weights_only=True)


def test_fine_tuning_from_an_untrusted_card_is_refused_and_leaves_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    card = conv_card(tmp_path / "evil", kernel_size=_expression(marker))
    data = tmp_path / "data"
    data.mkdir()
    for c in range(2):
        lab = np.zeros((8, 8, 8), np.uint8)
        lab[2:6, 2:6, 2:6] = 1
        write_volume(Volume(lab * 50.0 + c, np.eye(4), "i"), data / f"c{c}.nii.gz")
        write_volume(Volume(lab, np.eye(4), "l"), data / f"c{c}_label.nii.gz")
    out = tmp_path / "model"
    assert main(["train", "--data", str(data), "--from", str(card), "-o", str(out), "--device", "cpu", "--epochs", "1"]) == 1
    assert "would run code" in capsys.readouterr().err and not marker.exists() and not out.exists()


def test_batch_refuses_code_by_default_and_runs_it_with_trust(tmp_path, capsys):
    """medai batch: the same rule, and --trust reaches the model load (worker processes included)."""
    marker = tmp_path / "marker"
    card = conv_card(tmp_path / "evil", kernel_size=_expression(marker))
    cohort = tmp_path / "cohort"
    image_file(cohort / "c0.nrrd")
    out = tmp_path / "out"
    assert main(["batch", str(cohort), "-m", str(card), "-o", str(out), "--device", "cpu"]) == 1
    assert "would run code" in capsys.readouterr().err and not marker.exists()
    assert main(["batch", str(cohort), "-m", str(card), "-o", str(out), "--device", "cpu", "--trust"]) == 0
    assert marker.exists() and (out / "c0.seg.nrrd").exists()
