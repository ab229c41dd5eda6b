"""Training options that must behave the same at inference or across runs: denoising as a card op,
multi-label classification, fine-tuning, data paths in the card, exact resume, and 2D classification.

All data are small constructed images (real files, real MONAI networks, CPU), so the whole file
trains in seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medai.engine.progress import CancelToken
from medai.geometry import Volume
from medai.io import read_image, write_volume
from medai.models.loader import load_model
from medai.training import TrainConfig, train
from medai.training.data import discover

TINY_UNET = {"channels": [8, 16], "strides": [2], "num_res_units": 0}
TINY_RESNET = {"layers": [1, 1, 1, 1], "block_inplanes": [8, 8, 16, 16]}
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _box_case(rng: np.random.Generator, shape=(12, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """[k, j, i] image: a bright box (label 1) on a darker background, plus Gaussian noise."""
    label = np.zeros(shape, dtype=np.uint8)
    k0, j0, i0 = rng.integers(2, 5), rng.integers(4, 14), rng.integers(4, 14)
    label[k0 : k0 + 6, j0 : j0 + 14, i0 : i0 + 14] = 1
    image = 100.0 + 100.0 * label + rng.normal(0, 10, shape)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def box_data(tmp_path_factory):
    """A folder of NAME.nii.gz + NAME_label.nii.gz pairs (6 cases)."""
    folder = tmp_path_factory.mktemp("boxes") / "boxes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for n in range(6):
        image, label = _box_case(rng)
        write_volume(Volume(image, AFFINE, f"box{n}"), folder / f"box{n}.nii.gz")
        write_volume(Volume(label, AFFINE, f"box{n}_label"), folder / f"box{n}_label.nii.gz")
    return discover(folder, "segmentation")


def seg_config(**kw) -> TrainConfig:
    base = dict(network="unet", network_args=TINY_UNET, epochs=6, roi_size=[16, 16, 8], spacing=None,
                intensity=[{"op": "scale_range", "a_min": 0, "a_max": 300, "b_min": 0, "b_max": 1}], samples_per_case=2,
                batch_size=4, steps_per_epoch=3, lr=1e-2, warmup_epochs=0, device="cpu", patience=50,
                split=(0.67, 0.33, 0.0), evaluate_test=False, augmentation=[])
    base.update(kw)
    return TrainConfig(**base)


# --- 1. denoising is a card intensity op, the same in training and inference --------------------------


@pytest.mark.parametrize("op", [{"op": "denoise", "method": "gaussian", "sigma": 1.0}, {"op": "denoise", "method": "median", "size": 3}])
def test_denoise_op_reduces_noise_per_channel(op):
    from medai.engine.intensity import apply_intensity

    rng = np.random.default_rng(1)
    x = torch.from_numpy((np.stack([np.full((20, 20, 20), 5.0), np.full((20, 20, 20), -3.0)])
                          + rng.normal(0, 1, (2, 20, 20, 20))).astype(np.float32))
    out = apply_intensity(x, [op], {})
    assert out.shape == x.shape
    for c, level in enumerate((5.0, -3.0)):  # each channel keeps its own level: filtered per channel
        assert abs(float(out[c].mean()) - level) < 0.1
        assert float(out[c].std()) < 0.6 * float(x[c].std())


def test_unknown_denoise_method_is_a_card_error(tmp_path):
    from medai.models.card import ModelCardError, parse_card

    raw = {"task": "segmentation", "network": {"_target_": "x"}, "weights": "model.pt", "labels": {"1": "a"},
           "preprocessing": {"intensity": [{"op": "denoise", "method": "bilateral"}]}, "inference": {"roi_size": [8, 8, 8]}}
    with pytest.raises(ModelCardError, match="denoise method 'bilateral' unknown; use one of gaussian, median"):
        parse_card(raw, tmp_path)


@pytest.fixture(scope="module")
def denoised_model(box_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "box-median"
    return train(box_data, out, seg_config(denoise="median", epochs=8))


def test_denoise_is_written_into_the_card_and_applied_by_segment(denoised_model, box_data, tmp_path):
    from medai.engine.segment import segment
    from medai.metrics import dice

    card = json.loads(denoised_model.card_path.read_text())
    assert card["preprocessing"]["intensity"][0] == {"op": "denoise", "method": "median", "size": 3}
    assert card["preprocessing"]["intensity"][1]["op"] == "scale_range"  # denoise comes before the normalisation
    assert "notes" not in card["training"] and "denoise" not in card["training"]["training_only_preprocessing"]
    # the same card without the op: inference must then differ on an image with impulse noise
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    (plain_dir / "model.pt").write_bytes((denoised_model.model_dir / "model.pt").read_bytes())
    plain = dict(card, preprocessing=dict(card["preprocessing"], intensity=card["preprocessing"]["intensity"][1:]))
    (plain_dir / "medai.json").write_text(json.dumps(plain))

    rng = np.random.default_rng(7)
    image, label = _box_case(rng)
    spikes = rng.random(image.shape) < 0.08
    image[spikes] = rng.choice([0.0, 600.0], size=int(spikes.sum()))
    vol = Volume(image, AFFINE, "noisy")
    with_op = segment(load_model(denoised_model.card_path, "cpu"), [vol]).layers[0]
    without = segment(load_model(plain_dir / "medai.json", "cpu"), [vol]).layers[0]
    assert not np.array_equal(with_op, without)
    assert dice(with_op == 1, label == 1) > 0.7
    assert dice(with_op == 1, label == 1) > dice(without == 1, label == 1)


# --- 4. the card records the data relative to the model folder, with a content hash ------------------


def test_card_records_data_path_relative_to_model_folder(denoised_model, box_data):
    data = json.loads(denoised_model.card_path.read_text())["training"]["data"]
    assert not Path(data["path"]).is_absolute() and data["path"].startswith("../")
    assert (denoised_model.model_dir / data["path"]).resolve() == Path(box_data.description["path"]).resolve()
    assert len(data["sha256"]) == 64
    from medai.training.export import data_fingerprint

    assert data["sha256"] == data_fingerprint(box_data)
    changed = discover(Path(box_data.description["path"]), "segmentation")
    changed.cases = changed.cases[1:]
    assert data_fingerprint(changed) != data["sha256"]


# --- 5. resume continues the same random stream --------------------------------------------------------


def test_resumed_run_ends_with_the_same_weights(box_data, tmp_path):
    cfg = dict(epochs=3, augmentation=["affine", "flip", "intensity", "noise"], val_every=10)
    whole = train(box_data, tmp_path / "whole", seg_config(**cfg))
    cancel = CancelToken()

    def stop_after_first_epoch(e):
        if e.phase == "epoch" and e.epoch == 1:
            cancel.cancel()

    cut = train(box_data, tmp_path / "cut", seg_config(**cfg), callback=stop_after_first_epoch, cancel=cancel)
    assert cut.stopped == "cancelled" and len(cut.history) == 1
    resumed = train(box_data, tmp_path / "cut", seg_config(resume=True, **cfg))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    a = torch.load(tmp_path / "whole" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- 2. multi-label classification ---------------------------------------------------------------------


def _halves_image(left: bool, right: bool, rng: np.random.Generator, shape=(16, 16, 16)) -> np.ndarray:
    """[k, j, i]: the left (i < 8) and/or right half brighter; both may be (overlapping labels)."""
    x = rng.normal(0, 0.3, shape).astype(np.float32)
    if left:
        x[:, :, :8] += 2.0
    if right:
        x[:, :, 8:] += 2.0
    return x


@pytest.fixture(scope="module")
def multilabel_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("halves")
    rng = np.random.default_rng(3)
    rows = []
    for n in range(24):
        left, right = bool(n % 2), bool((n // 2) % 2)
        name = f"img{n:02d}.nii.gz"
        write_volume(Volume(_halves_image(left, right, rng), np.eye(4), name), folder / name)
        rows.append({"image": name, "label": ";".join([c for c, on in (("left", left), ("right", right)) if on]),
                     "split": "validation" if n >= 20 else "train"})
    path = folder / "labels.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def cls_config(**kw) -> TrainConfig:
    base = dict(task="multilabel", network="resnet", network_args=TINY_RESNET, epochs=6, roi_size=[16, 16, 16],
                intensity=[], batch_size=4, lr=3e-3, warmup_epochs=0, device="cpu", patience=50, augmentation=[],
                evaluate_test=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def multilabel_model(multilabel_csv, tmp_path_factory):
    data = discover(multilabel_csv, "multilabel")
    return train(data, tmp_path_factory.mktemp("models") / "halves", cls_config())


def test_multilabel_training_learns_overlapping_classes(multilabel_csv, multilabel_model):
    from medai.engine.classify import classify

    data = discover(multilabel_csv, "multilabel")
    assert data.classes == ["left", "right"]
    assert {tuple(c.target) for c in data.cases} == {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)}
    losses = [r["loss"] for r in multilabel_model.history]
    assert losses[-1] < 0.6 * losses[0], losses
    card = json.loads(multilabel_model.card_path.read_text())
    assert card["task"] == "multilabel" and card["inference"]["activation"] == "sigmoid" and card["classes"] == ["left", "right"]
    model = load_model(multilabel_model.card_path, "cpu")
    rng = np.random.default_rng(11)
    cases = {(l, r): Volume(_halves_image(l, r, rng), np.eye(4), f"{l}{r}") for l in (False, True) for r in (False, True)}
    result = classify(model, list(cases.values()), explain=False)
    for (left, right), case in zip(cases, result.cases):
        assert set(result.predicted_names(case)) == {c for c, on in (("left", left), ("right", right)) if on}, result.rows()


# --- 3. fine-tuning ----------------------------------------------------------------------------------


def test_finetune_starts_from_the_parent_with_a_lower_learning_rate(multilabel_csv, multilabel_model, tmp_path):
    data = discover(multilabel_csv, "multilabel")
    out = tmp_path / "halves-ft"
    ft = train(data, out, cls_config(epochs=1, finetune_from=str(multilabel_model.card_path)))
    card = json.loads(ft.card_path.read_text())
    training = card["training"]
    assert training["settings"]["effective_lr"] == pytest.approx(3e-4)
    parent_card = json.loads(multilabel_model.card_path.read_text())
    assert training["parent"]["name"] == "halves" and training["parent"]["sha256"] == parent_card["sha256"]
    assert (out / training["parent"]["card"]).resolve() == multilabel_model.card_path.resolve()
    assert not Path(training["settings"]["finetune_from"]).is_absolute()
    # Adam moves a weight by about lr per step at most: 5 steps at 3e-4 keep every weight next to the parent's
    src = torch.load(multilabel_model.model_dir / "model.pt", weights_only=True)
    new = torch.load(out / "model.pt", weights_only=True)
    params = [k for k in src if "running_" not in k and "num_batches" not in k]
    assert max(float((new[k] - src[k]).abs().max()) for k in params) < 4 * 5 * 3e-4
    # so its first epoch already has about the parent's last loss, far below a first epoch from scratch
    assert ft.history[0]["loss"] < 0.7 * multilabel_model.history[0]["loss"]


# --- 6. 2D classification on single-slice images --------------------------------------------------------


def test_2d_classification_from_png_slices(tmp_path):
    import SimpleITK as sitk

    from medai.engine.classify import classify
    from medai.geometry import GeometryError

    rng = np.random.default_rng(5)
    rows = []
    for n in range(16):
        cls = "top" if n % 2 else "bottom"
        img = rng.normal(60, 15, (32, 32))
        img[(slice(0, 16) if cls == "top" else slice(16, 32)), :] += 120
        name = f"slice{n:02d}.png"
        sitk.WriteImage(sitk.GetImageFromArray(np.clip(img, 0, 255).astype(np.uint8)), str(tmp_path / name))
        rows.append({"image": name, "label": cls, "split": "validation" if n >= 12 else "train"})
    with open(tmp_path / "slices.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    data = discover(tmp_path / "slices.csv", "classification")
    result = train(data, tmp_path / "model2d", cls_config(task="classification", roi_size=[32, 32], epochs=5,
                                                        intensity=[{"op": "scale_range", "a_min": 0, "a_max": 255}]))
    card = json.loads(result.card_path.read_text())
    assert card["inference"]["roi_size"] == [32, 32] and card["network"]["spatial_dims"] == 2
    assert result.best_metric == 1.0, result.history
    model = load_model(result.card_path, "cpu")
    vol = read_image(tmp_path / "slice13.png")  # a "top" validation slice, as a single-slice volume
    assert 1 in vol.array.shape
    out = classify(model, [vol], explain=False)
    assert out.predicted_names(out.cases[0]) == ["top"]
    with pytest.raises(GeometryError, match="is 2D"):
        classify(model, [Volume(np.random.default_rng(0).random((4, 32, 32), np.float32), np.eye(4), "stack")], explain=False)
