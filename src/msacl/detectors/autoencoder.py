"""Two auto-encoder detectors on any encoder: the MS-SSIM auto-encoder (CCD Sec. 2.2, s_MSI) and the
denoising auto-encoder baseline (DAE, MSACL Table 1).

* ``msssim_ae``: trained with the MS-SSIM loss ``1 - MS-SSIM(x, x~)``; image score
  ``s_MSI = 1 - (nu * m_G + (1 - nu) * m_L)`` (m_L: the local model's mean patch MS-SSIM, with
  ``local=True``); heat map ``1 - SSIM map`` plus, with a local model, each patch's ``1 - m_L`` spread
  over its pixels.
* ``dae``: Gaussian noise on the input, L2 reconstruction of the clean image; score = mean squared error;
  map = per-pixel squared error (channel mean), Gaussian-blurred. With ``local=True`` the score is
  ``nu * s_G + (1 - nu) * mean patch s_L`` and each patch's error is added to the map (ours).

>>> det = MSSSIMAutoencoder(image_size=64, epochs=1)

    det.fit(batches(train.images, 32), generator=make_generator(0))
    scores, maps = det.predict(test.images[:8])      # (8,), (8, 1, 64, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from msacl.detectors.base import register
from msacl.detectors.common import gaussian_blur
from msacl.detectors.fitloop import FitLoop
from msacl.detectors.msssim import ms_ssim, msi_score, ssim_map
from msacl.detectors.options import BlurOptions, TwoScaleOptions, check_positive
from msacl.detectors.training import randn
from msacl.detectors.twoscale import TwoScaleDetector
from msacl.models.decoders import LatentAutoencoder

# ---------------------------------------------------------------- losses and scores (pure functions)


def msssim_loss(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """MS-SSIM reconstruction loss of the MS-SSIM auto-encoder (CCD Sec. 2.2): mean of 1 - MS-SSIM.

    Shape:
        x, x_rec: (B, C, H, W) in [0, 1].
        returns: scalar.
    """
    return (1 - ms_ssim(x, x_rec)).mean()


def denoising_loss(x: torch.Tensor, x_rec_noisy: torch.Tensor) -> torch.Tensor:
    """DAE loss: mean squared error between the clean image and the reconstruction of its noisy copy.

    Shape:
        x, x_rec_noisy: (B, C, H, W).
        returns: scalar.
    """
    return ((x - x_rec_noisy) ** 2).mean()


def squared_error_score(x: torch.Tensor, x_rec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DAE score and raw map: mean squared error per image, and per pixel (mean over channels).

    Shape:
        x, x_rec: (B, C, H, W).
        returns: (B,), (B, 1, H, W).
    """
    err = (x - x_rec) ** 2
    return err.flatten(1).mean(1), err.mean(1, keepdim=True)


# ---------------------------------------------------------------- detectors


class _AutoencoderDetector(TwoScaleDetector):
    """Shared training of an encoder + decoder (global and optional local) with one loss."""

    def build_net(self, hw: tuple[int, int]) -> LatentAutoencoder:
        c = self.options
        return LatentAutoencoder(c.backbone, image_size=hw, latent_dim=c.latent_dim, channels=c.channels,
                                 width=c.width)

    def loss(self, net: LatentAutoencoder, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def fit_data(self, data: torch.Tensor, loop: FitLoop) -> list[dict[str, float]]:
        c = self.options
        opts = {name: torch.optim.Adam(net.parameters(), lr=c.lr) for name, net in self.nets()}

        def step(x: torch.Tensor, g: torch.Generator) -> dict[str, float]:
            out = {}
            for name, net in self.nets():
                loss = self.loss(net, self.local_batch(x, g) if name == "local" else x, g)
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                opts[name].step()
                out["loss" if name == "global" else "local_loss"] = loss.item()
            return out

        return loop.run(self.name, data, step, epochs=c.epochs, batch_size=c.batch_size, optimizers=opts,
                        device=self.device())


_SHARED_ARGS = """
        backbone: encoder backbone (weights: ``det.load_encoder(source)``; local: ``part="local"``).
        image_size: image size, a multiple of 32. channels: image channels. latent_dim: size of Z.
        local: also train a local model on ``patch_size`` patches (stride ``patch_stride``), with
            ``patches_per_image`` random patches per image per step; nu weighs global against local.
        epochs, batch_size, lr: Adam training (defaults ours).
        width: decoder width. init_seed: seed of the construction-time initialisation."""



@dataclass
class MSSSIMOptions(TwoScaleOptions):
    """MS-SSIM auto-encoder (see ``msacl.detectors.autoencoder.MSSSIMAutoencoder``)."""


@dataclass
class DAEOptions(TwoScaleOptions, BlurOptions):
    """Denoising auto-encoder (see ``msacl.detectors.autoencoder.DAE``): ``noise_std`` of the training noise,
    ``blur_sigma`` of the map."""

    noise_std: float = 0.1

    def check(self) -> None:
        super().check()
        check_positive("noise_std", self.noise_std, minimum=0)


@register("msssim_ae")
class MSSSIMAutoencoder(_AutoencoderDetector):
    __doc__ = "MS-SSIM auto-encoder (CCD s_MSI).\n\n    Args:" + _SHARED_ARGS

    Options: ClassVar[type[MSSSIMOptions]] = MSSSIMOptions
    options: MSSSIMOptions

    def loss(self, net: LatentAutoencoder, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return msssim_loss(x, net(x)[1])

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_rec = self.model(x)[1]
        m_g, pixel = ms_ssim(x, x_rec), 1 - ssim_map(x, x_rec)
        m_l = None
        if self.local is not None:
            def patch_msssim(p: torch.Tensor) -> tuple[torch.Tensor]:
                return (ms_ssim(p, self.local(p)[1]),)

            (m_p,) = self.local_apply(x, patch_msssim)  # (B, P)
            pixel = pixel + self.spread(1 - m_p)
            m_l = m_p.mean(1)
        return msi_score(m_g, m_l, nu=self.options.nu), pixel


@register("dae")
class DAE(_AutoencoderDetector):
    __doc__ = ("Denoising auto-encoder baseline (MSACL Table 1).\n\n    Args:" + _SHARED_ARGS + """
        noise_std: std of the Gaussian noise added to training inputs (ours: 0.1), clamped to [0, 1].
        blur_sigma: Gaussian blur of the squared-error map (anomalib's 4).""")

    Options: ClassVar[type[DAEOptions]] = DAEOptions
    options: DAEOptions

    def loss(self, net: LatentAutoencoder, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noisy = (x + self.options.noise_std * randn(x.shape, g, x)).clamp(0, 1)
        return denoising_loss(x, net(noisy)[1])

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, pixel = squared_error_score(x, self.model(x)[1])
        score, pixel = self.with_local(x, score, pixel, lambda p: squared_error_score(p, self.local(p)[1])[0])
        return score, gaussian_blur(pixel, self.options.blur_sigma)
