"""Decoding speed of ``load_split`` (target: ~2,000 PNGs of 256 px in seconds, not minutes).

Times, on the same files in the same run: ``load_split`` with its thread pool, with one thread, from its disk
cache, and a plain per-file loop as a reference (Pillow open + ``to_tensor`` + antialiased
``F.interpolate`` + ``torch.stack``, as a hand-written Dataset would do). Prints images per second.

    python benchmarks/bench_data_loading.py                   # 2,000 synthetic 256 px PNGs in a temp folder
    python benchmarks/bench_data_loading.py --data DIR --split train --size 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def reference_loop(paths: list[str], size: int) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    out = []
    for p in paths:
        with Image.open(p) as im:
            x = to_tensor(im.convert("RGB"))
        out.append(F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0])
    return torch.stack(out)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="a data folder (default: write synthetic PNGs)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--size", type=int, default=256, help="image_size to load at")
    ap.add_argument("--n", type=int, default=2000, help="synthetic images to write when --data is not given")
    ap.add_argument("--workers", type=int, default=None, help="load_split threads (default: its own)")
    args = ap.parse_args()

    from msacl.data import load_split
    from msacl.data.synthetic import write_synthetic

    tmp = tempfile.TemporaryDirectory()
    data = args.data
    if data is None:
        t = time.perf_counter()
        data = write_synthetic(Path(tmp.name) / "syn", size=256, n_train=args.n, n_test_normal=1, n_test_abnormal=1)
        print(f"wrote {args.n} synthetic 256 px PNGs in {time.perf_counter() - t:.1f} s")
    kw = dict(image_size=args.size, progress=False)
    pooled, t_pool = timed(lambda: load_split(data, args.split, num_workers=args.workers, **kw))
    single, t_one = timed(lambda: load_split(data, args.split, num_workers=1, **kw))
    cache = Path(tmp.name) / "cache"
    load_split(data, args.split, cache_dir=cache, **kw)
    cached, t_cache = timed(lambda: load_split(data, args.split, cache_dir=cache, **kw))
    ref, t_ref = timed(lambda: reference_loop(pooled.paths, args.size))
    n = len(pooled)
    assert torch.equal(pooled.images, single.images) and torch.equal(pooled.images, cached.images)
    diff = (ref - pooled.images).abs().mean().item()
    print(f"{n} images of {data} ({args.split}) at {args.size} px, {torch.get_num_threads()} torch threads")
    print(f"  {'load_split, thread pool':32s} {t_pool:7.2f} s  {n / t_pool:8.0f} img/s")
    print(f"  {'load_split, 1 thread':32s} {t_one:7.2f} s  {n / t_one:8.0f} img/s")
    print(f"  {'load_split, from disk cache':32s} {t_cache:7.2f} s  {n / t_cache:8.0f} img/s")
    print(f"  {'reference per-file loop':32s} {t_ref:7.2f} s  {n / t_ref:8.0f} img/s")
    print(f"  mean |reference - load_split| = {diff:.4f} (Pillow vs torch antialiased bilinear)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
