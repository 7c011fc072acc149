"""Apply a fitted run to new images: what ``msacl predict``, ``msacl serve`` and ``msacl export`` share.

:class:`FittedRun` loads a run directory once (detector, input size and channels, calibration) and turns
one image file into a :class:`Prediction`: score, normal / abnormal decision at the run's calibrated
threshold (:mod:`msacl.calibrate`), the flagged share of the image, and the heat map at the input's own
size. The detector sees the image as it saw its training images (resized to N x N, the run's channels).

An input whose colour differs from the training images' (a grey DICOM against a model fitted on colour
photographs, or the reverse) is refused with a message naming the file, since its score is not
comparable: the same content scores differently in grey and in colour. ``convert_channels=True``
converts it (grey repeated into three channels, or colour to ITU-R 601 luma) and the prediction's
``note`` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msacl.errors import CheckpointError, DataError
from msacl.records import ThresholdRecord

COLOUR = {1: "grey", 3: "colour"}
NO_CALIBRATION = ("{run} has no calibration.json (fitted with --holdout 0 and no val/, or by an older msacl): "
                  "scores only, no normal/abnormal decision; refit with --holdout 0.1 to get decisions")


def open_run(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A run directory written by ``msacl fit`` and its ``config.yaml``; CheckpointError naming the problem."""
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


