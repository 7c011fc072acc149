"""``msacl fit``: fit a detector and write its run (``msacl test`` is in ``cli.test``, ``msacl predict`` in
``cli.predict``).

``fit`` writes a run directory RUN (:class:`msacl.runs.fitted.FitRun`, which ``test``, ``predict``, ``serve``
and ``export`` open): ``config.yaml`` (detector, its settings: the fields of its options dataclass, data,
encoder, seed), ``command.txt``, ``meta.json``, ``detector.pt`` (the fitted detector: its name, settings and
state dict, encoder weights included), ``threshold.json``, ``calibration.json`` (scores of the normal images
held out from fitting, on which ``test``, ``predict`` and ``serve`` calibrate their normal / abnormal decision
at ``--fpr``, see ``msacl.metrics.calibrate``) and, where training images were held out, ``holdout.txt``.

Threshold for IoU / Dice (stored in ``threshold.json``, used by ``test``):

* when the data folder has ``val/`` with lesion masks, the threshold with the best mean Dice on the validation
  images with a lesion;
* otherwise ``--holdout`` (default 0.1) of ``train/normal`` is held out from fitting (a seeded random choice,
  listed in ``holdout.txt``) and the threshold is the 0.99 quantile of the pixel scores of those held-out
  normal images, so about 1 % of normal pixels are flagged. ``--holdout 0`` fits on every training image and
  stores no threshold; ``test`` then reports only the best-Dice oracle.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msacl.cli.common import (
    add_backbone,
    add_data,
    add_device,
    add_fpr,
    add_seed,
    backbone_for,
    info,
    positive_int,
    report_skipped,
)
from msacl.errors import DataError, MsaclError
from msacl.names import DETECTOR_CLASSES

if TYPE_CHECKING:
    from msacl.data.types import ImageSet
    from msacl.detectors.pipeline import FitResult
    from msacl.runs.fitted import FitConfig, FitRun

_EXAMPLES = """\
examples:
  msacl fit --detector padim --data DIR --out runs/padim --image-size 256
  msacl fit --detector padim --data DIR --encoder runs/pre --out runs/padim      # MSACL pre-trained encoder
  msacl fit --detector padim --data DIR --encoder imagenet --out runs/padim_in   # ImageNet ResNet-18
  msacl fit --detector padim --data DIR --backbone tf_efficientnet_lite0 --encoder imagenet --out runs/lite0
  msacl fit --detector patchcore --data DIR --out runs/pc --set coreset_ratio=0.05
  msacl fit --detector padim --data DIR --encoder runs/pre --bn-stats train --out runs/padim_bn  # AdaBN
  msacl fit --detector igd --data DIR --out runs/igd --set epochs=50 --set local=true --encoder-local runs/pre_local
  msacl fit --detector padim --data DIR --out runs/x --print-config   # show every setting and exit

