"""One interface for every anomaly detector.

A detector is fitted on normal images only and then maps a batch of images to an image-level score and a
pixel-level anomaly map. Metrics and reports read only that record. Fitted statistics and random choices
are registered buffers, so ``state_dict`` (plus the settings of its options dataclass, ``options``, kept in
JSON-like form in ``config``) reproduces the detector exactly.

    det = build_detector("padim", backbone="tf_efficientnet_lite0", image_size=64)
    det.load_encoder("imagenet")         # or an `msacl pretrain` run directory
    det.fit(batches(train.images, 32))
    scores, maps = det.predict(test.images[:8])   # (8,), (8, 1, 64, 64)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msacl.config import ConfigError
from msacl.detectors.common import resize_square
from msacl.detectors.options import DetectorOptions, make_options
from msacl.errors import CheckpointError, MsaclError
from msacl.models.encoders import IMAGENET
from msacl.models.features import reestimate_batchnorm
from msacl.names import DETECTOR_CLASSES
from msacl.runs import atomic_torch_save, read_torch_file

# name -> detector class, imported on first use (msacl.names lists every detector, with its module)
REGISTRY = DETECTOR_CLASSES


def register(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: name a detector. msacl's own are listed in ``msacl.names.DETECTOR_CLASSES`` under that
    name (checked); one defined elsewhere is added to the registry under a name not taken, after which ``msacl
    fit --detector NAME`` and every other verb use it like the built-in ones."""

    def deco(cls: type[Detector]) -> type[Detector]:
        if cls.__module__.startswith("msacl."):
            REGISTRY.check(name, cls)
        else:
            REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return deco


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of an (N, C, H, W) tensor."""
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size]


class Detector(nn.Module):
    """Base class. Subclasses declare their settings' dataclass as ``Options`` and implement ``fit`` and
    ``predict``.

    Built from an options object, keyword arguments, or both (keywords override): ``Padim(n_features=200)``,
    ``Padim(PadimOptions(n_features=200))``; each value is checked against its declared type
    (``msacl.detectors.options``). ``options`` holds the typed settings; ``config`` their JSON-like form
    (numbers, strings, lists), which ``save`` stores so that a saved detector loads with
    ``torch.load(..., weights_only=True)``. The encoder's backbone name is part of it; its weights and input
    normalisation are part of the state dict.
    """

    name: ClassVar[str] = "detector"
    Options: ClassVar[type[DetectorOptions]] = DetectorOptions
    # why `msacl export` cannot trace the scoring module (None: it can)
    not_exportable: ClassVar[str | None] = None

    def __init__(self, options: DetectorOptions | None = None, /, **kwargs: Any):
        super().__init__()
        self.options = make_options(self.Options, options, where=self.name, **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        """The settings as a JSON-like dict (what ``save`` stores and ``msacl fit`` writes to config.yaml)."""
        return self.options.to_dict()

    def fit(self, batches: Iterable[torch.Tensor], *, generator: torch.Generator | None = None,
            progress: bool = False) -> Detector:
        """Fit on normal images. ``batches`` yields (B, C, H, W) float tensors in [0, 1]."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: (N, C, H, W) -> scores (N,), maps (N, 1, H, W); larger means more anomalous.

        Detectors with a :meth:`predict_images` check ``x``, move it to their device, resize it and run that.
        """
        raise NotImplementedError

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scoring computation alone: checked images at the detector's size, on its device, in; scores
        (B,) and maps (B, 1, N, N) out; tensor operations only, so that a trace of it is the exported graph
        (:meth:`scorer`). Detectors without one are scored and traced through :meth:`predict`."""
        raise NotImplementedError

    def predict_resized(self, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_images` on ``x`` resized to the detector's ``image_size`` (antialiased bilinear), the
        maps resized back to ``x``'s size; the scores are those of the resized images, whatever the input size.
        Shape: (B, C, H, W) -> (B,), (B, 1, H, W)."""
        size = int(self.options.image_size)
        scores, maps = self.predict_images(resize_square(x.to(device), size))
        if tuple(x.shape[-2:]) != (size, size):
            maps = F.interpolate(maps, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return scores, maps

    def scorer(self) -> nn.Module:
        """The scoring module: images in, ``(scores, maps)`` out, what ``predict`` runs and ``msacl export``
        traces into ONNX / TorchScript (:mod:`msacl.deploy.export`); it puts the detector in eval mode."""
        return Scorer(self.eval())

    def encoder_parts(self) -> dict[str, nn.Module]:
        """The encoders whose weights can be loaded: ``{"global": ...}`` plus ``"local"`` for two-scale models."""
        enc = getattr(self, "encoder", None)
        return {"global": enc} if enc is not None else {}

    def adapt_batchnorm(self, images: Iterable[torch.Tensor], part: str = "global") -> None:
        """With ``bn_stats="train"`` (``FrozenEncoderOptions``), replace the ``part`` encoder's BatchNorm
        running statistics by those of ``images`` (batches as the encoder will see them, before fitting);
        otherwise nothing. See :func:`msacl.models.features.reestimate_batchnorm`."""
        if getattr(self.options, "bn_stats", "encoder") == "train":
            reestimate_batchnorm(self.encoder_parts()[part], images)

    def load_encoder(self, source: str | Path | None, part: str = "global") -> str:
        """Load encoder weights (``"imagenet"``, a weights file, or an ``msacl pretrain`` run directory or its
        ``encoder.pt``) into the ``part`` encoder, with the input normalisation they were trained with.

        Returns a description of the weights. Raises ``MsaclError`` for a part this detector does not have.
        """
        parts = self.encoder_parts()
        if part not in parts:
            hint = " (set local=true)" if part == "local" and "local" in self.config else ""
            raise MsaclError(f"the {self.name} detector has no {part} encoder{hint}")
        if source is None:
            return parts[part].source
        if str(source) == IMAGENET:
            return parts[part].load_weights(source)
        path = encoder_file(source)
        warn_if_unfinished(path)
        return parts[part].load_weights(path)

    def save(self, path: str | Path) -> None:
        atomic_torch_save({"detector": self.name, "config": self.config, "state_dict": self.state_dict()}, path)

    @staticmethod
    def load(path: str | Path, map_location: str | torch.device = "cpu") -> Detector:
        path = Path(path)
        obj = read_torch_file(path, error=CheckpointError, what="detector file", map_location=map_location)
        if not isinstance(obj, dict) or obj.get("detector") not in REGISTRY:
            raise CheckpointError(f"{path}: not a saved msacl detector (known: {sorted(REGISTRY)})")
        try:
            det = REGISTRY[obj["detector"]](**obj["config"])
        except ConfigError as e:
            raise CheckpointError(f"{path}: its settings do not fit this version's {obj['detector']} "
                                  f"detector ({e}); fit it again") from None
        try:
            det.load_state_dict(obj["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: state does not fit a {obj['detector']} detector: {e}") from None
        return det


class Scorer(nn.Module):
    """A detector's scoring computation as a module of its own (see :meth:`Detector.scorer`)."""

    def __init__(self, det: Detector):
        super().__init__()
        self.det = det
        # predict_images where the detector has one (a subclass's override), else predict
        own = type(det).predict_images is not Detector.predict_images
        self.fn = det.predict_images if own else det.predict

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = self.fn(x)
        return scores, maps


def encoder_file(path: str | Path) -> Path:
    """``encoder.pt`` of an ``msacl pretrain`` run directory, or the weights file itself."""
    p = Path(path)
    if p.is_dir():
        if (p / "encoder.pt").is_file():
            return p / "encoder.pt"
        raise CheckpointError(f"{p}: a folder without encoder.pt (expected an `msacl pretrain` run directory)")
    if not p.is_file():
        raise CheckpointError(f"{p}: encoder weights not found")
    return p


class UnfinishedRunWarning(UserWarning):
    """Encoder weights taken from a pre-training run that stopped before its last epoch."""


def warn_if_unfinished(path: Path) -> None:
    """Warn when ``path`` is the encoder.pt of an ``msacl pretrain`` run that has not finished its epochs
    (encoder.pt is written at every checkpoint, so an interrupted run leaves a partly trained one)."""
    from msacl.pretrain.checkpoint import run_progress

    if path.name != "encoder.pt":
        return
    try:
        progress = run_progress(path.parent)
    except CheckpointError:
        return  # a checkpoint of another kind or version beside it: nothing to tell from it
    if progress is not None and progress[0] < progress[1]:
        warnings.warn(f"{path}: written at epoch {progress[0]} of {progress[1]}: this pre-training run has not "
                      f"finished (`msacl pretrain --resume {path.parent}` goes on from there)",
                      UnfinishedRunWarning, stacklevel=3)


def build_detector(name: str, options: DetectorOptions | None = None, /, **kwargs: Any) -> Detector:
    """The registered detector ``name`` built from its options and / or keyword arguments."""
    if name not in REGISTRY:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name](options, **kwargs)
