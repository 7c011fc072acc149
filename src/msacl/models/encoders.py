"""Encoders shared by pre-training and the detectors: torchvision ResNets with feature taps.

The backbone is always a plain ``torchvision.models.ResNet`` so that the ``encoder.pt`` a pre-training
run writes loads into ``torchvision.models.resnet18()`` (and hence into anomalib's backbones) with
``strict=True``. Input normalisation is kept outside the state dict, as a non-persistent buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from msacl.errors import CheckpointError
from msacl.runs import read_torch_file

ARCHS = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2")
LAYERS = ("layer1", "layer2", "layer3", "layer4")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderLoadError(CheckpointError):
    """A weights file that is missing, corrupt or of another architecture."""


def build_backbone(arch: str = "resnet18", init: str | Path | None = None) -> torchvision.models.ResNet:
    """A torchvision ResNet, randomly initialised or loaded from a local state-dict file.

    Nothing is ever downloaded: ``init`` is a path to a file the user has (e.g. ImageNet weights saved
    with ``torch.save(resnet.state_dict(), path)``, or the ``encoder.pt`` of an ``msacl pretrain`` run).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {list(ARCHS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    if init is not None:
        load_backbone_state(model, init)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a backbone state dict from ``path`` (plain, or nested under ``encoder``/``state_dict``)."""
    path = Path(path)
    obj = read_torch_file(path, error=EncoderLoadError, what="PyTorch weights file", missing="weights file not found")
    for key in ("encoder", "backbone", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderLoadError(f"{path}: does not hold a state dict of tensors")
    for prefix in ("module.", "backbone.", "encoder.", "model."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_backbone_state(model: nn.Module, path: str | Path) -> None:
    """Load weights from ``path`` into ``model``; the final ``fc`` layer may be absent or differ."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    shape = [k for k in own if k in state and state[k].shape != own[k].shape and not k.startswith("fc.")]
    if missing or shape:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if shape:
            k = shape[0]
            got, want = tuple(state[k].shape), tuple(own[k].shape)
            detail.append(f"{len(shape)} shape mismatches (first: {k} {got} vs {want})")
        raise EncoderLoadError(
            f"{path}: weights do not fit a {type(model).__name__} of this architecture: " + "; ".join(detail)
        )
    state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(state, strict=False)


class Encoder(nn.Module):
    """A ResNet backbone with ImageNet-style input normalisation and named feature taps.

    Args:
        backbone: a torchvision ResNet.
        normalize: subtract ImageNet mean / divide by std (the statistics torchvision weights expect).

    Shape:
        input: images in [0, 1], (B, 3, H, W); single-channel input is repeated to 3 channels.
        ``forward``: pooled features (B, D) with D = 512 for ResNet-18/34, 2048 for ResNet-50.
    """

    def __init__(self, backbone: torchvision.models.ResNet, *, normalize: bool = True):
        super().__init__()
        self.backbone = backbone
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.backbone.fc.in_features

    def channels(self, layer: str) -> int:
        """Number of channels of a tapped layer's output."""
        block = getattr(self.backbone, layer)[-1]
        last_bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        return last_bn.num_features

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def features(self, x: torch.Tensor, layers: Sequence[str] = LAYERS) -> dict[str, torch.Tensor]:
        """Feature maps of the requested layers, stopping after the deepest one needed.

        Shape: (B, 3, H, W) -> {layer: (B, C_layer, H / s, W / s)} with s = 4, 8, 16, 32.
        """
        unknown = [l for l in layers if l not in LAYERS]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; choose from {list(LAYERS)}")
        b = self.backbone
        h = b.maxpool(b.relu(b.bn1(b.conv1(self._prep(x)))))
        out: dict[str, torch.Tensor] = {}
        deepest = max(LAYERS.index(l) for l in layers)
        for name in LAYERS[: deepest + 1]:
            h = getattr(b, name)(h)
            if name in layers:
                out[name] = h
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x, ("layer4",))["layer4"]
        return torch.flatten(self.backbone.avgpool(h), 1)


def build_encoder(arch: str = "resnet18", init: str | Path | None = None, *, normalize: bool = True) -> Encoder:
    """Convenience: ``Encoder(build_backbone(arch, init))``."""
    return Encoder(build_backbone(arch, init), normalize=normalize)
