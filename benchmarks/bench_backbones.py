"""Backbones side by side: pre-training throughput, PaDiM time, and PaDiM on ImageNet Lite0 on every shared set.

1. ``speed``: for each backbone (default resnet18 and tf_efficientnet_lite0) and image size (64, 128), MSACL
   pre-training throughput (encoder images/s, median of the engine's per-step log after warm-up) and PaDiM fit +
   test wall time on kvasir_seg_patch128 (fit on train/normal, predict test/). Backbones alternate within one
   run, so the ratios are comparable on a noisy machine.
2. ``accuracy``: PaDiM (strides 4/8/16, 100 random channels, eps 0.01, max of the blurred map, fitted on all of
   train/normal) on the ImageNet EfficientNet-Lite0 encoder and on the same network randomly initialised, at
   128 px (64 px for pneumoniamnist_28), on the five shared sets. ``REFERENCE`` holds the figures an independent
   PaDiM gave with the same settings (issue 10); a gap over 0.02 is flagged.

    python benchmarks/bench_backbones.py                      # both parts
    python benchmarks/bench_backbones.py --only accuracy --seeds 0 1 2
    python benchmarks/bench_backbones.py --only speed --sizes 64 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA_ROOT = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data"))
LITE0 = "tf_efficientnet_lite0"
# Independent PaDiM, ImageNet Lite0 vs random-init Lite0: image AUROC (pixel AUROC for Kvasir), issue 10.
REFERENCE = {
    "kermany_cxr_224": {"imagenet": 0.757, "random": 0.581},
    "brain_tumor_mri_224": {"imagenet": 0.929, "random": 0.802},
    "pneumoniamnist_28": {"imagenet": 0.784, "random": 0.645},
    "kvasir_seg_patch128": {"imagenet": 0.651, "random": 0.591, "pixel_imagenet": 0.659, "pixel_random": 0.601},
    "odir_fundus_256": {"imagenet": 0.651, "random": 0.658},
}
SIZE = {"pneumoniamnist_28": 64}


# --device and --precision (main sets them): the device of every run, the precision of pre-training
RUN = {"device": "cpu", "precision": "32-true"}


def padim_run(backbone: str, init: str | None, train, test, size: int, seed: int) -> dict:
    from msacl.detectors import Padim, batches
    from msacl.metrics import image_auroc, pixel_auroc
    from msacl.runs import make_generator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random init: one draw per seed
        det = Padim(backbone=backbone, image_size=size)
    det.load_encoder(init)
    det.to(RUN["device"])
    t = time.perf_counter()
    det.fit(batches(train.images, 32), generator=make_generator(seed))
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    scores, maps = zip(*(det.predict(x) for x in batches(test.images, 32)), strict=True)
    test_s = time.perf_counter() - t
    scores, maps = torch.cat(scores).cpu(), torch.cat(maps).cpu()
    out = {"image_auroc": image_auroc(scores, test.labels), "fit_s": fit_s, "test_s": test_s}
    if test.masks is not None:
        out["pixel_auroc"] = pixel_auroc(maps, test.masks)
    return out


def accuracy(datasets: list[str], seeds: list[int]) -> None:
    from msacl.data import load_split

    print(f"PaDiM on {LITE0}, ImageNet vs random init; mean over seeds {seeds} (the channel subset and, for random "
          "init, the weights follow the seed)")
    print(f"{'data':<22} {'size':>4} {'init':>9} {'image AUROC':>12} {'ref':>6} {'gap':>6} {'pixel AUROC':>12} "
          f"{'ref':>6} {'fit+test s':>10}")
    for name in datasets:
        size = SIZE.get(name, 128)
        train = load_split(DATA_ROOT / name, "train", image_size=size)
        test = load_split(DATA_ROOT / name, "test", image_size=size)
        for init in ("imagenet", "random"):
            runs = [padim_run(LITE0, init if init == "imagenet" else None, train, test, size, s) for s in seeds]
            img = statistics.mean(r["image_auroc"] for r in runs)
            ref = REFERENCE.get(name, {}).get(init)
            gap = "" if ref is None else f"{img - ref:+.3f}" + (" !" if abs(img - ref) > 0.02 else "")
            pix = [r["pixel_auroc"] for r in runs if "pixel_auroc" in r]
            pref = REFERENCE.get(name, {}).get(f"pixel_{init}")
            secs = statistics.mean(r["fit_s"] + r["test_s"] for r in runs)
            print(f"{name:<22} {size:>4} {init:>9} {img:>12.3f} {ref if ref is not None else '-':>6} {gap:>6} "
                  f"{statistics.mean(pix) if pix else float('nan'):>12.3f} {pref if pref else '-':>6} {secs:>10.1f}",
                  flush=True)


def pretrain_ips(backbone: str, size: int, batch: int, steps: int, warmup: int) -> float:
    from msacl.data.types import ImageSet
    from msacl.pretrain import PretrainConfig, make_fabric, pretrain

    cfg = PretrainConfig(method="msacl", epochs=1, batch_size=batch, checkpoint_every=10**6, tsne=False)
    cfg.model.backbone = backbone
    cfg.loss.burnin = False  # one epoch: time the MSACL step itself
    n = batch * (warmup + steps)
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.rand(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long),
                     [str(i) for i in range(n)])
    with tempfile.TemporaryDirectory() as d:
        pretrain(cfg, train, d, fabric=make_fabric(RUN["device"], 1, 1, RUN["precision"]), progress=False)
        rows = [json.loads(s) for s in (Path(d) / "log.jsonl").read_text().splitlines()][warmup:]
    return statistics.median(r["images_per_s"] for r in rows)


def speed(backbones: list[str], sizes: list[int], batch: int, steps: int, warmup: int) -> None:
    from msacl.data import load_split

    data = DATA_ROOT / "kvasir_seg_patch128"
    print(f"{RUN['device']} ({RUN['precision']}), {torch.get_num_threads()} CPU threads; MSACL batch {batch}, "
          f"{steps} timed steps; PaDiM on {data.name}")
    print(f"{'backbone':<24} {'size':>4} {'pretrain img/s':>15} {'PaDiM fit s':>12} {'PaDiM test s':>13}")
    for size in sizes:
        train = load_split(data, "train", image_size=size)
        test = load_split(data, "test", image_size=size)
        for backbone in backbones:
            ips = pretrain_ips(backbone, size, batch, steps, warmup)
            r = padim_run(backbone, None, train, test, size, 0)
            print(f"{backbone:<24} {size:>4} {ips:>15.1f} {r['fit_s']:>12.2f} {r['test_s']:>13.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("speed", "accuracy"), default=None)
    p.add_argument("--backbones", nargs="+", default=["resnet18", LITE0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data", nargs="+", default=list(REFERENCE))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--precision", default="32-true", help="pre-training precision: 32-true (default), bf16-mixed")
    a = p.parse_args(argv)
    RUN.update(device=a.device, precision=a.precision)
    if a.only in (None, "speed"):
        speed(a.backbones, a.sizes, a.batch_size, a.steps, a.warmup)
    if a.only in (None, "accuracy"):
        accuracy(a.data, a.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
