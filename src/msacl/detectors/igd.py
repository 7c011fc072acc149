"""IGD: interpolated Gaussian descriptor (Chen et al., AAAI 2022), as its authors released it and as MSACL
(Sec. 3.3, Eq. 10-11) and CCD (Sec. 2.2, Eq. 5-6) write it.

An auto-encoder (f_theta any ResNet encoder + linear head, g_phi a decoder) is trained, the global model on
whole images and the local one on patches, each on its own, with the loss of the IGD release
(github.com/tianyu0207/IGD, ``p32/ssim_main.py``, ``train``: ``encoder_loss = ms_ssim_l1 + svdd_loss +
0.1 * reg_inter``):

* ``ms_ssim_l1 = 0.85 * (1 - MS-SSIM) + 0.15 * MAE``, i.e. Eq. 11 for one model with rho = 0.15;
* ``svdd_loss = mean(1 - h)``, h_psi(z) = exp(-||z - c||^2 / sigma) the Gaussian descriptor (c and sigma are
  re-estimated from the training latents at the start of every epoch and after training, kept as buffers);
* ``reg_inter``: the adversarially constrained interpolation regulariser of ACAI (Berthelot et al. 2019): a
  critic learns to predict the coefficient alpha of decoded latent interpolations, and the auto-encoder is
  trained to make it answer 0.

Two scorings, ``"released"`` (default) and ``"paper"`` (MSACL Eq. 10-11): see ``IGD``.

Where ours differs from the release: SSIM maps are single-scale (the release upsamples every scale's map);
overlapping patch maps are averaged (the release sums them with ``F.fold``); the release's patch L1 at test
time is a signed mean (``(img - rec).mean()``), ours the MAE its training loss and 256 px score use.

>>> det = IGD(image_size=64, local=True, epochs=1)

    det.load_encoder("runs/pre"); det.load_encoder("runs/pre_local", part="local")
    det.fit(batches(train.images, 32), generator=make_generator(0))
    scores, maps = det.predict(test.images[:8])      # (8,), (8, 1, 64, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from msacl.config import ConfigError
from msacl.detectors.base import register
from msacl.detectors.fitloop import FitLoop
from msacl.detectors.msssim import ms_ssim, msi_score, ssim_map
from msacl.detectors.options import FrozenEncoderOptions, TwoScaleOptions, check_unit
from msacl.detectors.patches import extract_patches, place_patch_maps
from msacl.detectors.training import rand, randperm
from msacl.detectors.twoscale import TwoScaleDetector
from msacl.models.decoders import Critic, LatentAutoencoder

# ---------------------------------------------------------------- losses and scores (pure functions)


def gaussian_descriptor(z: torch.Tensor, c: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """h_psi(z) = exp(-||z - c||^2 / sigma), the likelihood that z is normal (IGD; MSACL Eq. 10).

    Shape:
        z: (B, D); c: (D,); sigma: scalar.
        returns: (B,) in (0, 1].
    """
    return torch.exp(-((z - c) ** 2).sum(1) / sigma)


def gaussian_parameters(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre c = mean latent and scale sigma = mean squared distance to c of normal latents.

    Shape:
        z: (N, D).
        returns: c (D,), sigma () (at least 1e-6, so h stays defined when all latents coincide).
    """
    c = z.mean(0)
    return c, ((z - c) ** 2).sum(1).mean().clamp_min(1e-6)


def anomaly_classification_loss(h: torch.Tensor) -> torch.Tensor:
    """IGD Gaussian anomaly classification loss, mean(1 - h): normal latents should have high h.

    Shape:
        h: (B,) from ``gaussian_descriptor``.
        returns: scalar.
    """
    return (1 - h).mean()


def reconstruction_error(l1: torch.Tensor, m_global: torch.Tensor, m_local: torch.Tensor | None = None, *,
                         rho: float = 0.15, nu: float = 0.5) -> torch.Tensor:
    """Eq. 11 of MSACL (Eq. 6 of CCD): rho * ||x - x~||_1 + (1 - rho) * (1 - (nu * m_G + (1 - nu) * m_L)).

    ``||x - x~||_1`` is the mean absolute error per image (the papers' "MAE"). Without a local model
    (``m_local`` None) the MS-SSIM term is the global one alone (nu = 1).

    Args:
        rho: weight of the MAE term; 0.15 in the IGD release (0.85 on MS-SSIM).
        nu: weight of the global MS-SSIM; 0.5 is ours (the papers give no value).

    Shape:
        l1, m_global, m_local: (B,).
        returns: (B,).
    """
    return rho * l1 + (1 - rho) * msi_score(m_global, m_local, nu=nu)


