"""Feature taps of a frozen encoder, as the feature-based detectors (PaDiM, PatchCore) and the export read them.

:class:`FrozenFeatures` runs the taps through a BatchNorm-folded, channels-last copy of the encoder
(:func:`fold_batchnorm`), rebuilt whenever its weights change; :func:`feature_grid` is the side of a tap's
feature map for a given input size; :func:`reestimate_batchnorm` replaces an encoder's BatchNorm running
statistics by those of given images (AdaBN, Li et al. 2016), the detectors' ``bn_stats="train"``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from msacl.errors import MsaclError
from msacl.models.encoders import Encoder
from msacl.runs import make_generator


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode for the block, then back in the mode it was in (even after an error)."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics, in registration order."""
    return [m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm(encoder: Encoder, images: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every BatchNorm in ``encoder`` by those of ``images`` (one pass).

    Each BatchNorm's running mean and (unbiased) variance become the plain mean over the batches of the batch
    statistics it sees (``momentum=None``, torch's cumulative average), with every BatchNorm normalising by
    its batch statistics during the pass, as in training; weights, the other buffers and the encoder's mode
    are left as they were. This is AdaBN (Li et al. 2016) and what ``torch.optim.swa_utils.update_bn`` does.

    Args:
        encoder: the encoder whose statistics are replaced (in place).
        images: batches (B, C, H, W) in [0, 1] (moved to the encoder's device); each batch counts once in the
            mean, whatever its size, as in torch's cumulative average.

    Returns:
        The number of images seen. Raises ``MsaclError`` when there was none.
    """
    layers = batchnorms(encoder.backbone)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    n = 0
    was = encoder.training
    try:
        encoder.train()
        for x in images:
            encoder(x.to(encoder.mean.device))
            n += x.shape[0]
    finally:
        encoder.train(was)
        for m, mom in zip(layers, momenta, strict=True):
            m.momentum = mom
    if n == 0:
        raise MsaclError("bn_stats=train: no training images to estimate the BatchNorm statistics on")
    return n


def feature_grid(encoder: Encoder, image_size: int, stride: int) -> int:
    """Side of the encoder's feature map at ``stride`` for a square ``image_size`` input, by running it once."""
    with torch.no_grad(), evaluating(encoder):
        probe = torch.zeros(1, 3, image_size, image_size, device=encoder.mean.device)
        f = encoder.features(probe, (stride,))[stride]
    if f.shape[-2] != f.shape[-1]:
        raise MsaclError(f"{encoder.name}: a square input gave a {tuple(f.shape[-2:])} feature map")
    return int(f.shape[-1])


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
    with torch.no_grad():
        g = make_generator(0, encoder.mean.device)
        x = torch.rand(2, 3, check_size, check_size, generator=g, device=encoder.mean.device)
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
