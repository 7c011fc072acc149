"""The base class of the detectors that train networks of their own around an encoder (``NetworkOptions``):
OCGAN, CAVGA and the two-scale ones (IGD, F-anoGAN, MS-SSIM AE, DAE, ``msacl.detectors.twoscale``).

What they share is written here once: the seeded construction, the ``fit`` around
:class:`~msacl.detectors.fitloop.FitLoop` (collect and check the images, re-initialise the new layers from the
generator, train, record the history) and ``predict``'s checks. A subclass builds its networks
(``build_nets``), names the layers ``fit`` re-initialises (``new_layer_groups``), trains (``fit_data``) and
scores (``predict_images``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from msacl.detectors.base import Detector
from msacl.detectors.common import check_images
from msacl.detectors.fitloop import CheckpointedFit, FitLoop, steps_per_epoch
from msacl.detectors.options import NetworkOptions
from msacl.detectors.training import collect_images, reinit
from msacl.models.decoders import image_hw
from msacl.models.features import evaluating
from msacl.runs import as_generator, seeded


class NetworkDetector(CheckpointedFit, Detector):
    """A detector that trains networks of its own (``self.model``, and whatever ``build_nets`` adds) on images
    of ``channels`` channels and ``image_size`` (``self.hw``). Settings: ``NetworkOptions`` and a subclass's own.

    Construction is deterministic: ``build_nets`` runs under ``torch.manual_seed(init_seed)`` inside
    ``torch.random.fork_rng`` (the caller's global RNG is untouched). ``fit`` then re-initialises the new layers
    (``new_layer_groups``: everything but the encoder, whose weights the CLI may have loaded) from the generator
    it is given, one seed drawn from it per group, and the subclass draws every other random number of the fit
    from that generator too. Training runs through :class:`~msacl.detectors.fitloop.FitLoop`, so
    ``det.checkpointing(path, resume=True)`` continues an interrupted fit bit for bit.
    """

    Options: ClassVar[type[NetworkOptions]] = NetworkOptions
    options: NetworkOptions

    def __init__(self, options: NetworkOptions | None = None, /, **kwargs: Any):
        super().__init__(options, **kwargs)
        # A multiple of 32, as the options checked.
        self.hw = image_hw(self.options.image_size)
        with seeded(self.options.init_seed):
            self.build_nets()
        # Channels-last convolutions: the decoders' and critics' training steps run ~1.5x faster on the CPU
        # (benchmarks/bench_network_fit.py); values are unchanged, and torch's convolutions draw their
        # ``reset_parameters`` in the plain layout, so ``fit``'s re-initialisation is too (test_detector_contract).
        self.to(memory_format=torch.channels_last)

    def build_nets(self) -> None:
        """Create the networks as attributes (at least ``self.model``); runs under the construction seed."""
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The ``Encoder`` whose weights ``det.load_encoder(source)`` loads (weights in ``.backbone``)."""
        return self.model.encoder

    def device(self) -> torch.device:
        return next(self.parameters()).device

    def new_layer_groups(self) -> list[list[nn.Module]]:
        """The layers ``fit`` re-initialises from its generator (not the encoder), one group per network; each
        group is re-initialised from its own seed, drawn from the generator in this order."""
        raise NotImplementedError

    def phases(self) -> list[tuple[str, int]]:
        """The fit's phases ``(name, epochs)``, in the order ``fit_data`` runs them through the loop."""
        return [(self.name, int(self.options.epochs))]

    def fit(self, batches: Iterable[torch.Tensor], *, generator: torch.Generator | None = None,
            progress: bool = False) -> NetworkDetector:
        data = collect_images(batches, image_size=self.hw, channels=self.options.channels, who=self.name)
        g = as_generator(generator)
        for group in self.new_layer_groups():
            reinit(group, g)
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
        check_images(x, f"{self.name}.predict", image_size=self.hw, channels=self.options.channels)
        with evaluating(self):
            scores, maps = self.predict_images(x.to(self.device()))
        return scores.to(x.device), maps.to(x.device)

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps (B, 1, H, W) of images on the model's device, in eval mode, without gradients."""
        raise NotImplementedError
