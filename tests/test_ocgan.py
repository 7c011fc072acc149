"""OCGAN: its losses, negative mining and score against loops written from the equations; fit / predict / save /
load; checkpoint and resume; the CLI; separation of the synthetic lesions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from msacl.cli.main import main
from msacl.config import ConfigError
from msacl.detectors import batches
from msacl.detectors.ocgan import (
    OCGAN,
    discriminator_loss,
    generator_loss,
    mine_negatives,
    ocgan_score,
)
from msacl.errors import DataError
from msacl.runs import make_generator


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_discriminator_and_generator_losses_match_their_definitions():
    g = make_generator(0)
    real, fake = torch.randn(4, generator=g), torch.randn(4, generator=g)
    ref = 0.5 * (-sum(math.log(_sig(r)) for r in real.tolist()) / 4
                 - sum(math.log(1 - _sig(f)) for f in fake.tolist()) / 4)
    assert torch.allclose(discriminator_loss(real, fake), torch.tensor(ref), rtol=1e-5)
    lat, vis = torch.randn(3, generator=g), torch.randn(3, generator=g)
    x, xr = torch.rand(3, 1, 2, 2, generator=g), torch.rand(3, 1, 2, 2, generator=g)
    # gluon's L2Loss on [-1, 1] images: 0.5 * mean(((2x - 1) - (2x~ - 1))^2)
    l2 = sum(0.5 * ((2 * a - 1) - (2 * b - 1)) ** 2 for a, b in zip(x.flatten().tolist(), xr.flatten().tolist(),
                                                                       strict=True)) / 12
    ref = (10 * -sum(math.log(_sig(v)) for v in lat.tolist()) / 3 + -sum(math.log(_sig(v)) for v in vis.tolist()) / 3
           + 500 * l2)
    assert torch.allclose(generator_loss(lat, vis, x, xr), torch.tensor(ref), rtol=1e-5)


def test_negative_mining_takes_the_release_gradient_step():
    g = make_generator(1)
    w, b = torch.randn(5, generator=g), 0.3
    mu = torch.rand(4, 5, generator=g) * 2 - 1
    got = mine_negatives(mu, lambda z: z @ w + b, step=2.0, steps=1)
    for i in range(4):
        t = torch.tanh(mu[i])
        logit = float(t @ w + b)
        # d/dmu softplus(w . tanh(mu) + b) = sigmoid(logit) * w * (1 - tanh(mu)^2)
        grad = [_sig(logit) * w[j].item() * (1 - t[j].item() ** 2) for j in range(5)]
        ref = [math.tanh(mu[i, j].item() - 2.0 * grad[j]) for j in range(5)]
        assert torch.allclose(got[i], torch.tensor(ref), atol=1e-5)
    # the mined latents decode to images the classifier finds worse: its "real" logit goes down
    assert (got @ w).sum() < (torch.tanh(mu) @ w).sum()
    assert torch.equal(mine_negatives(mu, lambda z: z @ w, steps=0), torch.tanh(mu))


def test_score_is_the_mean_squared_reconstruction_error():
    g = make_generator(2)
    x, xr = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    s = ocgan_score(x, xr)
    for i in range(2):
        ref = sum((a - b) ** 2 for a, b in zip(x[i].flatten().tolist(), xr[i].flatten().tolist(), strict=True)) / 48
        assert math.isclose(s[i].item(), ref, rel_tol=1e-5)


SMALL = {"image_size": 32, "epochs": 2, "batch_size": 4, "width": 8, "latent_dim": 8, "mining_start": 1}


def test_fit_history_and_ranges(synthetic_train):
    x = synthetic_train(8, 32)
    det = OCGAN(**SMALL).fit(batches(x, 4), generator=make_generator(0))
    assert len(det.history) == 2 and set(det.history[0]) == {"visual", "latent", "classifier", "generator"}
    assert all(math.isfinite(v) for h in det.history for v in h.values())
    assert det.model.ae.encode(x[:2]).abs().max() < 1  # tanh-bounded Z
    scores, maps = det.predict(x[:3])
    assert scores.shape == (3,) and maps.shape == (3, 1, 32, 32) and (maps >= 0).all()


def test_resume_equals_an_uninterrupted_fit(synthetic_train, tmp_path):
    x = synthetic_train(8, 32)
    full = OCGAN(**SMALL).fit(batches(x, 4), generator=make_generator(3))
    part = OCGAN(**{**SMALL, "epochs": 1})
    part.checkpointing(tmp_path / "ck.pt")
    part.fit(batches(x, 4), generator=make_generator(3))
    rest = OCGAN(**SMALL)
    rest.checkpointing(tmp_path / "ck.pt", resume=True)
    rest.fit(batches(x, 4), generator=make_generator(3))
    a, b = full.state_dict(), rest.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_bad_settings_are_one_line_errors():
    for kw, error, msg in (({"batch_size": 1}, ConfigError, "batch_size"),
                           ({"latent_dim": 0}, ConfigError, "latent_dim"),
                           ({"image_size": 40}, ConfigError, r"^ocgan\.image_size must be a multiple of 32"),
                           ({"mining_start": -1}, ConfigError, "mining_start")):
        with pytest.raises(error, match=msg) as e:
            OCGAN(**kw)
        assert "\n" not in str(e.value)
    det = OCGAN(**SMALL)
    with pytest.raises(DataError, match=r"ocgan.predict: expected images of shape \(B, 3, 32, 32\)"):
        det.predict(torch.rand(1, 3, 64, 64))


def test_cli_fit_and_test(synthetic_data, tmp_path, capsys):
    run = tmp_path / "ocgan"
    assert main(["fit", "--detector", "ocgan", "--data", str(synthetic_data), "--out", str(run), "--quiet",
                 "--backbone", "tf_efficientnet_lite0", "--batch-size", "16", "--set", "epochs=1",
                 "--set", "width=8"]) == 0
    assert (run / "fit_checkpoint.pt").is_file()
    assert main(["test", "--run", str(run), "--no-report", "--quiet"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["image_auroc"] is not None and m["pixel_auroc"] is not None


@pytest.mark.slow
def test_separates_synthetic_lesions_after_two_epochs(synthetic_data):
    """2 epochs of batch 16 at 64 px (Lite0 ImageNet, mining from epoch 1): image AUROC about 0.68, pixel about
    0.89 (~10 s on 2 cores)."""
    from msacl.data import load_split

    train, test = load_split(synthetic_data, "train"), load_split(synthetic_data, "test")
    det = OCGAN(backbone="tf_efficientnet_lite0", image_size=64, epochs=2, batch_size=16, mining_start=1, width=8)
    det.load_encoder("imagenet")
    det.fit(batches(train.images, 32), generator=make_generator(0))
    scores, maps = det.predict(test.images)
    assert roc_auc_score(test.labels.numpy(), scores.numpy()) > 0.6
    assert roc_auc_score(test.masks.flatten().numpy() > 0, maps.flatten().numpy()) > 0.7
