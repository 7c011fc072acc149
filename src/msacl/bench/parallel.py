"""Grid jobs side by side on one machine: independent groups in worker processes (``msacl bench --jobs N``).

Each worker is a fresh (spawned) process that runs whole groups (one pre-training run and the detectors on its
encoder, ``msacl.bench.runner.groups_of``) and appends each result to the shared results file as it finishes,
so an interrupted grid resumes as a serial one does. On the CPU the cores are split between the workers
(``cores // N`` torch threads each); with several GPUs each worker takes its own device (``cuda:i``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING

from msacl.bench.runner import GridContext, Job, format_duration, run_jobs

if TYPE_CHECKING:
    import torch

_DEVICE: str | None = None  # the device of this worker process, set by _init


def _init(devices: mp.Queue | None) -> None:
    global _DEVICE
    _DEVICE = devices.get() if devices is not None else None


def _worker_log(message: str) -> None:
    print(f"[worker {os.getpid()}] {message}", file=sys.stderr, flush=True)


def _run_group(ctx: GridContext, group: list[Job]) -> int:
    if _DEVICE is not None:
        ctx = replace(ctx, device=_DEVICE)
    return len(run_jobs(ctx, group, _worker_log))


def worker_threads(jobs: int) -> int:
    """torch CPU threads per worker when ``jobs`` share this machine's cores (at least 1)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def run_parallel(ctx: GridContext, groups: list[list[Job]], jobs: int, device: torch.device, log) -> None:
    """Run ``groups`` in ``jobs`` worker processes; log each group as it finishes, with an ETA."""
    import torch

    devices = None
    ctx = replace(ctx, progress=False)
    if device.type == "cuda":
        n_gpu = torch.cuda.device_count()
        if jobs > n_gpu:
            log(f"[bench] --jobs {jobs} on {n_gpu} GPU(s): using {n_gpu} workers, one per GPU")
            jobs = n_gpu
        devices = mp.get_context("spawn").Queue()
        for i in range(jobs):
            devices.put(f"cuda:{i}")
    else:
        ctx = replace(ctx, threads=worker_threads(jobs))
        log(f"[bench] {jobs} workers x {ctx.threads} torch thread(s)")
    t0, n_jobs, done_jobs = time.perf_counter(), sum(map(len, groups)), 0
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_init,
                             initargs=(devices,)) as pool:
        pending: dict[Future, list[Job]] = {pool.submit(_run_group, ctx, g): g for g in groups}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                group = pending.pop(f)
                f.result()  # a failed group stops the grid with its error; finished results are kept
                done_jobs += len(group)
                rate = (time.perf_counter() - t0) / done_jobs
                log(f"[bench] {done_jobs}/{n_jobs} jobs of this run done ({group[0].dataset} {group[0].variant} "
                    f"seed {group[0].seed}); ETA {format_duration(rate * (n_jobs - done_jobs))}")
