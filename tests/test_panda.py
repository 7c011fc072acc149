"""PANDA: the compactness loss, EWC and the kNN score against loops written from the equations; the trained
and frozen parts; fit / predict / save / load; checkpoint and resume; the CLI; separation on the synthetic set."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from msacl.cli.main import main
from msacl.config import ConfigError
from msacl.detectors import Detector, batches
from msacl.detectors.panda import (
    Panda,
    adapted_parameters,
    compactness_loss,
    ewc_penalty,
    knn_score,
    spade_map,
)
from msacl.errors import CheckpointError, MsaclError
from msacl.models.backbones import BackboneError
from msacl.models.encoders import Encoder
from msacl.runs import make_generator

LITE0 = "tf_efficientnet_lite0"


def test_compactness_loss_matches_the_release_formula():
    g = make_generator(0)
    f, c = torch.randn(5, 7, generator=g), torch.randn(7, generator=g)
    ref = sum(sum((f[i, j].item() - c[j].item()) ** 2 for j in range(7)) / 7 for i in range(5)) / 5
    assert torch.allclose(compactness_loss(f, c), torch.tensor(ref), rtol=1e-5)


def test_ewc_penalty_matches_eq3():
    g = make_generator(1)
    params = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)]
    anchors = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)]
    fisher = [torch.rand(3, 2, generator=g), torch.rand(4, generator=g)]
    ref = 0.0
    for p, a, f in zip(params, anchors, fisher, strict=True):
        for pv, av, fv in zip(p.flatten().tolist(), a.flatten().tolist(), f.flatten().tolist(), strict=True):
            ref += fv * (pv - av) ** 2
    assert torch.allclose(ewc_penalty(params, anchors, fisher, lam=7.0), torch.tensor(7.0 * ref / 2), rtol=1e-5)


def test_knn_score_is_the_sum_of_the_k_smallest_squared_distances():
    g = make_generator(2)
    train, test = torch.randn(9, 4, generator=g), torch.randn(3, 4, generator=g)
    for k in (1, 2, 5):
        got = knn_score(train, test, k=k)
        for i in range(3):
            d2 = sorted(sum((test[i, j].item() - train[n, j].item()) ** 2 for j in range(4)) for n in range(9))
            assert math.isclose(got[i].item(), sum(d2[:k]), rel_tol=1e-5)


def test_spade_map_is_the_mean_distance_to_the_nearest_bank_features():
    g = make_generator(3)
    test, bank = torch.randn(3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    got = spade_map(test, bank, k=2)
    gallery = [bank[i, :, r, c] for i in range(2) for r in range(2) for c in range(2)]
    for r in range(2):
        for c in range(2):
            d = sorted(torch.linalg.vector_norm(test[:, r, c] - v).item() for v in gallery)
            assert math.isclose(got[r, c].item(), (d[0] + d[1]) / 2, rel_tol=1e-5)


def test_adapted_parameters_are_those_after_the_stride_8_tap():
    names = adapted_parameters(Encoder("resnet18"))
    assert names and all(n.startswith(("layer3.", "layer4.")) for n in names)
    assert any(n.startswith("layer3.") for n in names) and any(n.startswith("layer4.") for n in names)
    lite = adapted_parameters(Encoder(LITE0))
    assert lite and not any(n.startswith(("conv_stem", "bn1", "blocks.0.", "blocks.1.", "blocks.2.", "classifier"))
                            for n in lite)
    assert any(n.startswith("blocks.3.") for n in lite) and any(n.startswith("conv_head") for n in lite)


SMALL = {"backbone": LITE0, "image_size": 64, "epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def lite0_imagenet_state():
    enc = Encoder(LITE0)
    enc.load_weights("imagenet")
    return enc


def _panda(lite0_imagenet_state, **kw) -> Panda:
    det = Panda(**{**SMALL, **kw})
    det.encoder.load_state_dict(lite0_imagenet_state.state_dict())
    det.encoder.source = "test"
    return det


def test_fit_trains_only_the_adapted_part_and_predicts(lite0_imagenet_state, synthetic_train, tmp_path):
    x = synthetic_train(24, 64)
    det = _panda(lite0_imagenet_state, grad_clip=10.0)
    before = {k: v.clone() for k, v in det.encoder.backbone.state_dict().items()}
    with torch.no_grad():
        c0 = det.encoder.eval()(x).mean(0)
    det.fit(batches(x, 16), generator=make_generator(0))
    assert len(det.history) == 2 and all(math.isfinite(h["compact"]) for h in det.history)
    assert torch.allclose(det.center, c0, atol=1e-5)  # c: the initial features' mean, kept fixed
    after = det.encoder.backbone.state_dict()
    trained = set(adapted_parameters(det.encoder))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trained  # BatchNorm statistics and frozen layers untouched
    assert det.train_features.shape == (24, det.encoder.out_dim) and det.map_bank.dtype == torch.float16
    scores, maps = det.predict(x[:3])
    assert scores.shape == (3,) and maps.shape == (3, 1, 64, 64) and torch.isfinite(maps).all()
    # a training image is its own nearest neighbour: its score is the squared distance to the second one
    assert scores.min() >= 0
    det.save(tmp_path / "p.pt")
    again = Detector.load(tmp_path / "p.pt")
    s2, m2 = again.predict(x[:3])
    assert torch.allclose(s2, scores) and torch.allclose(m2, maps)
    _, m_big = det.predict(torch.nn.functional.interpolate(x[:1], size=80))
    assert m_big.shape == (1, 1, 80, 80)


def test_ewc_uses_a_fisher_diagonal_and_the_release_clip(lite0_imagenet_state, synthetic_train):
    x = synthetic_train(8, 64)
    det = _panda(lite0_imagenet_state, regularizer="ewc", epochs=1, batch_size=4)
    fisher = det.fisher_diagonal(x[:2], make_generator(0))
    params = det.trained_parameters()
    assert [id(p) for p in params] == [id(dict(det.encoder.backbone.named_parameters())[n]) for n in det.trained]
    assert len(fisher) == len(params) and all(f.shape == p.shape and (f >= 0).all() for f, p in zip(
        fisher, params, strict=True))
    det.fit(batches(x, 4), generator=make_generator(0))
    assert {"compact", "ewc"} <= set(det.history[0])


def test_checkpoint_resume_equals_an_uninterrupted_fit(lite0_imagenet_state, synthetic_train, tmp_path):
    x = synthetic_train(16, 64)
    full = _panda(lite0_imagenet_state, epochs=3, batch_size=8, grad_clip=10.0)
    full.fit(batches(x, 8), generator=make_generator(5))
    part = _panda(lite0_imagenet_state, epochs=1, batch_size=8, grad_clip=10.0)
    part.checkpointing(tmp_path / "ck.pt")
    part.fit(batches(x, 8), generator=make_generator(5))
    rest = _panda(lite0_imagenet_state, epochs=3, batch_size=8, grad_clip=10.0)
    rest.checkpointing(tmp_path / "ck.pt", resume=True)
    rest.fit(batches(x, 8), generator=make_generator(5))
    a, b = full.state_dict(), rest.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert [h["compact"] for h in rest.history] == pytest.approx([h["compact"] for h in full.history])
    other = _panda(lite0_imagenet_state, epochs=3, batch_size=8, k=5)
    other.checkpointing(tmp_path / "ck.pt", resume=True)
    with pytest.raises(CheckpointError, match="written by a fit with other settings"):
        other.fit(batches(x, 8), generator=make_generator(5))


def test_bad_settings_are_one_line_errors():
    for kw, error, msg in (({"regularizer": "l2"}, ConfigError, "regularizer"), ({"epochs": -1}, ConfigError, "epochs"),
                           ({"batch_size": 1}, ConfigError, "batch_size"), ({"lr": 0}, ConfigError, "lr"),
                           ({"map_strides": [3]}, BackboneError, "feature tap 3: choose strides")):
        with pytest.raises(error, match=msg) as e:
            Panda(backbone=LITE0, **kw)
        assert "\n" not in str(e.value)
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(MsaclError, match="panda: predict called before fit"):
        Panda(backbone=LITE0, image_size=64).predict(torch.rand(1, 3, 64, 64))


def test_heat_map_separates_synthetic_lesions(lite0_imagenet_state, synthetic_data):
    """Small budget (2 epochs, 64 px, Lite0 ImageNet): the SPADE map on the adapted features finds the lesions
    (pixel AUROC about 0.70). PANDA's image score, a kNN on globally pooled features, does not see lesions of 4 %
    of the image (image AUROC about 0.4 here; docs/benchmarks.md)."""
    from msacl.data import load_split

    train, test = load_split(synthetic_data, "train"), load_split(synthetic_data, "test")
    det = _panda(lite0_imagenet_state).fit(batches(train.images, 16), generator=make_generator(0))
    _, maps = det.predict(test.images)
    assert roc_auc_score(test.masks.flatten().numpy() > 0, maps.flatten().numpy()) > 0.6


def test_cli_fit_test_and_resume(synthetic_data, tmp_path, capsys):
    run = tmp_path / "panda"
    base = ["fit", "--detector", "panda", "--data", str(synthetic_data), "--out", str(run), "--quiet",
            "--backbone", LITE0, "--encoder", "imagenet", "--set", "epochs=1", "--batch-size", "16"]
    assert main(base) == 0
    assert (run / "fit_checkpoint.pt").is_file() and (run / "detector.pt").is_file()
    assert main(["test", "--run", str(run), "--no-report", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["image_auroc"] is not None and m["pixel_auroc"] > 0.6
    capsys.readouterr()
    more = [a if a != "epochs=1" else "epochs=2" for a in base]
    assert main([*more, "--resume", "--force"]) == 0
    assert len(Detector.load(run / "detector.pt").config) > 0
    assert main([*more, "--resume", "--force", "--out", str(tmp_path / "none")]) == 1
    assert "no fit_checkpoint.pt" in capsys.readouterr().err
