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

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from msacl.config import ConfigError
from msacl.detectors.options import DetectorOptions, make_options
from msacl.errors import CheckpointError, MsaclError
from msacl.models.encoders import IMAGENET
from msacl.models.features import reestimate_batchnorm
from msacl.names import DETECTORS, check_name
from msacl.runs import atomic_torch_save, read_torch_file

REGISTRY: dict[str, type[Detector]] = {}


def register(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: add a detector to ``REGISTRY`` under ``name``, one of ``msacl.names.DETECTORS``."""
    check_name("detector", name, DETECTORS)

    def deco(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        REGISTRY[name] = cls
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
        """Shape: (N, C, H, W) -> scores (N,), maps (N, 1, H, W); larger means more anomalous."""
        raise NotImplementedError

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
        return parts[part].load_weights(source if str(source) == IMAGENET else encoder_file(source))

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


def build_detector(name: str, options: DetectorOptions | None = None, /, **kwargs: Any) -> Detector:
    """The registered detector ``name`` built from its options and / or keyword arguments."""
    if name not in REGISTRY:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name](options, **kwargs)
