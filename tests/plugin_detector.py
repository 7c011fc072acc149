"""A detector written outside msacl, as a user would: one class and one registration line.

``tests/test_plugin_detector.py`` imports it and takes it through every verb; it lives in its own module so that
its registration exists only while that test runs (the other tests iterate over msacl's own detectors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msacl.detectors import register
from msacl.detectors.network import NetworkDetector


@register("tiny_ae")
class TinyAE(NetworkDetector):
    """A two-layer convolutional auto-encoder; the squared reconstruction error is its map."""

    steps = 0  # training steps taken in this process (the test reads it)

    def build_nets(self) -> None:
        c, w = self.options.channels, self.options.width
        self.model = nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, c, 3, padding=1))

    @property
    def encoder(self) -> None:  # no encoder whose weights could be loaded
        return None

    def new_layer_groups(self) -> list[list[nn.Module]]:
        return [[self.model]]

    def fit_data(self, data, loop):  # noqa: ANN001, ANN201
        opt = torch.optim.Adam(self.model.parameters(), lr=self.options.lr)

        def step(x: torch.Tensor, g: torch.Generator) -> dict[str, float]:
            loss = F.mse_loss(self.model(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            TinyAE.steps += 1
            return {"loss": loss.item()}

        return loop.run(self.name, data, step, epochs=self.options.epochs, batch_size=self.options.batch_size,
                        optimizers={"model": opt}, device=self.device())

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = (self.model(x) - x).pow(2).mean(1, keepdim=True)
        return maps.flatten(1).amax(1), maps
