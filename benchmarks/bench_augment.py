"""Augmentation throughput against the training step it feeds (target: augmentation >= 5x faster).

One pre-training step of MSACL takes B normal images, applies every MedMix class n = 0..K-1 to each
(B*K images, lesions cut from the batch rolled by one) and draws two weak views of each: 2*B*K encoder
samples. This script times that augmentation and, in the same run on the same device and threads, a
torchvision ResNet-18 forward + backward + SGD step on the same number of samples, and prints both in
samples per second with their ratio.

    python benchmarks/bench_augment.py                       # 64 and 128 px, B = 32, kvasir patches if found
    python benchmarks/bench_augment.py --sizes 64 --batch 16 --steps 3 --threads 2
    python benchmarks/bench_augment.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data")) / "kvasir_seg_patch128"


def load_images(data: Path | None, n: int, size: int, seed: int) -> tuple[torch.Tensor, str]:
    """Real training images when the folder exists, else smooth random images."""
    if data is not None and data.is_dir():
        from msacl.data import load_split

        ims = load_split(data, "train", image_size=size, progress=False).images
        idx = torch.randperm(ims.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        return ims[idx], data.name
    low = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False), "random smooth images"


def timed(fns: dict, steps: int, device: torch.device) -> dict[str, tuple[float, float]]:
    """Median wall and process-CPU seconds per call of each function, after one warm-up call each.

    The functions are called in turn, one call each per round, so that on a shared machine they all see
    the same load; on a shared CPU the CPU time (all threads of this process) depends less on the other
    processes than the wall time does, so both are reported.
    """
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append((time.perf_counter() - t, time.process_time() - c))
    return {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in times.items()}


def bench_size(size: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    import torchvision

    from msacl.augment import MedMix, WeakAugment

    x, source = load_images(args.data, args.batch, size, args.seed)
    x = x.to(device)
    medmix, weak = MedMix(), WeakAugment(size)
    k = medmix.num_classes
    g = torch.Generator(device=device).manual_seed(args.seed)
    labels = torch.arange(k, device=device).repeat(args.batch)
    xs = x.repeat_interleave(k, dim=0)
    sources = x.roll(1, dims=0).repeat_interleave(k, dim=0)
    n_samples = 2 * args.batch * k

    def strong():
        return medmix(xs, labels, generator=g, sources=sources).images

    strong_images = strong()

    def weak_two():
        return weak(strong_images, generator=g), weak(strong_images, generator=g)

    def augment():
        s = strong()
        return weak(s, generator=g), weak(s, generator=g)

    model = torchvision.models.resnet18(num_classes=128).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    samples = torch.cat(augment()).detach()

    def train():
        opt.zero_grad(set_to_none=True)
        model(samples).square().mean().backward()
        opt.step()

    res = timed({"strong": strong, "weak": weak_two, "augment": augment, "train": train}, args.steps, device)
    (t_strong, _), (t_weak, _) = res["strong"], res["weak"]
    (t_aug, c_aug), (t_train, c_train) = res["augment"], res["train"]
    print(f"  {size} px ({source}): B = {args.batch} images -> {args.batch * k} MedMix images -> "
          f"{n_samples} weak views per step")
    return {
        "size": size,
        "medmix_img_s": args.batch * k / t_strong,
        "weak_views_s": n_samples / t_weak,
        "augment_samples_s": n_samples / t_aug,
        "train_samples_s": n_samples / t_train,
        "step_aug_ms": 1000 * t_aug,
        "step_train_ms": 1000 * t_train,
        "cpu_ratio": c_train / c_aug,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=32, help="normal images per step (default: 32, the papers')")
    p.add_argument("--steps", type=int, default=5, help="timed rounds; medians are reported (default: 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training images to augment (default: "
                   "kvasir_seg_patch128 beside the repository, else random smooth images)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    rows = [bench_size(s, args, device) for s in args.sizes]
    print()
    print("wall-clock throughput in samples (encoder inputs) per second; ratio = augment / train")
    print(f"{'size':>5} {'MedMix img/s':>13} {'2 weak views/s':>15} {'augment smp/s':>14} "
          f"{'ResNet-18 f+b smp/s':>20} {'aug ms/step':>12} {'train ms/step':>14} {'ratio':>7} {'CPU-time ratio':>15}")
    for r in rows:
        ratio = r["augment_samples_s"] / r["train_samples_s"]
        print(f"{r['size']:>5} {r['medmix_img_s']:>13.0f} {r['weak_views_s']:>15.0f} {r['augment_samples_s']:>14.0f} "
              f"{r['train_samples_s']:>20.0f} {r['step_aug_ms']:>12.1f} {r['step_train_ms']:>14.1f} "
              f"{ratio:>6.1f}x {r['cpu_ratio']:>14.1f}x  {'ok' if ratio >= 5 else 'BELOW TARGET (5x)'}")


if __name__ == "__main__":
    main()
