"""``msacl fit``, ``msacl test`` and ``msacl predict``: fit a detector, evaluate it, apply it to new images.

``fit`` writes a run directory RUN holding ``config.yaml`` (detector, its constructor settings, data, encoder,
seed), ``command.txt``, ``meta.json``, ``detector.pt`` (the fitted detector: its name, settings and state dict,
encoder weights included), ``threshold.json`` and, where training images were held out, ``holdout.txt``.

Threshold for IoU / Dice (stored in ``threshold.json``, used by ``test`` and ``predict``):

* when the data folder has ``val/`` with lesion masks, the threshold with the best mean Dice on the validation
  images with a lesion;
* otherwise ``--holdout`` (default 0.1) of ``train/normal`` is held out from fitting (a seeded random choice,
  listed in ``holdout.txt``) and the threshold is the 0.99 quantile of the pixel scores of those held-out
  normal images, so about 1 % of normal pixels are flagged. ``--holdout 0`` fits on every training image and
  stores no threshold; ``test`` then reports only the best-Dice oracle.

``test`` writes ``metrics.json``, ``scores.csv`` (path, label, score) and ``report.html`` into RUN.
``predict`` writes one heat-map PNG per image and ``scores.csv`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import io
import json
from pathlib import Path
from typing import Any

from msacl.cli.common import add_backbone, add_data, add_seed, backbone_for, info, report_skipped
from msacl.errors import CheckpointError, DataError, MsaclError

DETECTORS = ("padim", "patchcore", "igd", "fanogan", "msssim_ae", "dae")
# Settings the CLI fills in from its own flags/data when the detector's constructor has a parameter of that name.
CLI_KEYS = ("backbone", "image_size", "channels", "batch_size", "init_seed")

_EXAMPLES = {
    "fit": """\
examples:
  msacl fit --detector padim --data DIR --out runs/padim --image-size 256
  msacl fit --detector padim --data DIR --encoder runs/pre --out runs/padim      # MSACL pre-trained encoder
  msacl fit --detector padim --data DIR --encoder imagenet --out runs/padim_in   # ImageNet ResNet-18
  msacl fit --detector padim --data DIR --backbone tf_efficientnet_lite0 --encoder imagenet --out runs/lite0
  msacl fit --detector patchcore --data DIR --out runs/pc --set coreset_ratio=0.05
  msacl fit --detector igd --data DIR --out runs/igd --set epochs=50 --set local=true --encoder-local runs/pre_local
  msacl fit --detector padim --data DIR --out runs/x --print-config   # show every setting and exit

image size: --image-size N resizes to N x N; without it, the layout's paper size (folder layout: the images'
own size, which must then be square and common to all).
threshold (for IoU/Dice): best mean Dice on DIR/val when it has masks, otherwise the 0.99 quantile of the
pixel scores of --holdout (default 10%) of train/normal, held out from fitting. Stored in RUN/threshold.json.
""",
    "test": """\
examples:
  msacl test --run runs/padim                    # the test split of the data folder the run was fitted on
  msacl test --run runs/padim --data OTHER_DIR   # another folder with test/normal, test/abnormal[, test/masks]

writes RUN/metrics.json, RUN/scores.csv (path,label,score) and RUN/report.html
""",
    "predict": """\
examples:
  msacl predict --run runs/padim new_scans/ --out preds/
  msacl predict --run runs/padim case17.dcm --out preds/

