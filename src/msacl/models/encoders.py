"""The encoder pre-training and the detectors share: a named backbone, its input normalisation and stride taps.

``Encoder("tf_efficientnet_lite0")`` wraps ``timm.create_model("tf_efficientnet_lite0")`` (or a torchvision
ResNet, see ``msacl.models.backbones``). Its weights come from :meth:`Encoder.load_weights`: ``"imagenet"``
(through the owning library, ``msacl.models.weights``), a weights file, or an ``msacl pretrain`` run's
``encoder.pt``.

The input normalisation belongs to the weights: ImageNet mean / std for torchvision's, 0.5 / 0.5 for
Lite0's. It is written into ``encoder.pt`` (in the state dict's ``_metadata``, which ``load_state_dict``
ignores, so the file still loads with ``strict=True`` into the plain constructor) and read back with the
weights, and it is a buffer of every detector that holds the encoder: an encoder can only ever see inputs
normalised the way its weights were trained.

>>> enc = Encoder("resnet18")
>>> feats = enc.features(torch.rand(2, 3, 64, 64), (4, 8, 16))
>>> {s: tuple(f.shape) for s, f in feats.items()}
{4: (2, 64, 16, 16), 8: (2, 128, 8, 8), 16: (2, 256, 4, 4)}
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msacl.errors import CheckpointError
from msacl.models.backbones import (
    STRIDES,
    TORCHVISION,
    BackboneSpec,
    backbone_spec,
    check_strides,
    pooled_features,
    sequential_parts,
)
from msacl.runs import read_torch_file

ARCHS = TORCHVISION  # the torchvision names; any timm CNN works too (msacl.models.backbones)
IMAGENET = "imagenet"
"""The word accepted wherever a weights path is: the backbone's ImageNet weights."""
_META_KEY = "msacl"


