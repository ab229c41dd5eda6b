"""A network call reuses the CPU memory it frees (glibc), with bitwise equal results, and the defaults come back after."""

from __future__ import annotations

import resource
import threading

import pytest
import torch

from medai.engine import cpu_memory
from medai.engine.cpu_memory import network_call

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


def test_a_network_call_reuses_what_it_frees_and_the_defaults_come_back(monkeypatch):
    monkeypatch.delenv("MEDAI_REUSE_FREED_MEMORY", raising=False)
    outside = faults_of_network_calls()
    assert outside > FRESH  # glibc's default: every call maps (and faults in) fresh pages
    with network_call():
        faults_of_network_calls(2)  # the heap grows to what a call needs
        inside = faults_of_network_calls()
    assert inside * 8 < outside, (inside, outside)
    assert faults_of_network_calls() > FRESH  # the defaults are back and the heap was trimmed


def test_the_heap_is_trimmed_when_the_call_ends(monkeypatch):
    monkeypatch.delenv("MEDAI_REUSE_FREED_MEMORY", raising=False)
    with network_call():
        faults_of_network_calls(1)
        held = resident_mb()
    assert resident_mb() < held - 40  # at least most of one freed 56 MiB activation went back to the system


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("MEDAI_REUSE_FREED_MEMORY", "0")
    assert not cpu_memory.enabled()
    with network_call():
        assert faults_of_network_calls() > FRESH


def test_nested_and_concurrent_calls_restore_once_the_last_one_ends(monkeypatch):
    monkeypatch.delenv("MEDAI_REUSE_FREED_MEMORY", raising=False)
    entered, release = threading.Event(), threading.Event()

    def other_call():
        with network_call():
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=other_call)
    thread.start()
    try:
        assert entered.wait(30)
        with network_call():
            with network_call():
                pass
        faults_of_network_calls(2)
        assert faults_of_network_calls() * 8 < FRESH  # the other call is still going: still reusing
    finally:
        release.set()
        thread.join(30)
    assert cpu_memory._calls == 0
    assert faults_of_network_calls() > FRESH


def test_network_outputs_are_bitwise_equal_with_and_without():
    with torch.inference_mode():
        plain = NET(X)
        with network_call():
            reused = [NET(X) for _ in range(3)]
    assert all(torch.equal(plain, r) for r in reused)
