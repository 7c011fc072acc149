"""A fitted run: the one place that writes and reads what ``msacl fit`` leaves in its run directory.

``fit`` creates it (:meth:`FitRun.create`, then :meth:`FitRun.save`); ``test``, ``predict``, ``serve`` and
``export`` open it (:meth:`FitRun.open`) and read the detector, the image size, the channels, the threshold
and the calibrated decision through it, so every verb applies the same checks. The files:

* ``config.yaml``: :class:`FitConfig` (the detector and its settings, the data options, the encoders, batch
  size, hold-out and seed). The image size lives in ``data.image_size`` alone; the detector's settings
  (``detector_kwargs``) leave it out and get it back from there;
* ``detector.pt``: the fitted detector (name, settings, state dict);
* ``threshold.json``: the IoU / Dice threshold and the heat maps' colour range (:class:`ThresholdRecord`);
* ``calibration.json``: scores of held-out normal images, from which :mod:`msacl.metrics.calibrate` decides normal /
  abnormal at any false-positive rate (absent without held-out normals);
* ``holdout.txt``: the training images held out from fitting; ``fit.json``: fit time and counts;
* ``command.txt`` and ``meta.json`` (:class:`msacl.runs.RunDir`); ``fit_checkpoint.pt`` while a detector that
  trains is being fitted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msacl.config import ConfigError, from_dict, to_dict
from msacl.data.options import DataOptions
from msacl.errors import CheckpointError, DataError
from msacl.metrics.records import ThresholdRecord
from msacl.runs.atomic_io import write_json
from msacl.runs.rundir import RunDir

if TYPE_CHECKING:
    import torch

    from msacl.detectors import Detector
    from msacl.detectors.pipeline import FitResult

COLOUR = {1: "grey", 3: "colour"}


@dataclass
class FitConfig:
    """What ``msacl fit`` was asked to do: a fitted run's ``config.yaml``.

    Attributes:
        detector: the detector's registry name.
        detector_kwargs: its settings (the fields of its options dataclass) but ``image_size``, which is
            ``data.image_size``.
        data: how the training images were read.
        encoder, encoder_local: the weights the encoder(s) started from (a run, a file, ``imagenet``; None:
            random).
        batch_size, holdout, seed: as ``msacl fit`` took them.
        command: ``fit`` (what tells a fitted run's config from a pre-training run's).
    """

    detector: str
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    data: DataOptions = field(default_factory=DataOptions)
    encoder: str | None = None
    encoder_local: str | None = None
    batch_size: int = 32
    holdout: float = 0.1
    seed: int = 0
    command: str = "fit"

    def detector_settings(self) -> dict[str, Any]:
        """The detector's settings with its image size, as its options take them."""
        out = dict(self.detector_kwargs)
        if self.data.image_size is not None:
            out["image_size"] = self.data.image_size
        return out

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        d["detector_kwargs"].pop("image_size", None)
        # the order a reader scans config.yaml in: what was fitted, on what, from what
        order = ("command", "detector", "detector_kwargs", "data", "encoder", "encoder_local", "batch_size",
                 "holdout", "seed")
        return {k: d[k] for k in order}


