"""Fit a detector and score a split: the steps ``msacl fit`` / ``msacl test`` and ``msacl bench`` share.

The steps, in order: :func:`image_size_of` (the one place that decides the image size of a run: the side of
the loaded training images), :func:`prepare_detector` (build it for those images, seeded, with its encoder
weights), :func:`fit_detector` (fit and choose the threshold), :func:`test_detector` (metrics of a test split).

The threshold rule for IoU / Dice (see ``msacl.metrics``): best Dice on a validation split with lesion masks
when the data has one; otherwise a fraction ``holdout`` of train/normal is held out from fitting and the
threshold is the 0.99 quantile of the pixel scores of those held-out normal images.

The normal images of that validation split or hold-out are also the calibration set of ``msacl.metrics.calibrate``
(decisions at a target false-positive rate): :func:`fit_detector` returns their scores and map maxima.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msacl.config import ConfigError
from msacl.data.types import ImageSet
from msacl.detectors import REGISTRY, Detector, batches, build_detector
from msacl.detectors.options import option_names
from msacl.errors import DataError, MsaclError
from msacl.metrics.records import Metrics, ThresholdRecord
from msacl.runs import make_generator, seeded
from msacl.runs.hardware import tune_backends


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise MsaclError(f"--device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MsaclError(f"--device {name}: CUDA is not available on this machine")
    tune_backends(dev)
    return dev


def predict_all(det: Detector, images: torch.Tensor, batch_size: int, device: torch.device | str = "cpu", *,
                progress: bool = False, desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (N,) and maps (N, 1, H, W) of a whole split, batch by batch, on CPU."""
    from tqdm.auto import tqdm

    scores, maps = [], []
    n = math.ceil(images.shape[0] / batch_size)
    for x in tqdm(batches(images, batch_size), total=n, desc=desc, unit="batch", disable=not progress):
        s, m = det.predict(x.to(device))
        scores.append(s.float().cpu())
        maps.append(m.float().cpu())
    return torch.cat(scores), torch.cat(maps)


def hold_out(train: ImageSet, fraction: float, generator: torch.Generator) -> tuple[ImageSet, ImageSet | None]:
    """Split ``fraction`` of the training images off (seeded) for choosing the threshold."""
    if not 0 <= fraction < 1:
        raise MsaclError(f"holdout must be in [0, 1), got {fraction}")
    if fraction == 0:
        return train, None
    n_hold = max(1, round(fraction * len(train)))
    if len(train) - n_hold < 2:
        raise DataError(f"{len(train)} training images are too few to hold out {n_hold} (use --holdout 0)")
    perm = torch.randperm(len(train), generator=generator)
    return train.subset(perm[n_hold:].sort().values), train.subset(perm[:n_hold].sort().values)


@dataclass
class FitResult:
    detector: Detector
    threshold: ThresholdRecord
    fit_seconds: float
    n_train: int
    held_out: ImageSet | None = None
    calibration: dict[str, Any] | None = None


def build_seeded(name: str, kwargs: dict[str, Any], seed: int) -> Detector:
    """Build a detector whose random initialisation depends on ``seed`` only.

    torch initialises layers from its global generator; it is seeded here (:func:`msacl.runs.seeded`) so
    that library callers never see their global RNG changed and the same seed gives the same detector.
    """
    with seeded(seed):
        try:
            return build_detector(name, **kwargs)
        except ConfigError:
            raise  # already one line naming the setting
        except (TypeError, ValueError) as e:
            raise MsaclError(f"{name}: {e}") from None


def image_size_of(images: torch.Tensor, where: str = "the training images") -> int:
    """The image size a detector is built, fitted and tested at, and that a run records: the side of the
    loaded training images ``images`` (N, C, S, S). Raises ``DataError`` for images that are not square."""
    h, w = images.shape[-2:]
    if h != w:
        raise DataError(f"{where} are {h}x{w}; pass --image-size N to resize them to N x N")
    return int(h)


