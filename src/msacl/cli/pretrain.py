"""``msacl pretrain``: self-supervised pre-training of an encoder on normal images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from msacl.cli.common import (
    add_backbone,
    add_config,
    add_data,
    add_device,
    add_seed,
    backbone_for,
    fabric_device,
    info,
    positive_int,
    report_skipped,
)
from msacl.errors import MsaclError
from msacl.names import METHODS, STRONG_FAMILIES, listed

if TYPE_CHECKING:
    from msacl.pretrain.config import PretrainConfig


def examples(verb: str) -> str:
    return """\
examples:
  msacl pretrain --method msacl --data DIR --out runs/msacl --image-size 256 --epochs 200 --init imagenet
  msacl pretrain --method msacl --data DIR --out runs/lite0 --backbone tf_efficientnet_lite0 --init imagenet
  msacl pretrain --method ccd --strong permutation --scope local --data DIR --out runs/ccd-local
  msacl pretrain --resume runs/msacl                                        # continue a stopped run
  msacl pretrain --resume runs/msacl --epochs 400                           # ... and train it longer
  msacl pretrain --method msacl --data DIR --out runs/ddp --device cuda --devices 4 --precision bf16-mixed
  msacl pretrain --method msacl --set loss.alpha=1 --set optim.lr=0.05 --print-config

outputs in --out: encoder.pt (the backbone's torchvision / timm state dict, loads with strict=True into
torchvision.models.resnet18() or timm.create_model(NAME)), encoder.json (its input normalisation), checkpoint.pt,
log.jsonl (one line per step), tsne.png (when the data has a test split), config.yaml, meta.json, and for MSACL
centres.json (the burn-in's checks and how far apart the frozen class centres lie; a warning is printed when
they barely differ; --set loss.burnin=false freezes those of the initial encoder, as Eq. 2 is written).
"""


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS, default=None, help=listed(METHODS, default="msacl"))
    p.add_argument("--out", metavar="RUN", help="run directory to write")
    add_data(p, required=False)
    p.add_argument("--strong", default=None, metavar="FAMILY",
                   help=f"strong augmentation: {', '.join(STRONG_FAMILIES)} "
                        "(default: medmix for msacl, permutation for ccd)")
    p.add_argument("--scope", choices=("global", "local"), default=None,
                   help="global: whole images (default); local: random 32 x 32 patches (--set local_size=N)")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N", help="training epochs (default: 200)")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="global batch size, split over devices (default: 32, as in both papers)")
    add_backbone(p)
    p.add_argument("--init", metavar="PATH|imagenet", default=None,
                   help="start from 'imagenet' (the backbone's ImageNet weights, as both papers do: from the "
                        "library's cache, downloaded if possible) or a weights file (e.g. another run's "
                        "encoder.pt); default: random init")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue the run in RUN (or --out) from its checkpoint.pt, with its own settings; only "
                        "--epochs may grow (and checkpoint_every / tsne change)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_seed(p)
    p.set_defaults(seed=None)  # None keeps the config file's seed (0 by default)
    add_config(p)
    add_device(p, distributed=True)


# Settings a resumed run may change; every other one is the run's own.
RESUMABLE = ("epochs", "checkpoint_every", "tsne", "tsne_max_images")


# Each flag is an alias of one key of the config: given, it is applied as ``--set KEY=VALUE`` would be, after
# --config and --set. ``--backbone`` is derived (from the --init weights when left out), so it is set apart.
FLAG_KEYS = {"method": "method", "strong": "strong", "scope": "scope", "epochs": "epochs",
             "batch_size": "batch_size", "seed": "seed", "init": "model.init", "data": "data.root",
             "image_size": "data.image_size", "cache_dir": "data.cache_dir", "layout": "data.layout",
             "channels": "data.channels", "on_bad_file": "data.on_bad_file"}
# Flags with an argparse default: applied to a resumed run only when changed from it.
FLAG_DEFAULTS = {"layout": "folder", "channels": 3, "on_bad_file": "error"}


def resolve_config(args: argparse.Namespace, base: dict | None = None):
    """The run's PretrainConfig: defaults (or a resumed run's config.yaml) < --config file < --set overrides
    < explicit flags (:data:`FLAG_KEYS`). With ``base``, data flags left at their argparse defaults keep the
    run's values."""
    from msacl.config import apply_settings, from_dict, load_config, parse_key_values
    from msacl.pretrain.config import PretrainConfig

    if base is None:
        cfg = load_config(PretrainConfig, args.config, [])
    else:
        cfg = from_dict(PretrainConfig, base)
    flags = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None
             and not (base is not None and FLAG_DEFAULTS.get(flag, object()) == getattr(args, flag))}
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
    cfg = apply_settings(cfg, parse_key_values(args.overrides, "--set") | flags)
    backbone = backbone_for(args.backbone, cfg.model.init if args.backbone is None else None)
    if backbone is not None:
        cfg.model.backbone = backbone
    return cfg