image size: --image-size N resizes to N x N; without it, the layout's paper size (folder layout: the images'
own size, which must then be square and common to all).
threshold (for IoU/Dice): best mean Dice on DIR/val when it has masks, otherwise the 0.99 quantile of the
pixel scores of --holdout (default 10%) of train/normal, held out from fitting. Stored in RUN/threshold.json.
"""


def examples(verb: str) -> str:
    return _EXAMPLES


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    # the registry's names when the parser is built: msacl's detectors and any registered since
    p.add_argument("--detector", required=True, choices=tuple(DETECTOR_CLASSES), help="anomaly detector to fit")
    add_data(p)
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--encoder", metavar="PATH|imagenet", default=None,
                   help="encoder weights: an `msacl pretrain` run directory, its encoder.pt, a state dict of "
                        "the backbone, or 'imagenet' (its ImageNet weights); default: random init")
    p.add_argument("--encoder-local", metavar="PATH", default=None,
                   help="weights of the local (32x32 patch) model's encoder, for detectors with local=true")
    add_backbone(p)
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="images per batch (default 32)")
    p.add_argument("--bn-stats", choices=("encoder", "train"), default=None,
                   help="BatchNorm statistics of a frozen encoder (padim, patchcore, panda, igd with "
                        "freeze_encoder=true): 'encoder', those stored with the weights, or 'train', re-estimated "
                        "on the training images before fitting (= --set bn_stats=...; default: the detector's)")
    p.add_argument("--holdout", type=float, default=0.1, metavar="FRAC",
                   help="fraction of train/normal held out to set the IoU/Dice threshold when the data "
                        "has no val/ with masks (default 0.1; 0 = none)")
    add_device(p)
    p.add_argument("--force", action="store_true", help="overwrite a run directory that has a detector")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted fit from RUN/fit_checkpoint.pt, written at the end of every "
                        "epoch by every detector that trains (all but padim and patchcore, which fit in one pass)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="YAML mapping of detector settings (a run's config.yaml works too)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="one detector setting, e.g. --set n_features=200 or --set strides=[8,16] "
                        "(repeatable; --print-config lists them all)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_fpr(p)
    add_seed(p)


def run(args: argparse.Namespace) -> int:
    return _fit(args)


# ---------------------------------------------------------------------------------------------------- helpers


def resolve_detector_config(cls: type, config_file: str | None, overrides: list[str]) -> tuple[dict, set[str]]:
    """The detector's options: defaults, updated by a YAML mapping and ``key=value`` overrides (values parsed
    as YAML), each checked against its declared type.

    Returns the settings (as a dict) and the set of keys the user gave. An unknown key or a value of the wrong
    type is a ``ConfigError`` naming the key (and the valid keys, or the expected type).
    """
    from msacl.config import parse_key_values, read_yaml_mapping
    from msacl.detectors.options import make_options

    given: dict[str, Any] = {}
    if config_file:
        data = read_yaml_mapping(config_file)
        if "detector_kwargs" in data:  # a fitted run's config.yaml: its settings and, from its data, image size
            size = (data.get("data") or {}).get("image_size")
            data = dict(data["detector_kwargs"]) | ({} if size is None else {"image_size": size})
        given.update(data)
    given.update(parse_key_values(overrides, "--set"))
    return make_options(cls.Options, where=cls.name, **given).to_dict(), set(given)


# ---------------------------------------------------------------------------------------------------- fit


def _fit_settings(args: argparse.Namespace) -> FitConfig:
    """The run's config: the detector's settings (config file, ``--set`` and the shared flags) and the data
    options (``data.image_size`` None: decided from the training images)."""
    from msacl.config import ConfigError
    from msacl.data.options import DataOptions
    from msacl.detectors import REGISTRY
    from msacl.detectors.options import make_options
    from msacl.runs.fitted import FitConfig

    if args.detector not in REGISTRY:
        raise MsaclError(f"detector {args.detector!r} is not available in this installation "
                         f"(available: {sorted(REGISTRY)})")
    cls = REGISTRY[args.detector]
    kwargs, given = resolve_detector_config(cls, args.config, args.overrides)
    backbone = backbone_for(args.backbone, args.encoder)
    if backbone is not None and "backbone" in kwargs:
        kwargs["backbone"] = backbone
    if args.batch_size is not None and "batch_size" in kwargs:
        kwargs["batch_size"] = args.batch_size
    if args.bn_stats is not None:
        if "bn_stats" not in kwargs:
            raise MsaclError(f"--bn-stats: the {args.detector} detector trains its encoder, which learns its own "
                             "BatchNorm statistics (the setting is for padim, patchcore, panda and igd with "
                             "freeze_encoder=true)")
        kwargs = make_options(cls.Options, where=cls.name, **(kwargs | {"bn_stats": args.bn_stats})).to_dict()
    if "init_seed" in kwargs and "init_seed" not in given:
        kwargs["init_seed"] = args.seed
    image_size = args.image_size
    if image_size is None and "image_size" in given:
        image_size = kwargs["image_size"]
        if not isinstance(image_size, int):
            raise ConfigError(f"image_size: fit takes square images, give one int (--image-size N), got {image_size}")
    if not 0 <= args.holdout < 1:
        raise MsaclError(f"--holdout must be in [0, 1), got {args.holdout}")
    data = DataOptions(root=str(args.data), layout=args.layout, image_size=image_size, channels=args.channels,
                       on_bad_file=args.on_bad_file, cache_dir=args.cache_dir)
    return FitConfig(detector=args.detector, detector_kwargs=kwargs, data=data, encoder=args.encoder,
                     encoder_local=args.encoder_local, batch_size=args.batch_size or 32, holdout=args.holdout,
                     seed=args.seed)


def _check_out(args: argparse.Namespace) -> Path:
    """``--out``, refused when it holds a fitted detector, lacks the checkpoint ``--resume`` needs, or is a
    non-empty folder that is not a run (each unless ``--force``)."""
    out = Path(args.out)
    if (out / "detector.pt").exists() and not args.force:
        raise MsaclError(f"{out}: already holds a fitted detector; use another --out or --force")
    if args.resume and not (out / "fit_checkpoint.pt").is_file():
        raise MsaclError(f"{out}: no fit_checkpoint.pt to resume from (fit without --resume first)")
    if out.is_dir() and any(out.iterdir()) and not (out / "meta.json").is_file() and not args.force:
        raise MsaclError(f"{out}: a folder with other files in it, not an msacl run; choose an empty or new --out "
                         "(--force writes into it anyway)")
    return out


def _load_train(args: argparse.Namespace, config: FitConfig) -> ImageSet:
    """The training images (at ``config.data.image_size``; None: their own size); the sources' channels go
    into ``config``."""
    from msacl.data import load_split
    from msacl.deploy.inference import source_channels

    train = load_split(args.data, "train", image_size=config.data.image_size, **_load_options(args))
    if len(train) == 0:
        raise DataError(f"{args.data}: no training images")
    # What `predict` / `serve` compare new inputs with: the loaded tensors no longer say if sources were grey.
    config.data.source_channels = source_channels(train.paths)
    return train


def _load_val(args: argparse.Namespace, image_size: int) -> ImageSet | None:
    """The validation split with lesion masks, at the detector's ``image_size`` (None without one)."""
    from msacl.data import load_split

    if not (Path(args.data) / "val").is_dir():
        return None
    val = load_split(args.data, "val", image_size=image_size, **_load_options(args))
    if val.masks is None or not bool(val.masks.any()):
        info(f"{args.data}/val has no lesion masks: the threshold comes from held-out training normals")
        return None
    return val


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"layout": args.layout, "channels": args.channels, "on_bad_file": args.on_bad_file,
            "cache_dir": args.cache_dir}


