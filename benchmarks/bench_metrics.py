"""Metrics benchmark: time and peak extra memory of pixel AUROC and AUPRO on a large test set.

Side by side with ``sklearn.metrics.roc_auc_score`` on the same pixels, measured in the same run (the values
must agree exactly). Target: pixel AUROC over 1,000 x 256 x 256 maps in under 1/4 of scikit-learn's time
and memory. Peak extra memory is what tracemalloc sees numpy allocate during the call (the maps themselves
are allocated before).

    python benchmarks/bench_metrics.py                 # 1000 images of 256 x 256
    python benchmarks/bench_metrics.py --images 200 --size 128 --no-sklearn
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import torch

from msacl.metrics import aupro, best_dice_threshold, pixel_auroc


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return value, seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn reference")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    n, s = args.images, args.size
    masks = torch.zeros(n, 1, s, s, dtype=torch.bool)
    masks[n // 4:, :, s // 4: s // 2 + s // 8, s // 3: 2 * s // 3] = True  # 3/4 of the images abnormal
    maps = ((torch.rand(n, 1, s, s, generator=g) + 0.5 * masks) * 1000).round() / 1000  # with ties
    print(f"{n} maps of {s}x{s} = {maps.numel() / 1e6:.1f} M pixels ({maps.numel() * 4 / 2**20:.0f} MiB float32)")
    rows = [
        ("msacl pixel_auroc", lambda: pixel_auroc(maps, masks)),
        ("msacl aupro@0.3", lambda: aupro(maps, masks)),
        ("msacl best_dice_threshold", lambda: best_dice_threshold(maps[n // 4:], masks[n // 4:])[1]),
    ]
    if not args.no_sklearn:
        from sklearn.metrics import roc_auc_score

        rows.append(("sklearn roc_auc_score", lambda: roc_auc_score(masks.numpy().ravel(), maps.numpy().ravel())))
    results = {}
    for name, fn in rows:
        value, seconds, peak = measure(fn)
        results[name] = (value, seconds, peak)
        print(f"{name:28s} value {value:.6f}  {seconds:7.2f} s  peak extra {peak:7.0f} MiB")
    if "sklearn roc_auc_score" in results:
        ours, ref = results["msacl pixel_auroc"], results["sklearn roc_auc_score"]
        print(f"pixel AUROC: |difference| {abs(ours[0] - ref[0]):.2e}, time x{ref[1] / ours[1]:.1f} faster, "
              f"memory x{ref[2] / max(ours[2], 1e-9):.1f} smaller than scikit-learn")


if __name__ == "__main__":
    main()