writes one heat-map PNG per image and scores.csv (path,score,lesion_fraction) into --out
""",
}


def examples(verb: str) -> str:
    return _EXAMPLES.get(verb, "")


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    if verb == "fit":
        p.add_argument("--detector", required=True, choices=DETECTORS, help="anomaly detector to fit")
        add_data(p)
        p.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
        p.add_argument("--encoder", metavar="PATH|imagenet", default=None,
                       help="encoder weights: an `msacl pretrain` run directory, its encoder.pt, a state dict of "
                            "the backbone, or 'imagenet' (its ImageNet weights); default: random init")
        p.add_argument("--encoder-local", metavar="PATH", default=None,
                       help="weights of the local (32x32 patch) model's encoder, for detectors with local=true")
        add_backbone(p)
        p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per batch (default 32)")
        p.add_argument("--holdout", type=float, default=0.1, metavar="FRAC",
                       help="fraction of train/normal held out to set the IoU/Dice threshold when the data "
                            "has no val/ with masks (default 0.1; 0 = none)")
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default)")
        p.add_argument("--force", action="store_true", help="overwrite a run directory that has a detector")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--config", metavar="FILE.yaml",
                       help="YAML mapping of detector settings (a run's config.yaml works too)")
        p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                       help="one detector setting, e.g. --set n_features=200 or --set strides=[8,16] "
                            "(repeatable; --print-config lists them all)")
        p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
        add_seed(p)
    elif verb == "test":
        p.add_argument("--run", required=True, metavar="RUN", help="run directory written by `msacl fit`")
        add_data(p, required=False)
        p.set_defaults(channels=None, layout=None)
        p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
        p.add_argument("--device", default="auto", help="cpu, cuda, ... or auto (default)")
        p.add_argument("--no-report", action="store_true", help="skip report.html")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        add_seed(p)
    elif verb == "predict":
        p.add_argument("--run", required=True, metavar="RUN", help="run directory written by `msacl fit`")
        p.add_argument("input", metavar="IMAGE_OR_DIR",
                       help="an image (PNG, JPEG, TIFF, BMP, DICOM) or a folder of them (searched recursively)")
        p.add_argument("--out", required=True, metavar="DIR", help="folder for heat maps and scores.csv")
        p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
        p.add_argument("--device", default="auto", help="cpu, cuda, ... or auto (default)")


def run(args: argparse.Namespace) -> int:
    return {"fit": _fit, "test": _test, "predict": _predict}[args.verb](args)


# ---------------------------------------------------------------------------------------------------- helpers


def detector_defaults(cls: type) -> dict[str, Any]:
    """Constructor parameters of a detector class and their defaults (tuples as lists, for YAML)."""
    out = {}
    for name, prm in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or prm.kind in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD):
            continue
        d = None if prm.default is prm.empty else prm.default
        out[name] = list(d) if isinstance(d, tuple) else d
    return out


def resolve_detector_config(cls: type, config_file: str | None, overrides: list[str]) -> tuple[dict, set[str]]:
    """Defaults from the signature, updated by a YAML mapping and ``key=value`` overrides (values parsed as YAML).

    Returns the settings and the set of keys the user gave. Unknown keys are an error listing the valid ones.
    """
    import yaml

    from msacl.config import ConfigError, read_yaml_mapping

    cfg = detector_defaults(cls)
    given: dict[str, Any] = {}
    if config_file:
        data = read_yaml_mapping(config_file)
        data = data.get("detector_kwargs", data)  # also accept a run's config.yaml
        given.update(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        given[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    unknown = sorted(set(given) - set(cfg))
    if unknown:
        raise ConfigError(f"{cls.name}: unknown setting(s) {unknown}; valid settings are {sorted(cfg)}")
    cfg.update(given)
    return cfg, set(given)


def _open_run(path: str) -> tuple[Path, dict[str, Any]]:
    import yaml

    run = Path(path)
    if not run.is_dir():
        raise CheckpointError(f"{run}: run directory not found")
    if not (run / "detector.pt").is_file():
        raise CheckpointError(f"{run}: not a fitted run (no detector.pt); create one with `msacl fit --out {run}`")
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{run}/config.yaml: unreadable ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("command") != "fit":
        raise CheckpointError(f"{run}: config.yaml was not written by `msacl fit`")
    return run, cfg


def _read_threshold(run: Path) -> dict[str, Any]:
    p = run / "threshold.json"
    if not p.is_file():
        return {"threshold": None, "rule": "none (threshold.json missing)"}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: unreadable ({e})") from None


# ---------------------------------------------------------------------------------------------------- fit


def _fit(args: argparse.Namespace) -> int:
    import yaml

    from msacl.data import load_split
    from msacl.detectors import REGISTRY
    from msacl.pipeline import build_seeded, fit_detector, resolve_device
    from msacl.runs import RunDir, write_json

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
    if "init_seed" in kwargs and "init_seed" not in given:
        kwargs["init_seed"] = args.seed
    if "channels" in kwargs:
        kwargs["channels"] = args.channels
    image_size = args.image_size
    if image_size is None and "image_size" in given:
        image_size = kwargs["image_size"]
    if not 0 <= args.holdout < 1:
        raise MsaclError(f"--holdout must be in [0, 1), got {args.holdout}")
    config = {
        "command": "fit",
        "detector": args.detector,
        "detector_kwargs": kwargs,
        "data": {"root": str(args.data), "layout": args.layout, "channels": args.channels,
                 "image_size": image_size, "on_bad_file": args.on_bad_file},
        "encoder": args.encoder,
        "encoder_local": args.encoder_local,
        "batch_size": args.batch_size or 32,
        "holdout": args.holdout,
        "seed": args.seed,
    }
    if args.print_config:
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    out = Path(args.out)
    if (out / "detector.pt").exists() and not args.force:
        raise MsaclError(f"{out}: already holds a fitted detector; use another --out or --force")
    device = resolve_device(args.device)

    load = {"layout": args.layout, "channels": args.channels, "on_bad_file": args.on_bad_file,
            "cache_dir": args.cache_dir}
    train = load_split(args.data, "train", image_size=image_size, **load)
    if len(train) == 0:
        raise DataError(f"{args.data}: no training images")
    h, w = train.images.shape[-2:]
    if h != w:
        raise DataError(f"{args.data}: training images are {h}x{w}; pass --image-size N to resize them to N x N")
    image_size = int(h)
    config["data"]["image_size"] = image_size
    if "image_size" in kwargs:
        kwargs["image_size"] = image_size

    val = None
    if (Path(args.data) / "val").is_dir():
        val = load_split(args.data, "val", image_size=image_size, **load)
        if val.masks is None or not bool(val.masks.any()):
            info(f"{args.data}/val has no lesion masks: the threshold comes from held-out training normals")
            val = None
    det = build_seeded(args.detector, kwargs, args.seed)
    for part, source in (("global", args.encoder), ("local", args.encoder_local)):
        if source:
            try:
                info(f"{part} encoder: {det.load_encoder(source, part)}")
            except MsaclError as e:
                flag = "--encoder-local" if part == "local" else "--encoder"
                raise type(e)(f"{flag}: {e}") from None
    config["detector_kwargs"] = det.config

    run = RunDir.create(out, config=config, seed=args.seed, command="fit")
    report_skipped(run.path, train, val)
    info(f"fitting {args.detector} on {len(train)} images of {image_size} px ({device})")
    try:
        fit = fit_detector(det, train, val=val, holdout=args.holdout, seed=args.seed,
                           batch_size=config["batch_size"], device=device, progress=not args.quiet)
    except DataError as e:
        raise DataError(f"{args.data}: {e}") from None
    threshold, fit_s, held = fit.threshold, fit.fit_seconds, fit.held_out
    if held is not None:
        (run.path / "holdout.txt").write_text("\n".join(held.paths) + "\n")
    write_json(run.path / "threshold.json", threshold)
    det.cpu().save(run.path / "detector.pt")
    write_json(run.path / "fit.json", {"fit_seconds": round(fit_s, 3), "n_train": fit.n_train,
                                       "n_holdout": 0 if held is None else len(held), "image_size": image_size})
    print(f"fitted {args.detector} on {fit.n_train} images in {fit_s:.1f} s -> {run.path / 'detector.pt'}")
    if threshold["threshold"] is not None:
        print(f"threshold {threshold['threshold']:.4g} ({threshold['rule']})")
    print(f"next: msacl test --run {run.path}")
    return 0


# ---------------------------------------------------------------------------------------------------- test


def _test(args: argparse.Namespace) -> int:
    from msacl.data import load_split
    from msacl.detectors import Detector
    from msacl.pipeline import resolve_device, test_detector
    from msacl.runs import write_json

    run, cfg = _open_run(args.run)
    data_cfg = cfg.get("data", {})
    data = args.data or data_cfg.get("root")
    if not data:
        raise MsaclError("no --data given and the run does not name its data folder")
    size = int(data_cfg["image_size"])
    if args.image_size is not None and args.image_size != size:
        info(f"--image-size {args.image_size} ignored: the detector was fitted at {size} px, images are "
             f"resized to that")
    det = Detector.load(run / "detector.pt")
    device = resolve_device(args.device)
    test = load_split(data, "test", image_size=size, channels=args.channels or data_cfg.get("channels", 3),
                      layout=args.layout or data_cfg.get("layout", "folder"), on_bad_file=args.on_bad_file,
                      cache_dir=args.cache_dir)
    report_skipped(run, test)
    if len(test) == 0:
        raise DataError(f"{data}: no test images")
    thr = _read_threshold(run)
    metrics, scores, maps = test_detector(det, test, threshold=thr.get("threshold"), seed=args.seed,
                                          batch_size=args.batch_size, device=device, progress=not args.quiet)
    if test.masks is not None and thr.get("threshold") is not None:
        metrics["threshold_rule"] = thr.get("rule")
    metrics["detector"] = cfg.get("detector")
    metrics["test_data"] = str(data)
    write_json(run / "metrics.json", metrics)
    _write_csv(run / "scores.csv", ["path", "label", "score"],
               [[p, int(l), f"{float(s):.6g}"] for p, l, s in zip(test.paths, test.labels, scores, strict=True)])
    report = None
    if not args.no_report:
        from msacl.report import write_report

        report = write_report(run, images=test.images, labels=test.labels, scores=scores,
                              maps=maps, masks=test.masks, paths=test.paths, metrics=metrics,
                              title=f"{cfg.get('detector')} on {Path(str(data)).name}")
    _print_summary(metrics)
    print(f"metrics: {run / 'metrics.json'}   scores: {run / 'scores.csv'}")
    if report is not None:
        print(f"report:  {report}")
    return 0


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    from msacl.runs import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_summary(m: dict[str, Any]) -> None:
    line = (f"{m.get('n_normal')} normal / {m.get('n_abnormal')} abnormal test images: "
            f"image AUROC {_fmt(m.get('image_auroc'))}")
    if m.get("image_auroc_ci_low") is not None:
        line += f" [{_fmt(m['image_auroc_ci_low'])}, {_fmt(m['image_auroc_ci_high'])}]"
    print(line)
    if "pixel_auroc" in m:
        print(f"pixel AUROC {_fmt(m.get('pixel_auroc'))}  AUPRO {_fmt(m.get('aupro'))}  "
              f"IoU {_fmt(m.get('iou'))}  Dice {_fmt(m.get('dice'))}  "
              f"(oracle IoU {_fmt(m.get('iou_oracle'))}  Dice {_fmt(m.get('dice_oracle'))})")
    for note in m.get("notes") or []:
        print(f"note: {note}")


# ---------------------------------------------------------------------------------------------------- predict


def _list_inputs(path: Path) -> list[Path]:
    from msacl.data.readers import is_hidden, is_image_file

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(is_hidden(q) for q in p.relative_to(path).parts) and is_image_file(p))
    if not files:
        raise DataError(f"{path}: no image or DICOM files found")
    return files


def _predict(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from msacl.data import read_image
    from msacl.detectors import Detector
    from msacl.pipeline import resolve_device
    from msacl.report.plots import heatmap_png

    run, cfg = _open_run(args.run)
    size = int(cfg["data"]["image_size"])
    channels = int(cfg["data"].get("channels", 3))
    src = Path(args.input)
    files = _list_inputs(src)
    det = Detector.load(run / "detector.pt")
    device = resolve_device(args.device)
    det.to(device)
    thr = _read_threshold(run)
    # One colour scale for every image (the range of the maps the threshold was set on), so a calm image
    # looks calm; without it each heat map is scaled to its own range.
    vmin, vmax = thr.get("display_range") or (None, None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for i in tqdm(range(0, len(files), args.batch_size), desc="predict", unit="batch"):
        chunk = files[i : i + args.batch_size]  # read per batch: memory does not grow with the folder
        images = torch.stack([read_image(f, channels=channels, image_size=size) for f in chunk])
        scores, maps = det.predict(images.to(device))
        for f, img, s, m in zip(chunk, images, scores.cpu(), maps.cpu(), strict=True):
            rel = f.relative_to(src) if src.is_dir() else Path(f.name)
            name = "__".join(rel.with_suffix("").parts) + "_heatmap.png"
            while name in used:
                name = "_" + name
            used.add(name)
            heatmap_png(img, m, out / name, threshold=thr.get("threshold"), vmin=vmin, vmax=vmax,
                        title=f"{rel}  score {float(s):.3g}")
            frac = "" if thr.get("threshold") is None else f"{float((m >= thr['threshold']).float().mean()):.4f}"
            rows.append([str(f), f"{float(s):.6g}", frac, name])
    _write_csv(out / "scores.csv", ["path", "score", "lesion_fraction", "heatmap"], rows)
    print(f"{len(files)} image(s) scored -> {out / 'scores.csv'}, heat maps in {out}")
    return 0
