"""``medai batch`` and the console cohorts: a small real cohort (tiny real UNet, 24-28^3 volumes) with bad cases."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from classify_helpers import SMALL_DENSENET_3D, write_card
from conftest import REPO, write_unet_card
from dicom_helpers import write_sitk_series
from medai.batch import PARTIAL, RESULTS, Case, find_cases, run_batch
from medai.engine.progress import CancelToken
from medai.engine.segment import segment
from medai.geometry import Volume
from medai.io import read_image, write_volume
from medai.models.loader import load_model
from medai.results import write_segmentation

GOOD = ["c0", "c1", "c2"]


def _volume(seed: int, n: int = 24) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.normal(size=(n, n, n)).astype(np.float32)
    arr[6:16, 8:18, 5:15] += 3.0
    affine = np.diag([2.0, 1.5, 2.5, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    return Volume(arr, affine, f"v{seed}")


def make_cohort(folder: Path, good: list[str] = GOOD) -> Path:
    """Good single-file cases, a corrupt file and a two-channel sub-folder (the model takes one channel)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(good):
        write_volume(_volume(n), folder / f"{name}.nii.gz")
    (folder / "bad.nii.gz").write_bytes(b"this is not a NIfTI file")
    (folder / "two").mkdir()
    for n in range(2):
        write_volume(_volume(10 + n), folder / "two" / f"ch{n}.nrrd")
    (folder / "notes.txt").write_text("not a case")
    return folder


