"""``msacl test``: score a fitted run's test split and write what it found.

``test`` writes ``metrics.json``, ``decision.json`` (the normal / abnormal calls at the run's calibrated threshold,
see ``msacl.metrics.calibrate``), ``scores.csv`` (path, label, score, decision) and ``report.html`` into RUN.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msacl.cli.common import add_data, add_device, add_fpr, add_seed, info, positive_int, report_skipped, write_csv
from msacl.errors import DataError, MsaclError

if TYPE_CHECKING:
    import torch

    from msacl.data.types import ImageSet
    from msacl.metrics.records import Metrics
    from msacl.runs.fitted import FitRun

_EXAMPLES = """\
examples:
  msacl test --run runs/padim                    # the test split of the data folder the run was fitted on
  msacl test --run runs/padim --data OTHER_DIR   # another folder with test/normal, test/abnormal[, test/masks]
  msacl test --run runs/padim --fpr 0.01         # decide normal/abnormal at a 1% false-positive rate

writes RUN/metrics.json, RUN/decision.json, RUN/scores.csv (path,label,score,decision) and RUN/report.html
"""


def examples(verb: str) -> str:
    return _EXAMPLES


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="run directory written by `msacl fit`")
    add_data(p, required=False)
    p.set_defaults(channels=None, layout=None)
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="images per batch (default 32)")
    add_device(p)
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_fpr(p)
    add_seed(p)


def run(args: argparse.Namespace) -> int:
    return _test(args)


def _decide(run: FitRun, fpr: float, metrics: Metrics, test: ImageSet, scores: torch.Tensor,
            maps: torch.Tensor) -> list[str]:
    """Normal / abnormal calls of the test images at the run's calibrated threshold (``""`` each without
    calibration); their metrics go into ``metrics.decision`` and ``RUN/decision.json``."""
    from msacl.deploy.inference import NO_CALIBRATION
    from msacl.metrics.calibrate import evaluate_decision
    from msacl.metrics.records import DecisionMetrics
    from msacl.runs import write_json

    decision = run.decision(fpr)
    if decision is None:
        info(f"note: {NO_CALIBRATION.format(run=run.path)}")
        return [""] * len(scores)
    for w in decision["warnings"]:
        info(f"warning: {w}")
    record = evaluate_decision(decision, scores, test.labels, maps, test.masks)
    metrics.decision = DecisionMetrics.from_dict(record["metrics"])
    write_json(run.path / "decision.json", record)
    return ["abnormal" if float(s) > decision["image"]["threshold"] else "normal" for s in scores]


def _test(args: argparse.Namespace) -> int:
    from msacl.data import load_split
    from msacl.detectors.pipeline import resolve_device, test_detector
    from msacl.runs import write_json
    from msacl.runs.fitted import FitRun

    fitted = FitRun.open(args.run)
    run, data_cfg = fitted.path, fitted.config.data
    data = args.data or data_cfg.root
    if not data:
        raise MsaclError("no --data given and the run does not name its data folder")
    size = fitted.image_size
    if args.image_size is not None and args.image_size != size:
        info(f"--image-size {args.image_size} ignored: the detector was fitted at {size} px, images are "
             f"resized to that")
    # as `predict` and `serve` refuse an image of another colour: its score is not comparable
    fitted.check_channels(args.channels)
    det = fitted.load_detector()
    device = resolve_device(args.device)
    test = load_split(data, "test", image_size=size, channels=fitted.channels,
                      layout=args.layout or data_cfg.layout, on_bad_file=args.on_bad_file,
                      cache_dir=args.cache_dir)
    report_skipped(run, test)
    if len(test) == 0:
        raise DataError(f"{data}: no test images")
    thr = fitted.threshold()
    metrics, scores, maps = test_detector(det, test, threshold=thr.threshold, seed=args.seed,
                                          batch_size=args.batch_size, device=device, progress=not args.quiet)
    if metrics.pixel is not None and thr.threshold is not None:
        metrics.pixel.threshold_rule = thr.rule
    metrics.detector = fitted.config.detector
    metrics.test_data = str(data)
    calls = _decide(fitted, args.fpr, metrics, test, scores, maps)
    write_json(run / "metrics.json", metrics.to_dict())
    write_csv(run / "scores.csv", ["path", "label", "score", "decision"],
               [[p, int(l), f"{float(s):.6g}", c]
                for p, l, s, c in zip(test.paths, test.labels, scores, calls, strict=True)])
    report = None
    if not args.no_report:
        from msacl.report import write_report

        report = write_report(run, images=test.images, labels=test.labels, scores=scores,
                              maps=maps, masks=test.masks, paths=test.paths, metrics=metrics,
                              title=f"{fitted.config.detector} on {Path(str(data)).name}",
                              score_threshold=None if metrics.decision is None else metrics.decision.threshold)
    _print_summary(metrics)
    print(f"metrics: {run / 'metrics.json'}   scores: {run / 'scores.csv'}")
    if report is not None:
        print(f"report:  {report}")
    return 0


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_summary(m: Metrics) -> None:
    line = f"{m.n_normal} normal / {m.n_abnormal} abnormal test images: image AUROC {_fmt(m.image_auroc)}"
    if m.image_auroc_ci_low is not None:
        line += f" [{_fmt(m.image_auroc_ci_low)}, {_fmt(m.image_auroc_ci_high)}]"
    print(line)
    if (p := m.pixel) is not None:
        print(f"pixel AUROC {_fmt(p.pixel_auroc)}  AUPRO {_fmt(p.aupro)}  IoU {_fmt(p.iou)}  Dice {_fmt(p.dice)}  "
              f"(oracle IoU {_fmt(p.iou_oracle)}  Dice {_fmt(p.dice_oracle)})")
    if (d := m.decision) is not None and d.threshold is not None:
        print(f"decision at FPR {d.fpr_target:g}: threshold {d.threshold:.4g} "
              f"(n={d.n} held-out normals): test FPR {_fmt(d.test_fpr)}  sensitivity {_fmt(d.test_sensitivity)}")
    for note in m.notes:
        print(f"note: {note}")

