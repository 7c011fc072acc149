"""F-anoGAN: WGAN-GP terms, the izi_f loss and CCD Eq. 7 (on the frozen critic's features) against loops,
and fit/predict."""

from __future__ import annotations

import math

import pytest
import torch

from msacl.detectors.base import batches
from msacl.detectors.fanogan import (
    FAnoGAN,
    critic_loss,
    fanogan_score,
    generator_loss,
    gradient_penalty,
    izif_loss,
)
from msacl.detectors.fitloop import FitLoop
from msacl.models.decoders import Critic
from msacl.runs import make_generator


def test_gradient_penalty_matches_a_per_sample_loop():
    g = make_generator(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        critic = Critic(32, 3, width=4)
    real, fake = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    eps = torch.rand(3, generator=g)
    got = gradient_penalty(critic, real, fake, eps)
    for i in range(3):
        x_hat = (eps[i] * real[i:i + 1] + (1 - eps[i]) * fake[i:i + 1]).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
        ref = (math.sqrt(sum(v.item() ** 2 for v in grad.flatten())) - 1) ** 2
        assert math.isclose(got[i].item(), ref, rel_tol=1e-4)
    # the penalty is differentiable w.r.t. the critic (it is part of the critic's loss)
    got.mean().backward()
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in weights)


def test_wgan_losses_match_their_definitions():
    g = make_generator(1)
    d_real, d_fake, pen = (torch.randn(5, generator=g) for _ in range(3))
    ref = sum(d_fake.tolist()) / 5 - sum(d_real.tolist()) / 5 + 10 * sum(pen.tolist()) / 5
    assert math.isclose(critic_loss(d_real, d_fake, pen).item(), ref, rel_tol=1e-5)
    assert math.isclose(generator_loss(d_fake).item(), -sum(d_fake.tolist()) / 5, rel_tol=1e-5)


def test_izif_loss_and_eq7_score_match_loops():
    g = make_generator(2)
    x, x_rec = torch.rand(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)
    f, f_rec = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)  # critic features d(x), d(x~)
    kappa = 0.7
    s = fanogan_score(x, x_rec, f, f_rec, kappa=kappa)
    mse_x = mse_f = 0.0
    for i in range(2):
        dx = [(a - b) ** 2 for a, b in zip(x[i].flatten().tolist(), x_rec[i].flatten().tolist(), strict=True)]
        df = [(a - b) ** 2 for a, b in zip(f[i].tolist(), f_rec[i].tolist(), strict=True)]
        ref = math.sqrt(sum(dx)) / math.sqrt(16) + kappa * math.sqrt(sum(df)) / math.sqrt(3)
        assert math.isclose(s[i].item(), ref, rel_tol=1e-5)
        mse_x += sum(dx) / 32
        mse_f += sum(df) / 6
    assert math.isclose(izif_loss(x, x_rec, f, f_rec, kappa=kappa).item(), mse_x + kappa * mse_f, rel_tol=1e-5)


SMALL = {"image_size": 32, "gan_epochs": 2, "epochs": 1, "batch_size": 4, "n_critic": 2, "width": 8,
         "latent_dim": 16}


def test_fit_history_and_ranges(synthetic_train):
    x = synthetic_train(8, 32)
    det = FAnoGAN(**SMALL).fit(batches(x, 4), generator=make_generator(0))
    assert [set(h) for h in det.history] == [{"critic", "generator"}, {"critic", "generator"}, {"izif"}]
    assert all(math.isfinite(v) for h in det.history for v in h.values())
    z = det.model.encode(x[:2])
    assert z.abs().max() <= 1  # the encoder lands in the generator's [-1, 1] prior
    scores, maps = det.predict(x[:3])
    assert scores.shape == (3,) and maps.shape == (3, 1, 32, 32)
    assert torch.isfinite(scores).all() and (scores > 0).all() and (maps >= 0).all()


def test_encoder_phase_leaves_the_gan_fixed(synthetic_train):
    x = synthetic_train(4, 32)
    cfg = {**SMALL, "gan_epochs": 1, "epochs": 0}
    gan_only = FAnoGAN(**cfg).fit(batches(x, 4), generator=make_generator(0))
    both = FAnoGAN(**{**cfg, "epochs": 2}).fit(batches(x, 4), generator=make_generator(0))
    for part in ("decoder", "critic"):
        a, b = getattr(gan_only.model, part).state_dict(), getattr(both.model, part).state_dict()
        assert all(torch.equal(v, b[k]) for k, v in a.items()), part
    assert not torch.equal(gan_only.model.head.weight, both.model.head.weight)


@pytest.mark.parametrize("bad", [{"n_critic": 0}, {"nu": -0.1}, {"image_size": 40}])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        FAnoGAN(**{**SMALL, **bad})



class FixedImage(torch.nn.Module):
    """A generator whose output does not depend on z (its gradient w.r.t. z exists and is zero)."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.register_buffer("image", image)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the WGAN-GP phase builds an optimiser for it

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image.expand(z.shape[0], -1, -1, -1) + 0 * z.sum()


def _rms(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b, strict=True)) / len(a))


@torch.no_grad()
def test_izif_score_compares_the_critics_features_not_the_encoders(synthetic_train, monkeypatch):
    x = synthetic_train(2, 32)
    det = FAnoGAN(**SMALL).eval()
    fixed = torch.rand(1, 3, 32, 32, generator=make_generator(5))
    det.model.decoder = FixedImage(fixed)
    kappa = det.config["kappa"]

    def reference(d_x: torch.Tensor, d_fixed: torch.Tensor) -> torch.Tensor:
        return torch.tensor([_rms(x[i].flatten().tolist(), fixed.flatten().tolist())
                             + kappa * _rms(d_x[i].tolist(), d_fixed[0].tolist()) for i in range(2)])

    scores, _ = det.predict(x)
    assert torch.allclose(scores, reference(det.model.critic.features(x), det.model.critic.features(fixed)),
                          atol=1e-5)
    # other encoder weights, same reconstruction: the score does not move (an encoder residual would)
    det.model.head.weight.add_(torch.randn(det.model.head.weight.shape, generator=make_generator(6)))
    assert torch.allclose(det.predict(x)[0], scores, atol=1e-6)
    # other critic features: the score follows them
    monkeypatch.setattr(det.model.critic, "features", lambda t: t.flatten(1)[:, :7] * 3)
    got = det.predict(x)[0]
    assert torch.allclose(got, reference(x.flatten(1)[:, :7] * 3, fixed.flatten(1)[:, :7] * 3), atol=1e-5)
    assert not torch.allclose(got, scores)


def test_izif_training_reaches_the_encoder_only_through_the_reconstruction(synthetic_train):
    """With a generator that ignores z, L_izi_f (image and critic-feature terms) does not depend on the
    encoder, so Adam leaves its weights exactly where they were; an encoder-latent term
    ||E(x) - E(g(E(x)))|| would move them. The critic stays frozen."""
    x = synthetic_train(8, 32)
    det = FAnoGAN(**{**SMALL, "gan_epochs": 0, "epochs": 1})
    det.model.decoder = FixedImage(torch.rand(1, 3, 32, 32, generator=make_generator(7)))
    before = {k: v.clone() for k, v in det.model.named_parameters()}
    det.train()
    loop = FitLoop(det, make_generator(0), phases=det.phases(), steps_per_epoch=2)
    history = det.fit_data(x, loop)  # fit minus its re-initialisation
    assert history[-1]["izif"] > 0
    assert all(torch.equal(p, before[k]) for k, p in det.model.named_parameters())
