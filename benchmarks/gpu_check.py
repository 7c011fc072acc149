"""A GPU run's figures in one table: MSACL pre-training speed and memory, PaDiM and PatchCore fit + test time,
each on the GPU and on the CPU for scale (``benchmarks/gpu_check.sh`` runs it; under 8 minutes on one GPU).

Pre-training: MSACL from ImageNet EfficientNet-Lite0, batch 32, on the Kvasir training patches at 64 and 256 px,
in fp32 and bf16-mixed (where the device computes bf16); images/s counts every image through the encoder (8 views
per training image plus the position patches), from the engine's own log after the warm-up steps; peak memory is
torch's peak allocated CUDA memory of the run. Augmentation: one MSACL batch (MedMix and the weak views) on the
device, with and without the sync-free path (``msacl.augment.functional.sync_free``), and on CUDA a check that the
sync-free path makes no host synchronisation (``torch.cuda.set_sync_debug_mode("error")``). Detectors: PaDiM and
PatchCore (ImageNet Lite0, BatchNorm as stored) fitted on kvasir_seg_patch128's training patches at 256 px and
tested on its 544 test patches, as ``msacl fit`` and ``msacl test`` do (hold-out, threshold, metrics).

    python benchmarks/gpu_check.py                         # every row; the CPU rows take a few minutes
    python benchmarks/gpu_check.py --devices cpu --sizes 64 --steps 2 --detectors padim   # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data")) / "kvasir_seg_patch128"
LITE0 = "tf_efficientnet_lite0"


def pretrain_speed(device: str, size: int, precision: str, warmup: int, steps: int) -> dict:
    from msacl.data import load_split
    from msacl.pretrain import PretrainConfig, make_fabric, pretrain

    train = load_split(DATA, "train", image_size=size)
    n = 32 * (warmup + steps)
    train = train.subset(torch.arange(n) % len(train))
    cfg = PretrainConfig(method="msacl", epochs=1, batch_size=32, checkpoint_every=10**6, tsne=False, log_every=1)
    cfg.model.backbone, cfg.model.init = LITE0, "imagenet"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as d:
        pretrain(cfg, train, d, fabric=make_fabric(device, 1, 1, precision), progress=False)
        rows = [json.loads(s) for s in (Path(d) / "log.jsonl").read_text().splitlines()]
    t = {r["global_step"]: r["time_s"] for r in rows}
    per_step = (t[warmup + steps] - t[warmup]) / steps
    images = 32 * 8 + 2 * 32  # views and position patches of one step
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"s_per_step": per_step, "images_per_s": images / per_step, "peak_gib": peak}


def augment_times(device: str, size: int, steps: int) -> dict[bool, float]:
    """Milliseconds per MSACL batch (MedMix and the weak views, 32 Kvasir images) without (False) and with (True)
    the sync-free path; on CUDA the sync-free batches run under ``set_sync_debug_mode("error")``."""
    from msacl.augment.functional import sync_free as sync_free_block
    from msacl.data import load_split
    from msacl.pretrain import PretrainConfig
    from msacl.pretrain.methods import build_method
    from msacl.runs import make_generator

    x = load_split(DATA, "train", image_size=size).images[:32].to(device)
    method = build_method(PretrainConfig(method="msacl"), image_size=size)
    out = {}
    for sync_free in (False, True):
        g = make_generator(0, device)
        with sync_free_block(sync_free):
            method.make_batch(x, generator=g)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
                if sync_free:  # any host synchronisation in the batch now raises
                    torch.cuda.set_sync_debug_mode("error")
            t0 = time.perf_counter()
            try:
                for _ in range(steps):
                    method.make_batch(x, generator=g)
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.synchronize()
        out[sync_free] = 1000 * (time.perf_counter() - t0) / steps
    return out


def detector_time(device: str, name: str, size: int) -> dict:
    from msacl.data import load_split
    from msacl.detectors.pipeline import fit_detector, prepare_detector, test_detector

    train = load_split(DATA, "train", image_size=size)
    test = load_split(DATA, "test", image_size=size)
    dev = torch.device(device)
    det, _ = prepare_detector(name, {"backbone": LITE0}, train, seed=0, encoders={"global": "imagenet"})
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fit = fit_detector(det, train, seed=0, device=dev)
    metrics, _, _ = test_detector(fit.detector, test, threshold=fit.threshold.threshold, seed=0, device=dev)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "fit_s": fit.fit_seconds, "test_s": metrics.test_seconds,
            "image_auroc": metrics.image_auroc}


def precisions(device: str) -> list[str]:
    from msacl.bench.grid import resolve_precision

    return ["32-true"] + (["bf16-mixed"] if resolve_precision("auto", device) == "bf16-mixed" else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed pre-training steps on a GPU")
    p.add_argument("--cpu-steps", type=int, default=2, help="timed pre-training steps on the CPU")
    p.add_argument("--detectors", nargs="+", default=["padim", "patchcore"])
    p.add_argument("--detector-size", type=int, default=256)
    a = p.parse_args(argv)
    from msacl.runs.hardware import tune_backends

    devices = [d for d in a.devices if d != "cuda" or torch.cuda.is_available()]
    if "cuda" in a.devices and "cuda" not in devices:
        print("no CUDA device here: the GPU rows are left out", file=sys.stderr)
    rows = []
    for device in devices:
        tune_backends(device)
        name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        steps, warmup = (a.steps, a.warmup) if device == "cuda" else (a.cpu_steps, 1)
        for size in a.sizes:
            for prec in precisions(device):
                r = pretrain_speed(device, size, prec, warmup, steps)
                rows.append((name, f"MSACL pre-training {size} px, {prec}", f"{r['images_per_s']:.0f} img/s "
                             f"({r['s_per_step']:.3f} s/step)", "-" if r["peak_gib"] is None
                             else f"{r['peak_gib']:.2f} GiB"))
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
        for size in a.sizes:
            t = augment_times(device, size, steps)
            rows.append((name, f"MSACL batch (MedMix + weak views), 32 images at {size} px",
                         f"indexed {t[False]:.0f} ms, sync-free {t[True]:.0f} ms"
                         + ("; no host sync" if device == "cuda" else ""), "-"))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
        for det in a.detectors:
            r = detector_time(device, det, a.detector_size)
            rows.append((name, f"{det} fit + test, kvasir_seg_patch128, {a.detector_size} px",
                         f"{r['seconds']:.1f} s (fit {r['fit_s']:.1f}, test {r['test_s']:.1f}; "
                         f"image AUROC {r['image_auroc']:.3f})", "-"))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}")
    print("| device | what | speed | peak GPU memory |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
