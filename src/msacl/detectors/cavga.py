"""CAVGA-R_u: convolutional adversarial VAE with guided attention, unsupervised (Venkataramanan et al., ECCV 2020),
the localisation baseline of CCD Table 2 and an MSACL/CCD Table 1 row.

A convolutional VAE keeps a spatial latent: the encoder's feature map F (any msacl ``Encoder``, tapped at
``latent_stride``) gives mu and log-variance by 1 x 1 convolutions, z = mu + sigma * eps, and a decoder
up-samples z back to the image. Three losses (CAVGA Eq. 1-3, weights w_vae = 1, w_adv = 1, w_ae = 0.01):

* ``L_vae = mean((x - x~)^2) + mean(KL(N(mu, sigma^2) || N(0, 1)))``;
* ``L_adv``: a discriminator D tells x from x~ = De(z) (D: ``BCE(D(x), 1) + BCE(D(x~), 0)``; the VAE:
  ``BCE(D(x~), 1)``, the non-saturating form);
* the attention expansion loss ``L_ae = mean(1 - A)``, A the Grad-CAM of the latent on F,
  ``A = ReLU(sum_c mean_hw(d sum(mu) / d F_c) F_c)`` normalised to a maximum of 1: the attention must cover the
  whole normal image, so that at test time the regions it leaves out are the anomalous ones.

Heat map: ``1 - A`` (the paper's localisation map), up-sampled bilinearly to the image. Score: the mean absolute
reconstruction error.

The authors released no code; where the paper leaves a detail open we follow the re-implementation of CAVGA-R_u
in the UPD study (``CAVGA_Ru`` in its ``models.py``, adapted from github.com/jusiro/constrained_anomaly_segmentation):
the Grad-CAM of ``sum(mu)`` on the encoder's last feature map, the mean-reduced MSE and KL of Eq. 1, the 1 x 1
mu / log-variance heads, a ResNet-18 run to stride 16 (here: the ``latent_stride`` tap, default 16), the score
``mean |x - x~|`` and the map ``1 - A``. Ours: A is normalised per image (that code divides by the batch
maximum); D and the VAE are updated alternately with Adam (lr 1e-4, betas 0.5 / 0.999) for ``epochs`` (100);
D is msacl's ``Critic`` and the decoder a stack of nearest up-sampling + 3 x 3 convolution blocks.

>>> det = CAVGA(image_size=64, epochs=1)

    det.fit(batches(train.images, 32), generator=make_generator(0)); scores, maps = det.predict(x)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msacl.config import ConfigError
from msacl.detectors.base import register
from msacl.detectors.fitloop import FitLoop
from msacl.detectors.network import NetworkDetector
from msacl.detectors.ocgan import bce
from msacl.detectors.options import NetworkOptions
from msacl.detectors.training import randn
from msacl.models.decoders import Critic
from msacl.models.encoders import Encoder

# ---------------------------------------------------------------- losses and maps (pure functions)


def vae_loss(x: torch.Tensor, x_rec: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """CAVGA Eq. 1: ``mean((x - x~)^2) + mean(-0.5 * (1 + log sigma^2 - mu^2 - sigma^2))``.

    Shape: x, x_rec (B, C, H, W); mu, logvar (B, d, h, w) -> scalar.
    """
    return ((x - x_rec) ** 2).mean() + (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean()


def grad_cam(features: torch.Tensor, target: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM of a scalar ``target`` on ``features``: ``ReLU(sum_c mean_hw(d target / d F_c) F_c)``, each image's
    map divided by its maximum (all-zero maps stay 0).

    Shape: features (B, C, h, w) in ``target``'s graph -> (B, 1, h, w) in [0, 1].
    """
    (grad,) = torch.autograd.grad(target, features, create_graph=create_graph, retain_graph=True)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True))
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)


def attention_expansion_loss(attention: torch.Tensor) -> torch.Tensor:
    """CAVGA Eq. 3, ``mean(1 - A)``. Shape: (B, 1, h, w) -> scalar."""
    return (1 - attention).mean()


