"""Weak views (SimCLR's A_0) and the batched image operations, checked against torchvision per image."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from msacl.augment import WeakAugment, WeakConfig
from msacl.augment import functional as AF


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (bilinear-upsampled noise), so that resampling errors stay small."""
    low = torch.rand(b, c, 6, 6, generator=gen(seed))
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- colour operations vs torchvision


@pytest.mark.parametrize("c", [1, 3])
def test_colour_ops_match_torchvision_per_image(c):
    x = torch.rand(5, c, 9, 11, generator=gen(1))
    f = torch.tensor([0.6, 1.0, 1.3, 0.0, 1.8])
    hue = torch.tensor([-0.5, -0.1, 0.0, 0.25, 0.49])
    for i in range(5):
        xi = x[i]
        torch.testing.assert_close(AF.adjust_brightness(x, f)[i], TF.adjust_brightness(xi, f[i].item()))
        torch.testing.assert_close(AF.adjust_contrast(x, f)[i], TF.adjust_contrast(xi, f[i].item()))
        torch.testing.assert_close(AF.adjust_saturation(x, f)[i], TF.adjust_saturation(xi, f[i].item()))
        torch.testing.assert_close(AF.adjust_hue(x, hue)[i], TF.adjust_hue(xi, hue[i].item()), atol=1e-5, rtol=0)
    if c == 3:
        torch.testing.assert_close(AF.to_grey(x), TF.rgb_to_grayscale(x, num_output_channels=3))


def test_hsv_round_trip_and_known_values():
    x = torch.rand(4, 3, 8, 8, generator=gen(2))
    torch.testing.assert_close(AF.hsv_to_rgb(AF.rgb_to_hsv(x)), x, atol=1e-6, rtol=0)
    red_green_blue = torch.eye(3).view(3, 3, 1, 1).permute(1, 0, 2, 3)  # pure R, G, B pixels
    hsv = AF.rgb_to_hsv(red_green_blue)
    torch.testing.assert_close(hsv[:, 0].flatten(), torch.tensor([0.0, 1 / 3, 2 / 3]))
    torch.testing.assert_close(hsv[:, 1:].flatten(), torch.ones(6))


def test_color_jitter_order_matters_and_identity_factors_are_exact():
    x = torch.rand(2, 3, 6, 6, generator=gen(3))
    one, zero = torch.ones(2), torch.zeros(2)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    same = AF.color_jitter(x, brightness=one, contrast=one, saturation=one, hue=zero, order=order)
    assert torch.equal(same, x)
    b, c = torch.full((2,), 1.5), torch.full((2,), 0.5)
    out = AF.color_jitter(x[:1].expand(2, -1, -1, -1), brightness=b, contrast=c, saturation=one, hue=zero,
                          order=torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]]))
    ref0 = TF.adjust_contrast(TF.adjust_brightness(x[0], 1.5), 0.5)
    ref1 = TF.adjust_brightness(TF.adjust_contrast(x[0], 0.5), 1.5)
    torch.testing.assert_close(out[0], ref0)
    torch.testing.assert_close(out[1], ref1)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("c", [1, 3])
def test_gaussian_blur_per_image_sigma_matches_torchvision(c):
    x = torch.rand(3, c, 16, 13, generator=gen(4))
    sigma = torch.tensor([0.3, 1.0, 2.5])
    out = AF.gaussian_blur(x, sigma, 7)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [7, 7], [sigma[i].item()] * 2)
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        AF.gaussian_blur(x, sigma, 4)


def test_fov_mask_erodes_border_and_specks():
    x = torch.zeros(1, 3, 20, 20)
    x[:, :, 4:16, 4:16] = 0.5
    x[:, 0, 1, 1] = 1.0  # a bright speck in the black border
    fov = AF.fov_mask(x, threshold=0.1, erode=2)
    expected = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    expected[:, :, 6:14, 6:14] = True
    assert torch.equal(fov, expected)
    # An image with no border keeps its edges.
    assert AF.fov_mask(torch.full((1, 1, 8, 8), 0.5), threshold=0.1, erode=2).all()