def read_json(path: Path, missing: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run's JSON file, ``missing`` when absent; CheckpointError naming the file when unreadable."""
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def read_threshold(run: Path) -> ThresholdRecord:
    """``threshold.json`` (the IoU / Dice threshold and the heat maps' colour range)."""
    missing = {"threshold": None, "rule": "none (threshold.json missing)"}
    return ThresholdRecord.from_dict(read_json(run / "threshold.json", missing) or missing)


def run_decision(run: Path, fpr: float) -> dict[str, Any] | None:
    """Thresholds at ``fpr`` from ``RUN/calibration.json`` (None for a run fitted without held-out normals)."""
    from msacl.calibrate import decide

    cal = read_json(run / "calibration.json", None)
    return None if cal is None else decide(cal, fpr)


def source_channels(paths: list[str], limit: int = 32) -> int | str:
    """Channels of the source files (1 grey, 3 colour, or "mixed"), from up to ``limit`` evenly spaced files.

    Training images are converted to the run's ``channels`` when loaded, so the tensors no longer say
    whether the sources were grey; this is what new inputs are compared with.
    """
    from msacl.data.readers import decode

    if not paths:
        return "mixed"
    pick = sorted({round(i * (len(paths) - 1) / max(1, limit - 1)) for i in range(min(limit, len(paths)))})
    seen = {decode(paths[i]).channels for i in pick}
    return seen.pop() if len(seen) == 1 else "mixed"


@dataclass
class Prediction:
    """One scored image.

    Attributes:
        path: the input (file name for uploads).
        score: image anomaly score.
        decision: "abnormal" / "normal" at the calibrated threshold, or None without calibration.
        threshold: the image threshold (None without calibration).
        pixel_threshold: map values above it are flagged (None without calibration).
        lesion_fraction: share of the image's area flagged (None without calibration).
        image: the input at its own size, float in [0, 1]. Shape: (H, W) or (H, W, 3).
        heatmap: the anomaly map resized to the input's size. Shape: (H, W).
        flagged: pixels above the pixel threshold at the input's size, or None. Shape: (H, W).
        note: what was converted, or "".
    """

    path: str
    score: float
    decision: str | None
    threshold: float | None
    pixel_threshold: float | None
    lesion_fraction: float | None
    image: np.ndarray
    heatmap: np.ndarray
    flagged: np.ndarray | None = None
    note: str = ""


class FittedRun:
    """A fitted run, loaded once, applied to image files.

    Args:
        run: run directory written by ``msacl fit``.
        fpr: target false-positive rate of the decisions.
        device: torch device for the detector.
        convert_channels: convert (instead of refusing) inputs whose colour differs from the training images.

        model = FittedRun("runs/padim"); p = model.predict_files(["scan.dcm"])[0]; p.score, p.decision
    """

    def __init__(self, run: str | Path, *, fpr: float = 0.05, device: str | torch.device = "cpu",
                 convert_channels: bool = False):
        from msacl.detectors import Detector

        self.path, self.config = open_run(run)
        data = self.config.get("data") or {}
        self.size = int(data["image_size"])
        self.channels = int(data.get("channels") or 3)
        # Runs fitted before source_channels was recorded: the model's channels are the best guess.
        self.source_channels: int | str = data.get("source_channels", self.channels)
        self.source_known = "source_channels" in data
        self.detector = Detector.load(self.path / "detector.pt").to(device).eval()
        self.device = torch.device(device)
        self.convert_channels = convert_channels
        thr = read_threshold(self.path)
        self.display_range = thr.display_range
        self.decision = run_decision(self.path, fpr)
        self.fpr = fpr

    @property
    def threshold(self) -> float | None:
        return None if self.decision is None else float(self.decision["image"]["threshold"])

    @property
    def pixel_threshold(self) -> float | None:
        return None if self.decision is None else float(self.decision["pixel"]["threshold"])

    def colour_range(self) -> tuple[float | None, float | None]:
        """One colour scale for every heat map: the held-out maps' range, stretched to show the threshold."""
        lo, hi = self.display_range or (None, None)
        t = self.pixel_threshold
        if t is not None and hi is not None and lo is not None and t >= hi:
            hi = t + 0.1 * (t - lo)
        return lo, hi

    def load(self, path: str | Path, *, name: str | None = None) -> tuple[torch.Tensor, np.ndarray, str]:
        """Decode one file: the detector's input, the image at its own size for display, and a conversion note.

        Args:
            path: PNG, JPEG, BMP, TIFF, WebP or DICOM file.
            name: how messages name the input (default: ``path``).

        Returns:
            ``(x, image, note)``; x Shape: (C, N, N) with C the run's channels; image Shape: (H, W) or (H, W, 3).

        Raises:
            DataError: unreadable, or of another colour than the training images without ``convert_channels``.
        """
        from msacl.data.readers import decode, resize, to_channels, to_tensor

        label = name or str(path)
        try:
            d = decode(path)
        except DataError as e:
            raise DataError(str(e).replace(str(path), label, 1)) from None
        note = ""
        src = self.source_channels
        channels = self.channels
        if src in (1, 3) and d.channels != src:
            what = (f"{label}: a {COLOUR[d.channels]} image ({d.mode}), but {self.path} was "
                    f"fitted on {COLOUR[src]} images")
            if not self.source_known:
                what += f" (its {self.channels}-channel input; the run does not record its sources' colour)"
            if not self.convert_channels:
                raise DataError(f"{what}: its score would not be comparable; pass --convert-channels to convert it "
                                f"({'repeat the grey channel' if src == 3 else 'colour to grey'}) or use a run "
                                f"fitted on {COLOUR[d.channels]} images")
            note = "grey converted to colour (channel repeated)" if src == 3 else "colour converted to grey (luma)"
        if note.startswith("colour converted") and channels == 3:
            # A grey-trained run with 3-channel input saw grey repeated three times: give it exactly that.
            x = to_tensor(to_channels(resize(d.image.convert("L") if d.image.mode == "RGB" else d.image,
                                             self.size), 3))
        else:
            x = to_tensor(to_channels(resize(d.image, self.size), channels))
        shown = to_channels(d.image, 3 if d.channels == 3 else 1)
        shown = shown.astype(np.float32) / 255.0 if shown.dtype == np.uint8 else shown.astype(np.float32)
        image = shown[..., 0] if shown.shape[2] == 1 else shown
        return x, image, note

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The detector on a batch. Shape: (B, C, N, N) -> scores (B,), maps (B, 1, N, N) on CPU."""
        s, m = self.detector.predict(x.to(self.device))
        return s.float().cpu(), m.float().cpu()

    def finish(self, path: str, score: float, amap: torch.Tensor, image: np.ndarray, note: str) -> Prediction:
        """Decision, flagged share and the heat map at the input's size for one scored image."""
        import torch.nn.functional as F

        h, w = image.shape[:2]
        native = F.interpolate(amap.reshape(1, 1, *amap.shape[-2:]), size=(h, w), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
        t, tp = self.threshold, self.pixel_threshold
        decision = frac = flagged = None
        if t is not None and tp is not None:
            decision = "abnormal" if score > t else "normal"
            # Flagged at the detector's resolution, where the threshold was calibrated (bilinear resizing
            # lowers peaks), then shown at the input's size.
            hot = (amap.reshape(1, 1, *amap.shape[-2:]) > tp).float()
            frac = float(hot.mean())
            flagged = F.interpolate(hot, size=(h, w), mode="nearest")[0, 0].numpy() > 0.5
        return Prediction(path, float(score), decision, t, tp, frac, image, native, flagged, note)

    def predict_files(self, paths: list[str | Path]) -> list[Prediction]:
        """Score files (one batch); DataError on the first bad one."""
        loaded = [self.load(p) for p in paths]
        if not loaded:
            return []
        s, m = self.score(torch.stack([x for x, _, _ in loaded]))
        return [self.finish(str(p), float(s[i]), m[i], img, note)
                for i, (p, (_, img, note)) in enumerate(zip(paths, loaded, strict=True))]

    def heatmap_png(self, p: Prediction, title: str | None = None) -> bytes:
        """The overlay figure of :func:`msacl.report.heatmap.overlay_png` for one prediction."""
        from msacl.report.heatmap import overlay_png

        vmin, vmax = self.colour_range()
        if title is None:
            title = f"{Path(p.path).name}  score {p.score:.4g}"
            if p.decision is not None:
                title += f"  {p.decision.upper()} (threshold {p.threshold:.4g}, FPR {self.fpr:g})"
        return overlay_png(p.image, p.heatmap, threshold=p.pixel_threshold, flagged=p.flagged, vmin=vmin,
                           vmax=vmax, title=title)

    def summary(self) -> dict[str, Any]:
        """What the decisions rest on, for ``decision.json`` and ``/health`` (``image`` None without calibration)."""
        base = {"run": str(self.path), "detector": self.config.get("detector"), "image_size": self.size,
                "channels": self.channels, "source_channels": self.source_channels, "fpr": self.fpr}
        if self.decision is None:
            return {**base, "image": None, "pixel": None, "warnings": [NO_CALIBRATION.format(run=self.path)]}
        return {**base, **self.decision}