def cavga_score(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Mean absolute reconstruction error per image. Shape: (B, C, H, W) x2 -> (B,)."""
    return (x - x_rec).abs().flatten(1).mean(1)


# ---------------------------------------------------------------- model


class SpatialDecoder(nn.Module):
    """A spatial latent (B, d, H/s, W/s) up-sampled back to (B, channels, H, W): log2(s) blocks of nearest x2 +
    3 x 3 conv + BatchNorm + ReLU (widths halving from ``width * 2^(n-1)``), a 3 x 3 conv and a sigmoid."""

    def __init__(self, latent_dim: int, stride: int, channels: int, width: int = 32):
        super().__init__()
        n = int(math.log2(stride))
        widths = [width * 2 ** (n - 1 - i) for i in range(n)]
        layers: list[nn.Module] = []
        cin = latent_dim
        for w in widths:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, w, 3, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        self.net = nn.Sequential(*layers, nn.Conv2d(cin, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class CAVGANet(nn.Module):
    """Encoder (features at ``stride``), 1 x 1 mu / log-variance heads, spatial decoder and discriminator."""

    def __init__(self, backbone: str, *, image_size: tuple[int, int], latent_dim: int, channels: int, width: int,
                 stride: int):
        super().__init__()
        self.encoder = Encoder(backbone)
        self.stride = stride
        cf = self.encoder.channels(stride)
        self.mu = nn.Conv2d(cf, latent_dim, 1)
        self.logvar = nn.Conv2d(cf, latent_dim, 1)
        self.decoder = SpatialDecoder(latent_dim, stride, channels, width)
        self.critic = Critic(image_size, channels, width=width)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shape: (B, C, H, W) -> features F (B, C_f, h, w), mu and logvar (B, d, h, w)."""
        f = self.encoder.features(x, (self.stride,))[self.stride]
        return f, self.mu(f), self.logvar(f)



@dataclass
class CAVGAOptions(NetworkOptions):
    """CAVGA-R_u (see ``msacl.detectors.cavga.CAVGA``)."""

    latent_stride: int = 16
    w_vae: float = 1.0
    w_adv: float = 1.0
    w_ae: float = 0.01

    def check(self) -> None:
        super().check()
        if self.latent_stride not in (8, 16, 32):
            raise ConfigError(f"latent_stride must be 8, 16 or 32, got {self.latent_stride}")


@register("cavga")
class CAVGA(NetworkDetector):
    """CAVGA-R_u detector on any encoder (see the module docstring for the losses, the sources and the map).

    Args:
        backbone: encoder backbone (the paper: ResNet-18; weights: ``det.load_encoder(source)``).
        image_size: a multiple of 32. channels: image channels. latent_dim: channels of the spatial latent (128).
        latent_stride: the encoder tap the latent sits on (16; 32 makes 2 x 2 maps at 64 px).
        epochs (100), batch_size (32), lr (1e-4). w_vae, w_adv, w_ae: 1, 1, 0.01 (CAVGA).
        width: decoder / discriminator width. init_seed: seed of the construction-time initialisation.
    """

    Options: ClassVar[type[CAVGAOptions]] = CAVGAOptions
    not_exportable = "its maps are Grad-CAM, computed by autograd during scoring, which a trace cannot record"
    options: CAVGAOptions

    def build_nets(self) -> None:
        o = self.options
        self.model = CAVGANet(o.backbone, image_size=self.hw, latent_dim=o.latent_dim, channels=o.channels,
                              width=o.width, stride=o.latent_stride)

    def new_layer_groups(self) -> list[list[nn.Module]]:
        net = self.model
        return [[net.mu, net.logvar, net.decoder, net.critic]]

    def fit_data(self, data: torch.Tensor, loop: FitLoop) -> list[dict[str, float]]:
        c, net = self.options, self.model
        vae = [p for name, p in net.named_parameters() if not name.startswith("critic.")]
        opts = {"vae": torch.optim.Adam(vae, lr=c.lr, betas=(0.5, 0.999)),
                "critic": torch.optim.Adam(net.critic.parameters(), lr=c.lr, betas=(0.5, 0.999))}
        return loop.run("cavga", data, lambda x, g: self._step(x, g, opts), epochs=c.epochs,
                        batch_size=c.batch_size, optimizers=opts, device=self.device())

    def _step(self, x: torch.Tensor, g: torch.Generator, opts: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        c, net = self.options, self.model
        f, mu, logvar = net.encode(x)
        z = mu + torch.exp(0.5 * logvar) * randn(mu.shape, g, mu)
        x_rec = net.decoder(z)
        loss_d = bce(net.critic(x), 1.0) + bce(net.critic(x_rec.detach()), 0.0)
        opts["critic"].zero_grad(set_to_none=True)
        loss_d.backward()
        opts["critic"].step()
        attention = grad_cam(f, mu.sum(), create_graph=True)
        l_vae, l_adv, l_ae = vae_loss(x, x_rec, mu, logvar), bce(net.critic(x_rec), 1.0), \
            attention_expansion_loss(attention)
        loss = c.w_vae * l_vae + c.w_adv * l_adv + c.w_ae * l_ae
        opts["vae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["vae"].step()
        return {"critic": loss_d.item(), "vae": l_vae.item(), "adv": l_adv.item(), "ae": l_ae.item()}

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps 1 - A (B, 1, H, W); runs autograd for the Grad-CAM (``predict`` runs without)."""
        with torch.enable_grad():
            f, mu, _ = self.model.encode(x)
            attention = grad_cam(f, mu.sum()).detach()
        score = cavga_score(x, self.model.decoder(mu))
        maps = F.interpolate(1 - attention, size=self.hw, mode="bilinear", align_corners=False)
        return score, maps