def igd_score(rec: torch.Tensor, h: torch.Tensor, *, xi: float = 0.9) -> torch.Tensor:
    """Eq. 10 of MSACL (Eq. 5 of CCD): s_IGD = xi * l_rec + (1 - xi) * (1 - h). The release's local patch
    score has xi = 0.9, its global score xi = 0.1 (see ``released_score``).

    Shape:
        rec, h: (B,).
        returns: (B,), larger = more anomalous.
    """
    return xi * rec + (1 - xi) * (1 - h)


def released_score(rec_g: torch.Tensor, h_g: torch.Tensor, rec_p: torch.Tensor | None = None,
                   h_p: torch.Tensor | None = None, *, xi_global: float = 0.1, xi_local: float = 0.9,
                   beta: float = 0.5) -> torch.Tensor:
    """Image score of the IGD release (``multi_scale/inference_det.py``): ``s_G = 0.1 * rec_G + 0.9 * (1 - h_G)``,
    ``s_L = max_p (0.9 * rec_p + 0.1 * (1 - h_p))``, ``beta * s_L + (1 - beta) * s_G`` (beta 0.5); ``s_G``
    without patches.

    Shape:
        rec_g, h_g: (B,) of the global model; rec_p, h_p: (B, P) of the local model, per patch.
        returns: (B,), larger = more anomalous.
    """
    s_g = igd_score(rec_g, h_g, xi=xi_global)
    if rec_p is None or h_p is None:
        return s_g
    return beta * igd_score(rec_p, h_p, xi=xi_local).amax(1) + (1 - beta) * s_g


def pixel_reconstruction(x: torch.Tensor, x_rec: torch.Tensor, *, rho: float = 0.15) -> torch.Tensor:
    """Eq. 11 per pixel, ``rho * |x - x~| + (1 - rho) * (1 - SSIM map)`` (channel means; single-scale SSIM).

    Shape:
        x, x_rec: (B, C, H, W).
        returns: (B, 1, H, W).
    """
    return rho * (x - x_rec).abs().mean(1, keepdim=True) + (1 - rho) * (1 - ssim_map(x, x_rec))


def igd_loss(rec: torch.Tensor, h: torch.Tensor, pred_mix: torch.Tensor, *, w_rec: float = 1.0,
             w_gauss: float = 1.0, w_interp: float = 0.1) -> torch.Tensor:
    """Auto-encoder loss, ``w_rec * mean(rec) + w_gauss * mean(1 - h) + w_interp * mean(pred_mix^2)``; the
    defaults are the release's ``ms_ssim_l1 + svdd_loss + 0.1 * reg_inter`` (``p32/ssim_main.py``).

    Shape:
        rec: (B,) Eq. 11 per image; h: (B,) ``gaussian_descriptor``; pred_mix: (B,) critic on interpolations.
        returns: scalar.
    """
    return (w_rec * rec.mean() + w_gauss * anomaly_classification_loss(h)
            + w_interp * interpolation_regulariser(pred_mix))


def interpolation_critic_loss(pred_mix: torch.Tensor, alpha: torch.Tensor, pred_blend: torch.Tensor) -> torch.Tensor:
    """ACAI critic loss (Berthelot et al. 2019, Eq. 2): recover alpha from a decoded interpolation, and
    answer 0 for a blend ``gamma * x + (1 - gamma) * x~`` of an image and its reconstruction.

    Shape:
        pred_mix, alpha, pred_blend: (B,).
        returns: scalar.
    """
    return ((pred_mix - alpha) ** 2).mean() + (pred_blend**2).mean()


def interpolation_regulariser(pred_mix: torch.Tensor) -> torch.Tensor:
    """ACAI term of the auto-encoder loss (Berthelot et al. 2019, Eq. 3): interpolations should look
    like reconstructions to the critic (predicted alpha 0).

    Shape:
        pred_mix: (B,).
        returns: scalar.
    """
    return (pred_mix**2).mean()


# ---------------------------------------------------------------- model


