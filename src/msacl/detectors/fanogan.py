"""F-anoGAN (Schlegl et al. 2019) on any encoder, scored as CCD Eq. 7.

Training has two phases, as in f-AnoGAN:

1. a WGAN-GP (Gulrajani et al. 2017): the generator g_phi (a ``Decoder``) maps z ~ U(-1, 1)^d to images
   and a critic without normalisation layers is trained ``n_critic`` times per generator step with the
   gradient penalty ``lambda_gp * (||grad D(x^)||_2 - 1)^2``;
2. izi_f encoder training with g_phi and the critic frozen: the encoder E (ResNet + linear head + tanh, so
   that it lands in the prior's [-1, 1]) minimises reconstruction losses in image space and in the space of
   the frozen critic's features d(.) (its last convolutional layer, ``Critic.features``), as f-AnoGAN's
   L_izi_f (Schlegl et al. 2019, Sec. 2.3): ``mean((x - g(E(x)))^2) + kappa * mean((d(x) - d(g(E(x))))^2)``.
   Gradients reach E through the frozen critic and generator; their weights do not change.

Anomaly score (CCD Eq. 7 with f-AnoGAN's feature residual): ``||x - g(E(x))|| + kappa * ||d(x) - d(g(E(x)))||``,
each norm divided by the square root of its number of elements (a root mean square; ours, so that the two
terms do not scale with image or feature size). CCD Eq. 7 writes the encoder f_theta in the second term;
f-AnoGAN's A_D(x) and the izi_f loss use the discriminator's features, which we follow (an encoder residual
would be a term the encoder itself was trained to shrink, on anomalies as well). Heat map:
``|x - g(E(x))|`` per pixel (channel mean), Gaussian-blurred.
With ``local=True`` a second GAN + encoder on 32 x 32 patches adds each patch's score to the map and the
image score becomes ``nu * s_G + (1 - nu) * mean patch s_L`` (ours).

>>> det = FAnoGAN(image_size=64, gan_epochs=1, epochs=1)

    det.fit(batches(train.images, 32), generator=make_generator(0))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from msacl.detectors.base import register
from msacl.detectors.common import gaussian_blur
from msacl.detectors.fitloop import FitLoop
from msacl.detectors.options import BlurOptions, TwoScaleOptions, check_positive
from msacl.detectors.training import rand
from msacl.detectors.twoscale import TwoScaleDetector
from msacl.models.decoders import Critic, LatentAutoencoder

# ---------------------------------------------------------------- losses and scores (pure functions)


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     eps: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017, Eq. 3) at x^ = eps * real + (1 - eps) * fake, without lambda.

    Shape:
        real, fake: (B, C, H, W); eps: (B,) in [0, 1].
        returns: (B,) values (||grad_x^ D(x^)||_2 - 1)^2.
    """
    e = eps.view(-1, 1, 1, 1)
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1) ** 2


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor, penalty: torch.Tensor, *,
                lambda_gp: float = 10.0) -> torch.Tensor:
    """WGAN-GP critic loss: E[D(fake)] - E[D(real)] + lambda_gp * E[penalty] (lambda_gp = 10, WGAN-GP).

    Shape:
        d_real, d_fake, penalty: (B,).
        returns: scalar.
    """
    return d_fake.mean() - d_real.mean() + lambda_gp * penalty.mean()


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss -E[D(g(z))]. Shape: d_fake (B,) -> scalar."""
    return -d_fake.mean()


def izif_loss(x: torch.Tensor, x_rec: torch.Tensor, f: torch.Tensor, f_rec: torch.Tensor, *,
              kappa: float = 1.0) -> torch.Tensor:
    """f-AnoGAN's L_izi_f: ``mean((x - x~)^2) + kappa * mean((d(x) - d(x~))^2)``, x~ = g(E(x)), d the frozen
    critic's features (``f = d(x)``, ``f_rec = d(x~)``).

    Shape:
        x, x_rec: (B, C, H, W); f, f_rec: (B, D).
        returns: scalar.
    """
    return ((x - x_rec) ** 2).mean() + kappa * ((f - f_rec) ** 2).mean()


def fanogan_score(x: torch.Tensor, x_rec: torch.Tensor, f: torch.Tensor, f_rec: torch.Tensor, *,
                  kappa: float = 1.0) -> torch.Tensor:
    """CCD Eq. 7 with the critic's features: ||x - x~|| + kappa * ||d(x) - d(x~)||, each L2 norm divided by
    sqrt(numel); x~ = g(E(x)), ``f = d(x)``, ``f_rec = d(x~)``.

    Shape:
        x, x_rec: (B, C, H, W); f, f_rec: (B, D).
        returns: (B,).
    """
    image = (x - x_rec).flatten(1).norm(dim=1) / x[0].numel() ** 0.5
    feature = (f - f_rec).flatten(1).norm(dim=1) / f[0].numel() ** 0.5
    return image + kappa * feature


# ---------------------------------------------------------------- model


class FAnoGANNet(LatentAutoencoder):
    """Encoder E = f_theta (bounded latent), generator g_phi (``.decoder``) and the WGAN-GP critic d."""

    def __init__(self, backbone: str, *, image_size: tuple[int, int], latent_dim: int, channels: int, width: int):
        super().__init__(backbone, image_size=image_size, latent_dim=latent_dim, channels=channels, width=width,
                         bounded=True)
        self.critic = Critic(image_size, channels, width=width)

    def residuals(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What izi_f compares: x, x~ = g(E(x)), and the critic's features d(x), d(x~).

        Shape: (B, C, H, W) -> (B, C, H, W), (B, C, H, W), (B, D), (B, D), D = ``critic.features`` size.
        """
        x_rec = self.decode(self.encode(x))
        return x, x_rec, self.critic.features(x), self.critic.features(x_rec)



