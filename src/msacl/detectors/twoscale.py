"""The base class of IGD, F-anoGAN, MS-SSIM AE and DAE: a global network on whole images and, with
``local=True``, a second one on patches (``msacl.detectors.patches``), as IGD and CCD train them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from msacl.detectors.base import Detector
from msacl.detectors.common import check_images
from msacl.detectors.fitloop import CheckpointedFit, FitLoop, steps_per_epoch
from msacl.detectors.options import DetectorOptions, TwoScaleOptions
from msacl.detectors.patches import extract_patches, in_chunks, sample_patches, spread_patch_scores
from msacl.detectors.training import collect_images, reinit
from msacl.models.decoders import image_hw
from msacl.models.features import evaluating
from msacl.runs import as_generator, seeded


class TwoScaleDetector(CheckpointedFit, Detector):
    """A detector made of a global network on whole images and, with ``local=True``, a second one on
    ``patch_size`` patches (stride ``patch_stride``), as IGD and CCD train them. Settings: ``TwoScaleOptions``
    and a subclass's own.

    Weights: the global encoder is ``det.model.encoder`` (also ``det.encoder``), the local one
    ``det.local.encoder``; ``det.load_encoder(source)`` and ``det.load_encoder(source, part="local")`` load
    them (with their input normalisation) before ``fit``.

    Construction is deterministic: the networks are initialised under ``torch.manual_seed(init_seed)``
    inside ``torch.random.fork_rng`` (the caller's global RNG is untouched). ``fit`` then re-initialises
    the new layers (latent head, decoder, critic; not the encoder, whose weights the CLI may have loaded)
    from the generator it is given, and draws every other random number (shuffling, patches, noise,
    interpolation coefficients, GAN latents) from that generator too. Training runs through
    :class:`~msacl.detectors.fitloop.FitLoop`, so ``det.checkpointing(path, resume=True)`` continues an
    interrupted fit bit for bit.
    """

    Options: ClassVar[type[TwoScaleOptions]] = TwoScaleOptions
    options: TwoScaleOptions

    def __init__(self, options: DetectorOptions | None = None, /, **kwargs: Any):
        super().__init__(options, **kwargs)
        o = self.options
        # A multiple of 32 (and patch_size, if local, one too and no larger), as the options checked.
        self.hw = image_hw(o.image_size)
        self.channels_ = o.channels
        with seeded(o.init_seed):
            self.model = self.build_net(self.hw)
            self.local = self.build_net((o.patch_size,) * 2) if o.local else None

    def build_net(self, hw: tuple[int, int]) -> nn.Module:
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The global model's ``Encoder`` (weights in ``.backbone``)."""
        return self.model.encoder

    def encoder_parts(self) -> dict[str, nn.Module]:
        return {name: net.encoder for name, net in self.nets()}

    def nets(self) -> list[tuple[str, nn.Module]]:
        return [("global", self.model)] + ([("local", self.local)] if self.local is not None else [])

    def new_layers(self, net: nn.Module) -> list[nn.Module]:
        """Layers ``fit`` re-initialises from its generator (everything but the encoder)."""
        return [m for name, m in net.named_children() if name != "encoder"]

    def device(self) -> torch.device:
        return next(self.parameters()).device

    def phases(self) -> list[tuple[str, int]]:
        """The fit's phases ``(name, epochs)``, in the order ``fit_data`` runs them through the loop."""
        return [(self.name, int(self.options.epochs))]

    def fit(self, batches: Iterable[torch.Tensor], *, generator: torch.Generator | None = None,
            progress: bool = False) -> TwoScaleDetector:
        data = collect_images(batches, image_size=self.hw, channels=self.channels_, who=self.name)
        g = as_generator(generator)
        for _, net in self.nets():
            reinit(self.new_layers(net), g)
        # a resumed fit replaces the weights and the generator's state with the checkpoint's here
        loop = FitLoop(self, g, phases=self.phases(), progress=progress,
                       steps_per_epoch=steps_per_epoch(data.shape[0], int(self.options.batch_size)))
        self.train()
        try:
            self.history = self.fit_data(data, loop)
        finally:
            loop.close()
            self.eval()
        return self

    def fit_data(self, data: torch.Tensor, loop: FitLoop) -> list[dict[str, float]]:
        """Train on (N, C, H, W) images (kept where they are; batches move to the model's device) through
        ``loop.run`` (random numbers from ``loop.g``); returns the history."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_images(x, f"{self.name}.predict", image_size=self.hw, channels=self.channels_)
        with evaluating(self):
            scores, maps = self.predict_images(x.to(self.device()))
        return scores.to(x.device), maps.to(x.device)

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

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
