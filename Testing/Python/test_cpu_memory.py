"""A network call reuses the CPU memory it frees (glibc), with bitwise equal results, and the defaults come back after."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

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


def in_fresh_process(code: str) -> dict:
    """Run ``code`` in a fresh Python with this module's helpers imported; it sets ``result``, returned here.

    Page-fault counts depend on what the process allocated before (a heap grown by earlier tests serves large
    blocks without new pages even under glibc's defaults), so the comparisons run where nothing came before.
    """
    script = (f"import json, sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              "from test_cpu_memory import *\n" + code + "\nprint(json.dumps(result))\n")
    env = {k: v for k, v in os.environ.items() if k != "MEDAI_REUSE_FREED_MEMORY"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_network_call_reuses_what_it_frees_and_the_defaults_come_back():
    got = in_fresh_process("""
outside = faults_of_network_calls()
with network_call():
    faults_of_network_calls(2)  # the heap grows to what a call needs
    inside = faults_of_network_calls()
faults_of_network_calls(1)  # were the heap still kept, this would grow it again and the next calls would reuse it
result = {"outside": outside, "inside": inside, "after": faults_of_network_calls()}
""")
    assert got["outside"] > FRESH, got  # glibc's default: every call maps (and faults in) fresh pages
    assert got["inside"] * 4 < got["outside"], got
    assert got["after"] > got["inside"] * 4, got  # the defaults are back: fresh pages again


def test_the_heap_is_trimmed_when_the_call_ends():
    got = in_fresh_process("""
with network_call():
    faults_of_network_calls(1)
    held = resident_mb()
result = {"held": held, "after": resident_mb()}
""")
    assert got["after"] < got["held"] - 40, got  # at least most of one freed 56 MiB activation went back to the system


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("MEDAI_REUSE_FREED_MEMORY", "0")
    assert not cpu_memory.enabled()
    with network_call():
        assert faults_of_network_calls() > FRESH


def test_nested_and_concurrent_calls_restore_once_the_last_one_ends():
    got = in_fresh_process("""
import threading
entered, release = threading.Event(), threading.Event()

def other_call():
    with network_call():
        entered.set()
        release.wait(30)

outside = faults_of_network_calls()
thread = threading.Thread(target=other_call)
thread.start()
try:
    assert entered.wait(30)
    with network_call():
        with network_call():
            pass
    faults_of_network_calls(2)
    inside = faults_of_network_calls()  # the other call is still going: still reusing
finally:
    release.set()
    thread.join(30)
result = {"outside": outside, "inside": inside, "open": cpu_memory._calls, "after": faults_of_network_calls()}
""")
    assert got["inside"] * 4 < got["outside"], got
    assert got["open"] == 0 and got["after"] > FRESH, got


def test_network_outputs_are_bitwise_equal_with_and_without():
    with torch.inference_mode():
        plain = NET(X)
        with network_call():
            reused = [NET(X) for _ in range(3)]
    assert all(torch.equal(plain, r) for r in reused)


CHAIN_SCRIPT = """
torch.manual_seed(0)
# sixteen element-wise layers, each making a new 56 MiB activation and freeing the one before
chain = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 1), *[torch.nn.Sigmoid() for _ in range(16)]).eval()
x = torch.rand(1, 1, 96, 96, 96)
output_bytes = 16 * 96 ** 3 * 4

def faults(rounds=3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        for _ in range(rounds):
            out = cpu_memory.call_network(chain, x)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, out

cpu_memory.REUSE_OUTPUT_LIMIT = output_bytes - 1  # too large: as glibc does it (first, while the heap is still small)
faults(1)
large, plain = faults()
cpu_memory.REUSE_OUTPUT_LIMIT = output_bytes  # fits: reused
small, reused = faults()
result = {"large": large, "small": small, "recorded": cpu_memory._output_bytes[chain], "output_bytes": output_bytes,
          "equal": bool(torch.equal(plain, reused))}
"""


def test_networks_with_outputs_too_large_to_fit_run_without_reuse():
    """A network whose output is over ``REUSE_OUTPUT_LIMIT`` runs with glibc as it is from its second call on; one
    whose output is under it reuses, within each call, what its layers free. In a fresh process: what glibc does
    with a large block depends on what the process allocated before (a grown heap serves it without new pages)."""
    got = in_fresh_process(CHAIN_SCRIPT)
    assert got["recorded"] == got["output_bytes"] and got["equal"]
    assert got["small"] * 2 < got["large"] and got["large"] > FRESH, got
