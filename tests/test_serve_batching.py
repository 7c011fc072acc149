"""The detector's worker in `msacl serve`: concurrent requests' images scored in one forward pass."""

from __future__ import annotations

import threading

import pytest
import torch

from msacl.serve.batching import Batcher


class _Detector:
    """Scores an image by its sum; the first call waits for ``release`` so that others queue behind it."""

    def __init__(self):
        self.sizes: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.sizes.append(x.shape[0])
        if len(self.sizes) == 1:
            self.entered.set()
            self.release.wait(30)
        return x.sum((1, 2, 3)), x[:, :1] * 2


def _submit_all(batcher: Batcher, xs: list[torch.Tensor], timeout: float = 30) -> list:
    out: list = [None] * len(xs)

    def one(i: int) -> None:
        try:
            out[i] = batcher.submit(xs[i], timeout)
        except BaseException as e:  # noqa: BLE001 - checked by the test
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    return out, threads


def test_images_waiting_together_are_scored_in_one_batch_each_getting_its_own_result():
    det = _Detector()
    batcher = Batcher(det, max_batch=4)
    xs = [torch.full((3, 4, 4), float(i)) for i in range(7)]
    first, t0 = _submit_all(batcher, xs[:1])
    assert det.entered.wait(30)
    rest, threads = _submit_all(batcher, xs[1:])
    for _ in range(3000):  # until all six queue behind the busy detector (at most 30 s)
        if batcher.jobs.qsize() == 6:
            break
        threading.Event().wait(0.01)
    det.release.set()
    for t in t0 + threads:
        t.join(30)
    assert det.sizes == [1, 4, 2]  # alone, then the six waiting in batches of at most 4
    for i, (score, amap) in enumerate(first + rest):
        assert score == pytest.approx(48.0 * i) and amap.shape == (1, 4, 4) and torch.all(amap == 2 * i)
    assert batcher.stats() == {"max_batch": 4, "batches": 3, "images_scored": 7, "mean_batch": 2.33}
    batcher.close()
    assert not batcher.thread.is_alive()


def test_a_request_that_times_out_is_dropped_and_errors_reach_every_request():
    det = _Detector()
    batcher = Batcher(det, max_batch=8)
    _, t0 = _submit_all(batcher, [torch.zeros(3, 2, 2)])
    assert det.entered.wait(30)
    with pytest.raises(TimeoutError):
        batcher.submit(torch.ones(3, 2, 2), timeout=0.05)  # waits behind the busy detector, gives up
    det.release.set()
    t0[0].join(30)
    assert batcher.submit(torch.ones(3, 2, 2), timeout=30)[0] == pytest.approx(12.0)
    assert det.sizes == [1, 1]  # the abandoned image was never scored

    def broken(x: torch.Tensor):  # noqa: ANN202
        raise RuntimeError("out of memory")

    failing = Batcher(broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        failing.submit(torch.zeros(3, 2, 2), timeout=30)
    assert failing.thread.is_alive()  # the worker survives a failed batch
    for b in (batcher, failing):
        b.close()
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(broken, max_batch=0)
