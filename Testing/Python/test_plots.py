"""Plots a person reads at a glance: whole-number epochs, axes that do not magnify noise, the overlay's view names,
orientation letters and legend, and the segmentation-evaluation plot (per-label Dice and HD95)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medai.geometry import Volume
from medai.io import write_volume
from medai.plots import honest_limits, training_figure
from medai.results import Label, SegmentationResult


def test_training_curves_have_whole_epochs_and_honest_axes():
    history = [{"epoch": e, "loss": 0.50 + 0.001 * (e % 2), "accuracy": 0.80 + 0.002 * e} for e in range(1, 4)]
    fig = training_figure(history, "accuracy")
    fig.canvas.draw()
    loss_ax, metric_ax = fig.axes
    ticks = [t for t in loss_ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert loss_ax.get_ylim()[0] == 0.0  # loss from 0: a 0.001 wobble is not drawn as a cliff
    assert metric_ax.get_ylim() == (0.0, 1.02)  # accuracy on 0..1
    assert honest_limits([100.0, 100.01]) == (0.0, 100.01 * 1.08)
    lo, hi = honest_limits([-2.0, 1.0])
    assert lo == -2.0 and hi > 1.0
    single = training_figure(history[:1], "accuracy")  # one epoch: still whole-number ticks around it
    single.canvas.draw()
    assert all(float(t).is_integer() for t in single.axes[0].get_xticks())


def test_overlay_names_views_marks_sides_and_has_a_legend(tmp_path):
    from medai.overlay import overlay_png

    arr = np.zeros((20, 24, 28), np.float32)
    arr[5:15, 6:18, 4:24] = 100.0
    lab = np.zeros(arr.shape, np.uint8)
    lab[8:12, 9:15, 4:10] = 1  # low i: with x = -i below, the patient's right
    lab[8:12, 9:15, 18:24] = 2
    vol = Volume(arr, np.diag([-1.0, 1.0, 1.0, 1.0]), "v")  # i runs towards the patient's left
    result = SegmentationResult(vol, [lab], [Label(1, "right thing", (1.0, 0.0, 0.0)), Label(2, "left thing", (0.0, 0.0, 1.0))])
    png = np.asarray(Image.open(overlay_png(result, tmp_path / "o.png")).convert("RGB")).astype(int)
    assert png.shape[0] > 3 * 120 and png.shape[1] > 3 * 120  # small volumes are enlarged so letters stay legible
    yellow = (png[..., 0] > 200) & (png[..., 1] > 180) & (png[..., 2] < 80)
    assert yellow.sum() > 50  # the orientation letters
    white_left_margin = (png[:, :60] > 200).all(-1).sum()
    assert white_left_margin > 30  # the view names
    red = (png[..., 0] > 200) & (png[..., 1] < 60) & (png[..., 2] < 60)
    blue = (png[..., 2] > 200) & (png[..., 0] < 60) & (png[..., 1] < 60)
    assert red[-40:].any() and blue[-40:].any()  # legend swatches in the bottom strip
    # neurological display (as Slicer's default): the patient's right on the right of the axial tiles
    axial = slice(0, png.shape[0] // 4)
    red_cols, blue_cols = np.nonzero(red[axial].any(axis=0))[0], np.nonzero(blue[axial].any(axis=0))[0]
    assert red_cols.size and blue_cols.size and red_cols.mean() > blue_cols.mean()


def test_segmentation_evaluation_writes_a_dice_hd95_plot(tmp_path):
    from medai.evaluate import evaluate_label_files

    ref = np.zeros((16, 16, 16), np.uint8)
    ref[4:12, 4:12, 4:12] = 1
    ref[2:4, 2:4, 2:4] = 2
    grid = Volume(ref, np.eye(4), "r")
    write_volume(grid, tmp_path / "ref.nii.gz")
    write_volume(grid, tmp_path / "pred.nii.gz", np.roll(ref, 1, axis=0))
    report = evaluate_label_files([tmp_path / "pred.nii.gz"], [tmp_path / "ref.nii.gz"], out_dir=tmp_path / "rep")
    png = tmp_path / "rep" / "segmentation_metrics.png"
    assert png in report.files and Image.open(png).size[0] >= 600
