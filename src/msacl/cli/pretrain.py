"""``msacl pretrain``: self-supervised pre-training of an encoder on normal images."""

from __future__ import annotations

import argparse
from pathlib import Path

from msacl.cli.common import (
    add_backbone,
    add_config,
    add_data,
    add_device,
    add_seed,
    backbone_for,
    info,
    report_skipped,
)
from msacl.errors import MsaclError

METHOD_NAMES = ("msacl", "ccd", "simclr", "rotnet")


def examples(verb: str) -> str:
    return """\
examples:
  msacl pretrain --method msacl --data DIR --out runs/msacl --image-size 256 --epochs 200 --init imagenet
  msacl pretrain --method msacl --data DIR --out runs/lite0 --backbone tf_efficientnet_lite0 --init imagenet
  msacl pretrain --method ccd --strong permutation --scope local --data DIR --out runs/ccd-local
  msacl pretrain --method msacl --data DIR --out runs/msacl --resume          # continue a stopped run
  msacl pretrain --method msacl --data DIR --out runs/ddp --accelerator cuda --devices 4 --precision bf16-mixed
  msacl pretrain --method msacl --set loss.alpha=1 --set optim.lr=0.05 --print-config

outputs in --out: encoder.pt (the backbone's torchvision / timm state dict, loads with strict=True into
torchvision.models.resnet18() or timm.create_model(NAME)), encoder.json (its input normalisation), checkpoint.pt,
log.jsonl (one line per step), tsne.png (when the data has a test split), config.yaml, meta.json, and for MSACL
centres.json (the burn-in's checks and how far apart the frozen class centres lie; a warning is printed when
they barely differ; --set loss.burnin=false freezes those of the initial encoder, as Eq. 2 is written).
"""


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHOD_NAMES, default=None,
                   help="msacl (default), ccd, simclr or rotnet")
    p.add_argument("--out", metavar="RUN", help="run directory to write")
    add_data(p, required=False)
    p.add_argument("--strong", default=None, metavar="FAMILY",
                   help="strong augmentation: medmix, rotation, permutation, cutout, noise, jigsaw, cutpaste "
                        "(default: medmix for msacl, permutation for ccd)")
    p.add_argument("--scope", choices=("global", "local"), default=None,
                   help="global: whole images (default); local: random 32 x 32 patches (--set local_size=N)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="training epochs (default: 200)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="global batch size, split over devices (default: 32, as in both papers)")
    add_backbone(p)
    p.add_argument("--init", metavar="PATH|imagenet", default=None,
                   help="start from 'imagenet' (the backbone's ImageNet weights, as both papers do: from the "
                        "library's cache, downloaded if possible) or a weights file (e.g. another run's "
                        "encoder.pt); default: random init")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_seed(p)
    p.set_defaults(seed=None)  # None keeps the config file's seed (0 by default)
    add_config(p)
    add_device(p)


def resolve_config(args: argparse.Namespace):
    """The run's PretrainConfig: defaults < --config file < --set overrides < explicit flags."""
    from msacl.config import load_config
    from msacl.pretrain.config import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    for flag, key in (("method", "method"), ("strong", "strong"), ("scope", "scope"), ("epochs", "epochs"),
                      ("batch_size", "batch_size"), ("seed", "seed")):
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, key, value)
    if args.init is not None:
        cfg.model.init = str(args.init)
    backbone = backbone_for(args.backbone, cfg.model.init if args.backbone is None else None)
    if backbone is not None:
        cfg.model.backbone = backbone
    if args.data is not None:
        cfg.data.root = str(args.data)
    cfg.data.layout = args.layout
    cfg.data.channels = args.channels
    cfg.data.on_bad_file = args.on_bad_file
    if args.image_size is not None:
        cfg.data.image_size = args.image_size
    if args.cache_dir is not None:
        cfg.data.cache_dir = str(args.cache_dir)
    return cfg


def run(args: argparse.Namespace) -> int:
    import yaml

    from msacl.config import to_dict

    cfg = resolve_config(args)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    cfg.validate()
    if cfg.data.root is None:
        raise MsaclError("no data folder: give --data DIR (or data.root in --config)")
    if args.out is None:
        raise MsaclError("no run directory: give --out RUN")
    out = Path(args.out)
    if (out / "checkpoint.pt").is_file() and not args.resume:
        raise MsaclError(f"{out} already holds a pre-training run (checkpoint.pt); "
                         "add --resume to continue it, or choose another --out")
    if cfg.model.init == "imagenet":  # fail before reading any data when the weights cannot be had
        from msacl.models.weights import imagenet_state

        info(f"initial weights: {imagenet_state(cfg.model.backbone)[1]}")
    elif cfg.model.init is not None and not Path(cfg.model.init).is_file():
        raise MsaclError(f"{cfg.model.init}: --init weights file not found")

    from msacl.data import load_split
    from msacl.errors import DataError
    from msacl.pretrain import make_fabric, pretrain

    fabric = make_fabric(args.accelerator, args.devices, args.num_nodes, args.precision)
    fabric.launch()
    d = cfg.data
    opts = dict(image_size=d.image_size, channels=d.channels, layout=d.layout, on_bad_file=d.on_bad_file,
                cache_dir=d.cache_dir)
    train = load_split(d.root, "train", **opts)
    test = None
    if cfg.tsne:
        try:
            test = load_split(d.root, "test", **opts)
        except DataError as e:
            if fabric.is_global_zero:
                info(f"no t-SNE picture: the test split could not be read ({e})")
    if fabric.is_global_zero:
        info(f"pre-training {cfg.method} on {len(train)} images of {tuple(train.images.shape[1:])} "
             f"from {d.root} on {fabric.world_size} x {fabric.device.type}")
    enc = pretrain(cfg, train, out, test=test, fabric=fabric, progress=not args.no_progress, resume=args.resume)
    if fabric.is_global_zero:
        report_skipped(out, train, test)
        info(f"encoder weights: {enc}")
    return 0
