"""Decoders, critics and the latent auto-encoder the generative detectors (IGD, F-anoGAN, MS-SSIM AE, DAE) share.

``LatentAutoencoder`` is f_theta (any ``Encoder`` plus a linear map to the latent space Z) followed by
the decoder g_phi: Z -> X. The encoder's weights can come from any source (random, an ``msacl pretrain``
``encoder.pt``, ImageNet weights): ``.encoder`` is an ``msacl.models.Encoder`` of any backbone.

>>> ae = LatentAutoencoder("resnet18", image_size=64, latent_dim=128)
>>> z, x_rec = ae(torch.rand(2, 3, 64, 64))     # (2, 128), (2, 3, 64, 64) in [0, 1]
"""

from __future__ import annotations

import torch
from torch import nn

from msacl.models.encoders import Encoder

STRIDE = 32
"""Decoders start from a (H / 32, W / 32) grid (the deepest tap of every supported backbone)."""


def image_hw(image_size: int | tuple[int, int] | list[int], name: str = "image size") -> tuple[int, int]:
    """``(H, W)`` from an int or a pair, checking that both are positive multiples of 32; a ``ValueError``
    naming the size by ``name`` otherwise."""
    hw = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(hw) != 2:
        raise ValueError(f"{name} must be an int or [H, W], got {image_size}")
    if any(s < STRIDE or s % STRIDE for s in hw):
        raise ValueError(f"{name} must be a multiple of {STRIDE} (at least {STRIDE}), got {image_size}")
    return hw  # type: ignore[return-value]


def _widths(width: int, max_width: int, n: int) -> list[int]:
    """Channels from coarse to fine: width * 2^(n-1), ..., width, capped at ``max_width``."""
    return [min(width * 2**k, max_width) for k in range(n - 1, -1, -1)]


class Decoder(nn.Module):
    """g_phi: a latent vector to an image of the encoder's input size, sigmoid output in [0, 1].

    A linear layer makes a (H/32, W/32) map, then five nearest-neighbour up-sampling + 3 x 3 conv blocks
    double it back to (H, W) (up-sampling + conv rather than transposed conv avoids checkerboard artefacts).

    Args:
        latent_dim: size of the latent vector.
        image_size: output size, int or (H, W), multiples of 32 (32 for local patches).
        channels: output image channels.
        width: channels of the last (finest) block; coarser blocks double it up to ``max_width``.

    Shape:
        input: (B, latent_dim).
        output: (B, channels, H, W).
    """

    def __init__(self, latent_dim: int, image_size: int | tuple[int, int], channels: int = 3, *,
                 width: int = 32, max_width: int = 256):
        super().__init__()
        self.hw = image_hw(image_size)
        self.grid = (self.hw[0] // STRIDE, self.hw[1] // STRIDE)
        widths = _widths(width, max_width, 6)
        self.fc = nn.Linear(latent_dim, widths[0] * self.grid[0] * self.grid[1])
        blocks: list[nn.Module] = [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        blocks += [nn.Conv2d(widths[-1], channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*blocks)
        self.width0 = widths[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.width0, *self.grid)  # (B, C0, H/32, W/32)
        return self.net(h)


class Critic(nn.Module):
    """An image critic without normalisation layers (a WGAN-GP gradient penalty needs per-sample outputs).

    Strided 4 x 4 convolutions halve the image until its smaller side is 4, then a linear layer gives one
    number per image. Used as the ACAI interpolation critic in IGD and the WGAN-GP critic in F-anoGAN.

    Shape:
        input: (B, channels, H, W) in [0, 1].
        ``features``: (B, D) penultimate features; ``forward``: (B,).
    """

    def __init__(self, image_size: int | tuple[int, int], channels: int = 3, *, width: int = 32,
                 max_width: int = 256):
        super().__init__()
        h, w = image_hw(image_size)
        layers: list[nn.Module] = []
        cin, cout = channels, width
        while min(h, w) > 4:
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            cin, cout, h, w = cout, min(cout * 2, max_width), h // 2, w // 2
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out = nn.Linear(cin * h * w, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)  # centred input, as GAN critics expect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x)).squeeze(1)


class LatentAutoencoder(nn.Module):
    """f_theta (``Encoder`` + linear head, optionally tanh-bounded) and g_phi (``Decoder``).

    Args:
        backbone: backbone of the encoder (``msacl.models.backbones``).
        image_size: input/output size, multiple of 32.
        latent_dim: dimension of Z (128 in IGD and f-AnoGAN).
        channels: image channels reconstructed (1-channel input is repeated to 3 for the encoder).
        bounded: tanh on the latent (F-anoGAN's encoder must land in the generator's [-1, 1] prior).
        width: decoder width (see ``Decoder``).

    Shape:
        ``encode``: (B, C, H, W) -> (B, latent_dim); ``decode``: (B, latent_dim) -> (B, channels, H, W).
    """

    def __init__(self, backbone: str = "resnet18", *, image_size: int | tuple[int, int] = 64, latent_dim: int = 128,
                 channels: int = 3, bounded: bool = False, width: int = 32):
        super().__init__()
        self.encoder = Encoder(backbone)
        self.head = nn.Linear(self.encoder.out_dim, latent_dim)
        self.decoder = Decoder(latent_dim, image_size, channels, width=width)
        self.bounded = bounded

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.encoder(x))
        return torch.tanh(z) if self.bounded else z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z)
