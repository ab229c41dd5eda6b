"""Running cases elsewhere: worker processes on this machine, or actors on a Ray cluster.

Workers return ``(row, output bytes)``; the caller's ``finish`` writes them, so a stopped worker never
leaves a partial output.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Callable

from ..engine.progress import CancelToken
from .cases import Case
from .worker import CaseRunner, one_line

RAY_INSTALL = "pip install ray==2.60.0"


# --- local processes -----------------------------------------------------------------------------

_WORKER: CaseRunner | None = None
_WORKER_ERROR = ""


def _init_worker(model, device: str, task: str, fmt: str, threads: int, trust: bool = False) -> None:
    global _WORKER, _WORKER_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    import torch

    torch.set_num_threads(threads)
    try:
        _WORKER = CaseRunner(model, device, task, fmt, trust)
    except Exception as exc:
        _WORKER_ERROR = f"model {model}: {one_line(exc)}"


def _run_in_worker(case: Case) -> tuple[dict, bytes | None]:
    if _WORKER is None:
        return {"case": case.name, "status": "failed", "output": "", "error": _WORKER_ERROR}, None
    return _WORKER.run(case)


def run_pool(todo: list[Case], workers: int, model, device: str, task: str, fmt: str,
              finish: Callable[[Case, dict, bytes | None], None], cancel: CancelToken, trust: bool = False) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(str(model), device, task, fmt, threads, trust))
    futures = {pool.submit(_run_in_worker, c): c for c in todo}
    try:
        pending = set(futures)
        while pending:
            cancel.check()
            ready, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in ready:
                case = futures[fut]
                try:
                    row, data = fut.result()
                except Exception as exc:  # a worker died (out of memory, crash): this case fails, the rest go on
                    row, data = {"case": case.name, "status": "failed", "output": "", "error": f"worker died: {one_line(exc)}"}, None
                finish(case, row, data)
    finally:
        processes = list(getattr(pool, "_processes", {}).values())  # stop running cases at once
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.kill()
        for p in processes:
            p.join(timeout=10)


# --- Ray -----------------------------------------------------------------------------------------


class _RayWorker:
    """A Ray actor holding one loaded model."""

    def __init__(self, model, device: str, task: str, fmt: str, trust: bool = False) -> None:
        self.runner, self.error = None, ""
        try:
            self.runner = CaseRunner(model, device, task, fmt, trust)
        except Exception as exc:
            self.error = f"model {model}: {one_line(exc)}"

    def run(self, case: Case) -> tuple[dict, bytes | None]:
        if self.runner is None:
            return {"case": case.name, "status": "failed", "output": "", "error": self.error}, None
        return self.runner.run(case)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"--ray needs Ray, an optional dependency; install it with `{RAY_INSTALL}` (on every node)") from exc
    return ray


def run_ray(address: str, todo: list[Case], workers: int, model, device: str, task: str, fmt: str,
             finish: Callable[[Case, dict, bytes | None], None], cancel: CancelToken, trust: bool = False) -> None:
    ray = import_ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and device != "cpu"
    count = workers if workers > 1 else (gpus if use_gpu else 1)
    actor = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(_RayWorker)
    actors = [actor.remote(str(model), device, task, fmt, trust) for _ in range(max(1, min(count, len(todo))))]
    queue = list(reversed(todo))
    running: dict = {}

    def submit(a) -> None:
        if queue:
            case = queue.pop()
            running[a.run.remote(case)] = (a, case)

    try:
        for a in actors:
            submit(a)
        while running:
            cancel.check()
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                a, case = running.pop(ref)
                try:
                    row, data = ray.get(ref)
                except Exception as exc:  # the actor died: this case fails, its replacement takes the next
                    row, data = {"case": case.name, "status": "failed", "output": "", "error": f"Ray worker failed: {one_line(exc)}"}, None
                    a = actor.remote(str(model), device, task, fmt)
                    actors.append(a)
                finish(case, row, data)
                submit(a)
    finally:
        for a in actors:
            ray.kill(a)


