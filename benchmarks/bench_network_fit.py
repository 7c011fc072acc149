"""Training speed of the detectors that train networks (IGD, F-anoGAN, MS-SSIM AE, DAE): channels-last against the
plain layout, side by side in one run.

The `cpu` profile's setting: EfficientNet-Lite0 from ImageNet, 64 px, batch 32, on the Kvasir training patches.
Each detector fits one epoch (every phase of it: F-anoGAN's GAN and encoder) on ``--images`` images in both
layouts, taking turns ``--rounds`` times so that a slow phase of the machine falls on both; the figure is the
median seconds per step of the rounds. The plain layout is the same detector moved back with
``.to(memory_format=torch.contiguous_format)``; both start from the same weights and draw the same numbers, so
their losses agree up to float rounding (printed).

    python benchmarks/bench_network_fit.py                       # igd fanogan msssim_ae dae, 2 rounds, 2 threads
    python benchmarks/bench_network_fit.py --detectors igd --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA_ROOT = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data"))


def fit_once(name: str, images: torch.Tensor, layout: str, batch: int) -> tuple[float, float]:
    """Seconds per step of one epoch's fit, and the last step's loss."""
    from msacl.detectors import batches, build_detector, options_for
    from msacl.runs import make_generator

    one = {k: 1 for k in ("epochs", "gan_epochs") if k in options_for(name).to_dict()}  # every phase: one epoch
    det = build_detector(name, backbone="tf_efficientnet_lite0", image_size=images.shape[-1], batch_size=batch,
                         **one)
    det.load_encoder("imagenet")
    if layout == "plain":
        det.to(memory_format=torch.contiguous_format)
    t = time.perf_counter()
    det.fit(batches(images, batch), generator=make_generator(0))
    steps = -(-images.shape[0] // batch) * sum(epochs for _, epochs in det.phases())
    last = det.history[-1]
    loss = next((v for k, v in last.items() if "loss" in k), next(iter(last.values()), float("nan")))
    return (time.perf_counter() - t) / steps, float(loss)


def main(argv: list[str] | None = None) -> int:
    from msacl.data import load_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA_ROOT / "kvasir_seg_patch128")
    p.add_argument("--detectors", nargs="+", default=["igd", "fanogan", "msssim_ae", "dae"])
    p.add_argument("--images", type=int, default=96, help="training images of the timed epoch (default: 96)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    images = load_split(a.data, "train", image_size=a.size).images[:a.images]
    print(f"{a.data.name}: {images.shape[0]} images at {a.size} px, batch {a.batch_size}, {a.threads} thread(s), "
          f"{a.rounds} rounds, torch {torch.__version__}")
    print("| detector | plain layout, s/step | channels-last, s/step | speed-up | last loss, plain / channels-last |")
    print("|---|---|---|---|---|")
    for name in a.detectors:
        fit_once(name, images[:a.batch_size], "channels_last", a.batch_size)  # warm-up: kernels, caches
        times: dict[str, list[float]] = {"plain": [], "channels_last": []}
        losses: dict[str, float] = {}
        for _ in range(a.rounds):
            for layout in times:
                s, losses[layout] = fit_once(name, images, layout, a.batch_size)
                times[layout].append(s)
        plain, last = statistics.median(times["plain"]), statistics.median(times["channels_last"])
        print(f"| {name} | {plain:.2f} | {last:.2f} | {plain / last:.2f}x | "
              f"{losses['plain']:.4f} / {losses['channels_last']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