class IGDNet(LatentAutoencoder):
    """Encoder f_theta, decoder g_phi, the interpolation critic, and the Gaussian (buffers ``c``, ``sigma``)."""

    def __init__(self, backbone: str, *, image_size: tuple[int, int], latent_dim: int, channels: int, width: int):
        super().__init__(backbone, image_size=image_size, latent_dim=latent_dim, channels=channels, width=width)
        self.critic = Critic(image_size, channels, width=width)
        self.register_buffer("c", torch.zeros(latent_dim))
        self.register_buffer("sigma", torch.ones(()))

    def h(self, z: torch.Tensor) -> torch.Tensor:
        return gaussian_descriptor(z, self.c, self.sigma)


def _l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().flatten(1).mean(1)



@dataclass
class IGDOptions(TwoScaleOptions, FrozenEncoderOptions):
    """IGD (see ``msacl.detectors.igd.IGD`` for every setting)."""

    epochs: int = 256
    rho: float = 0.15
    xi: float = 0.9
    w_rec: float = 1.0
    w_gauss: float = 1.0
    w_interp: float = 0.1
    gamma: float = 0.2
    freeze_encoder: bool = False
    scoring: Literal["released", "paper"] = "released"
    xi_global: float = 0.1
    xi_local: float = 0.9
    beta: float = 0.5

    def check(self) -> None:
        super().check()
        for key in ("rho", "xi", "gamma", "xi_global", "xi_local", "beta"):
            check_unit(key, getattr(self, key))
        if self.bn_stats == "train" and not self.freeze_encoder:
            raise ConfigError("bn_stats=train needs freeze_encoder=true: an encoder IGD trains keeps "
                              "re-estimating its statistics during training")


