"""Classification training through the CLI on real MNI152 patches, and evaluation (files, CSVs, scene tables)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medai.cli import main
from medai.geometry import Volume
from medai.io import write_volume
from medai.training.sample_data import make_tissue_patches


@pytest.fixture(scope="module")
def patch_csv(mni_files, tmp_path_factory):
    return make_tissue_patches(mni_files, tmp_path_factory.mktemp("patches"), patch=16, per_class=150)


@pytest.fixture(scope="module")
def cls_model(patch_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "tissue-cls"
    rc = main(["train", "--data", str(patch_csv), "--task", "classification", "--network", "resnet",
               "--network-args", '{"block_inplanes": [8, 16, 32, 64], "conv1_t_size": 3, "conv1_t_stride": 2}',
               "--roi", "16,16,16", "--intensity", '[{"op": "scale_range", "a_min": 0, "a_max": 255}]',
               "--epochs", "25", "--batch-size", "32", "--lr", "3e-3", "--augment", "flip,intensity", "--device", "cpu", "-o", str(out)])
    assert rc == 0
    return out


def test_cli_classification_training_and_evaluation(cls_model, patch_csv, tmp_path):
    card = json.loads((cls_model / "medai.json").read_text())
    assert card["task"] == "classification" and card["classes"] == ["grey matter", "other", "white matter"]
    assert card["inference"] == {"mode": "resize", "roi_size": [16, 16, 16], "activation": "softmax"}
    assert card["training"]["split"]["method"] == "given by the dataset"
    test = card["training"]["metrics"]["test"]
    assert test["accuracy"] > 0.6, test  # chance is 1/3
    assert len(test["confusion_matrix"]) == 3
    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(cls_model / "medai.json"), "--data", str(patch_csv), "-o", str(report)]) == 0
    rows = list(csv.DictReader(open(report / "per_case.csv")))
    assert len(rows) == len(card["training"]["split"]["test"])
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(test["accuracy"])
    assert (report / "roc_curves.png").stat().st_size > 1000 and (report / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_label_files_by_hand(tmp_path):
    a = np.zeros((20, 20, 20), np.uint8)
    b = np.zeros((20, 20, 20), np.uint8)
    a[5:15, 5:15, 5:15] = 1
    b[5:15, 5:15, 7:17] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: 8 mL per 1000 voxels
    write_volume(Volume(a, affine), tmp_path / "pred.nii.gz")
    write_volume(Volume(b, affine), tmp_path / "ref.nii.gz")
    out = tmp_path / "rep"
    assert main(["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--ref", str(tmp_path / "ref.nii.gz"), "-o", str(out)]) == 0
    row = next(csv.DictReader(open(out / "summary.csv")))
    assert float(row["dice"]) == pytest.approx(0.8)
    assert float(row["volume_diff_ml"]) == pytest.approx(0.0)
    per_case = next(csv.DictReader(open(out / "per_case.csv")))
    assert float(per_case["volume_ref_ml"]) == pytest.approx(8.0)
    assert float(per_case["hd"]) == pytest.approx(4.0)  # 2 voxels of 2 mm


def test_evaluate_prediction_csv(tmp_path):
    truth = tmp_path / "truth.csv"
    pred = tmp_path / "pred.csv"
    truth.write_text("case,label\na,cat\nb,cat\nc,dog\nd,dog\n")
    pred.write_text("case,predicted,p_cat,p_dog\na,cat,0.9,0.1\nb,dog,0.4,0.6\nc,dog,0.2,0.8\nd,dog,0.3,0.7\n")
    assert main(["evaluate", "--pred", str(pred), "--ref", str(truth), "-o", str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["confusion_matrix"] == [[1, 1], [0, 2]] and m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"][1]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"][0]["auc"] == pytest.approx(1.0)  # cat scores 0.9, 0.4 > dog cases' 0.2, 0.3


def test_scene_classification_tables_and_plots(scene, cls_model, patch_csv):
    from medai.evaluate import classify_volumes
    from medai.io import read_image
    from medai.models.loader import load_model
    from medai.slicer.scene import volume_node_from_volume
    from medai.slicer import training_bridge as tb

    rows = [r for r in csv.DictReader(open(patch_csv)) if r["split"] == "test"][::8]
    model = load_model(cls_model / "medai.json", "cpu")
    classes = json.loads((cls_model / "medai.json").read_text())["classes"]
    truth_rows, pred_rows = [], []
    for n, r in enumerate(rows):
        vol = read_image(patch_csv.parent / r["image"])
        node = volume_node_from_volume(scene, vol, f"patch{n}")
        probs = classify_volumes(model, [vol])
        truth_rows.append({"volume": node.GetName(), "class": r["label"]})
        pred_rows.append({"volume": node.GetName(), "class": classes[int(np.argmax(probs))], **{f"p_{c}": float(p) for c, p in zip(classes, probs)}})
    truth = tb.table_node_from_rows(scene, truth_rows, "truth")
    preds = tb.table_node_from_rows(scene, pred_rows, "predictions")
    report, table = tb.compare_classification_tables(preds, truth)
    expected = np.mean([p["class"] == t["class"] for p, t in zip(pred_rows, truth_rows)])
    assert report.summary["accuracy"] == pytest.approx(expected)
    assert table.GetTable().GetNumberOfRows() == len(report.summary_rows())
    chart = tb.roc_chart(scene, report)
    assert chart.GetNumberOfPlotSeriesNodes() >= 2
    history = json.loads((cls_model / "medai.json").read_text())["training"]["history"]
    curves = tb.training_curves_chart(scene, history, "accuracy")
    assert curves.GetNumberOfPlotSeriesNodes() == 2
    data = tb.classification_cases_from_table(truth)
    assert len(data.cases) == len(rows) and set(data.classes) <= set(classes)