def read_rows(outdir: Path) -> dict[str, dict]:
    with open(outdir / RESULTS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len({r["case"] for r in rows}), "one row per case"
    return {r["case"]: r for r in rows}


def labelmap(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture
def cohort(tmp_path) -> tuple[Path, Path]:
    return make_cohort(tmp_path / "cohort"), write_unet_card(tmp_path / "unet")


def test_folder_cohort_outputs_table_statuses_and_exit_code(cohort, tmp_path):
    from medai.cli import main

    folder, card = cohort
    out = tmp_path / "out"
    assert [c.name for c in find_cases(folder)] == ["bad", "c0", "c1", "c2", "two"]
    assert main(["batch", str(folder), "-m", str(card), "-o", str(out), "--device", "cpu"]) == 1  # two cases failed
    rows = read_rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {"bad": "failed", "c0": "ok", "c1": "ok", "c2": "ok", "two": "failed"}
    assert "bad.nii.gz" in rows["bad"]["error"] and "truncated" in rows["bad"]["error"]
    assert "expects 1 input channel(s), got 2" in rows["two"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["c0.seg.nrrd", "c1.seg.nrrd", "c2.seg.nrrd", RESULTS]
    model = load_model(str(card), "cpu")
    for n, name in enumerate(GOOD):
        row = rows[name]
        assert row["output"] == f"{name}.seg.nrrd" and row["error"] == ""
        assert float(row["time_s"]) > 0 and float(row["inference_s"]) > 0 and float(row["read_s"]) >= 0
        # the same result as the engine on that one file
        expected = write_segmentation(segment(model, [read_image(folder / f"{name}.nii.gz")]), tmp_path / f"{name}-direct.seg.nrrd")
        got = labelmap(out / row["output"])
        assert np.array_equal(got, labelmap(expected))
        assert float(row["organ mL"]) == pytest.approx(np.count_nonzero(got == 1) * 2.0 * 1.5 * 2.5 / 1000, abs=1e-3)
        meta = sitk.ReadImage(str(out / row["output"]))
        assert meta.GetMetaData("Segment0_Name") == "organ"


def test_rerun_skips_complete_cases_and_retries_failed_ones(cohort, tmp_path):
    folder, card = cohort
    out = tmp_path / "out"
    first = run_batch(folder, str(card), out, device="cpu")
    assert (first.ok, first.failed, first.skipped, first.success) == (3, 2, 0, False)
    stamps = {name: (out / f"{name}.seg.nrrd").stat().st_mtime_ns for name in GOOD}
    write_volume(_volume(7), folder / "bad.nii.gz")  # the user fixes the corrupt file
    second = run_batch(folder, str(card), out, device="cpu")
    assert (second.ok, second.failed, second.skipped) == (1, 1, 3)
    assert [r["case"] for r in second.rows] == ["bad", "two"]
    assert {name: (out / f"{name}.seg.nrrd").stat().st_mtime_ns for name in GOOD} == stamps  # not redone
    rows = read_rows(out)
    assert list(rows) == ["bad", "c0", "c1", "c2", "two"] and rows["bad"]["status"] == "ok" and rows["bad"]["error"] == ""
    (out / "c1.seg.nrrd").unlink()  # an output removed by hand is made again
    (out / "two.seg.nrrd").write_bytes(b"the user's own file")  # never overwritten
    with pytest.raises(FileExistsError, match="two.seg.nrrd without an ok row"):
        run_batch(folder, str(card), out, device="cpu")
    assert (out / "two.seg.nrrd").read_bytes() == b"the user's own file"
    (out / "two.seg.nrrd").unlink()
    third = run_batch(folder, str(card), out, device="cpu")
    assert (third.ok, third.skipped) == (1, 3) and (out / "c1.seg.nrrd").is_file()
    other = write_unet_card(tmp_path / "retrained" / "unet", seed=1)  # same name, other weights
    before = (out / RESULTS).read_bytes()
    with pytest.raises(ValueError, match="holds results of another model"):
        run_batch(folder, str(other), out, device="cpu")
    assert (out / RESULTS).read_bytes() == before


def test_cancel_inside_a_case_leaves_only_complete_outputs_and_resume_finishes(cohort, tmp_path):
    folder, card = cohort
    out = tmp_path / "out"
    token = CancelToken()
    stages = []

    def on_progress(fraction: float, stage: str) -> None:
        stages.append(fraction)
        if "c1: inference" in stage:
            token.cancel()

    summary = run_batch(folder, str(card), out, device="cpu", callback=on_progress, cancel=token)
    assert summary.interrupted and not summary.success
    assert sorted(p.name for p in out.iterdir()) == ["c0.seg.nrrd", RESULTS]  # no c1 file, no partial folder
    assert {k: r["status"] for k, r in read_rows(out).items()} == {"bad": "failed", "c0": "ok"}
    assert stages == sorted(stages)
    resumed = run_batch(folder, str(card), out, device="cpu")
    assert (resumed.ok, resumed.failed, resumed.skipped) == (2, 2, 1)  # bad is retried, c0 skipped
    fresh = run_batch(folder, str(card), tmp_path / "fresh", device="cpu")
    assert fresh.ok == 3
    for name in GOOD:
        assert (out / f"{name}.seg.nrrd").read_bytes() == (tmp_path / "fresh" / f"{name}.seg.nrrd").read_bytes()


def test_ctrl_c_on_the_command_line_then_resume(tmp_path):
    names = [f"p{n:02d}" for n in range(10)]
    folder = tmp_path / "cohort"
    folder.mkdir()
    for n, name in enumerate(names):
        write_volume(_volume(n, 28), folder / f"{name}.nii.gz")
    card = write_unet_card(tmp_path / "unet")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medai.cli", "batch", str(folder), "-m", str(card), "-o", str(out), "--device", "cpu"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / RESULTS).is_file() and "ok" in (out / RESULTS).read_text():
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "rerun the same command" in stderr
    done = {k for k, r in read_rows(out).items() if r["status"] == "ok"}
    assert 1 <= len(done) < len(names)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{k}.seg.nrrd" for k in done] + [RESULTS])
    for name in done:
        assert labelmap(out / f"{name}.seg.nrrd").shape == (28, 28, 28)
    resumed = run_batch(folder, str(card), out, device="cpu")
    assert resumed.success and resumed.skipped == len(done) and resumed.ok == len(names) - len(done)


def test_csv_cohort_with_channel_cases_and_worker_processes(tmp_path):
    card = write_unet_card(tmp_path / "unet2", in_channels=2)
    data = tmp_path / "data"
    data.mkdir()
    for n in range(5):
        write_volume(_volume(n), data / f"img{n}.nrrd")
    table = tmp_path / "cohort.csv"
    table.write_text("case,image,image2\nA,data/img0.nrrd,data/img1.nrrd\nB,data/img2.nrrd\nC,data/img3.nrrd,data/img4.nrrd\n")
    assert find_cases(table)[0] == Case("A", (str(data / "img0.nrrd"), str(data / "img1.nrrd")))
    local = run_batch(table, str(card), tmp_path / "local", device="cpu")
    pool = run_batch(table, str(card), tmp_path / "pool", device="cpu", workers=2)
    for summary in (local, pool):
        assert (summary.ok, summary.failed) == (2, 1)
    for out in (tmp_path / "local", tmp_path / "pool"):
        rows = read_rows(out)
        assert rows["B"]["status"] == "failed" and "got 1" in rows["B"]["error"]
    for name in ("A", "C"):
        assert (tmp_path / "local" / f"{name}.seg.nrrd").read_bytes() == (tmp_path / "pool" / f"{name}.seg.nrrd").read_bytes()


def write_dicom_series(folder: Path, array: np.ndarray) -> None:
    """One DICOM series (int16 slices, 1 x 1 x 2 mm) in ``folder``."""
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.0))
    write_sitk_series(image, folder, "1.2.826.0.1.3680043.2.1125.15")


def test_dicom_series_folder_is_one_case(tmp_path):
    folder = tmp_path / "cohort"
    write_dicom_series(folder / "patient1", _volume(3).array * 100)
    write_volume(_volume(4), folder / "patient2.nrrd")
    cases = find_cases(folder)
    assert cases == [Case("patient1", (str(folder / "patient1"),)), Case("patient2", (str(folder / "patient2.nrrd"),))]
    summary = run_batch(folder, str(write_unet_card(tmp_path / "unet")), tmp_path / "out", device="cpu")
    assert summary.success and summary.ok == 2
    out = sitk.ReadImage(str(tmp_path / "out" / "patient1.seg.nrrd"))
    assert out.GetSize() == (24, 24, 24) and np.allclose(out.GetSpacing(), (1.0, 1.0, 2.0))


def test_bad_cohort_inputs_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no cases found"):
        find_cases(tmp_path / "empty")
    dup = tmp_path / "dup"
    dup.mkdir()
    write_volume(_volume(0), dup / "x.nii.gz")
    write_volume(_volume(1), dup / "x.nrrd")
    with pytest.raises(ValueError, match="two cases are named 'x'"):
        find_cases(dup)
    with pytest.raises(FileNotFoundError, match="give a folder of cases or a CSV"):
        find_cases(tmp_path / "missing")


def test_classify_cohort_writes_scores_per_case(tmp_path):
    from medai.engine.classify import classify

    card = write_card(tmp_path / "dense", SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "CT"}], "classes": ["normal", "benign", "malignant"],
        "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}})
    folder = make_cohort(tmp_path / "cohort", ["a", "b"])
    out = tmp_path / "out"
    summary = run_batch(folder, str(card), out, device="cpu")
    assert summary.task == "classify" and (summary.ok, summary.failed) == (2, 2)
    rows = read_rows(out)
    model = load_model(str(card), "cpu")
    for name in ("a", "b"):
        expected = classify(model, [read_image(folder / f"{name}.nii.gz")], explain=False).rows()[0]
        with open(out / f"{name}.scores.csv", newline="") as f:
            written = next(csv.DictReader(f))
        for key in ("normal", "benign", "malignant"):
            assert float(rows[name][key]) == pytest.approx(expected[key]) == pytest.approx(float(written[key]))
        assert rows[name]["predicted"] == expected["predicted"] == written["predicted"]
    assert "expects 1 input channel" in rows["two"]["error"] or "cases" in rows["two"]["error"]