def test_box_sums_match_direct_sums():
    m = torch.rand(2, 1, 9, 7, generator=gen(5)) > 0.5
    table = AF.integral_image(m)
    y0 = torch.tensor([[0, 3, 5], [1, 2, 8]])
    x0 = torch.tensor([[0, 1, 2], [6, 0, 3]])
    h = torch.tensor([[9, 2, 4], [3, 5, 1]])
    w = torch.tensor([[7, 5, 1], [1, 7, 4]])
    got = AF.box_sums(table, y0, x0, h, w)
    for b in range(2):
        for t in range(3):
            ref = m[b, 0, y0[b, t]:y0[b, t] + h[b, t], x0[b, t]:x0[b, t] + w[b, t]].sum()
            assert got[b, t] == ref


def test_translate_is_an_exact_shifted_copy():
    x = torch.rand(2, 3, 8, 8, generator=gen(6))
    out = AF.translate(x, torch.tensor([2, -1]), torch.tensor([-3, 0]))
    assert torch.equal(out[0, :, :6, 3:], x[0, :, 2:, :5])
    assert torch.equal(out[1, :, 1:, :], x[1, :, :7, :])


# ---------------------------------------------------------------- Bezier intensity curves


def bezier_reference(p1, p2, t):
    """B(t) = (1-t)^3 P0 + 3(1-t)^2 t P1 + 3(1-t) t^2 P2 + t^3 P3 with P0 = (0, 0), P3 = (1, 1)."""
    pts = [(0.0, 0.0), tuple(p1), tuple(p2), (1.0, 1.0)]
    coef = [(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3]
    return sum(c * p[0] for c, p in zip(coef, pts, strict=True)), sum(c * p[1] for c, p in zip(coef, pts, strict=True))


def test_bezier_curve_matches_equation_and_is_monotonic():
    p = torch.rand(50, 2, 2, generator=gen(7))
    p[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # the extreme case of the monotonicity argument
    xs, ys = AF.bezier_curves(p[:, 0].double(), p[:, 1].double(), steps=11)
    for b in (0, 1, 17):
        for i, t in enumerate(torch.linspace(0, 1, 11, dtype=torch.float64).tolist()):
            rx, ry = bezier_reference(p[b, 0].tolist(), p[b, 1].tolist(), t)
            assert abs(xs[b, i].item() - rx) < 1e-9 and abs(ys[b, i].item() - ry) < 1e-9
    assert (xs.diff(dim=1) >= 0).all() and (ys.diff(dim=1) >= 0).all()
    v = torch.linspace(0, 1, 101).view(1, 1, 1, 101).expand(50, 1, 1, 101).contiguous()
    mapped = AF.apply_curve(v.float(), *AF.bezier_curves(p[:, 0], p[:, 1]))
    assert (mapped.diff(dim=-1) >= -1e-6).all()
    torch.testing.assert_close(mapped[..., 0], torch.zeros(50, 1, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(mapped[..., -1], torch.ones(50, 1, 1), atol=1e-6, rtol=0)


def test_curve_look_up_table_matches_exact_curve():
    p = torch.rand(8, 2, 2, generator=gen(9))
    xs, ys = AF.bezier_curves(p[:, 0], p[:, 1])
    x = torch.rand(8, 3, 16, 16, generator=gen(10))
    exact = AF.apply_curve(x, xs, ys)
    lut = AF.apply_curve_lut(x, xs, ys)
    assert (lut - exact).abs().max() < 2e-3
    assert (AF.apply_curve_lut(x, xs, ys, size=4096) - exact).abs().max() < 2e-4


def test_apply_curve_identity_curve_is_identity():
    t = torch.linspace(0, 1, 5).expand(3, 5)
    x = torch.rand(3, 2, 4, 4, generator=gen(8))
    torch.testing.assert_close(AF.apply_curve(x, t, t), x)


# ---------------------------------------------------------------- weak views


@pytest.mark.parametrize("c", [1, 3])
def test_weak_views_shape_range_and_determinism(c):
    x = smooth_images(6, c, 48)
    weak = WeakAugment(32)
    a = weak(x, generator=gen(0))
    assert a.shape == (6, c, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, weak(x, generator=gen(0)))
    assert not torch.allclose(a, weak(x, generator=gen(1)))
    # Views are drawn per image: identical inputs get different views.
    same = weak(x[:1].expand(4, -1, -1, -1), generator=gen(2))
    assert not torch.allclose(same[0], same[1])


def test_weak_config_defaults_are_simclr_and_overrides_validate():
    cfg = WeakConfig()
    assert (cfg.crop_scale, cfg.hflip_p, cfg.jitter_p, cfg.grey_p) == ((0.2, 1.0), 0.5, 0.8, 0.2)
    assert (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) == (0.4, 0.4, 0.4, 0.1)
    w = WeakAugment(64, cfg, blur_p=0.0)
    assert w.cfg.blur_p == 0.0 and cfg.blur_p == 0.5
    assert w.blur_kernel == 7  # 10 % of 64, rounded up to odd
    with pytest.raises(TypeError, match="unknown"):
        WeakAugment(32, nonsense=1)
    with pytest.raises(ValueError, match="jitter_p"):
        WeakConfig(jitter_p=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        WeakConfig(crop_scale=(0.5, 0.2))


def test_weak_config_loads_from_yaml_overrides():
    from msacl.config import apply_overrides

    cfg = apply_overrides(WeakConfig(), ["crop_scale=[0.5, 1.0]", "grey_p=0"])
    assert cfg.crop_scale == (0.5, 1.0) and cfg.grey_p == 0.0


def test_weak_identity_settings_return_the_image():
    x = smooth_images(3, 3, 32)
    ident = WeakAugment(32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, grey_p=0.0,
                        blur_p=0.0)
    torch.testing.assert_close(ident(x, generator=gen(0)), x, atol=1e-6, rtol=0)
    flip = WeakAugment(32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=1.0, vflip_p=1.0, jitter_p=0.0,
                       grey_p=0.0, blur_p=0.0)
    torch.testing.assert_close(flip(x, generator=gen(0)), x.flip(2, 3), atol=1e-6, rtol=0)
    grey = WeakAugment(32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, grey_p=1.0,
                       blur_p=0.0)
    out = grey(x, generator=gen(0))
    torch.testing.assert_close(out, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6, rtol=0)


def test_crop_flip_equals_torchvision_resized_crop(monkeypatch):
    x = smooth_images(4, 3, 40, seed=9)
    weak = WeakAugment(16, hflip_p=0.0)
    boxes = (torch.tensor([0.0, 5.0, 10.0, 3.0]), torch.tensor([0.0, 7.0, 2.0, 20.0]),
             torch.tensor([40.0, 20.0, 30.0, 17.0]), torch.tensor([40.0, 25.0, 16.0, 19.0]))
    monkeypatch.setattr(weak, "crop_params", lambda *a, **k: boxes)
    out = weak.crop_flip(x, generator=gen(0))
    for i in range(4):
        t, l, h, w = (int(v[i]) for v in boxes)
        ref = TF.resized_crop(x[i], t, l, h, w, [16, 16], antialias=False)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_crop_params_follow_random_resized_crop():
    weak = WeakAugment(32)
    top, left, h, w = weak.crop_params(2000, 60, 80, generator=gen(10), device=torch.device("cpu"))
    area = h * w / (60 * 80)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 80).all()
    # Rounding of the sides moves the area a little outside [0.2, 1].
    assert area.min() > 0.18 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() > 0.7 and ratio.max() < 1.4
    # Same distribution as torchvision's sampler (which draws from the global RNG, seeded here).
    torch.manual_seed(0)
    import torchvision.transforms as T

    ref = torch.tensor([math.prod(T.RandomResizedCrop.get_params(torch.zeros(1, 60, 80), [0.2, 1.0],
                                                                [3 / 4, 4 / 3])[2:]) for _ in range(2000)])
    assert area.mean().item() == pytest.approx(ref.float().mean().item() / 4800, abs=0.02)
    assert (h * w).float().std().item() == pytest.approx(ref.float().std().item(), rel=0.1)


def _cropped_from(weak: WeakAugment, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    """The image ``weak`` draws its crop in (what it hands to its public ``crop_flip``)."""
    seen, crop_flip = [], weak.crop_flip
    monkeypatch.setattr(weak, "crop_flip", lambda y, **k: seen.append(y) or crop_flip(y, **k))
    assert weak(x, generator=gen(0)).shape == x.shape[:2] + (weak.size, weak.size)
    return seen[0]


def test_weak_shrinks_large_inputs_with_antialias(monkeypatch):
    x = smooth_images(2, 3, 128)
    # The crop is drawn in the image shrunk to twice the output size, antialiased; without antialias, in the input.
    shrunk = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(_cropped_from(WeakAugment(16), x, monkeypatch), shrunk.clamp(0, 1), atol=1e-6)
    assert torch.equal(_cropped_from(WeakAugment(16, antialias=False), x, monkeypatch), x)


def test_weak_views_keep_the_input_dtype():
    x = smooth_images(2, 3, 16).double()
    assert WeakAugment(8)(x, generator=gen()).dtype == torch.float64


def test_weak_rejects_bad_input():
    with pytest.raises(ValueError, match="float"):
        WeakAugment(8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), generator=gen())
    with pytest.raises(ValueError, match="float"):
        WeakAugment(8)(torch.zeros(3, 8, 8), generator=gen())


def test_uniform_draws_follow_the_generator_device():
    g = gen(3)
    u = AF.uniform((4,), 2.0, 3.0, generator=g, device="cpu")
    assert u.min() >= 2 and u.max() < 3
    lu = AF.log_uniform(10000, 0.5, 2.0, generator=g)
    assert abs(torch.log(lu).mean().item()) < 0.03 and lu.min() >= 0.5 and lu.max() < 2.0 + 1e-6
    assert math.isclose(AF.random_order(3, 4, generator=g, device="cpu").sort(1).values.sum().item(), 18)


# ---------------------------------------------------------------- weak crops that keep given boxes


def random_boxes(b: int, k: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Boxes of 3 px to 60 % of each side anywhere inside an h x w image; a random number absent (-1) per row.

    Shape: (b, k, 4) as top, left, height, width.
    """
    g = gen(seed)
    bh = (3 + torch.rand(b, k, generator=g) * (0.6 * h - 3)).long()
    bw = (3 + torch.rand(b, k, generator=g) * (0.6 * w - 3)).long()
    top = (torch.rand(b, k, generator=g) * (h - bh + 1)).long()
    left = (torch.rand(b, k, generator=g) * (w - bw + 1)).long()
    boxes = torch.stack((top, left, bh, bw), -1)
    absent = torch.arange(k).view(1, k) >= torch.randint(0, k + 1, (b, 1), generator=g)
    return torch.where(absent.unsqueeze(-1), -1, boxes)


def kept_fraction(crop: tuple[torch.Tensor, ...], boxes: torch.Tensor) -> torch.Tensor:
    """Fraction of each box's area inside the crop, 1 where the box is absent. Shape: (B, K)."""
    top, left, ch, cw = (v.view(-1, 1) for v in crop)
    bt, bl, bh, bw = boxes.float().unbind(-1)
    oy = (torch.minimum(bt + bh, top + ch) - torch.maximum(bt, top)).clamp_min(0)
    ox = (torch.minimum(bl + bw, left + cw) - torch.maximum(bl, left)).clamp_min(0)
    return torch.where(bh > 0, oy * ox / (bh * bw).clamp_min(1), 1.0)


def test_crop_params_without_boxes_are_unchanged():
    # Values drawn by crop_params before it took boxes (same seed): the law without boxes did not move.
    got = WeakAugment(32).crop_params(6, 60, 80, generator=gen(3), device=torch.device("cpu"))
    assert [v.long().tolist() for v in got] == [[21, 0, 0, 3, 0, 0], [29, 13, 17, 20, 22, 7],
                                                [28, 50, 48, 47, 55, 59], [35, 54, 37, 42, 58, 66]]
    # Rows without boxes get exactly the views they get without ``boxes``; the draws stay in step after them.
    x = smooth_images(8, 3, 48)
    boxes = torch.full((8, 3, 4), -1)
    boxes[1::2, 0] = torch.tensor([30, 30, 15, 15])
    weak = WeakAugment(32)
    free, kept = weak(x, generator=gen(5)), weak(x, generator=gen(5), boxes=boxes)
    assert torch.equal(free[::2], kept[::2])
    assert not torch.allclose(free[1::2], kept[1::2])
    assert torch.equal(WeakAugment(32, box_keep=0.0)(x, generator=gen(5), boxes=boxes), free)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_crops_keep_the_given_share_of_every_box(keep):
    h, w = 60, 80
    boxes = random_boxes(4000, 3, h, w, seed=14)
    weak = WeakAugment(32, box_keep=keep)
    crop = weak.crop_params(4000, h, w, generator=gen(15), device=torch.device("cpu"), boxes=boxes)
    top, left, ch, cw = crop
    assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
    assert (ch >= 1).all() and (cw >= 1).all()
    assert kept_fraction(crop, boxes).min() >= keep
    assert all(torch.equal(a, b) for a, b in zip(crop, weak.crop_params(
        4000, h, w, generator=gen(15), device=torch.device("cpu"), boxes=boxes), strict=True))
    # Without the constraint the same boxes are often cut (so the check above can fail).
    free = WeakAugment(32).crop_params(4000, h, w, generator=gen(15), device=torch.device("cpu"))
    assert (kept_fraction(free, boxes).amin(1) < keep).float().mean() > 0.2


def test_small_boxes_keep_the_crop_sizes_and_move_only_the_crop():
    # A 3 px box fits in every crop the proposals draw: sizes are as without boxes, positions cover the box.
    boxes = torch.tensor([[0, 0, 3, 3], [57, 77, 3, 3], [30, 40, 3, 3]]).view(3, 1, 4).repeat(300, 1, 1)
    kw = dict(generator=gen(16), device=torch.device("cpu"))
    top, left, ch, cw = WeakAugment(32).crop_params(900, 60, 80, boxes=boxes, **kw)
    free = WeakAugment(32).crop_params(900, 60, 80, generator=gen(16), device=torch.device("cpu"))
    assert torch.equal(ch, free[2]) and torch.equal(cw, free[3])
    assert kept_fraction((top, left, ch, cw), boxes).min() >= 0.5
    assert not torch.equal(top, free[0])


def test_boxes_no_attempt_fits_grow_the_crop():
    # 40 px (sqrt(0.5) of 56) is needed along each axis; these crops are 29-32 px.
    boxes = torch.tensor([[[4, 4, 56, 56]], [[0, 0, 10, 10]]]).repeat(50, 1, 1)
    weak = WeakAugment(32, crop_scale=(0.2, 0.25))
    crop = weak.crop_params(100, 64, 64, generator=gen(17), device=torch.device("cpu"), boxes=boxes)
    assert kept_fraction(crop, boxes).min() >= 0.5
    area = crop[2] * crop[3] / 64**2
    assert (area[1::2] <= 0.26).all()  # grown only where needed,
    assert (crop[2][::2] >= 40).all() and (crop[3][::2] >= 40).all() and (area[::2] < 0.6).all()  # just enough
    ratio = crop[3][::2] / crop[2][::2]
    assert ratio.min() >= 3 / 4 and ratio.max() <= 4 / 3


def test_boxes_follow_the_antialiased_shrink(monkeypatch):
    x = smooth_images(64, 3, 128)
    boxes = random_boxes(64, 3, 128, 128, seed=18)
    weak = WeakAugment(32)  # shrinks to 64 px before cropping
    seen = []
    crop_params = weak.crop_params
    monkeypatch.setattr(weak, "crop_params", lambda *a, **k: seen.append((a, crop_params(*a, **k))) or seen[-1][1])
    weak(x, generator=gen(19), boxes=boxes)
    (_, h, w), crop = seen[0]
    assert (h, w) == (64, 64)
    assert kept_fraction(crop, boxes.float() / 2).min() >= 0.5 - 1e-6


def test_bad_boxes_are_refused():
    with pytest.raises(ValueError, match="boxes"):
        WeakAugment(8)(torch.zeros(2, 3, 8, 8), generator=gen(), boxes=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="box_keep"):
        WeakConfig(box_keep=1.5)
