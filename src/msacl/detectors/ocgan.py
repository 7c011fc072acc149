"""OCGAN: one-class novelty detection with a constrained latent space (Perera et al., CVPR 2019).

Four networks share one latent space Z = (-1, 1)^d:

* a denoising auto-encoder: En (any msacl ``Encoder`` + linear head + tanh, so Z is bounded) and De
  (``Decoder``), trained on ``l_MSE = ||x - De(En(x + n))||^2``;
* a latent discriminator Dl that tells En(x + n) from u ~ U(-1, 1)^d (``l_latent``: the codes of normal images
  must fill Z uniformly);
* a visual discriminator Dv that tells real images from De(u) (``l_visual``: every point of Z decodes to a
  normal-looking image);
* a classifier C that tells reconstructions De(En(x + n)) (label 1) from De(u) (label 0), used by
  informative-negative mining: latents u are moved by gradient descent on C's loss towards points that decode to
  poor images, and the generator is trained to make those look real to Dv too.

The anomaly score is the reconstruction error ``mean((x - De(En(x)))^2)`` on the clean image; the heat map is the
squared residual per pixel (channel mean), Gaussian-blurred (sigma 4, as msacl's other reconstruction maps).

Details from the official code (github.com/PramuPerera/OCGAN, ``andgan.py`` ``trainadnov``, ``options.py``,
``load_image.py``), which are the defaults: Adam lr 2e-4, beta1 0.5 for all five networks; batch 512; 201 epochs;
latent size 16; input noise N(0, 0.02) on [-1, 1] images (0.01 on msacl's [0, 1] scale); per step, first
Dv (real x vs De(u)) and Dl (u vs En(x + n)) with ``0.5 * (BCE(real, 1) + BCE(fake, 0))``, then C the same way,
then the generator with ``10 * BCE(Dl(En(x + n)), 1) + BCE(Dv(De(u')), 1) + lambda1 * L2(x, De(En(x + n)))``,
lambda1 = 500 on gluon's L2Loss (half the mean squared error of [-1, 1] images, i.e. ``2 * mean((x - x~)^2)`` on
[0, 1] images); u' = tanh(mu), mu ~ U(-1, 1); after epoch 150 (``mining_start``), mu first takes one gradient step
of size 2 (the release's ``lr / batch = 2``) on ``sum BCE(C(De(tanh(mu))), 0)``.
Ours: the release draws the input noise once per image when loading; here it is redrawn every step. The
discriminators and C are msacl's ``Critic`` (strided convolutions, no normalisation) and Dl an MLP
128-64-32-1 (the release's has a 16-wide sigmoid output under a sigmoid BCE; one logit here).

>>> det = OCGAN(image_size=64, epochs=1)

    det.fit(batches(train.images, 32), generator=make_generator(0))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msacl.detectors.base import register
from msacl.detectors.common import gaussian_blur
from msacl.detectors.fitloop import FitLoop
from msacl.detectors.network import NetworkDetector
from msacl.detectors.options import BlurOptions, NetworkOptions, check_positive
from msacl.detectors.training import rand, randn
from msacl.models.decoders import Critic, LatentAutoencoder

# ---------------------------------------------------------------- losses and scores (pure functions)


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean binary cross-entropy of logits against a constant label. Shape: (B,) -> scalar."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (BCE(real, 1) + BCE(fake, 0))``: Dv, Dl and C alike (the release's ``errD``, ``errD2``,
    ``strongerr``). Shape: real, fake (B,) logits -> scalar."""
    return 0.5 * (bce(real, 1.0) + bce(fake, 0.0))


def generator_loss(latent: torch.Tensor, visual: torch.Tensor, x: torch.Tensor, x_rec: torch.Tensor, *,
                   w_latent: float = 10.0, w_visual: float = 1.0, w_rec: float = 500.0) -> torch.Tensor:
    """The auto-encoder's loss: ``w_latent * BCE(Dl(En(x+n)), 1) + w_visual * BCE(Dv(De(u')), 1) + w_rec * l_MSE``,
    l_MSE being gluon's L2Loss of [-1, 1] images, ``2 * mean((x - x~)^2)`` for [0, 1] images.

    Shape:
        latent, visual: (B,) logits; x, x_rec: (B, C, H, W) in [0, 1].
        returns: scalar.
    """
    mse = 2.0 * ((x - x_rec) ** 2).mean()
    return w_latent * bce(latent, 1.0) + w_visual * bce(visual, 1.0) + w_rec * mse


def mine_negatives(mu: torch.Tensor, classifier_logits, *, step: float = 2.0, steps: int = 1) -> torch.Tensor:
    """Informative-negative mining: ``steps`` gradient steps of size ``step`` on ``sum_i BCE(C(De(tanh(mu_i))), 0)``
    (each mu_i follows the gradient of its own loss), then tanh.

    Args:
        mu: (B, d) latent pre-activations. classifier_logits: ``z -> C(De(z))`` logits (B,).

    Returns:
        tanh(mu') in (-1, 1). Shape: (B, d).
    """
    mu = mu.detach()
    for _ in range(steps):
        mu.requires_grad_(True)
        logits = classifier_logits(torch.tanh(mu))
        loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="sum")
        (grad,) = torch.autograd.grad(loss, mu)
        mu = (mu - step * grad).detach()
    return torch.tanh(mu)


