"""Pre-training throughput vs bare ResNet-18 forward + backward, measured side by side in one run.

Images/s counts every image put through the encoder: MSACL with 4 MedMix classes x 2 weak views puts 8
views per training image through it, plus the two patches of the patch-position task. The reference is a
plain torchvision ResNet-18 training step (forward, backward, SGD) on as many images of the same size as
one pre-training step's views, timed just before and just after the pre-training run.
Target: pre-training >= 80% of the reference.

    python benchmarks/bench_pretrain.py                               # 64 and 128 px, MSACL, batch 32
    python benchmarks/bench_pretrain.py --batch-size 4 --steps 4 --methods msacl simclr   # a quick CPU run

Pre-training figures are the median over steps (after warm-up) of the engine's own per-step log, so
they include augmentation, the losses and the optimiser, but not the one-off class-centre pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_resnet(size: int, n: int, steps: int, warmup: int, device: torch.device, precision: str) -> list[float]:
    """Step times (s) of ResNet-18 forward + backward + SGD step on n images of size x size."""
    model = torchvision.models.resnet18().to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(n, 3, size, size, device=device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def pretrain_throughput(method: str, size: int, batch: int, steps: int, warmup: int, accelerator: str,
                        precision: str) -> tuple[float, float, int]:
    """(encoder images/s, view images/s, views per step) of the engine, from its per-step log."""
    from msacl.data.types import ImageSet
    from msacl.pretrain import PretrainConfig, build_method, make_fabric, pretrain

    cfg = PretrainConfig(method=method, epochs=1, batch_size=batch, checkpoint_every=10**6, tsne=False)
    n = batch * (warmup + steps)
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.rand(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long),
                     [str(i) for i in range(n)])
    m = build_method(cfg, image_size=size)
    probe = m.make_batch(train.images[:batch], generator=g)
    views, total = probe.views.shape[0], probe.encoder_images
    with tempfile.TemporaryDirectory() as d:
        pretrain(cfg, train, d, fabric=make_fabric(accelerator, 1, 1, precision), progress=False)
        rows = [json.loads(s) for s in (Path(d) / "log.jsonl").read_text().splitlines()][warmup:]
    ips = statistics.median(r["images_per_s"] for r in rows)
    return ips, ips * views / total, views


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--methods", nargs="+", default=["msacl"], choices=["msacl", "ccd", "simclr", "rotnet"])
    p.add_argument("--batch-size", type=int, default=32, help="training images per step (default: 32)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default: 2)")
    p.add_argument("--device", "--accelerator", dest="device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    from msacl.pretrain import PretrainConfig, build_method

    if a.threads:
        torch.set_num_threads(a.threads)
    accel = a.device
    if accel == "auto":
        accel = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if accel in ("cuda", "gpu") else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {a.batch_size} training images/step; {a.steps} timed steps; {a.precision}")
    header = (f"{'method':<8} {'size':>5} {'views/step':>10} {'pretrain img/s':>15} {'(views only)':>13} "
              f"{'bare ResNet-18 img/s':>21} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    worst = float("inf")
    for size in a.sizes:
        for method in a.methods:
            m = build_method(PretrainConfig(method=method), image_size=size)
            views = m.make_batch(torch.rand(a.batch_size, 3, size, size), generator=torch.Generator()).views.shape[0]
            # The reference is timed before and after the pre-training run and pooled, so that a slow
            # or busy phase of the machine does not fall on one side only.
            times = bare_resnet(size, views, a.steps, a.warmup, device, a.precision)
            ips, vips, _ = pretrain_throughput(method, size, a.batch_size, a.steps, a.warmup, accel, a.precision)
            times += bare_resnet(size, views, a.steps, a.warmup, device, a.precision)
            ref = views / statistics.median(times)
            worst = min(worst, ips / ref)
            print(f"{method:<8} {size:>5} {views:>10} {ips:>15.1f} {vips:>13.1f} {ref:>21.1f} {ips / ref:>6.0%}",
                  flush=True)
    print(f"lowest ratio {worst:.0%} (target >= 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