@dataclass
class FAnoGANOptions(TwoScaleOptions, BlurOptions):
    """F-anoGAN (see ``msacl.detectors.fanogan.FAnoGAN``): ``epochs`` of the encoder after ``gan_epochs`` of
    WGAN-GP."""

    gan_epochs: int = 100
    epochs: int = 50
    n_critic: int = 5
    lambda_gp: float = 10.0
    kappa: float = 1.0

    def check(self) -> None:
        super().check()
        check_positive("gan_epochs", self.gan_epochs, minimum=0)
        check_positive("n_critic", self.n_critic)


@register("fanogan")
class FAnoGAN(TwoScaleDetector):
    """F-anoGAN detector on any encoder.

    Args:
        backbone: encoder backbone (weights: ``det.load_encoder(source)``; local: ``part="local"``).
        image_size: image size, a multiple of 32. channels: image channels. latent_dim: size of Z (128).
        local: also train a local GAN + encoder on ``patch_size`` patches (stride ``patch_stride``),
            ``patches_per_image`` random patches per image per step; nu weighs global against local (ours 0.5).
        gan_epochs: WGAN-GP epochs; epochs: encoder epochs (defaults ours). batch_size.
        lr: Adam lr 1e-4 with betas (0, 0.9) for both phases (WGAN-GP). n_critic: critic steps per
            generator step (5); lambda_gp: gradient penalty weight (10); kappa: weight of the critic-feature term (1).
        blur_sigma: Gaussian blur of the map (anomalib's 4). width: generator/critic width.
        init_seed: seed of the construction-time initialisation.
    """

    Options: ClassVar[type[FAnoGANOptions]] = FAnoGANOptions
    options: FAnoGANOptions

    def build_net(self, hw: tuple[int, int]) -> FAnoGANNet:
        c = self.options
        return FAnoGANNet(c.backbone, image_size=hw, latent_dim=c.latent_dim, channels=c.channels,
                          width=c.width)

    def phases(self) -> list[tuple[str, int]]:
        return [("wgan-gp", int(self.options.gan_epochs)), ("encoder", int(self.options.epochs))]

    def fit_data(self, data: torch.Tensor, loop: FitLoop) -> list[dict[str, float]]:
        c = self.options
        betas = (0.0, 0.9)
        gan = {name: (torch.optim.Adam(net.decoder.parameters(), lr=c.lr, betas=betas),
                      torch.optim.Adam(net.critic.parameters(), lr=c.lr, betas=betas)) for name, net in self.nets()}
        enc = {name: torch.optim.Adam([*net.encoder.parameters(), *net.head.parameters()], lr=c.lr, betas=betas)
               for name, net in self.nets()}

        def gan_step(x: torch.Tensor, g: torch.Generator) -> dict[str, float]:
            out: dict[str, float] = {}
            train_g = loop.step % c.n_critic == c.n_critic - 1
            for name, net in self.nets():
                real = self.local_batch(x, g) if name == "local" else x
                losses = self._gan_step(net, *gan[name], real, g, train_g)
                out.update({(k if name == "global" else f"local_{k}"): v for k, v in losses.items()})
            return out

        def encoder_step(x: torch.Tensor, g: torch.Generator) -> dict[str, float]:
            out = {}
            for name, net in self.nets():
                real = self.local_batch(x, g) if name == "local" else x
                loss = izif_loss(*net.residuals(real), kappa=c.kappa)
                enc[name].zero_grad(set_to_none=True)
                loss.backward()
                enc[name].step()
                out["izif" if name == "global" else "local_izif"] = loss.item()
            return out

        gan_opts = {f"{name}_{part}": o for name, pair in gan.items()
                    for part, o in zip(("generator", "critic"), pair, strict=True)}
        loop.run("wgan-gp", data, gan_step, epochs=c.gan_epochs, batch_size=c.batch_size, optimizers=gan_opts,
                 device=self.device())
        for _, net in self.nets():  # phase 2: the GAN is fixed (BatchNorm in eval mode, no gradients)
            net.decoder.eval().requires_grad_(False)
            net.critic.requires_grad_(False)
        try:
            history = loop.run("encoder", data, encoder_step, epochs=c.epochs, batch_size=c.batch_size,
                               optimizers={f"{name}_encoder": o for name, o in enc.items()}, device=self.device())
        finally:
            for _, net in self.nets():
                net.decoder.requires_grad_(True)
                net.critic.requires_grad_(True)
        return history

    def _gan_step(self, net: FAnoGANNet, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                  real: torch.Tensor, g: torch.Generator, train_generator: bool) -> dict[str, float]:
        c, b = self.options, real.shape[0]
        z = rand((b, c.latent_dim), g, real) * 2 - 1
        with torch.no_grad():
            fake = net.decode(z)
        penalty = gradient_penalty(net.critic, real, fake, rand((b,), g, real))
        loss_d = critic_loss(net.critic(real), net.critic(fake), penalty, lambda_gp=c.lambda_gp)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        out = {"critic": loss_d.item()}
        if train_generator:
            z = rand((b, c.latent_dim), g, real) * 2 - 1
            loss_g = generator_loss(net.critic(net.decode(z)))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            out["generator"] = loss_g.item()
        return out

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.options
        x, x_rec, z, z_rec = self.model.residuals(x)
        score = fanogan_score(x, x_rec, z, z_rec, kappa=c.kappa)
        pixel = (x - x_rec).abs().mean(1, keepdim=True)
        score, pixel = self.with_local(x, score, pixel,
                                       lambda p: fanogan_score(*self.local.residuals(p), kappa=c.kappa))
        return score, gaussian_blur(pixel, c.blur_sigma)