def prepare_detector(
    name: str,
    settings: Mapping[str, Any],
    train: ImageSet,
    *,
    seed: int,
    encoders: Mapping[str, str | Path | None] | None = None,
    flags: Mapping[str, str] | None = None,
    where: str = "the training images",
) -> tuple[Detector, dict[str, str]]:
    """Build detector ``name`` for the images of ``train`` and load its encoder weights.

    ``settings`` are the detector's settings; ``image_size`` (from :func:`image_size_of`, whose error names
    the images by ``where``) and ``channels`` are set from ``train`` for a detector that has them. The random
    initialisation depends on ``seed`` only (:func:`build_seeded`). ``encoders`` maps an encoder part
    (``"global"``, ``"local"``) to its weights (see :meth:`Detector.load_encoder`; None or empty leaves that
    part as built); an error names the part by ``flags[part]`` when given (e.g. ``--encoder``). Returns the
    detector and a description of the weights loaded into each part.
    """
    kwargs = dict(settings)
    params = option_names(name) if name in REGISTRY else []
    if "image_size" in params:
        kwargs["image_size"] = image_size_of(train.images, where)
    if "channels" in params:
        kwargs["channels"] = int(train.images.shape[1])
    if "init_seed" in params and "init_seed" not in kwargs:
        kwargs["init_seed"] = seed  # the random initialisation follows the run's seed
    det = build_seeded(name, kwargs, seed)
    loaded = {}
    for part, source in (encoders or {}).items():
        if not source:
            continue
        try:
            loaded[part] = det.load_encoder(source, part)
        except MsaclError as e:
            raise type(e)(f"{(flags or {}).get(part, f'{part} encoder')}: {e}") from None
    return det, loaded


def fit_detector(
    det: Detector,
    train: ImageSet,
    *,
    val: ImageSet | None = None,
    holdout: float = 0.1,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> FitResult:
    """Fit ``det`` on the normal images of ``train`` and choose the IoU / Dice threshold (module docstring)."""
    from msacl.metrics import select_threshold

    g = make_generator(seed)
    held = None
    if val is not None and (val.masks is None or not bool(val.masks.any())):
        val = None
    if val is None:
        train, held = hold_out(train, holdout, g)
    det.to(device)
    t0 = time.perf_counter()
    det.fit(batches(train.images, batch_size), generator=g, progress=progress)
    fit_s = time.perf_counter() - t0
    threshold = ThresholdRecord(None, "none: no val/ masks and no held-out normals")
    ref = val if val is not None else held
    calibration = None
    if ref is not None:
        desc = "val maps" if val is not None else "held-out maps"
        scores, maps = predict_all(det, ref.images, batch_size, device, progress=progress, desc=desc)
        # Best Dice on val/ masks; without masks the 0.99 quantile of the held-out normals' pixel scores.
        t, rule = select_threshold(maps, val.masks if val is not None else None, quantile=0.99)
        # display_range: one colour scale for every heat map of `msacl predict` (the range of these maps).
        threshold = ThresholdRecord(t, rule, display_range=(float(maps.min()), float(maps.max())))
        calibration = calibration_record(ref, scores, maps, "val/normal" if val is not None else
                                         "held-out train/normal (holdout.txt)")
    return FitResult(det, threshold, fit_s, len(train), held, calibration)


def calibration_record(ref: ImageSet, scores: torch.Tensor, maps: torch.Tensor, source: str) -> dict[str, Any] | None:
    """What ``msacl.metrics.calibrate`` needs from normal images the detector never saw: their image scores and the
    largest value of each one's map (the run's ``calibration.json``); None when ``ref`` has no normal image."""
    normal = ref.labels == 0
    if not bool(normal.any()):
        return None
    idx = torch.nonzero(normal).ravel().tolist()
    return {"source": source, "n": len(idx), "image_scores": [float(scores[i]) for i in idx],
            "map_max": [float(maps[i].max()) for i in idx], "paths": [ref.paths[i] for i in idx]}


def test_detector(det: Detector, test: ImageSet, *, threshold: float | None = None, seed: int = 0,
                  batch_size: int = 32, device: torch.device | str = "cpu", progress: bool = False,
                  ) -> tuple[Metrics, torch.Tensor, torch.Tensor]:
    """Metrics (of ``msacl.metrics.evaluate``), scores (N,) and maps (N, 1, H, W) of a test split."""
    from msacl.metrics import evaluate

    if len(test) == 0:
        raise DataError("no test images")
    t0 = time.perf_counter()
    scores, maps = predict_all(det.to(device), test.images, batch_size, device, progress=progress, desc="test")
    test_s = time.perf_counter() - t0
    has_masks = test.masks is not None and bool(test.masks.any())
    metrics = Metrics.from_dict(evaluate(scores, test.labels, maps if has_masks else None,
                                         test.masks if has_masks else None, threshold=threshold,
                                         generator=make_generator(seed)))
    metrics.test_seconds = round(test_s, 3)
    return metrics, scores, maps
