"""Backbone networks by name: the torchvision ResNets and any timm CNN that has feature taps.

A backbone is the whole classification network as its library builds it (``torchvision.models.resnet18()``,
``timm.create_model("tf_efficientnet_lite0")``), classifier included, so that the ``encoder.pt`` a
pre-training run writes loads with ``strict=True`` into that same constructor. Features are tapped by output
stride (4, 8, 16, 32), the way timm's ``features_only`` models and anomalib's backbones describe them, not by
the layer names of one family:

==============================  ==================================  ==================================
backbone                         stride 4 / 8 / 16 / 32 taps          input normalisation
==============================  ==================================  ==================================
resnet18/34 (torchvision)        layer1-4: 64 / 128 / 256 / 512        ImageNet mean / std
resnet50, wide_resnet50_2        layer1-4: 256 / 512 / 1024 / 2048     ImageNet mean / std
tf_efficientnet_lite0 (timm)     blocks.1/2/4/6: 24 / 40 / 112 / 320   0.5 / 0.5 (inputs in [-1, 1])
any other timm CNN               its ``feature_info``                 its ``pretrained_cfg``
==============================  ==================================  ==================================

>>> spec = backbone_spec("resnet18")
>>> [t.stride for t in spec.taps], spec.out_dim
([4, 8, 16, 32], 512)
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from msacl.errors import MsaclError
from msacl.names import TORCHVISION_BACKBONES

TORCHVISION = TORCHVISION_BACKBONES
"""Names built by torchvision; every other name is looked up in timm."""
STRIDES = (4, 8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ResNet layer names accepted wherever a stride is (older configs and anomalib users write them)."""

_RESNET_CHANNELS = {"resnet18": (64, 128, 256, 512), "resnet34": (64, 128, 256, 512),
                    "resnet50": (256, 512, 1024, 2048), "wide_resnet50_2": (256, 512, 1024, 2048)}


class BackboneError(MsaclError):
    """An unknown backbone name, or a network without feature taps."""


@dataclass(frozen=True)
class Tap:
    """One feature tap: the module whose output is taken, its stride and channel count."""

    module: str
    stride: int
    channels: int


@dataclass(frozen=True)
class BackboneSpec:
    """What msacl needs to know of a backbone, read without loading any weights.

    Attributes:
        name: the name the user gave (``resnet18``, ``tf_efficientnet_lite0``, ...).
        library: ``"torchvision"`` or ``"timm"``: which constructor ``encoder.pt`` loads into.
        taps: one per stride in ``STRIDES`` that the network has, shallow to deep.
        out_dim: size of the pooled features (what the projection heads read).
        mean, std: the input normalisation its ImageNet weights expect (also used for random init).
        head_prefixes: state-dict prefixes of the classifier, which no msacl model trains.
    """

    name: str
    library: str
    taps: tuple[Tap, ...]
    out_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head_prefixes: tuple[str, ...]

    def tap(self, stride: int) -> Tap:
        for t in self.taps:
            if t.stride == stride:
                return t
        raise BackboneError(f"{self.name} has no feature tap at stride {stride}; "
                            f"it has {[t.stride for t in self.taps]}")

    def create(self) -> nn.Module:
        """A new randomly initialised network of this backbone."""
        return _create(self.name, self.library)


def _timm():
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency; a broken install still gets a clear message
        raise BackboneError("timm is not installed (pip install timm); only the torchvision ResNets "
                            f"{list(TORCHVISION)} work without it") from None
    return timm


def _create(name: str, library: str) -> nn.Module:
    if library == "torchvision":
        return getattr(torchvision.models, name)(weights=None)
    return _timm().create_model(name, pretrained=False)


@functools.lru_cache(maxsize=64)
def backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``name``; unknown names fail with the closest known ones."""
    if not isinstance(name, str) or not name:
        raise BackboneError(f"backbone must be a name such as 'resnet18', got {name!r}")
    if name in TORCHVISION:
        ch = _RESNET_CHANNELS[name]
        taps = tuple(Tap(f"layer{i + 1}", s, c) for i, (s, c) in enumerate(zip(STRIDES, ch, strict=True)))
        return BackboneSpec(name, "torchvision", taps, ch[-1], IMAGENET_MEAN, IMAGENET_STD, ("fc.",))
    timm = _timm()
    if not timm.is_model(name):
        known = list(TORCHVISION) + timm.list_models()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (torchvision ResNets or any timm CNN)"
        raise BackboneError(f"unknown backbone {name!r}{hint}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = timm.create_model(name, pretrained=False)
    info = getattr(model, "feature_info", None)
    if not info:
        raise BackboneError(f"timm model {name!r} has no feature taps (features_only is not supported for it)")
    by_stride: dict[int, Tap] = {}
    for f in info:  # the deepest module of each stride is the tap, as timm's features_only picks
        if int(f["reduction"]) in STRIDES:
            by_stride[int(f["reduction"])] = Tap(str(f["module"]), int(f["reduction"]), int(f["num_chs"]))
    if 4 not in by_stride or 8 not in by_stride:
        raise BackboneError(f"timm model {name!r} has feature taps at strides "
                            f"{sorted({int(f['reduction']) for f in info})}; msacl needs a CNN with taps at 4, "
                            "8 and 16 (a vision transformer has only one stride)")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    head = cfg.get("classifier") or "classifier"
    heads = (head,) if isinstance(head, str) else tuple(head)
    return BackboneSpec(name, "timm", tuple(by_stride[s] for s in sorted(by_stride)), int(model.num_features),
                        mean, std, tuple(f"{h}." for h in heads))  # type: ignore[arg-type]


def as_stride(tap: int | str) -> int:
    """A stride (``4`` or ``"4"``): taps are named by their stride, the same for every backbone."""
    if isinstance(tap, str) and tap.isdigit():
        tap = int(tap)
    if isinstance(tap, int) and not isinstance(tap, bool) and tap in STRIDES:
        return tap
    raise BackboneError(f"feature tap {tap!r}: choose strides from {list(STRIDES)} "
                        "(ResNet's layer1-layer4 are strides 4-32)")


def check_strides(taps: Sequence[int | str], spec: BackboneSpec | None = None) -> list[int]:
    """Strides from user input, sorted shallow to deep, checked against the backbone when given."""
    if isinstance(taps, (str, int)):
        taps = [taps]
    strides = sorted({as_stride(t) for t in taps})
    if not strides:
        raise BackboneError(f"feature taps: choose one or more strides from {list(STRIDES)}")
    if spec is not None:
        for s in strides:
            spec.tap(s)
    return strides


def sequential_parts(model: nn.Module, tap_modules: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """The network's children in order, opened up where a tap lies inside one, as timm's ``FeatureListNet``
    does: running them one after another reproduces the forward pass up to the deepest tap.

    Returns:
        ``(dotted name, module)`` pairs; the tap modules appear among them under their own names.
    """
    parts: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = prefix + name
            if any(t.startswith(full + ".") for t in tap_modules):
                walk(child, full + ".")
            else:
                parts.append((full, child))

    walk(model, "")
    missing = [t for t in tap_modules if t not in {n for n, _ in parts}]
    if missing:
        raise BackboneError(f"feature taps {missing} are not modules of this network")
    return parts


def pooled_features(model: nn.Module, library: str, x: torch.Tensor) -> torch.Tensor:
    """Globally pooled penultimate features (what the classifier reads). Shape: (B, 3, H, W) -> (B, D)."""
    if library == "torchvision":
        m = model
        h = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
        return torch.flatten(m.avgpool(h), 1)
    return model.forward_head(model.forward_features(x), pre_logits=True)
