"""CSI and DROC pre-training: their losses against loops written from the equations, their batches and networks,
``msacl pretrain`` end to end, and PaDiM on their encoders separating the synthetic lesions."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision
import yaml

from msacl.cli.main import main
from msacl.config import apply_overrides
from msacl.pretrain import PretrainConfig, build_method
from msacl.pretrain.csi import shifted_instance_loss
from msacl.pretrain.droc import DeepHead, one_sided_contrastive_loss
from msacl.runs import make_generator


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm() * b.norm()))


def test_shifted_instance_loss_matches_nt_xent_over_shifted_instances():
    g = make_generator(0)
    b, k, d, tau = 2, 3, 5, 0.5
    z = torch.randn(b, k, 2, d, generator=g)
    flat = [(i, n, v) for i in range(b) for n in range(k) for v in range(2)]
    ref = 0.0
    for i, n, v in flat:
        a = z[i, n, v]
        pos = math.exp(_cos(a, z[i, n, 1 - v]) / tau)  # same image, same shift, other view
        # every other view is a negative, the other shifts of the same image included
        den = sum(math.exp(_cos(a, z[j, m, w]) / tau) for j, m, w in flat if (j, m, w) != (i, n, v))
        ref += -math.log(pos / den)
    assert torch.allclose(shifted_instance_loss(z, tau=tau), torch.tensor(ref / len(flat)), rtol=1e-5)


def test_one_sided_contrastive_loss_matches_droc():
    g = make_generator(1)
    b, d, tau = 4, 6, 0.2
    z = torch.randn(b, 2, d, generator=g)
    ref = 0.0
    for i in range(b):
        logits = [_cos(z[i, 0], z[j, 1]) / tau for j in range(b)]  # anchors: first views; candidates: second
        ref += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert torch.allclose(one_sided_contrastive_loss(z, tau=tau), torch.tensor(ref / b), rtol=1e-5)
    with pytest.raises(ValueError, match="B, 2, D"):
        one_sided_contrastive_loss(torch.zeros(2, 3, 4))


def _method(name: str, *sets: str):
    cfg = apply_overrides(PretrainConfig(), [f"method={name}", *sets])
    cfg.validate()
    return cfg, build_method(cfg, image_size=32)


def test_csi_batch_and_network():
    cfg, m = _method("csi")
    assert cfg.strong_family() == "rotation" and cfg.loss.csi_tau == 0.5
    x = torch.rand(3, 3, 32, 32)
    batch = m.make_batch(x, generator=make_generator(0))
    assert batch.views.shape == (3 * 4 * 2, 3, 32, 32) and batch.num_classes == 4 and batch.num_views == 2
    assert batch.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 3
    net = m.build_network()
    out = net(batch.views)
    assert out["logits"].shape == (24, 4) and out["z"].shape == (24, 128)
    terms = m.losses(out, batch)
    assert set(terms) == {"con", "aug", "loss"} and torch.isclose(terms["loss"], terms["con"] + terms["aug"])


def test_droc_batch_network_and_settings():
    cfg, m = _method("droc")
    assert cfg.strong_family() == "rotation" and cfg.loss.tau == 0.2
    batch = m.make_batch(torch.rand(5, 3, 32, 32), generator=make_generator(0))
    assert batch.views.shape == (10, 3, 32, 32) and batch.num_views == 2
    assert set(batch.labels.tolist()) <= {0, 1, 2, 3} and batch.labels[0::2].equal(batch.labels[1::2])
    net = m.build_network()
    assert net.classifier is None and isinstance(net.projection, DeepHead)
    assert sum(isinstance(x, torch.nn.Linear) for x in net.projection.modules()) == 9
    terms = m.losses(net(batch.views), batch)
    assert set(terms) == {"con", "loss"}
    # the rotation drawn for a slot is applied: a view of class 2 is the 180-degree copy before the weak views
    _, m0 = _method("droc", "weak.crop_scale=[1.0,1.0]", "weak.hflip_p=0", "weak.jitter_p=0", "weak.grey_p=0",
                    "weak.blur_p=0", "weak.crop_ratio=[1.0,1.0]")
    x = torch.rand(6, 3, 32, 32)
    b0 = m0.make_batch(x, generator=make_generator(3))
    for i, k in enumerate(b0.labels[0::2].tolist()):
        assert torch.allclose(b0.views[2 * i], torch.rot90(x[i], k, dims=(1, 2)), atol=1e-4)


# CSI puts 8 views of every image through the encoder: ~14 s for this run on 2 CPU cores.
@pytest.mark.parametrize("method", [pytest.param("csi", marks=pytest.mark.slow), "droc"])
def test_cli_pretrain_then_padim_separates_lesions(method, synthetic_data, tmp_path, capsys):
    """A small budget (1 epoch at 32 px, from random init): the encoder.pt loads into torchvision's ResNet-18 and
    PaDiM on it separates the synthetic lesions better than chance."""
    out = tmp_path / method
    assert main(["pretrain", "--method", method, "--data", str(synthetic_data), "--out", str(out), "--image-size",
                 "32", "--epochs", "1", "--batch-size", "16", "--accelerator", "cpu", "--no-progress",
                 "--set", "tsne=false"]) == 0
    torchvision.models.resnet18().load_state_dict(torch.load(out / "encoder.pt", weights_only=True), strict=True)
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == method
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 4 and all(math.isfinite(r["loss"]) for r in logs)
    run = tmp_path / f"padim-{method}"
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(run), "--quiet",
                 "--encoder", str(out), "--image-size", "32", "--holdout", "0"]) == 0
    assert main(["test", "--run", str(run), "--no-report", "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["image_auroc"] > 0.6


def test_csi_pretrain_writes_an_encoder_and_resumes(synthetic_data, tmp_path):
    from msacl.data import load_split
    from msacl.pretrain import make_fabric, pretrain

    train = load_split(synthetic_data, "train", image_size=32).subset(torch.arange(16))
    cfg = apply_overrides(PretrainConfig(), ["method=csi", "epochs=1", "batch_size=8", "tsne=false"])
    out = tmp_path / "csi"
    enc = pretrain(cfg, train, out, fabric=make_fabric("cpu"), progress=False)
    torchvision.models.resnet18().load_state_dict(torch.load(enc, weights_only=True), strict=True)
    cfg.epochs = 2
    pretrain(cfg, train, out, fabric=make_fabric("cpu"), progress=False, resume=True)
    steps = [json.loads(line)["global_step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