@register("igd")
class IGD(TwoScaleDetector):
    """IGD detector on any encoder. Defaults follow the IGD release (github.com/tianyu0207/IGD) where it
    gives them. Scores and maps, with rec = Eq. 11 of one model, ``0.15 * MAE + 0.85 * (1 - MS-SSIM)``:

    * ``scoring="released"`` (default; ``multi_scale/inference_det.py``): global ``s_G = 0.1 * rec_G + 0.9 *
      (1 - h_G)``; local ``s_L = max over patches of 0.9 * rec_p + 0.1 * (1 - h_p)``; image score
      ``0.5 * s_L + 0.5 * s_G`` (``s_G`` alone without a local model). Map (``multi_scale/inference_loc.py``): the
      reconstruction residual alone (no Gaussian term), ``0.5 * local + 0.5 * global``; the global map is
      ``rho * |x - x~| + (1 - rho) * (1 - SSIM map)`` per pixel, the local map the same residual of each patch
      put back in place, averaged where patches overlap.
    * ``scoring="paper"``: MSACL Eq. 10, ``s = xi * rec + (1 - xi) * (1 - h_G)`` with Eq. 11's rec mixing the global
      MS-SSIM m_G and the local model's mean patch MS-SSIM m_L; map: the global per-pixel Eq. 10 plus each
      32 x 32 patch's own s_IGD spread over its pixels (averaged where patches overlap), summed as Sec. 3.3 says.

    Args:
        backbone: encoder backbone (weights: ``det.load_encoder(source)``; local: ``part="local"``).
        image_size: training/test image size, a multiple of 32.
        channels: image channels.
        latent_dim: size of Z (128, IGD).
        local: also train a local model on ``patch_size`` patches (stride ``patch_stride``).
        patches_per_image: random patches per image in each local training step (ours: 16).
        epochs, batch_size, lr: Adam with betas (0, 0.9), weight decay 1e-6 and polynomial decay
            (power 0.9) per step, lr 1e-4 (IGD release); the release trains 256 epochs.
        scoring: ``"released"`` (the release's scores and maps, ``multi_scale/inference_det.py`` and
            ``inference_loc.py``) or ``"paper"`` (MSACL Eq. 10-11 as printed). Training is the same for both.
        rho: MAE weight of Eq. 11, in the loss and both scorings (release: 0.15, on 0.85 * (1 - MS-SSIM)).
        xi_global, xi_local, beta: ``"released"`` only: reconstruction weight of the global score (0.1) and of
            each patch's local score (0.9), and weight of the local score in the fusion (0.5).
        xi, nu: ``"paper"`` only: xi of Eq. 10 (0.9); nu, global vs local MS-SSIM in Eq. 11 (ours: 0.5).
        w_rec, w_gauss, w_interp: loss weights of reconstruction, Gaussian classification and interpolation
            regulariser (release: ``ms_ssim_l1 + svdd_loss + 0.1 * reg_inter``, so 1, 1, 0.1; the
            ``rec_f = 10``, ``svd_f = 0.1`` that script also defines do not enter its loss).
        gamma: blend of image and reconstruction the critic must call 0 (ACAI: 0.2).
        freeze_encoder: keep the (pre-trained) ResNet fixed and train only head, decoder and critic.
        width: decoder/critic width (ours: 32). init_seed: seed of the construction-time initialisation.
    """

    Options: ClassVar[type[IGDOptions]] = IGDOptions
    options: IGDOptions

    def build_net(self, hw: tuple[int, int]) -> IGDNet:
        c = self.options
        return IGDNet(c.backbone, image_size=hw, latent_dim=c.latent_dim, channels=c.channels,
                      width=c.width)

    # -------------------------------------------------------------- training

    def train(self, mode: bool = True) -> IGD:
        super().train(mode)
        if self.options.freeze_encoder:
            # A frozen encoder keeps its BatchNorm statistics too, not only its weights.
            for _, net in self.nets():
                net.encoder.eval()
        return self

    def fit_data(self, data: torch.Tensor, loop: FitLoop) -> list[dict[str, float]]:
        c = self.options
        device = self.device()
        opts = {}
        for name, net in self.nets():
            params = [p for n, p in net.named_parameters() if not n.startswith("critic.")
                      and not (c.freeze_encoder and n.startswith("encoder."))]
            opts[name] = (torch.optim.Adam(params, lr=c.lr, betas=(0.0, 0.9), weight_decay=1e-6),
                          torch.optim.Adam(net.critic.parameters(), lr=c.lr, betas=(0.0, 0.9)))
            if c.freeze_encoder:
                net.encoder.requires_grad_(False)
        # bn_stats=train (frozen encoders only): the global encoder's statistics from the whole images, the local
        # one's from every grid patch, as each is scored.
        chunks = range(0, data.shape[0], c.batch_size)
        self.adapt_batchnorm(data[i:i + c.batch_size].to(device) for i in chunks)
        if self.local is not None:
            self.adapt_batchnorm((extract_patches(data[i:i + c.batch_size], patch=c.patch_size,
                                                  stride=c.patch_stride).to(device) for i in chunks), "local")

        def step(x: torch.Tensor, g: torch.Generator) -> dict[str, float]:
            losses = self._step(self.model, *opts["global"], x, g)
            if self.local is not None:
                local = self._step(self.local, *opts["local"], self.local_batch(x, g), g)
                losses.update({f"local_{k}": v for k, v in local.items()})
            return losses

        self._latents: dict[str, list[torch.Tensor]] = {}
        # a resumed fit has c and sigma of its last epoch in the checkpoint's buffers
        self._fresh = {name for name, _ in self.nets()} if loop.saved is None else set()
        optimizers = {f"{name}_{part}": o for name, pair in opts.items()
                      for part, o in zip(("ae", "critic"), pair, strict=True)}
        try:
            history = loop.run("igd", data, step, epochs=c.epochs, batch_size=c.batch_size, optimizers=optimizers,
                               lr_power=0.9, device=device, on_epoch_end=self._update_gaussians)
            self._estimate_gaussians(data, loop.g)
        finally:
            del self._latents, self._fresh
        return history

    def _update_gaussians(self, epoch: int) -> None:
        """Epoch end: c and sigma from this epoch's training latents, for the next epoch (the first epoch
        starts from its first batch). Training latents, not an eval-mode pass: with BatchNorm in training
        mode they are what h sees during training, and early in training eval-mode statistics differ widely."""
        for name, net in self.nets():
            zs = self._latents.pop(name, [])
            if zs:
                net.c, net.sigma = gaussian_parameters(torch.cat(zs))

    def _step(self, net: IGDNet, opt_ae: torch.optim.Optimizer, opt_critic: torch.optim.Optimizer,
              x: torch.Tensor, g: torch.Generator) -> dict[str, float]:
        c = self.options
        z, x_rec = net(x)
        key = "local" if net is self.local else "global"
        if key in self._fresh:  # first batch of the first epoch: start h from this batch
            net.c, net.sigma = gaussian_parameters(z.detach())
            self._fresh.discard(key)
        self._latents.setdefault(key, []).append(z.detach())
        rec, h = reconstruction_error(_l1(x, x_rec), ms_ssim(x, x_rec), rho=c.rho), net.h(z)
        # ACAI: interpolate each latent with another one of the batch, alpha in [0, 0.5]
        alpha = rand((x.shape[0],), g, z) * 0.5
        partner = z[randperm(x.shape[0], g, z)]
        x_mix = net.decode(alpha[:, None] * z + (1 - alpha[:, None]) * partner)
        pred_mix = net.critic(x_mix)
        loss = igd_loss(rec, h, pred_mix, w_rec=c.w_rec, w_gauss=c.w_gauss, w_interp=c.w_interp)
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()

        blend = c.gamma * x + (1 - c.gamma) * x_rec.detach()
        l_critic = interpolation_critic_loss(net.critic(x_mix.detach()), alpha, net.critic(blend))
        opt_critic.zero_grad(set_to_none=True)
        l_critic.backward()
        opt_critic.step()
        return {"loss": loss.item(), "rec": rec.mean().item(), "gauss": anomaly_classification_loss(h).item(),
                "interp": interpolation_regulariser(pred_mix).item(), "critic": l_critic.item()}

    @torch.no_grad()
    def _estimate_gaussians(self, data: torch.Tensor, g: torch.Generator) -> None:
        """After training: c and sigma of each model from the eval-mode latents of all training images
        (local: the same number of random patches per image as in training), as ``predict`` sees them."""
        device, bs = self.device(), int(self.options.batch_size)
        for name, net in self.nets():
            was = net.training
            net.eval()
            zs = []
            for i in range(0, data.shape[0], bs):
                x = data[i:i + bs].to(device)
                zs.append(net.encode(self.local_batch(x, g) if name == "local" else x))
            net.c, net.sigma = gaussian_parameters(torch.cat(zs))
            net.train(was)

    # -------------------------------------------------------------- inference

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.options
        z, x_rec = self.model(x)
        rho = c.rho
        l1, m_g, h = _l1(x, x_rec), ms_ssim(x, x_rec), self.model.h(z)
        pixel_rec = pixel_reconstruction(x, x_rec, rho=rho)
        patches = None
        if self.local is not None:
            def patch_terms(p: torch.Tensor) -> tuple[torch.Tensor, ...]:
                zp, p_rec = self.local(p)
                return _l1(p, p_rec), ms_ssim(p, p_rec), self.local.h(zp), pixel_reconstruction(p, p_rec, rho=rho)

            patches = self.local_apply(x, patch_terms)  # (B, P) each, maps (B, P, 1, p, p)
        if c.scoring == "released":  # reconstruction-only maps, 0.5 / 0.5 (inference_loc.py)
            rec_g = reconstruction_error(l1, m_g, rho=rho)
            if patches is None:
                return released_score(rec_g, h, xi_global=c.xi_global), pixel_rec
            l1_p, m_p, h_p, map_p = patches
            local_map = place_patch_maps(map_p, self.hw, patch=int(c.patch_size), stride=int(c.patch_stride))
            score = released_score(rec_g, h, reconstruction_error(l1_p, m_p, rho=rho), h_p,
                                   xi_global=c.xi_global, xi_local=c.xi_local, beta=c.beta)
            return score, c.beta * local_map + (1 - c.beta) * pixel_rec
        # "paper": both heat maps are Eq. 10 (MSACL Sec. 3.3) before they are summed: per pixel for the global
        # model, per patch for the local one.
        pixel = c.xi * pixel_rec + (1 - c.xi) * (1 - h).view(-1, 1, 1, 1)
        m_l = None
        if patches is not None:
            l1_p, m_p, h_p, _ = patches
            s_p = igd_score(reconstruction_error(l1_p, m_p, rho=rho), h_p, xi=c.xi)
            pixel = pixel + self.spread(s_p)
            m_l = m_p.mean(1)
        rec = reconstruction_error(l1, m_g, m_l, rho=c.rho, nu=c.nu)
        return igd_score(rec, h, xi=c.xi), pixel