def _resumed_run(args: argparse.Namespace) -> tuple[Path, dict]:
    """The run directory of ``--resume [RUN]`` and the settings it was written with."""
    from msacl.config import read_yaml_mapping

    if args.resume and args.out and Path(args.resume) != Path(args.out):
        raise MsaclError(f"--resume {args.resume} and --out {args.out} name two runs; give one")
    if not (args.resume or args.out):
        raise MsaclError("--resume needs the run directory: --resume RUN")
    out = Path(args.resume or args.out)
    if not (out / "checkpoint.pt").is_file():
        raise MsaclError(f"{out}: no checkpoint.pt to resume from (not a pre-training run, or one killed before "
                         "its first checkpoint: start it again without --resume)")
    if args.config:
        raise MsaclError("--config cannot be combined with --resume: a resumed run keeps its own config.yaml")
    return out, read_yaml_mapping(out / "config.yaml")


def _check_unchanged(out: Path, saved: dict, cfg) -> None:
    """Refuse a resume that would change a setting other than ``RESUMABLE``."""
    from msacl.config import changed_settings, to_dict

    changed = [f"{k}: {a!r} -> {b!r}" for k, a, b in changed_settings(type(cfg), saved, to_dict(cfg))
               if k not in RESUMABLE]
    if changed:
        raise MsaclError(f"{out} was trained with other settings; a resumed run keeps its own "
                         f"({'; '.join(changed)}). Start a new run with --out to change them")


def _new_run_dir(given: str | None) -> Path:
    """``--out`` of a new run: refused when missing, when it holds a run, or when it is a folder of other files."""
    if given is None:
        raise MsaclError("no run directory: give --out RUN")
    out = Path(given)
    if (out / "checkpoint.pt").is_file():
        raise MsaclError(f"{out} already holds a pre-training run (checkpoint.pt); "
                         f"continue it with `msacl pretrain --resume {out}`, or choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file():
        raise MsaclError(f"{out}: a folder with other files in it, not an msacl run; choose an empty or new --out")
    return out


def _check_init(cfg: PretrainConfig) -> None:
    """Fail before reading any data when the initial weights (``--init``) cannot be had."""
    if cfg.model.init == "imagenet":
        from msacl.models.weights import imagenet_state

        info(f"initial weights: {imagenet_state(cfg.model.backbone)[1]}")
    elif cfg.model.init is not None and not Path(cfg.model.init).is_file():
        raise MsaclError(f"{cfg.model.init}: --init weights file not found")


def run(args: argparse.Namespace) -> int:
    import yaml

    from msacl.config import to_dict

    out, saved = _resumed_run(args) if args.resume is not None else (None, None)
    cfg = resolve_config(args, saved)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    cfg.validate()
    if saved is not None:
        _check_unchanged(out, saved, cfg)
    if cfg.data.root is None:
        raise MsaclError("no data folder: give --data DIR (or data.root in --config)")
    if out is None:
        out = _new_run_dir(args.out)
    _check_init(cfg)

    from msacl.data import load_split
    from msacl.errors import DataError
    from msacl.pretrain import make_fabric, pretrain

    fabric = make_fabric(*fabric_device(args.device, args.devices), args.num_nodes, args.precision)
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
    resume = saved is not None
    if resume:
        from msacl.pretrain.checkpoint import epochs_done

        done = epochs_done(out, cfg)
        if done >= cfg.epochs:
            info(f"{out} has already finished its {done} epochs: nothing to do (--epochs N trains it longer); "
                 f"encoder weights: {out / 'encoder.pt'}")
            return 0
    try:
        enc = pretrain(cfg, train, out, test=test, fabric=fabric, progress=not args.no_progress, resume=resume)
    except KeyboardInterrupt:
        if fabric.is_global_zero:
            ckpt = out / "checkpoint.pt"
            where = f"the last checkpoint is {ckpt}" if ckpt.is_file() else "no checkpoint was written yet"
            info(f"interrupted: {where}; continue with `msacl pretrain --resume {out}`")
        raise
    if fabric.is_global_zero:
        from msacl.report.tsne import plot_run_tsne

        report_skipped(out, train, test)
        info(f"encoder weights: {enc}")
        if cfg.tsne and (pic := plot_run_tsne(out)) is not None:
            info(f"t-SNE picture: {pic}")
    return 0