def _fit(args: argparse.Namespace) -> int:
    import yaml

    from msacl.detectors.pipeline import fit_detector, prepare_detector, resolve_device
    from msacl.runs.fitted import FitRun

    config = _fit_settings(args)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    out = _check_out(args)
    device = resolve_device(args.device)
    train = _load_train(args, config)
    # The pipeline decides the image size (the training images' side) and the channels from `train`.
    det, loaded = prepare_detector(args.detector, config.detector_kwargs, train, seed=args.seed,
                                   encoders={"global": args.encoder, "local": args.encoder_local},
                                   flags={"global": "--encoder", "local": "--encoder-local"},
                                   where=f"{args.data}: training images")
    image_size = config.data.image_size = det.options.image_size
    val = _load_val(args, image_size)
    for part, weights in loaded.items():
        info(f"{part} encoder: {weights}")
    config.detector_kwargs = det.config

    run = FitRun.create(out, config)
    if hasattr(det, "checkpointing"):  # detectors that train (through fitloop) save every epoch and can resume
        det.checkpointing(run.path / "fit_checkpoint.pt", resume=args.resume)
    report_skipped(run.path, train, val)
    info(f"fitting {args.detector} on {len(train)} images of {image_size} px ({device})")
    try:
        fit = fit_detector(det, train, val=val, holdout=args.holdout, seed=args.seed,
                           batch_size=config.batch_size, device=device, progress=not args.quiet)
    except DataError as e:
        raise DataError(f"{args.data}: {e}") from None
    run.save(det, fit)
    _summary(args, run, fit)
    return 0


def _summary(args: argparse.Namespace, run: FitRun, fit: FitResult) -> None:
    """What was fitted, its thresholds and what to run next."""
    print(f"fitted {args.detector} on {fit.n_train} images in {fit.fit_seconds:.1f} s -> {run.path / 'detector.pt'}")
    if fit.threshold.threshold is not None:
        print(f"threshold {fit.threshold.threshold:.4g} ({fit.threshold.rule})")
    decision = run.decision(args.fpr)
    if decision is not None:
        print(f"decision threshold {decision['image']['threshold']:.4g} at FPR {args.fpr:g} "
              f"(split conformal on {decision['image']['n']} held-out normal images)")
        for w in decision["warnings"]:
            info(f"warning: {w}")
    else:
        info("no held-out normal images: `test` and `predict` give scores but no normal/abnormal decision")
    print(f"next: msacl test --run {run.path}")
