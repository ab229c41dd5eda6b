"""A device that runs out of memory: the run goes on with less held on it, or says what to do.

The limit is set by a forward hook that refuses what a too-small device would refuse (a batch of several
windows), raising torch's own ``OutOfMemoryError``; everything else is the real engine on the CPU. On a GPU,
``benchmarks/gpu_check.sh`` forces the same on a real device by capping its memory.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_unet_card
from medai.engine.out_of_memory import OutOfMemory, is_out_of_memory, try_in_turn
from medai.engine.segment import segment
from medai.geometry import Volume
from medai.models.loader import load_model

INFERENCE = {"mode": "sliding_window", "roi_size": [16, 16, 16], "overlap": 0.25, "activation": "softmax"}


def ct() -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.normal(size=(40, 44, 36)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), name="ct")


def device_limit(net: torch.nn.Module, most_windows: int, calls: list[int]) -> None:
    """From now on ``net`` refuses a batch of more than ``most_windows`` windows, as a full device would."""
    def hook(_module, args):
        calls.append(args[0].shape[0])
        if args[0].shape[0] > most_windows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {args[0].shape[0]} windows")

    net.register_forward_pre_hook(hook)


def test_a_batch_that_does_not_fit_is_run_one_window_at_a_time_with_the_same_labels(tmp_path, caplog):
    four = load_model(str(write_unet_card(tmp_path / "four", inference={**INFERENCE, "sw_batch_size": 4})), "cpu")
    calls: list[int] = []
    device_limit(four.networks[0], 1, calls)
    progress: list[float] = []
    with caplog.at_level("WARNING", logger="medai.engine.out_of_memory"):
        got = segment(four, [ct()], callback=lambda fraction, _stage: progress.append(fraction))
    assert calls[0] == 4 and set(calls[1:]) == {1}  # refused once, then every window alone
    assert "out of memory with 4 window(s) per call" in caplog.text and "trying again with 1 window per call" in caplog.text
    one = load_model(str(write_unet_card(tmp_path / "one", inference={**INFERENCE, "sw_batch_size": 1})), "cpu")
    assert np.array_equal(got.layers[0], segment(one, [ct()]).layers[0])
    assert progress[-1] == 1.0 and max(progress) == 1.0


def test_running_out_with_the_least_it_can_hold_names_the_model_the_input_and_the_way_out(tmp_path):
    model = load_model(str(write_unet_card(tmp_path / "tiny", inference={**INFERENCE, "sw_batch_size": 2})), "cpu")
    calls: list[int] = []
    device_limit(model.networks[0], 0, calls)
    with pytest.raises(OutOfMemory, match=r"model tiny on ct: stage .* out of memory with 1 window per call.*crop the input"):
        segment(model, [ct()])
    assert calls == [2, 1]  # one retry with less, then the error


def test_other_errors_are_not_retried(tmp_path):
    model = load_model(str(write_unet_card(tmp_path / "m", inference={**INFERENCE, "sw_batch_size": 4})), "cpu")
    calls: list[int] = []

    def broken(_module, args):
        calls.append(args[0].shape[0])
        raise ValueError("a real bug")

    model.networks[0].register_forward_pre_hook(broken)
    with pytest.raises(ValueError, match="a real bug"):
        segment(model, [ct()])
    assert calls == [4]


def test_allocation_failures_are_recognised_from_the_cpu_allocator_too():
    with pytest.raises(RuntimeError) as failed:
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: the CPU allocator refuses it
    assert is_out_of_memory(failed.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only the allocators' RuntimeErrors


def test_attempts_stop_at_the_first_that_fits_and_retries_are_prepared():
    ran, prepared = [], []

    def attempt(name: str, fits: bool):
        def call():
            ran.append(name)
            if not fits:
                raise torch.OutOfMemoryError(name)
            return name
        return name, call

    assert try_in_turn([attempt("a", False), attempt("b", True), attempt("c", True)], "x", lambda: prepared.append(1)) == "b"
    assert ran == ["a", "b"] and prepared == [1]


def test_a_whole_image_model_that_does_not_fit_says_what_to_do(tmp_path):
    model = load_model(str(write_unet_card(tmp_path / "whole", inference={"mode": "whole"})), "cpu")
    device_limit(model.networks[0], 0, [])
    with pytest.raises(OutOfMemory, match=r"model whole on ct: CUDA out of memory\. Tried to allocate 1 windows; crop the input"):
        segment(model, [ct()])


def test_a_classifier_that_does_not_fit_says_what_to_do(tmp_path):
    from classify_helpers import keras_pneumonia_card
    from medai.engine.classify import classify

    model = load_model(str(keras_pneumonia_card(tmp_path / "cxr")), "cpu")
    device_limit(model.networks[0], 0, [])
    image = Volume(np.random.default_rng(0).uniform(0, 255, (1, 80, 96)).astype(np.float32), np.eye(4), name="chest")
    with pytest.raises(OutOfMemory, match=r"model cxr on chest: CUDA out of memory.*crop the input"):
        classify(model, [image])
