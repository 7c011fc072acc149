"""Helpers shared by the feature-based detectors (PaDiM, PatchCore): map smoothing and layer embeddings."""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from msacl.errors import DataError, MsaclError
from msacl.models.encoders import Encoder


def gaussian_kernel1d(sigma: float, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of width ``2 * int(4 * sigma + 0.5) + 1`` (the size anomalib uses).

    Shape: (K,).
    """
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _pad_mode(radius: int, n: int) -> str:
    # Reflection needs pad < size; tiny maps are padded by replication instead.
    return "reflect" if radius < n else "replicate"


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (scipy's ``mode="mirror"``); ``sigma <= 0`` returns the input.

    Shape: (B, 1, H, W) -> (B, 1, H, W).
    """
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, dtype=maps.dtype, device=maps.device)
    r = k.numel() // 2
    h, w = maps.shape[-2:]
    x = F.conv2d(F.pad(maps, (r, r, 0, 0), mode=_pad_mode(r, w)), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=_pad_mode(r, h)), k.view(1, 1, -1, 1))


@functools.lru_cache(maxsize=32)
def _axis_operator(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """Linear interpolation n_in -> n_out followed by the Gaussian blur, along one axis, as a matrix.

    Shape: (n_out, n_in), float64.
    """
    basis = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # (n_in, 1, n_in): one unit signal per row
    up = F.interpolate(basis, size=n_out, mode="linear", align_corners=False)  # (n_in, 1, n_out)
    if sigma > 0:
        k = gaussian_kernel1d(sigma, dtype=torch.float64)
        r = k.numel() // 2
        up = F.conv1d(F.pad(up, (r, r), mode=_pad_mode(r, n_out)), k.view(1, 1, -1))
    return up[:, 0].T.contiguous()


def to_image_map(patch_map: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """Patch-level scores -> pixel map: bilinear upsampling to the image size, then Gaussian blur.

    Both steps are linear and separable, so they are applied as one (H, h) and one (w, W) matrix:
    ``A_h @ map @ A_w^T`` equals ``gaussian_blur(interpolate(map))`` at a fraction of the cost.

    Shape: (B, h, w) -> (B, 1, H, W).
    """
    # int(): under ONNX export tracing shapes are tensors, which would miss the cache and record the operator's
    # construction (in float64) in the graph instead of the operator itself
    h, w = (int(v) for v in patch_map.shape[-2:])
    a_h = _axis_operator(h, int(size[0]), float(sigma)).to(patch_map)
    a_w = _axis_operator(w, int(size[1]), float(sigma)).to(patch_map)
    return (a_h @ patch_map @ a_w.T).unsqueeze(1)


def feature_grid(encoder: Encoder, image_size: int, stride: int) -> int:
    """Side of the encoder's feature map at ``stride`` for a square ``image_size`` input, by running it once."""
    with torch.no_grad(), evaluating(encoder):
        probe = torch.zeros(1, 3, image_size, image_size, device=encoder.mean.device)
        f = encoder.features(probe, (stride,))[stride]
    if f.shape[-2] != f.shape[-1]:
        raise MsaclError(f"{encoder.name}: a square input gave a {tuple(f.shape[-2:])} feature map")
    return int(f.shape[-1])


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode for the block, then back in the mode it was in (even after an error)."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def check_images(x: torch.Tensor, who: str, *, image_size: tuple[int, int] | None = None,
                 channels: int | None = None) -> None:
    """Raise ``DataError`` unless ``x`` is a (B, C, H, W) batch of images with finite values in [0, 1].

    C must be ``channels`` when given, else 1 or 3; (H, W) must be ``image_size`` when given (detectors that
    resize their input accept any size). ``who`` starts the message ("padim.predict", "igd: training batch 3").
    """
    want = (channels,) if channels else (1, 3)
    if x.ndim != 4 or x.shape[1] not in want or (image_size is not None and tuple(x.shape[-2:]) != tuple(image_size)):
        c = channels or "1|3"
        hw = "H, W" if image_size is None else f"{image_size[0]}, {image_size[1]}"
        note = "" if image_size is None else " (the detector's image_size)"
        raise DataError(f"{who}: expected images of shape (B, {c}, {hw}){note}, got {tuple(x.shape)}")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise DataError(f"{who}: pixel values must be finite and in [0, 1] "
                        f"(got min {x.min().item():.3g}, max {x.max().item():.3g})")


def _fold_children(module: nn.Module) -> None:
    """Fold each BatchNorm into the convolution registered just before it, in every submodule.

    Registration order is execution order in the CNN blocks of torchvision and timm (conv1 -> bn1, conv_dw
    -> bn1, conv_pw -> bn2, downsample[0] -> downsample[1]); ``fold_batchnorm`` checks the result anyway.
    timm's ``BatchNormAct2d`` keeps its activation (and dropout) after the folded convolution.
    """
    for m in list(module.modules()):
        children = list(m.named_children())
        for (name_c, conv), (name_b, bn) in zip(children[:-1], children[1:], strict=True):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                setattr(m, name_c, fuse_conv_bn_eval(conv, bn))
                act = [c for c in (getattr(bn, "drop", None), getattr(bn, "act", None)) if c is not None]
                setattr(m, name_b, nn.Sequential(*act) if act else nn.Identity())


def fold_batchnorm(encoder: Encoder, *, check_size: int = 64) -> Encoder:
    """An inference-only copy of ``encoder`` with every BatchNorm folded into the convolution before it.

    Same outputs as ``encoder.eval()`` up to float rounding, with one pass over each activation less. The copy
    is checked on a random batch against the plain encoder; a network whose blocks do not run in registration
    order keeps its BatchNorms (an unfolded copy, correct and a little slower).
    """
    plain = copy.deepcopy(encoder).eval().requires_grad_(False)
    enc = copy.deepcopy(plain)
    _fold_children(enc.backbone)
    strides = [t.stride for t in encoder.spec.taps]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.rand(2, 3, check_size, check_size, device=encoder.mean.device)
        a, b = plain.features(x, strides), enc.features(x, strides)
    same = all(torch.allclose(a[s], b[s], rtol=1e-3, atol=1e-3 * float(a[s].abs().max()) + 1e-5) for s in a)
    return (enc if same else plain).to(memory_format=torch.channels_last).requires_grad_(False)


class FrozenFeatures:
    """Feature taps of a frozen encoder, run through a BatchNorm-folded, channels-last copy of it.

    The copy is rebuilt whenever the encoder's tensors change (loaded weights, ``.to(device)``): every
    in-place write bumps a tensor's version counter, so (id, version) of all tensors identifies the weights.
    Not an ``nn.Module``, so the copy never enters the detector's state dict.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._enc: Encoder | None = None

    def __call__(self, encoder: Encoder, x: torch.Tensor, strides: Sequence[int]) -> dict[int, torch.Tensor]:
        key = tuple((id(t), t._version) for t in itertools.chain(encoder.parameters(), encoder.buffers()))
        if key != self._key or self._enc is None:
            self._enc, self._key = fold_batchnorm(encoder), key
        with torch.no_grad():
            return self._enc.features(x.contiguous(memory_format=torch.channels_last), strides)


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize images to ``size`` x ``size`` (antialiased bilinear) unless they already are. Shape: (B, C, H, W)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