def ocgan_score(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Reconstruction error ``mean((x - De(En(x)))^2)`` per image. Shape: (B, C, H, W) x2 -> (B,)."""
    return ((x - x_rec) ** 2).flatten(1).mean(1)


# ---------------------------------------------------------------- model


class LatentDiscriminator(nn.Module):
    """Dl: an MLP 128-64-32-1 on latent codes. Shape: (B, d) -> (B,) logits."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, 128), nn.ReLU(inplace=True), nn.Linear(128, 64),
                                 nn.ReLU(inplace=True), nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


class OCGANNet(nn.Module):
    """En + De (``ae``, tanh-bounded latent), Dv (``visual``), Dl (``latent``) and C (``classifier``)."""

    def __init__(self, backbone: str, *, image_size: tuple[int, int], latent_dim: int, channels: int, width: int):
        super().__init__()
        self.ae = LatentAutoencoder(backbone, image_size=image_size, latent_dim=latent_dim, channels=channels,
                                    width=width, bounded=True)
        self.visual = Critic(image_size, channels, width=width)
        self.latent = LatentDiscriminator(latent_dim)
        self.classifier = Critic(image_size, channels, width=width)



@dataclass
class OCGANOptions(NetworkOptions, BlurOptions):
    """OCGAN (see ``msacl.detectors.ocgan.OCGAN``)."""

    latent_dim: int = 16
    epochs: int = 201
    batch_size: int = 512
    lr: float = 2e-4
    beta1: float = 0.5
    noise_std: float = 0.01
    w_latent: float = 10.0
    w_visual: float = 1.0
    w_rec: float = 500.0
    mining_start: int = 150
    mining_step: float = 2.0
    mining_steps: int = 1

    def check(self) -> None:
        super().check()
        check_positive("mining_start", self.mining_start, minimum=0)
        check_positive("mining_steps", self.mining_steps, minimum=0)
        check_positive("noise_std", self.noise_std, minimum=0)


@register("ocgan")
class OCGAN(NetworkDetector):
    """OCGAN detector on any encoder (see the module docstring for losses, released details and the map).

    Args:
        backbone: En's backbone (weights: ``det.load_encoder(source)``). image_size: a multiple of 32.
        channels: image channels. latent_dim: d (16). epochs (201), batch_size (512), lr (2e-4), beta1 (0.5).
        noise_std: std of the input noise on [0, 1] images (0.01). w_latent, w_visual, w_rec: 10, 1, 500.
        mining_start: first epoch (0-based) with negative mining (the release: after epoch 150).
        mining_step, mining_steps: size (2) and number (1) of the mining steps.
        blur_sigma: Gaussian blur of the map (4). width: decoder / discriminator width.
        init_seed: seed of the construction-time initialisation.
    """

    Options: ClassVar[type[OCGANOptions]] = OCGANOptions
    options: OCGANOptions

    def build_nets(self) -> None:
        o = self.options
        self.model = OCGANNet(o.backbone, image_size=self.hw, latent_dim=o.latent_dim, channels=o.channels,
                              width=o.width)

    @property
    def encoder(self) -> nn.Module:
        return self.model.ae.encoder

    def new_layer_groups(self) -> list[list[nn.Module]]:
        net = self.model
        return [[m for name, m in net.named_children() if name != "ae"] + [net.ae.head, net.ae.decoder]]

    def fit_data(self, data: torch.Tensor, loop: FitLoop) -> list[dict[str, float]]:
        c, net = self.options, self.model
        betas = (c.beta1, 0.999)
        opts = {k: torch.optim.Adam(m.parameters(), lr=c.lr, betas=betas)
                for k, m in (("ae", net.ae), ("visual", net.visual), ("latent", net.latent),
                             ("classifier", net.classifier))}
        return loop.run("ocgan", data, lambda x, g: self._step(x, g, opts, loop.epoch), epochs=c.epochs,
                        batch_size=c.batch_size, optimizers=opts, device=self.device())

    def _step(self, x: torch.Tensor, g: torch.Generator, opts: dict[str, torch.optim.Optimizer],
              epoch: int) -> dict[str, float]:
        c, net = self.options, self.model
        b, d = x.shape[0], c.latent_dim
        noisy = x + c.noise_std * randn(x.shape, g, x)
        u = rand((b, d), g, x) * 2 - 1  # Dl's "real" codes
        eps = rand((b, d), g, x) * 2 - 1  # latents decoded as Dv's and C's fakes
        with torch.no_grad():
            z = net.ae.encode(noisy)
            x_rec, fake = net.ae.decode(z), net.ae.decode(eps)
        loss_v = discriminator_loss(net.visual(x), net.visual(fake))
        loss_l = discriminator_loss(net.latent(u), net.latent(z))
        for key, loss in (("visual", loss_v), ("latent", loss_l)):
            opts[key].zero_grad(set_to_none=True)
            loss.backward()
            opts[key].step()
        loss_c = discriminator_loss(net.classifier(x_rec), net.classifier(fake))
        opts["classifier"].zero_grad(set_to_none=True)
        loss_c.backward()
        opts["classifier"].step()
        mu = rand((b, d), g, x) * 2 - 1
        if epoch >= c.mining_start and c.mining_steps > 0:
            mined = mine_negatives(mu, lambda zz: net.classifier(net.ae.decode(zz)), step=c.mining_step,
                                   steps=c.mining_steps)
        else:
            mined = torch.tanh(mu)
        z = net.ae.encode(noisy)
        loss_g = generator_loss(net.latent(z), net.visual(net.ae.decode(mined)), x, net.ae.decode(z),
                                w_latent=c.w_latent, w_visual=c.w_visual, w_rec=c.w_rec)
        opts["ae"].zero_grad(set_to_none=True)
        loss_g.backward()
        opts["ae"].step()
        return {"visual": loss_v.item(), "latent": loss_l.item(), "classifier": loss_c.item(),
                "generator": loss_g.item()}

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_rec = self.model.ae.decode(self.model.ae.encode(x))
        maps = gaussian_blur(((x - x_rec) ** 2).mean(1, keepdim=True), self.options.blur_sigma)
        return ocgan_score(x, x_rec), maps