def test_ray_run_gives_the_same_outputs_and_table(cohort, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is optional (pip install ray==2.60.0); the Ray run is not tested without it")
    folder, card = cohort
    local = run_batch(folder, str(card), tmp_path / "local", device="cpu")
    token = CancelToken()
    timer = threading.Timer(180, token.cancel)  # bounded: a stuck cluster cancels the run
    timer.start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_batch(folder, str(card), tmp_path / "ray", device="cpu", workers=2, ray_address="local", cancel=token)
    finally:
        timer.cancel()
        ray.shutdown()
    assert not remote.interrupted and (remote.ok, remote.failed) == (local.ok, local.failed) == (3, 2)
    for name in GOOD:
        assert (tmp_path / "ray" / f"{name}.seg.nrrd").read_bytes() == (tmp_path / "local" / f"{name}.seg.nrrd").read_bytes()
    ray_rows, local_rows = read_rows(tmp_path / "ray"), read_rows(tmp_path / "local")
    assert list(ray_rows) == list(local_rows)
    for name, row in local_rows.items():
        assert {k: ray_rows[name][k] for k in ("status", "output", "error", "organ mL")} == {k: row[k] for k in ("status", "output", "error", "organ mL")}
    assert not (tmp_path / "ray" / PARTIAL).exists()


def test_without_ray_the_error_says_how_to_install_it(cohort, tmp_path, monkeypatch):
    folder, card = cohort
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install ray==2\.60\.0"):
        run_batch(folder, str(card), tmp_path / "out", device="cpu", ray_address="auto")
    assert not (tmp_path / "out" / RESULTS).exists()


def test_slicer_console_cohorts_one_result_per_case(scene, tmp_path):
    from medai.slicer import scene as bridge
    from medai.slicer.classify_logic import ClassifyLogic
    from medai.slicer.segment_logic import SegmentLogic

    card = write_unet_card(tmp_path / "unet")
    nodes = [bridge.volume_node_from_volume(scene, _volume(n), name=f"case{n}") for n in range(2)]
    file_case = write_volume(_volume(5), tmp_path / "file_case.nii.gz")
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_text("NRRD0004\nbroken")
    seen = []
    items = SegmentLogic().segment_cohort([nodes[0], str(file_case), str(corrupt), [nodes[1]]], str(card), device="cpu",
                                          progress=lambda f, s: seen.append(f), scene=scene)
    assert [i.name for i in items] == ["case0", "file_case", "corrupt", "case1"]
    assert [bool(i.error) for i in items] == [False, False, True, False] and "corrupt.nrrd" in items[2].error
    segs = [i.result for i in items if i.result is not None]
    assert all(s.IsA("vtkMRMLSegmentationNode") and s.GetSegmentation().GetNumberOfSegments() == 1 for s in segs)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 3
    assert scene.GetFirstNodeByName("file_case") is not None  # the file case's volume is in the scene
    assert seen == sorted(seen) and seen[-1] == 1.0

    dense = write_card(tmp_path / "dense", SMALL_DENSENET_3D, {
        "task": "classification", "inputs": [{"name": "CT"}], "classes": ["normal", "benign", "malignant"],
        "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
        "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}})
    out, results = ClassifyLogic().classify_cohort([nodes[0], str(corrupt), str(file_case)], str(dense), device="cpu")
    assert [bool(i.error) for i in results] == [False, True, False]
    assert out.table_node.GetNumberOfRows() == 2
