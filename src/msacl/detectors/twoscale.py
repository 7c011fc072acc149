"""The base class of IGD, F-anoGAN, MS-SSIM AE and DAE: a global network on whole images and, with
``local=True``, a second one on patches (``msacl.detectors.patches``), as IGD and CCD train them."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from msacl.detectors.network import NetworkDetector
from msacl.detectors.options import TwoScaleOptions
from msacl.detectors.patches import extract_patches, in_chunks, sample_patches, spread_patch_scores


class TwoScaleDetector(NetworkDetector):
    """A detector made of a global network on whole images and, with ``local=True``, a second one on
    ``patch_size`` patches (stride ``patch_stride``), as IGD and CCD train them. Settings: ``TwoScaleOptions``
    and a subclass's own; construction, ``fit`` and ``predict`` as
    :class:`~msacl.detectors.network.NetworkDetector` says, each network's layers but its encoder
    re-initialised from their own seed (global first).

    Weights: the global encoder is ``det.model.encoder`` (also ``det.encoder``), the local one
    ``det.local.encoder``; ``det.load_encoder(source)`` and ``det.load_encoder(source, part="local")`` load
    them (with their input normalisation) before ``fit``.
    """

    Options: ClassVar[type[TwoScaleOptions]] = TwoScaleOptions
    options: TwoScaleOptions

    def build_nets(self) -> None:
        # patch_size, if local, a multiple of 32 and no larger than the image, as the options checked.
        o = self.options
        self.model = self.build_net(self.hw)
        self.local = self.build_net((o.patch_size,) * 2) if o.local else None

    def build_net(self, hw: tuple[int, int]) -> nn.Module:
        raise NotImplementedError

    def encoder_parts(self) -> dict[str, nn.Module]:
        return {name: net.encoder for name, net in self.nets()}

    def nets(self) -> list[tuple[str, nn.Module]]:
        return [("global", self.model)] + ([("local", self.local)] if self.local is not None else [])

    def new_layers(self, net: nn.Module) -> list[nn.Module]:
        """Layers ``fit`` re-initialises from its generator (everything but the encoder)."""
        return [m for name, m in net.named_children() if name != "encoder"]

    def new_layer_groups(self) -> list[list[nn.Module]]:
        return [self.new_layers(net) for _, net in self.nets()]

    # helpers for the local network
    def local_batch(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random training patches: ``patches_per_image`` per image. Shape: (B, C, H, W) -> (B * k, C, p, p)."""
        o = self.options
        return sample_patches(x, o.patches_per_image, g, patch=o.patch_size, stride=o.patch_stride)

    def local_apply(self, x: torch.Tensor,
                    fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """``fn`` on every grid patch of every image, outputs regrouped per image.

        Shape: (B, C, H, W) -> each output of ``fn`` (B * P, ...) as (B, P, ...).
        """
        o = self.options
        patches = extract_patches(x, patch=o.patch_size, stride=o.patch_stride)
        outs = in_chunks(fn, patches, chunk=max(2, 4 * o.batch_size))
        return tuple(out.view(x.shape[0], -1, *out.shape[1:]) for out in outs)

    def spread(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """Shape: (B, P) -> (B, 1, H, W), see ``spread_patch_scores``."""
        o = self.options
        return spread_patch_scores(patch_scores, self.hw, patch=o.patch_size, stride=o.patch_stride)

    def with_local(self, x: torch.Tensor, score: torch.Tensor, pixel: torch.Tensor,
                   patch_score: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the local model's view to the global one: ``nu * s_G + (1 - nu) * mean patch s_L`` as the image
        score, and each patch's score spread over its pixels added to the map. Without a local model,
        ``(score, pixel)`` unchanged.

        Shape: x (B, C, H, W), score (B,), pixel (B, 1, H, W); ``patch_score``: (N, C, p, p) -> (N,).
        """
        if self.local is None:
            return score, pixel
        (s_p,) = self.local_apply(x, lambda p: (patch_score(p),))
        nu = self.options.nu
        return nu * score + (1 - nu) * s_p.mean(1), pixel + self.spread(s_p)
