"""Typed settings of the detectors, as pre-training's are typed in ``msacl.pretrain.config``.

One dataclass per detector, beside its class (``PadimOptions`` in ``padim.py``, ...); the settings several
detectors share are declared once, here, in the base classes:

* ``DetectorOptions``: ``backbone``, ``image_size``;
* ``FrozenEncoderOptions`` (PaDiM, PatchCore, PANDA, IGD): ``bn_stats``, the BatchNorm statistics of the
  frozen encoder;
* ``FeatureOptions`` (PaDiM, PatchCore): ``strides`` (feature taps) and ``sigma`` (blur of the map);
* ``BlurOptions`` (OCGAN, DAE, F-anoGAN): ``blur_sigma`` (blur of the map);
* ``TrainedOptions`` (the detectors that train): ``epochs``, ``batch_size``, ``lr``;
* ``NetworkOptions`` (OCGAN, CAVGA and the two-scale ones): ``channels``, ``latent_dim``, ``width``, ``init_seed``;
* ``TwoScaleOptions`` (IGD, MS-SSIM AE, DAE, F-anoGAN): the local patch model, ``local``, ``patch_size``,
  ``patch_stride``, ``patches_per_image``, and ``nu`` (global against local).

A detector is built from its options or from keyword arguments (``Padim(n_features=200)`` equals
``Padim(PadimOptions(n_features=200))``); either way every value is checked against its declared type, so a
wrong type or an unknown name is a ``ConfigError`` naming the setting. ``det.options`` holds the typed
settings and ``det.config`` their JSON-like form, which a saved detector stores.

>>> options_for("padim", n_features="200").n_features
200
>>> options_for("padim", n_features="abc")
Traceback (most recent call last):
...
msacl.config.ConfigError: padim.n_features: expected int, got 'abc'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from msacl.config import ConfigError, coerce_fields, from_dict, to_dict
from msacl.models.decoders import image_hw

O = TypeVar("O", bound="DetectorOptions")  # noqa: E741


def check_unit(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def check_positive(name: str, value: float, *, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


def check_image_size(name: str, value: int | list[int]) -> tuple[int, int]:
    """``(H, W)`` of an image (or patch) size the decoders can build (``msacl.models.decoders.image_hw``: an
    int or [H, W], each a multiple of 32, at least 32), else a ``ConfigError`` naming the setting."""
    try:
        return image_hw(value, name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@dataclass
class DetectorOptions:
    """Settings of every detector: the encoder's backbone (its weights: ``det.load_encoder``) and the image
    size the detector is built for."""

    backbone: str = "resnet18"
    image_size: int = 64

    def __post_init__(self) -> None:
        # Built directly (``PadimOptions(sigma="wide")``) as through ``make_options``: each value is converted
        # to its declared type or refused as a ``ConfigError`` naming the setting, before the range checks.
        coerce_fields(self)
        self.check()

    def check(self) -> None:
        """Raise ``ConfigError`` for values no detector can use (subclasses add their own checks)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-like form (lists, not tuples): ``Detector.config``, what a saved detector stores."""
        return to_dict(self)


@dataclass
class FrozenEncoderOptions(DetectorOptions):
    """Detectors that read a frozen encoder (PaDiM, PatchCore, PANDA, IGD with ``freeze_encoder``):
    ``bn_stats`` says which BatchNorm running statistics it normalises with. ``"encoder"``: those stored with
    the weights (ImageNet's, or a pre-training run's, which are those of its augmented views); ``"train"``:
    re-estimated on the clean training images before fitting (one pass, cumulative mean, weights untouched:
    ``msacl.models.features.reestimate_batchnorm``). The statistics are part of the fitted detector, so
    ``test``, ``predict``, ``serve`` and ``export`` use the same ones. Default and measurements:
    docs/benchmarks.md, "What pre-training does to PaDiM, BatchNorm controlled"."""

    bn_stats: Literal["encoder", "train"] = "encoder"
    # Seed of the encoder's construction (its random initialisation, before any weights are loaded): a
    # detector never draws from torch's global generator.
    init_seed: int = 0


@dataclass
class FeatureOptions(FrozenEncoderOptions):
    """Detectors on the features of a frozen encoder: ``strides`` are the feature taps (4, 8, 16, 32 or layer
    names), ``sigma`` the Gaussian blur of the pixel map (0 disables it)."""

    image_size: int = 256
    strides: list[int | str] = field(default_factory=lambda: [8, 16])
    sigma: float = 4.0

    def check(self) -> None:
        super().check()
        check_positive("image_size", self.image_size)
        check_positive("sigma", self.sigma, minimum=0)




@dataclass
class BlurOptions(DetectorOptions):
    """Detectors that blur their pixel map with a Gaussian of ``blur_sigma`` pixels (0 disables it); a mixin
    beside ``NetworkOptions``."""

    blur_sigma: float = 4.0

    def check(self) -> None:
        super().check()
        check_positive("blur_sigma", self.blur_sigma, minimum=0)


@dataclass
class TrainedOptions(DetectorOptions):
    """Detectors that train: ``epochs`` over the training images in mini-batches of ``batch_size`` (at least
    2: BatchNorm) with learning rate ``lr``."""

    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4

    def check(self) -> None:
        super().check()
        check_positive("epochs", self.epochs, minimum=0)
        check_positive("batch_size", self.batch_size, minimum=2)
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")



@dataclass
class NetworkOptions(TrainedOptions):
    """Detectors that train networks of their own around the encoder: images of ``channels`` channels and
    ``image_size`` (an int or [H, W], multiples of 32), a latent of ``latent_dim``, decoders / critics of
    ``width`` channels, initialised at construction under ``init_seed``."""

    image_size: int | list[int] = 64
    channels: int = 3
    latent_dim: int = 128
    width: int = 32
    init_seed: int = 0

    def check(self) -> None:
        super().check()
        check_image_size("image_size", self.image_size)
        check_positive("latent_dim", self.latent_dim)




@dataclass
class TwoScaleOptions(NetworkOptions):
    """A global model on whole images and, with ``local``, a second one on ``patch_size`` patches cut every
    ``patch_stride`` pixels, trained on ``patches_per_image`` random patches per image per step; ``nu`` weighs
    the global score against the local one."""

    local: bool = False
    patch_size: int = 32
    patch_stride: int = 16
    patches_per_image: int = 16
    nu: float = 0.5

    def check(self) -> None:
        super().check()
        check_unit("nu", self.nu)
        if self.local:
            check_image_size("patch_size", self.patch_size)
            hw = check_image_size("image_size", self.image_size)
            if self.patch_size > min(hw):
                raise ConfigError(f"patch_size {self.patch_size} is larger than the image ({hw[0]} x {hw[1]})")
            check_positive("patch_stride", self.patch_stride)
            check_positive("patches_per_image", self.patches_per_image)






def make_options(cls: type[O], options: DetectorOptions | None = None, where: str = "",
                 **kwargs: Any) -> O:
    """``cls`` from an options object and / or keyword arguments, every value checked against its type.

    Keyword arguments override the fields of ``options``. Raises ``ConfigError`` naming the setting, after
    ``where`` (the detector) when given: ``padim.n_features: expected int, got 'abc'``, ``padim.sigma must be at
    least 0, got -1.0``. (Every range check's message starts with the name of its setting.)
    """
    data: dict[str, Any] = {}
    if options is not None:
        if not isinstance(options, cls):
            raise ConfigError(f"{where or cls.__name__}: expected {cls.__name__}, got {type(options).__name__}")
        data = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    data.update(kwargs)
    try:
        return from_dict(cls, data, where=where)
    except ConfigError as e:  # a range check of ``check``: name the detector as the type checks do
        if where and not str(e).startswith(where):
            raise ConfigError(f"{where}.{e}") from None
        raise


def options_for(name: str, **kwargs: Any) -> DetectorOptions:
    """The options of the registered detector ``name``, defaults updated by ``kwargs`` (checked)."""
    from msacl.detectors.base import REGISTRY

    if name not in REGISTRY:
        raise ConfigError(f"unknown detector {name!r}; choose one of {sorted(REGISTRY)}")
    return make_options(REGISTRY[name].Options, where=name, **kwargs)


def option_names(name: str) -> list[str]:
    """The settings of the registered detector ``name``."""
    from msacl.detectors.base import REGISTRY

    return [f.name for f in dataclasses.fields(REGISTRY[name].Options)]