class EncoderLoadError(CheckpointError):
    """A weights file that is missing, corrupt or of another architecture."""


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A backbone state dict from ``path`` (plain, or nested under ``encoder``/``state_dict``) and the msacl
    metadata it carries (backbone, normalisation, source; empty for files written elsewhere)."""
    path = Path(path)
    obj = read_torch_file(path, error=EncoderLoadError, what="PyTorch weights file", missing="weights file not found")
    for key in ("encoder", "backbone", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderLoadError(f"{path}: does not hold a state dict of tensors")
    meta = dict((getattr(obj, "_metadata", None) or {}).get("", {}).get(_META_KEY, {}))
    for prefix in ("module.", "backbone.", "encoder.", "model."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj), meta


def file_backbone(path: str | Path) -> str | None:
    """The backbone an ``encoder.pt`` was written for (None for files without msacl metadata)."""
    return read_state_dict(path)[1].get("backbone")


class Encoder(nn.Module):
    """A backbone with the input normalisation of its weights and feature taps by stride.

    Args:
        backbone: a torchvision ResNet name or any timm CNN with feature taps (``msacl.models.backbones``).
        normalize: normalise inputs with the weights' mean / std (buffers ``mean`` and ``std``).

    Shape:
        input: images in [0, 1], (B, 3, H, W); single-channel input is repeated to 3 channels.
        ``forward``: pooled features (B, out_dim); ``features``: {stride: (B, C_s, H / s, W / s)}.
    """

    def __init__(self, backbone: str = "resnet18", *, normalize: bool = True):
        super().__init__()
        self.spec: BackboneSpec = backbone_spec(backbone)
        self.backbone = self.spec.create()
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1))
        self.source = "random init"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    def channels(self, stride: int | str) -> int:
        """Channels of the tap at ``stride`` (a ResNet layer name works too)."""
        return self.spec.tap(check_strides([stride])[0]).channels

    def backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the backbone is given for images ``x`` in [0, 1]: grey images repeated to 3 channels, then the
        encoder's normalisation (when ``normalize``). Use it to call ``backbone`` (e.g. its classifier) directly.

        Shape: (B, 1 or 3, H, W) -> (B, 3, H, W).
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def features(self, x: torch.Tensor, strides: Sequence[int | str] = STRIDES) -> dict[int, torch.Tensor]:
        """Feature maps at the requested strides, stopping after the deepest one needed.

        Shape: (B, 3, H, W) -> {stride: (B, C_stride, ~H / stride, ~W / stride)}.
        """
        wanted = {self.spec.tap(s).module: s for s in check_strides(strides, self.spec)}
        h = self.backbone_input(x)
        out: dict[int, torch.Tensor] = {}
        # Walked on every call: BatchNorm folding replaces modules, and the walk is a few dozen attribute reads.
        for name, module in sequential_parts(self.backbone, list(wanted)):
            h = module(h)
            if name in wanted:
                out[wanted[name]] = h
                if len(out) == len(wanted):
                    break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_features(self.backbone, self.spec.library, self.backbone_input(x))

    # ------------------------------------------------------------------ weights

    def load_weights(self, source: str | Path | None) -> str:
        """Load ``"imagenet"``, a weights file or an ``msacl pretrain`` ``encoder.pt``; None keeps random init.

        The normalisation stored with the weights (or, for a file written elsewhere, the backbone's own)
        replaces this encoder's. Returns a description of the weights, also kept in ``self.source``.

        Raises:
            EncoderLoadError: the file is missing or corrupt, or holds another architecture (the first key
                that does not fit is named).
            WeightsUnavailable: ImageNet weights that cannot be had (the message says which file to put where).
        """
        if source is None:
            return self.source
        if str(source) == IMAGENET:
            from msacl.models.weights import imagenet_state

            state, desc = imagenet_state(self.spec.name)
            meta: dict[str, Any] = {}
            where = f"ImageNet weights of {self.spec.name}"
        else:
            state, meta = read_state_dict(source)
            desc, where = str(source), str(source)
            theirs = meta.get("backbone")
            if theirs and theirs != self.spec.name:
                raise EncoderLoadError(f"{source}: weights of backbone {theirs!r}, not {self.spec.name!r} "
                                       f"(use --backbone {theirs})")
        self._load_state(state, where)
        mean, std = meta.get("mean", self.spec.mean), meta.get("std", self.spec.std)
        with torch.no_grad():
            self.mean.copy_(torch.tensor(mean, dtype=self.mean.dtype).view(1, 3, 1, 1))
            self.std.copy_(torch.tensor(std, dtype=self.std.dtype).view(1, 3, 1, 1))
        self.source = str(meta.get("source", desc)) if meta else desc
        return self.source

    def _load_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        own = self.backbone.state_dict()
        head = self.spec.head_prefixes
        # BatchNorm counters are not weights (ported files, such as Lite0's, have none)
        missing = [k for k in own
                   if k not in state and not k.startswith(head) and not k.endswith("num_batches_tracked")]
        shape = [k for k in own if k in state and state[k].shape != own[k].shape and not k.startswith(head)]
        if missing or shape:
            detail = []
            if missing:
                detail.append(f"{len(missing)} missing keys (first: {missing[0]})")
            if shape:
                k = shape[0]
                detail.append(f"{len(shape)} shape mismatches (first: {k} {tuple(state[k].shape)} "
                              f"vs {tuple(own[k].shape)})")
            raise EncoderLoadError(f"{where}: weights do not fit a {self.spec.name} backbone: " + "; ".join(detail))
        fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        self.backbone.load_state_dict(fitting, strict=False)

    def export_state(self) -> OrderedDict[str, torch.Tensor]:
        """The backbone's state dict (float32, CPU) with this encoder's normalisation in its metadata: what
        ``encoder.pt`` holds. Loads with ``strict=True`` into the plain torchvision / timm constructor."""
        raw = self.backbone.state_dict()
        state: OrderedDict[str, torch.Tensor] = OrderedDict(
            (k, (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone(
                memory_format=torch.contiguous_format)) for k, v in raw.items())
        meta = dict(getattr(raw, "_metadata", {}) or {})
        meta[""] = dict(meta.get("", {}), **{_META_KEY: self.metadata()})
        state._metadata = meta  # type: ignore[attr-defined]
        return state

    def metadata(self) -> dict[str, Any]:
        """Backbone, library, normalisation and source of the weights (written beside ``encoder.pt`` too)."""
        return {"backbone": self.spec.name, "library": self.spec.library,
                "mean": [round(float(v), 6) for v in self.mean.flatten()],
                "std": [round(float(v), 6) for v in self.std.flatten()], "source": self.source}


def build_encoder(backbone: str = "resnet18", init: str | Path | None = None, *, normalize: bool = True) -> Encoder:
    """``Encoder(backbone)`` with weights from ``init`` (``"imagenet"``, a file, or None for random init)."""
    enc = Encoder(backbone, normalize=normalize)
    enc.load_weights(init)
    return enc


def build_backbone(backbone: str = "resnet18", init: str | Path | None = None) -> nn.Module:
    """The bare network of ``build_encoder`` (a plain torchvision / timm model)."""
    return build_encoder(backbone, init).backbone
