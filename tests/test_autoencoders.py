"""MS-SSIM auto-encoder and DAE (losses and scores against references), the decoder, and the shared
patch/engine helpers of the trained detectors."""

from __future__ import annotations

import math

import pytest
import pytorch_msssim as pm
import torch

from msacl.detectors.autoencoder import (
    DAE,
    MSSSIMAutoencoder,
    denoising_loss,
    msi_score,
    msssim_loss,
    squared_error_score,
)
from msacl.detectors.base import batches
from msacl.detectors.fitloop import FitLoop
from msacl.detectors.patches import extract_patches, patch_grid, sample_patches, spread_patch_scores
from msacl.models.decoders import Critic, Decoder, LatentAutoencoder
from msacl.runs import make_generator

# ---------------------------------------------------------------- maths


def test_msssim_loss_and_msi_score_match_pytorch_msssim_and_the_formula():
    g = make_generator(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = pm.ms_ssim(x, y, data_range=1.0, size_average=False, win_size=3)
    assert math.isclose(msssim_loss(x, y).item(), (1 - ref).mean().item(), rel_tol=1e-5)
    m_g, m_l = torch.rand(4, generator=g), torch.rand(4, generator=g)
    for i in range(4):
        assert math.isclose(msi_score(m_g, m_l, nu=0.3)[i].item(), 1 - (0.3 * m_g[i] + 0.7 * m_l[i]).item(),
                            rel_tol=1e-6)
    assert torch.allclose(msi_score(m_g), 1 - m_g)


def test_dae_loss_and_score_match_loops():
    g = make_generator(1)
    x, y = torch.rand(2, 2, 3, 3, generator=g), torch.rand(2, 2, 3, 3, generator=g)
    d = [[(a - b) ** 2 for a, b in zip(x[i].flatten().tolist(), y[i].flatten().tolist(), strict=True)]
         for i in range(2)]
    assert math.isclose(denoising_loss(x, y).item(), sum(map(sum, d)) / 36, rel_tol=1e-5)
    score, pixel = squared_error_score(x, y)
    assert torch.allclose(score, torch.tensor([sum(r) / 18 for r in d]))
    assert math.isclose(pixel[1, 0, 2, 1].item(), ((x[1, :, 2, 1] - y[1, :, 2, 1]) ** 2).mean().item(), rel_tol=1e-6)


# ---------------------------------------------------------------- decoder and patch helpers


@pytest.mark.parametrize("size", [32, 64, (64, 96)])
def test_decoder_and_critic_shapes(size):
    dec = Decoder(16, size, 1, width=4)
    hw = (size, size) if isinstance(size, int) else size
    out = dec(torch.randn(2, 16))
    assert out.shape == (2, 1, *hw) and out.min() >= 0 and out.max() <= 1
    assert Critic(size, 1, width=4)(out).shape == (2,)
    with pytest.raises(ValueError, match="multiple of 32"):
        Decoder(16, 48)


def test_latent_autoencoder_gradients_reach_every_parameter():
    ae = LatentAutoencoder(image_size=32, latent_dim=8, width=4)
    _, x_rec = ae(torch.rand(2, 3, 32, 32))
    x_rec.mean().backward()
    missing = [n for n, p in ae.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == [] or all(n.startswith("encoder.backbone.fc.") for n in missing)  # fc is unused


def test_patch_grid_extract_and_spread_match_loops():
    assert patch_grid(64, 32, 16) == [0, 16, 32]
    assert patch_grid(72, 32, 16) == [0, 16, 32, 40]  # a last patch flush with the edge
    g = make_generator(2)
    x = torch.rand(2, 1, 72, 64, generator=g)
    p = extract_patches(x, patch=32, stride=16)
    rows, cols = patch_grid(72, 32, 16), patch_grid(64, 32, 16)
    assert p.shape == (2 * len(rows) * len(cols), 1, 32, 32)
    k = 0
    for b in range(2):
        for r in rows:
            for c in cols:
                assert torch.equal(p[k], x[b, :, r:r + 32, c:c + 32])
                k += 1
    s = torch.rand(2, len(rows) * len(cols), generator=g)
    spread = spread_patch_scores(s, (72, 64), patch=32, stride=16)
    for b, i, j in [(0, 0, 0), (1, 20, 40), (0, 71, 63), (1, 35, 17)]:
        covering = [s[b, pi * len(cols) + pj].item() for pi, r in enumerate(rows) for pj, c in enumerate(cols)
                    if r <= i < r + 32 and c <= j < c + 32]
        assert math.isclose(spread[b, 0, i, j].item(), sum(covering) / len(covering), rel_tol=1e-6)


def test_sampled_patches_are_grid_patches_and_follow_the_generator():
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).view(2, 1, 64, 64)
    a = sample_patches(x, 5, make_generator(0))
    assert a.shape == (10, 1, 32, 32)
    grid = extract_patches(x)
    for i, patch in enumerate(a):
        assert any(torch.equal(patch, q) for q in grid[(i // 5) * 9:(i // 5 + 1) * 9])
    assert torch.equal(a, sample_patches(x, 5, make_generator(0)))


def test_fit_loop_visits_every_image_and_decays_the_learning_rate():
    data = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1)
    seen: list[float] = []
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    lrs: list[float] = []

    def step(x, g):
        seen.extend(x.flatten().tolist())
        lrs.append(opt.param_groups[0]["lr"])
        return {"n": float(x.shape[0])}

    holder = torch.nn.Linear(1, 1)
    holder.config = {}
    loop = FitLoop(holder, make_generator(0), phases=[("p", 2)], steps_per_epoch=3)
    hist = loop.run("p", data, step, epochs=2, batch_size=4, optimizers={"sgd": opt}, lr_power=1.0)
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # reshuffled each epoch
    assert lrs == pytest.approx([1 - t / 6 for t in range(6)])
    assert hist == [{"n": 10 / 3}, {"n": 10 / 3}] and loop.step == 6


# ---------------------------------------------------------------- the detectors

SMALL = {"image_size": 32, "epochs": 1, "batch_size": 4, "width": 8, "latent_dim": 16}


def _naive_ssim_at(x: torch.Tensor, y: torch.Tensor, i: int, j: int) -> float:
    """SSIM (Wang et al. 2004, Eq. 13) at pixel (i, j) of two (C, H, W) images, mean over channels, written
    from the definition: a 3 x 3 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2 for data range 1."""
    t = torch.arange(-1, 2, dtype=torch.float64)
    g = torch.exp(-t**2 / (2 * 1.5**2))
    w = torch.outer(g, g) / torch.outer(g, g).sum()
    total = 0.0
    for c in range(x.shape[0]):
        p, q = x[c, i - 1:i + 2, j - 1:j + 2].double(), y[c, i - 1:i + 2, j - 1:j + 2].double()
        mx, my = (w * p).sum(), (w * q).sum()
        vx, vy = (w * p * p).sum() - mx**2, (w * q * q).sum() - my**2
        cov = (w * p * q).sum() - mx * my
        total += float((2 * mx * my + 1e-4) * (2 * cov + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)))
    return total / x.shape[0]


def test_msssim_ae_score_and_map_follow_ms_ssim_and_ssim_of_its_reconstruction(synthetic_train):
    # 64 px: five scales of a 3 x 3 window, where pytorch_msssim (an independent implementation) applies
    x = synthetic_train(4, 64)
    det = MSSSIMAutoencoder(**{**SMALL, "image_size": 64}).fit(batches(x, 4), generator=make_generator(0))
    with torch.no_grad():
        x_rec = det.model(x)[1]
    scores, maps = det.predict(x)
    ref = 1 - pm.ms_ssim(x, x_rec, data_range=1.0, size_average=False, win_size=3)
    assert torch.allclose(scores, ref, atol=1e-5)
    # the map is 1 - SSIM per pixel (mean over channels)
    for b, i, j in [(0, 1, 1), (1, 30, 17), (2, 62, 40), (3, 45, 45)]:
        assert math.isclose(maps[b, 0, i, j].item(), 1 - _naive_ssim_at(x[b], x_rec[b], i, j), abs_tol=1e-4)


@pytest.mark.parametrize("cls", [MSSSIMAutoencoder, DAE])
def test_local_models_change_score_and_map(cls, synthetic_train):
    x = synthetic_train(4, 64)
    det = cls(**{**SMALL, "image_size": 64, "local": True, "patches_per_image": 2})
    det.fit(batches(x, 4), generator=make_generator(0))
    assert "local_loss" in det.history[0]
    scores, maps = det.predict(x[:2])
    assert scores.shape == (2,) and maps.shape == (2, 1, 64, 64) and torch.isfinite(maps).all()
    glob = cls(**{**SMALL, "image_size": 64})
    glob.model.load_state_dict(det.model.state_dict())
    s_g, m_g = glob.predict(x[:2])
    assert not torch.allclose(scores, s_g) and (maps > m_g).all()


def test_dae_training_reduces_its_loss():
    g = make_generator(3)
    base = torch.rand(1, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=32, mode="bilinear").repeat(4, 1, 1, 1)
    det = DAE(**{**SMALL, "epochs": 12, "lr": 3e-3}).fit(batches(x, 4), generator=make_generator(0))
    losses = [h["loss"] for h in det.history]
    assert losses[-1] < 0.5 * losses[0]


def test_dae_noise_and_bad_settings():
    with pytest.raises(ValueError, match="noise_std"):
        DAE(**SMALL, noise_std=-1)
    with pytest.raises(ValueError, match="patch_size .* larger than the image"):
        DAE(**{**SMALL, "local": True, "patch_size": 64})
    with pytest.raises(ValueError, match="batch_size"):
        MSSSIMAutoencoder(**{**SMALL, "batch_size": 1})
