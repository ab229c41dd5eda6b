"""Cards may ask for as many sliding windows per network call as fit in free memory (``"sw_batch_size": "auto"``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_unet_card
from medai.engine import window_batch
from medai.engine.segment import _count_windows, segment
from medai.geometry import Volume
from medai.models.card import ModelCardError, read_card
from medai.models.loader import load_model


def test_choose_batch_follows_free_memory_within_its_bounds():
    mb = 2**20
    assert window_batch.choose_batch(100 * mb, 150 * mb, windows=20) == 1  # half the free memory holds none: still one
    assert window_batch.choose_batch(100 * mb, 700 * mb, windows=20) == 3  # 350 MB: three windows
    assert window_batch.choose_batch(100 * mb, 100_000 * mb, windows=20) == window_batch.MAX_AUTO_BATCH
    assert window_batch.choose_batch(100 * mb, 100_000 * mb, windows=2) == 2  # never more than there are windows


def test_window_bytes_counts_every_layer_output_on_the_cpu():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1)).eval()
    window = torch.zeros(1, 1, 8, 8, 8)
    with torch.inference_mode():
        got = window_batch.window_bytes(net, window)
    assert got == (1 + 4 + 4 + 2) * 8 ** 3 * 4  # the input, then conv, relu and conv outputs in float32


def test_free_memory_is_what_the_system_reports():
    free = window_batch.free_memory(torch.device("cpu"))
    with open("/proc/meminfo") as meminfo:
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    assert abs(free - available) < 512 * 2**20  # read moments apart


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "many"])
def test_bad_batch_sizes_are_refused_when_the_card_is_read(tmp_path, value):
    path = write_unet_card(tmp_path / "m", inference={"mode": "sliding_window", "roi_size": [32, 32, 32], "sw_batch_size": value})
    with pytest.raises(ModelCardError, match="sw_batch_size"):
        read_card(path)


def test_auto_card_segments_as_the_same_card_with_the_chosen_batch(tmp_path, monkeypatch, caplog):
    """With "auto" the run uses the chosen batch size: labels equal a card that names that size, and they differ
    from nothing else (the chooser's figure is what the run used, as the log says)."""
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(40, 44, 36)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), name="ct")
    inference = {"mode": "sliding_window", "roi_size": [16, 16, 16], "overlap": 0.25, "activation": "softmax"}
    auto = write_unet_card(tmp_path / "auto", inference={**inference, "sw_batch_size": "auto"})
    per_window = {}

    def measured(net, window):  # the real measurement, remembered to check the choice against
        per_window["bytes"] = real(net, window)
        return per_window["bytes"]

    real = window_batch.window_bytes
    monkeypatch.setattr(window_batch, "window_bytes", measured)
    monkeypatch.setattr(window_batch, "free_memory", lambda device: per_window["bytes"] * 6)  # room for three windows
    model = load_model(str(auto), "cpu")
    batches = []
    model.networks[0].register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    with caplog.at_level("INFO", logger="medai.engine.window_batch"):
        got = segment(model, [volume])
    assert "3 window(s) per batch" in caplog.text
    assert batches[0] == 1 and max(batches[1:]) == 3  # the probe window, then the run's batches of three
    assert _count_windows((20, 22, 18), [16, 16, 16], 0.25, 3) < _count_windows((20, 22, 18), [16, 16, 16], 0.25, 1)
    fixed = write_unet_card(tmp_path / "three", inference={**inference, "sw_batch_size": 3})
    assert json.loads(fixed.read_text())["inference"]["sw_batch_size"] == 3
    want = segment(load_model(str(fixed), "cpu"), [volume])
    assert np.array_equal(got.layers[0], want.layers[0])
