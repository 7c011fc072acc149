"""MS-SSIM / SSIM for small images against pytorch_msssim where both apply, plus closed-form cases."""

from __future__ import annotations

import pytest
import pytorch_msssim as pm
import torch

from msacl.detectors.msssim import (
    MS_SSIM_WEIGHTS,
    default_levels,
    default_win_size,
    ms_ssim,
    ssim,
    ssim_components,
    ssim_map,
)


def _pair(size: int, noise: float = 0.1, seed: int = 0, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial structure
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


def test_five_scales_match_pytorch_msssim():
    x, y = _pair(192)
    assert default_win_size(192) == 11 and default_levels(192, 11) == 5
    ref = pm.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert torch.allclose(ms_ssim(x, y), ref, atol=1e-5)


def test_small_window_and_custom_weights_match_pytorch_msssim():
    x, y = _pair(64, noise=0.2)
    ref = pm.ms_ssim(x, y, data_range=1.0, size_average=False, win_size=3)
    assert torch.allclose(ms_ssim(x, y, win_size=3), ref, atol=1e-5)
    w = [0.0516, 0.3295, 0.3463, 0.2726]  # four scales, as the IGD release uses for 32 px patches
    ref4 = pm.ms_ssim(x, y, data_range=1.0, size_average=False, win_size=3, weights=w)
    assert torch.allclose(ms_ssim(x, y, win_size=3, weights=w), ref4, atol=1e-5)


def test_default_weights_for_fewer_scales_are_the_renormalised_standard_ones():
    x, y = _pair(64, noise=0.2)
    w = torch.tensor(MS_SSIM_WEIGHTS[:4])
    ref = pm.ms_ssim(x, y, data_range=1.0, size_average=False, win_size=3, weights=(w / w.sum()).tolist())
    assert torch.allclose(ms_ssim(x, y, win_size=3, levels=4), ref, atol=1e-5)
    assert torch.allclose(w / w.sum(), torch.tensor([0.0516, 0.3295, 0.3463, 0.2726]), atol=1e-4)


def test_ssim_matches_pytorch_msssim_and_one_scale_ms_ssim_is_ssim():
    x, y = _pair(64, noise=0.2)
    ref = pm.ssim(x, y, data_range=1.0, size_average=False, win_size=11)
    assert torch.allclose(ssim(x, y, win_size=11), ref, atol=1e-5)
    assert torch.allclose(ms_ssim(x, y, levels=1, win_size=11), ref.clamp_min(0), atol=1e-5)


@pytest.mark.parametrize(("side", "win", "levels"), [(32, 3, 4), (64, 3, 5), (64, 11, 3), (128, 11, 4),
                                                     (256, 11, 5), (3, 3, 1)])
def test_number_of_scales_follows_the_image_size(side, win, levels):
    assert default_levels(side, win) == levels
    x, y = _pair(side, b=1)
    assert ms_ssim(x, y, win_size=win).shape == (1,)


def test_too_small_images_and_bad_windows_are_rejected():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        default_levels(2, 3)
    x, y = _pair(32, b=1)
    with pytest.raises(ValueError, match="scales"):
        ms_ssim(x, y, levels=5, win_size=3)
    with pytest.raises(ValueError, match="odd"):
        ssim(x, y, win_size=4)
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, y[..., :16])


def test_identical_images_score_one_and_maps_keep_the_size():
    x, _ = _pair(32)
    assert torch.allclose(ms_ssim(x, x), torch.ones(3), atol=1e-6)
    m = ssim_map(x, x)
    assert m.shape == (3, 1, 32, 32) and torch.allclose(m, torch.ones_like(m), atol=1e-6)


def test_ssim_map_interior_equals_the_valid_map():
    x, y = _pair(40, noise=0.3)
    valid, _ = ssim_components(x, y, win_size=7)
    same = ssim_map(x, y, win_size=7)  # channel mean of the padded map
    assert torch.allclose(same[:, :, 3:-3, 3:-3], valid.mean(1, keepdim=True), atol=1e-6)


def test_ssim_map_drops_where_the_images_differ():
    x, _ = _pair(64, noise=0.0, b=1)
    y = x.clone()
    y[..., 40:56, 8:24] = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    m = ssim_map(x, y)[0, 0]
    assert m[44:52, 12:20].mean() < 0.5 < m[8:24, 40:56].mean()


def test_gradients_are_finite_even_for_unrelated_images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 32, 32, generator=g, requires_grad=True)
    y = torch.rand(4, 3, 32, 32, generator=g)
    (1 - ms_ssim(x, y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
