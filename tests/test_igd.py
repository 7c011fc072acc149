"""IGD: each loss and score against a loop written from the IGD release (loss, scores, maps) and from
MSACL Eq. 10-11 / CCD Eq. 5-6 (``scoring="paper"``), and fit/predict."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from msacl.config import ConfigError
from msacl.detectors.base import batches
from msacl.detectors.igd import (
    IGD,
    anomaly_classification_loss,
    gaussian_descriptor,
    gaussian_parameters,
    igd_loss,
    igd_score,
    interpolation_critic_loss,
    interpolation_regulariser,
    reconstruction_error,
    released_score,
)
from msacl.detectors.msssim import ms_ssim, ssim_map
from msacl.errors import DataError
from msacl.runs import make_generator

# ---------------------------------------------------------------- maths against naive references


def test_gaussian_descriptor_and_parameters_match_loops():
    g = make_generator(0)
    z, c = torch.randn(5, 4, generator=g), torch.randn(4, generator=g)
    sigma = 2.5
    ref = torch.tensor([math.exp(-sum((z[i, j] - c[j]).item() ** 2 for j in range(4)) / sigma) for i in range(5)])
    assert torch.allclose(gaussian_descriptor(z, c, sigma), ref, atol=1e-6)
    c_hat, s_hat = gaussian_parameters(z)
    c_ref = torch.tensor([sum(z[i, j].item() for i in range(5)) / 5 for j in range(4)])
    s_ref = sum(sum((z[i, j].item() - c_ref[j].item()) ** 2 for j in range(4)) for i in range(5)) / 5
    assert torch.allclose(c_hat, c_ref, atol=1e-6) and math.isclose(s_hat.item(), s_ref, rel_tol=1e-5)
    assert torch.allclose(gaussian_descriptor(c[None], c, sigma), torch.ones(1))  # h(c) = 1


def test_reconstruction_error_and_score_follow_eq_10_11():
    g = make_generator(1)
    l1, m_g, m_l, h = (torch.rand(6, generator=g) for _ in range(4))
    rho, nu, xi = 0.3, 0.6, 0.8
    rec = reconstruction_error(l1, m_g, m_l, rho=rho, nu=nu)
    for i in range(6):
        ref = rho * l1[i] + (1 - rho) * (1 - (nu * m_g[i] + (1 - nu) * m_l[i]))
        assert math.isclose(rec[i].item(), ref.item(), rel_tol=1e-6)
        s = xi * ref + (1 - xi) * (1 - h[i])
        assert math.isclose(igd_score(rec, h, xi=xi)[i].item(), s.item(), rel_tol=1e-6)
    # without a local model the MS-SSIM term is the global one (nu = 1)
    assert torch.allclose(reconstruction_error(l1, m_g, rho=rho), reconstruction_error(l1, m_g, m_l, rho=rho, nu=1.0))
    # paper defaults: rho 0.15, xi 0.9
    assert torch.allclose(igd_score(reconstruction_error(l1, m_g), h),
                          0.9 * (0.15 * l1 + 0.85 * (1 - m_g)) + 0.1 * (1 - h))


def test_classification_and_interpolation_losses_match_loops():
    g = make_generator(2)
    h, pred_mix, alpha, pred_blend = (torch.rand(7, generator=g) for _ in range(4))
    assert math.isclose(anomaly_classification_loss(h).item(), sum(1 - v.item() for v in h) / 7, rel_tol=1e-6)
    ref = sum((pred_mix[i].item() - alpha[i].item()) ** 2 for i in range(7)) / 7 + \
        sum(v.item() ** 2 for v in pred_blend) / 7
    assert math.isclose(interpolation_critic_loss(pred_mix, alpha, pred_blend).item(), ref, rel_tol=1e-6)
    assert math.isclose(interpolation_regulariser(pred_mix).item(), sum(v.item() ** 2 for v in pred_mix) / 7,
                        rel_tol=1e-6)



def test_released_loss_is_ms_ssim_l1_plus_svdd_plus_a_tenth_of_the_interpolation_term():
    g = make_generator(3)
    l1, m, pred = torch.rand(6, generator=g), torch.rand(6, generator=g), torch.randn(6, generator=g)
    z, c, sigma = torch.randn(6, 4, generator=g), torch.randn(4, generator=g), 3.0
    ms_ssim_l1 = sum(0.85 * (1 - m[i].item()) + 0.15 * l1[i].item() for i in range(6)) / 6
    svdd = sum(1 - math.exp(-sum((z[i, j].item() - c[j].item()) ** 2 for j in range(4)) / sigma)
               for i in range(6)) / 6
    reg_inter = sum(pred[i].item() ** 2 for i in range(6)) / 6
    ref = torch.tensor(ms_ssim_l1 + svdd + 0.1 * reg_inter)
    got = igd_loss(reconstruction_error(l1, m), gaussian_descriptor(z, c, sigma), pred)
    assert torch.allclose(got, ref, atol=1e-6)
    cfg = IGD(image_size=32).config  # the detector's defaults are the release's weights
    assert (cfg["w_rec"], cfg["w_gauss"], cfg["w_interp"], cfg["rho"]) == (1.0, 1.0, 0.1, 0.15)


def test_released_score_mixing_matches_loops():
    g = make_generator(4)
    rec_g, h_g = torch.rand(3, generator=g), torch.rand(3, generator=g)
    rec_p, h_p = torch.rand(3, 5, generator=g), torch.rand(3, 5, generator=g)
    ref, ref_g = [], []
    for i in range(3):
        s_g = 0.1 * rec_g[i].item() + 0.9 * (1 - h_g[i].item())
        s_l = max(0.9 * rec_p[i, j].item() + 0.1 * (1 - h_p[i, j].item()) for j in range(5))
        ref.append(0.5 * s_l + 0.5 * s_g)
        ref_g.append(s_g)
    assert torch.allclose(released_score(rec_g, h_g, rec_p, h_p), torch.tensor(ref), atol=1e-6)
    assert torch.allclose(released_score(rec_g, h_g), torch.tensor(ref_g), atol=1e-6)  # no local model


def _h(z: torch.Tensor, c: torch.Tensor, sigma: torch.Tensor) -> float:
    return math.exp(-sum((z[0, j].item() - c[j].item()) ** 2 for j in range(z.shape[1])) / sigma.item())


def _terms(net, x: torch.Tensor) -> tuple[float, float, float, torch.Tensor]:
    """MAE, MS-SSIM, h and the per-pixel Eq. 11 map of one image (1, C, H, W), written out."""
    z, x_rec = net(x)
    mae = sum(abs(v) for v in (x - x_rec).flatten().tolist()) / x.numel()
    pixel = 0.15 * (x - x_rec).abs().mean(1, keepdim=True) + 0.85 * (1 - ssim_map(x, x_rec))
    return mae, ms_ssim(x, x_rec).item(), _h(z, net.c, net.sigma), pixel[0, 0]


@torch.no_grad()
def test_predict_follows_the_release_by_default_and_eq_10_11_as_paper(synthetic_train):
    x = synthetic_train(2, 64)
    det = IGD(**{**SMALL, "image_size": 64, "local": True}).eval()
    for net, images in ((det.model, x), (det.local, x[:, :, 8:40, 16:48])):  # c, sigma of real latents
        z = net.encode(images)
        net.c, net.sigma = z.mean(0), ((z - z.mean(0)) ** 2).sum(1).mean()
    paper = IGD(**{**SMALL, "image_size": 64, "local": True, "scoring": "paper"})
    paper.load_state_dict(det.state_dict())
    offsets = [0, 16, 32]  # 32 x 32 patches, stride 16, on a 64 px image
    for i in range(2):
        xi = x[i:i + 1]
        mae, m_g, h_g, map_g = _terms(det.model, xi)
        rec_g = 0.15 * mae + 0.85 * (1 - m_g)
        s_local, m_local, total, paper_total, count = [], [], torch.zeros(64, 64), torch.zeros(64, 64), 0
        covered = torch.zeros(64, 64)
        for r in offsets:
            for c in offsets:
                mae_p, m_p, h_p, map_p = _terms(det.local, xi[:, :, r:r + 32, c:c + 32])
                rec_p = 0.15 * mae_p + 0.85 * (1 - m_p)
                s_local.append(0.9 * rec_p + 0.1 * (1 - h_p))
                m_local.append(m_p)
                total[r:r + 32, c:c + 32] += map_p
                paper_total[r:r + 32, c:c + 32] += 0.9 * rec_p + 0.1 * (1 - h_p)  # s_IGD of the patch
                covered[r:r + 32, c:c + 32] += 1
                count += 1
        # released: s_G = 0.1 rec + 0.9 (1 - h), s_L = max over patches of 0.9 rec + 0.1 (1 - h), 0.5 / 0.5
        s_ref = 0.5 * max(s_local) + 0.5 * (0.1 * rec_g + 0.9 * (1 - h_g))
        map_ref = 0.5 * total / covered + 0.5 * map_g
        scores, maps = det.predict(xi)
        assert torch.allclose(scores, torch.tensor([s_ref]), atol=1e-5)
        assert torch.allclose(maps[0, 0], map_ref, atol=1e-5)
        # paper: Eq. 11 mixes m_G with the mean patch m_L (nu 0.5), Eq. 10 with xi 0.9 and the global h
        rec = 0.15 * mae + 0.85 * (1 - (0.5 * m_g + 0.5 * sum(m_local) / count))
        s_paper = 0.9 * rec + 0.1 * (1 - h_g)
        map_paper = 0.9 * map_g + 0.1 * (1 - h_g) + paper_total / covered
        scores, maps = paper.predict(xi)
        assert torch.allclose(scores, torch.tensor([s_paper]), atol=1e-5)
        assert torch.allclose(maps[0, 0], map_paper, atol=1e-5)

# ---------------------------------------------------------------- the detector

SMALL = {"image_size": 32, "epochs": 1, "batch_size": 4, "width": 8, "latent_dim": 16}


def test_construction_is_deterministic_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    a, b = IGD(**SMALL), IGD(**SMALL)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(IGD(**SMALL, init_seed=1).model.head.weight, a.model.head.weight)


def test_fit_history_loss_and_gaussian_buffers(synthetic_train, capsys):
    x = synthetic_train(8, 32)
    det = IGD(**SMALL).fit(batches(x, 4), generator=make_generator(0), progress=True)
    assert "igd" in capsys.readouterr().err  # the tqdm bar goes to stderr
    assert set(det.history[0]) == {"loss", "rec", "gauss", "interp", "critic"}
    assert all(math.isfinite(v) for v in det.history[0].values())
    # the release's encoder_loss = ms_ssim_l1 + svdd_loss + 0.1 * reg_inter (epoch means are linear too)
    h0 = det.history[0]
    assert math.isclose(h0["loss"], h0["rec"] + h0["gauss"] + 0.1 * h0["interp"], rel_tol=1e-5)
    assert det.model.sigma.item() != 1.0 and det.model.c.abs().sum() > 0  # re-estimated from latents
    scores, maps = det.predict(x[:3])
    assert scores.shape == (3,) and maps.shape == (3, 1, 32, 32)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all() and (maps >= 0).all()


def test_local_model_adds_a_patch_map_and_loads_its_own_encoder(synthetic_train, tmp_path):
    x = synthetic_train(4, 64)
    cfg = {**SMALL, "image_size": 64, "local": True, "patches_per_image": 2}
    det = IGD(**cfg)
    assert isinstance(det.local.encoder.backbone, torchvision.models.ResNet)
    torch.manual_seed(123)  # other weights than the detector's own seeded initialisation
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "local.pt")
    det.load_encoder(tmp_path / "local.pt", part="local")
    assert torch.equal(det.local.encoder.backbone.conv1.weight, ref.conv1.weight)
    assert not torch.equal(det.encoder.backbone.conv1.weight, ref.conv1.weight)  # global encoder untouched

    det.fit(batches(x, 4), generator=make_generator(0))
    assert "local_rec" in det.history[0]
    scores, maps = det.predict(x[:2])
    assert scores.shape == (2,) and maps.shape == (2, 1, 64, 64) and torch.isfinite(maps).all()
    # "paper": the global part alone is smaller than global + local (the local map is a positive s_IGD per
    # patch, summed with the global map as MSACL Sec. 3.3 says)
    paper = IGD(**{**cfg, "scoring": "paper"})
    paper.load_state_dict(det.state_dict())
    det_global = IGD(**{**cfg, "local": False, "scoring": "paper"})
    det_global.model.load_state_dict(det.model.state_dict())
    assert (paper.predict(x[:2])[1] > det_global.predict(x[:2])[1]).all()


def test_bad_input_and_settings_are_named():
    det = IGD(**SMALL)
    with pytest.raises(DataError, match=r"expected images of shape \(B, 3, 32, 32\).*got \(2, 3, 64, 64\)"):
        det.predict(torch.rand(2, 3, 64, 64))
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        det.predict(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(DataError, match="at least 2 training images"):
        det.fit([torch.rand(1, 3, 32, 32)])
    with pytest.raises(ConfigError, match=r"^igd\.image_size must be a multiple of 32"):
        IGD(image_size=50)
    with pytest.raises(ValueError, match="rho must be in"):
        IGD(image_size=32, rho=1.5)
    with pytest.raises(ValueError, match=r"scoring: 'eq10' is not one of \['released', 'paper'\]"):
        IGD(image_size=32, scoring="eq10")
    with pytest.raises(ValueError, match="beta must be in"):
        IGD(image_size=32, beta=2.0)


def test_frozen_encoder_keeps_weights_and_batchnorm_statistics(synthetic_train):
    det = IGD(**{**SMALL, "freeze_encoder": True})
    before = {k: v.clone() for k, v in det.encoder.backbone.state_dict().items()}
    det.fit(batches(synthetic_train(8, 32), 4), generator=make_generator(0))
    after = det.encoder.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
