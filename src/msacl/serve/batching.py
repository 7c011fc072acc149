"""Concurrent requests' images scored together: one forward pass of the detector for all that are waiting.

One worker thread owns the detector. It takes the first image waiting, adds every other image already in
the queue (at most ``max_batch``), scores them in one batch and hands each request its own score and map.
Nothing waits to fill a batch: a request that arrives alone is scored alone, at once; under load, the
images that queued while the detector was busy form the next batch. A request whose time runs out while
it waits is dropped from the queue (:class:`msacl.serve.service.Deadline`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

ScoreFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _Job:
    """One image waiting to be scored, and what scoring it gave."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.done = threading.Event()
        self.cancelled = False
        self.score: float | None = None
        self.map: torch.Tensor | None = None
        self.error: BaseException | None = None


class Batcher:
    """The detector's one worker thread, scoring the images waiting in batches of at most ``max_batch``.

    Args:
        score: scores a batch. Shape: (B, C, N, N) -> scores (B,), maps (B, 1, N, N).
        max_batch: most images per forward pass (1: one at a time).
    """

    def __init__(self, score: ScoreFn, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.score, self.max_batch = score, max_batch
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.batches = 0
        self.images = 0
        self.thread = threading.Thread(target=self._work, name="msacl-detector", daemon=True)
        self.thread.start()

    def submit(self, x: torch.Tensor, timeout: float) -> tuple[float, torch.Tensor]:
        """Score one image (Shape: (C, N, N)); its score and map (Shape: (1, N, N)).

        Raises:
            TimeoutError: not scored within ``timeout`` seconds (the image is then dropped).
        """
        job = _Job(x)
        self.jobs.put(job)
        if not job.done.wait(timeout):
            job.cancelled = True
            raise TimeoutError
        if job.error is not None:
            raise job.error
        return job.score, job.map  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the worker once the images already queued are scored."""
        self.jobs.put(None)
        self.thread.join(60)

    def _take(self) -> list[_Job] | None:
        """The next batch: the first job waiting (blocking) and those queued behind it; None to stop."""
        first = self.jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return [j for j in batch if not j.cancelled]

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        try:
            s, m = self.score(torch.stack([j.x for j in batch]))
            for i, j in enumerate(batch):
                j.score, j.map = float(s[i]), m[i]
            self.batches += 1
            self.images += len(batch)
        except BaseException as e:  # noqa: BLE001 - handed to each request, which reports it
            for j in batch:
                j.error = e
        finally:
            for j in batch:
                j.done.set()

    def stats(self) -> dict[str, Any]:
        """Batches run, images scored, and the mean batch size (for ``/health``)."""
        return {"max_batch": self.max_batch, "batches": self.batches, "images_scored": self.images,
                "mean_batch": round(self.images / self.batches, 2) if self.batches else None}
