"""BatchNorm statistics of a frozen encoder as a detector setting (``bn_stats``): re-estimated on the training
images (AdaBN) they equal a plain per-layer reference, and the fitted detector keeps them through save, load,
``msacl fit`` / ``test`` and export."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from msacl.cli.main import main
from msacl.config import ConfigError
from msacl.detectors import Detector, batches, build_detector, options_for
from msacl.models.encoders import Encoder
from msacl.models.features import batchnorms, reestimate_batchnorm
from msacl.runs import make_generator

FROZEN = ("padim", "patchcore", "panda", "igd")
TINY = {"epochs": 1, "batch_size": 4, "width": 8, "latent_dim": 16, "map_images": 4, "n_features": 16}


def reference_statistics(encoder: Encoder, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Written from the definition: each BatchNorm's batch mean and unbiased batch variance of its input, in
    training mode, averaged over the batches with equal weight."""
    enc = copy.deepcopy(encoder).train()
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in batchnorms(enc.backbone)}
    hooks = [m.register_forward_pre_hook(
        lambda m, args: seen[m].append((args[0].mean((0, 2, 3)), args[0].var((0, 2, 3), unbiased=True))))
        for m in seen]
    with torch.no_grad():
        for x in images:
            enc(x)
    for h in hooks:
        h.remove()
    return [(torch.stack([a for a, _ in s]).mean(0), torch.stack([b for _, b in s]).mean(0)) for s in seen.values()]


@pytest.mark.parametrize("backbone", ["resnet18", "tf_efficientnet_lite0"])
def test_reestimated_statistics_equal_a_plain_reference_loop(backbone):
    g = make_generator(0)
    enc = Encoder(backbone).eval()
    images = [torch.rand(n, 3, 32, 32, generator=g) for n in (8, 8, 5)]  # a short last batch counts once too
    weights = {k: v.clone() for k, v in enc.named_parameters()}
    ref = reference_statistics(enc, images)
    assert reestimate_batchnorm(enc, images) == 21
    got = [(m.running_mean, m.running_var) for m in batchnorms(enc.backbone)]
    assert len(got) == len(ref) > 10
    for (gm, gv), (rm, rv) in zip(got, ref, strict=True):
        torch.testing.assert_close(gm, rm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gv, rv, rtol=1e-4, atol=1e-5)
    # weights untouched, mode and momentum restored
    assert all(torch.equal(v, weights[k]) for k, v in enc.named_parameters())
    assert not enc.training and all(m.momentum == 0.1 for m in batchnorms(enc.backbone) if m.momentum is not None)


def _fit(name: str, images: torch.Tensor, **kw) -> Detector:
    fields = options_for(name).to_dict()
    kw = {k: v for k, v in TINY.items() if k in fields} | {"image_size": 32} | kw
    det = build_detector(name, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PANDA warns that its random-init encoder is not pre-trained
        return det.fit(batches(images, 4), generator=make_generator(0))


@pytest.fixture(scope="module")
def images(synthetic_data) -> tuple[torch.Tensor, torch.Tensor]:
    from msacl.data import load_split

    train = load_split(synthetic_data, "train", image_size=32).images[:12]
    test = load_split(synthetic_data, "test", image_size=32).images
    return train, torch.cat([test[:3], test[-3:]])


@pytest.mark.parametrize("name", FROZEN)
def test_train_statistics_are_fitted_saved_and_loaded_bit_for_bit(name, images, tmp_path):
    train, test = images
    extra = {"freeze_encoder": True} if name == "igd" else {}
    torch.manual_seed(0)
    own = _fit(name, train, bn_stats="encoder", **extra)
    torch.manual_seed(0)
    det = _fit(name, train, bn_stats="train", **extra)
    bn_own, bn_det = batchnorms(own.encoder.backbone)[0], batchnorms(det.encoder.backbone)[0]
    assert torch.equal(bn_own.running_mean, torch.zeros_like(bn_own.running_mean))  # random init keeps 0 / 1
    assert not torch.allclose(bn_det.running_mean, bn_own.running_mean)
    s, m = det.predict(test)
    assert not torch.allclose(s, own.predict(test)[0])
    det.save(tmp_path / "det.pt")
    loaded = Detector.load(tmp_path / "det.pt")
    assert loaded.options.bn_stats == "train"
    s2, m2 = loaded.predict(test)
    assert torch.equal(s2, s) and torch.equal(m2, m)


def test_igd_refuses_train_statistics_for_an_encoder_it_trains():
    with pytest.raises(ConfigError, match="bn_stats=train needs freeze_encoder=true"):
        options_for("igd", bn_stats="train")
    with pytest.raises(ConfigError, match="bn_stats"):
        options_for("padim", bn_stats="images")


def test_cli_fit_records_the_setting_and_refuses_it_where_it_does_not_apply(synthetic_data, tmp_path, capsys):
    import yaml

    run = tmp_path / "padim"
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(run), "--quiet",
                 "--bn-stats", "train", "--set", "n_features=20"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["detector_kwargs"]["bn_stats"] == "train"
    assert Detector.load(run / "detector.pt").options.bn_stats == "train"
    assert main(["test", "--run", str(run), "--quiet", "--no-report"]) == 0
    assert main(["fit", "--detector", "dae", "--data", str(synthetic_data), "--out", str(tmp_path / "dae"),
                 "--bn-stats", "train"]) == 1
    assert "--bn-stats: the dae detector trains its encoder" in capsys.readouterr().err


def test_export_holds_the_reestimated_statistics(synthetic_data, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra")
    pytest.importorskip("onnx", reason="torch's ONNX exporter needs onnx")
    import json

    run = tmp_path / "padim"
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(run), "--quiet",
                 "--bn-stats", "train", "--set", "n_features=20"]) == 0
    assert main(["export", "--run", str(run), "--format", "onnx", "--parity-images", "6"]) == 0
    par = json.loads((run / "export.json").read_text())["onnx"]["parity"]
    assert par["passed"] and par["score_max_rel"] < 1e-4 and par["map_max_rel"] < 1e-4
