"""Freed CPU memory is reused while a model runs (glibc), with bitwise equal results and the defaults restored after."""

from __future__ import annotations

import resource
import threading

import pytest
import torch

from medai.engine import cpu_memory
from medai.engine.cpu_memory import reuse_freed_memory

pytestmark = pytest.mark.skipif(cpu_memory.glibc() is None, reason="reusing freed memory is implemented for glibc (Linux) only")

ROUNDS = 3


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 16, 3, padding=1), torch.nn.InstanceNorm3d(16), torch.nn.ReLU(),
                               torch.nn.Conv3d(16, 16, 3, padding=1), torch.nn.MaxPool3d(3, 2, 1),
                               torch.nn.ConvTranspose3d(16, 2, 2, 2), torch.nn.Softmax(1)).eval()


NET, X = network(), torch.rand(1, 1, 96, 96, 96)  # 16 x 96^3 float32 = 56 MiB per activation, above glibc's largest mmap threshold (32 MiB)
FRESH = ROUNDS * 2 * 16  # at least two fresh activations a call, 16 faults each even with 2 MiB (transparent huge) pages


def faults_of_network_calls(rounds: int = ROUNDS) -> int:
    """Minor page faults of ``rounds`` calls of a small 3D network whose activations are large."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        for _ in range(rounds):
            NET(X)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_large_blocks_are_reused_inside_and_mapped_afresh_outside(monkeypatch):
    monkeypatch.delenv("MEDAI_REUSE_FREED_MEMORY", raising=False)
    outside = faults_of_network_calls()
    assert outside > FRESH  # glibc's default: every round maps (and faults in) fresh pages
    with reuse_freed_memory():
        faults_of_network_calls(2)  # the heap grows to what a call needs
        inside = faults_of_network_calls()
    assert inside * 8 < outside, (inside, outside)
    assert faults_of_network_calls() > FRESH  # the defaults are back


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("MEDAI_REUSE_FREED_MEMORY", "0")
    assert not cpu_memory.enabled()
    with reuse_freed_memory():
        assert faults_of_network_calls() > FRESH


def test_nested_and_concurrent_uses_restore_once_the_last_one_leaves(monkeypatch):
    monkeypatch.delenv("MEDAI_REUSE_FREED_MEMORY", raising=False)
    entered, release = threading.Event(), threading.Event()

    def other_run():
        with reuse_freed_memory():
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert entered.wait(30)
        with reuse_freed_memory():
            with reuse_freed_memory():
                pass
        faults_of_network_calls(2)
        assert faults_of_network_calls() * 8 < FRESH  # the other run is still going: still reusing
    finally:
        release.set()
        thread.join(30)
    assert cpu_memory._depth == 0
    assert faults_of_network_calls() > FRESH


def test_network_outputs_are_bitwise_equal_with_and_without():
    with torch.inference_mode():
        plain = NET(X)
        with reuse_freed_memory():
            reused = [NET(X) for _ in range(3)]
    assert all(torch.equal(plain, r) for r in reused)
