"""A detector written outside msacl: one class and one registration line, then every verb of the CLI uses it
(fit, resume, test, predict, export) with no other file touched."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msacl.cli.main import main
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


def _fit(data, out, *extra: str) -> int:  # noqa: ANN001
    return main(["fit", "--detector", "tiny_ae", "--data", str(data), "--out", str(out), "--quiet",
                 "--set", "width=8", "--set", "batch_size=16", "--set", "lr=0.01", *extra])


def test_a_detector_defined_here_goes_through_every_verb(synthetic_data, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _fit(synthetic_data, full, "--set", "epochs=2") == 0
    # An interrupted fit: one epoch written, then continued to two with --resume; the same detector, bit for bit.
    assert _fit(synthetic_data, part, "--set", "epochs=1") == 0
    TinyAE.steps = 0
    assert _fit(synthetic_data, part, "--set", "epochs=2", "--resume", "--force") == 0
    assert TinyAE.steps == 4  # the second epoch only: 58 images in batches of 16
    a = torch.load(full / "detector.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "detector.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["test", "--run", str(full), "--no-report", "--quiet"]) == 0
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["detector"] == "tiny_ae" and 0 <= metrics["image_auroc"] <= 1
    image = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
    assert main(["predict", "--run", str(full), str(image), "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "scores.csv").read_text().count("\n") == 2  # header and the image
    capsys.readouterr()
    pytest.importorskip("onnxruntime", reason="export needs the export extra")
    pytest.importorskip("onnx", reason="export needs the export extra")
    assert main(["export", "--run", str(full), "--format", "onnx", "--parity-images", "4"]) == 0
    assert json.loads((full / "export.json").read_text())["onnx"]["parity"]["passed"]