class FitRun:
    """A fitted run directory (module docstring).

        run = FitRun.open("runs/padim"); det = run.load_detector(); run.image_size, run.decision(0.05)
    """

    def __init__(self, path: str | Path, config: FitConfig):
        self.path = Path(path)
        self.config = config

    # ------------------------------------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: str | Path, config: FitConfig) -> FitRun:
        """Start a run directory with ``config.yaml``, ``command.txt`` and ``meta.json``."""
        RunDir.create(path, config=config.to_dict(), seed=config.seed, command="fit")
        return cls(path, config)

    @classmethod
    def open(cls, path: str | Path) -> FitRun:
        """A run written by ``msacl fit``; CheckpointError naming the file and the problem."""
        import yaml

        run = Path(path)
        if not run.is_dir():
            raise CheckpointError(f"{run}: run directory not found")
        if not (run / "detector.pt").is_file():
            raise CheckpointError(f"{run}: not a fitted run (no detector.pt); create one with `msacl fit --out {run}`")
        try:
            raw = yaml.safe_load((run / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"{run}/config.yaml: unreadable ({e})") from None
        if not isinstance(raw, dict) or raw.get("command") != "fit":
            raise CheckpointError(f"{run}: config.yaml was not written by `msacl fit`")
        try:
            config = from_dict(FitConfig, raw, where=f"{run}/config.yaml")
        except (ConfigError, TypeError) as e:
            raise CheckpointError(str(e)) from None
        if config.data.image_size is None:
            raise CheckpointError(f"{run}/config.yaml: data.image_size is missing")
        return cls(run, config)

    # ------------------------------------------------------------------------------------------ what it holds

    @property
    def image_size(self) -> int:
        """The side N of the N x N images the detector takes."""
        return int(self.config.data.image_size)  # type: ignore[arg-type]  # open() checks it is set

    @property
    def channels(self) -> int:
        return int(self.config.data.channels)

    @property
    def source_channels(self) -> int | str:
        """The training files' channels (1, 3 or "mixed"), which new inputs are compared with."""
        src = self.config.data.source_channels
        return self.channels if src is None else src

    def load_detector(self, device: str | torch.device = "cpu") -> Detector:
        """``detector.pt``, in eval mode on ``device``; CheckpointError when it disagrees with ``config.yaml``."""
        from msacl.detectors import Detector

        det = Detector.load(self.path / "detector.pt")
        if det.name != self.config.detector:
            raise CheckpointError(f"{self.path}/detector.pt holds a {det.name} detector, config.yaml says "
                                  f"{self.config.detector}")
        size = getattr(det.options, "image_size", self.image_size)
        if size not in (self.image_size, [self.image_size, self.image_size]):
            raise CheckpointError(f"{self.path}/detector.pt takes {size} px images, config.yaml says "
                                  f"{self.image_size}")
        return det.to(device).eval()

    def threshold(self) -> ThresholdRecord:
        """``threshold.json`` (the IoU / Dice threshold and the heat maps' colour range)."""
        missing = {"threshold": None, "rule": "none (threshold.json missing)"}
        return ThresholdRecord.from_dict(self._json("threshold.json") or missing)

    def calibration(self) -> dict[str, Any] | None:
        """``calibration.json``: the held-out normal images' scores (None for a run fitted without them)."""
        return self._json("calibration.json")

    def decision(self, fpr: float) -> dict[str, Any] | None:
        """Image and pixel thresholds at ``fpr`` (:func:`msacl.metrics.calibrate.decide`), None without calibration."""
        from msacl.metrics.calibrate import decide

        cal = self.calibration()
        return None if cal is None else decide(cal, fpr)

    def check_channels(self, channels: int | None, flag: str = "--channels") -> None:
        """Refuse ``channels`` other than the run's: scores of images of another colour are not comparable."""
        if channels is not None and channels != self.channels:
            raise DataError(f"{flag} {channels}: {self.path} was fitted on {self.channels}-channel images, and "
                            f"scores of {channels}-channel images are not comparable with them (the same content "
                            f"scores differently in grey and in colour); leave {flag} out, or fit a run on "
                            f"{channels}-channel images")

    def _json(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable ({e})") from None

    # ------------------------------------------------------------------------------------------ save

    def save(self, det: Detector, fit: FitResult) -> None:
        """The fitted detector and what ``fit_detector`` found: detector.pt, threshold.json, calibration.json,
        holdout.txt and fit.json."""
        held = fit.held_out
        if held is not None:
            (self.path / "holdout.txt").write_text("\n".join(held.paths) + "\n")
        if fit.calibration is not None:
            write_json(self.path / "calibration.json", fit.calibration)
        write_json(self.path / "threshold.json", fit.threshold.to_dict())
        det.cpu().save(self.path / "detector.pt")
        write_json(self.path / "fit.json", {"fit_seconds": round(fit.fit_seconds, 3), "n_train": fit.n_train,
                                            "n_holdout": 0 if held is None else len(held)})
