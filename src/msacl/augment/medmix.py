"""MedMix: class n has n synthetic lesions cut from other normal images (MSACL Sec. 3.2, Fig. 3).

MSACL: MedMix "constructs abnormal lesions by cutting and pasting (from and to normal images) small and
visually deformed patches [...] colour jittering, Gaussian noise and non-linear intensity
transformations", with |A| = 4 distributions A_n holding n in {0, ..., 3} lesions.

Each lesion here is:

1. a box whose side (square root of its area) and aspect ratio are drawn from ``size`` and ``aspect``;
2. filled from the same-sized region of a source image (another normal image), taken inside that
   image's field of view;
3. deformed: colour jitter (random order, contrast around the lesion's own mean), a random monotonic
   cubic Bezier curve on its intensity (Models Genesis' non-linear transform, applied to the luma with
   the colour scaled along), a shading ramp across it (a raised growth lit from one side), Gaussian noise;
4. blended through an irregular soft-edged alpha mask: a rotated ellipse inscribed in the box whose
   radius is modulated by low-frequency harmonics, with a smoothstep edge;
5. pasted at a random place where the whole box lies inside the target's eroded field of view (pixels
   whose channel-max exceeds ``fov_threshold``), at least ``margin`` pixels from the other lesions, so the
   n lesions are n separate regions (random candidates first; if all miss, every position is searched).

The paper gives no sizes or strengths; the defaults below were chosen by looking at previews
(``msacl augment-preview``) of colonoscopy patches.

Fallbacks, when no such place exists (a tiny or absent field of view, or lesions too large to fit
apart): the lesion is shrunk to half its side and placed again; if that still fails, it is placed with
its centre inside the field of view, then anywhere apart from the other lesions, then anywhere. The
level each lesion reached is returned in ``extras["placement"]`` (0 = as intended, see
``placement.LEVEL_*``; -1 for lesions the image does not have). Source regions fall back the same way
(without shrinking).

``extras`` also holds each lesion's soft alpha ``lesion_alpha`` (B, K, H, W) and its box in the image
and in the source, ``boxes`` and ``source_boxes`` (B, K, 4) as (top, left, height, width), -1 where absent.
The pre-training methods pass ``boxes`` to the weak views (``WeakAugment(..., boxes=)``), whose crops then
keep at least half of every lesion's box, so that a view of class n still shows n lesions.
"""

from __future__ import annotations

import math

import torch

from msacl.augment import functional as AF
from msacl.augment.base import StrongBase, StrongOutput
from msacl.augment.placement import LEVEL_INSIDE, Boxes, place_boxes

HARMONICS = (2, 3, 4)  # low angular frequencies of the lesion outline: lobed, never spiky


def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0, 1)
    return t * t * (3 - 2 * t)


class MedMix(StrongBase):
    """MedMix strong augmentation: class n in {0, ..., max_lesions} pastes n synthetic lesions.

    >>> g = torch.Generator().manual_seed(0)
    >>> out = MedMix()(torch.rand(4, 3, 64, 64), torch.arange(4), generator=g)
    >>> out.images.shape, out.masks.shape, out.extras["lesion_alpha"].shape
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 1, 64, 64]), torch.Size([4, 3, 64, 64]))

    Args:
        max_lesions: largest number of lesions (``num_classes = max_lesions + 1``; MSACL uses 3).
        size: range of a lesion's side (square root of its box area) as a fraction of the shorter side.
        aspect: range of the box aspect ratio (width / height), drawn log-uniformly.
        brightness, contrast, saturation: colour-jitter strengths (factors in [1 - s, 1 + s]).
        hue: hue-shift range [-hue, hue] in turns.
        noise_std: range of the Gaussian noise sigma added to the lesion.
        curve_p: probability of the Bezier intensity curve.
        curve_strength: range of the mix between the identity (0) and the Bezier curve (1).
        invert_p: probability that the curve is decreasing (inverts the lesion's intensities).
        relief: range of a linear shading across the lesion (a light from one side on a raised
            growth): intensities are scaled by 1 + relief * s with s in [-1, 1] along a random direction.
        irregularity: total amplitude of the outline harmonics (0 = ellipse); at most 0.9.
        edge: range of the soft edge's width as a fraction of the lesion radius.
        opacity: range of the lesion's peak alpha.
        fov_threshold: a pixel belongs to the field of view when its max over channels exceeds this.
        fov_erode: erosion of the field of view, as a fraction of the shorter side (at least 1 pixel).
        margin: minimum gap in pixels between lesions.
        tries: candidate positions per lesion.
    """

    name = "medmix"

    def __init__(
        self,
        max_lesions: int = 3,
        size: tuple[float, float] = (0.12, 0.35),
        aspect: tuple[float, float] = (0.5, 2.0),
        brightness: float = 0.3,
        contrast: float = 0.3,
        saturation: float = 0.2,
        hue: float = 0.03,
        noise_std: tuple[float, float] = (0.0, 0.04),
        curve_p: float = 1.0,
        curve_strength: tuple[float, float] = (0.15, 0.6),
        invert_p: float = 0.0,
        relief: tuple[float, float] = (0.0, 0.3),
        irregularity: float = 0.35,
        edge: tuple[float, float] = (0.25, 0.6),
        opacity: tuple[float, float] = (0.85, 1.0),
        fov_threshold: float = 0.08,
        fov_erode: float = 0.02,
        margin: int = 2,
        tries: int = 32,
    ):
        if max_lesions < 1:
            raise ValueError(f"max_lesions must be at least 1, got {max_lesions}")
        checks = {
            "size": (size, 0, 1), "edge": (edge, 0, 1), "opacity": (opacity, 0, 1), "noise_std": (noise_std, 0, 1),
            "aspect": (aspect, 0, math.inf), "curve_strength": (curve_strength, 0, 1), "relief": (relief, 0, 1),
        }
        for name, (r, lo, hi) in checks.items():
            if len(r) != 2 or not lo <= r[0] <= r[1] <= hi or (name in ("size", "edge", "aspect") and r[0] <= 0):
                raise ValueError(f"{name} must be a range (low, high) with {lo} < low <= high <= {hi}, got {r}")
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation),
                        ("curve_p", curve_p), ("invert_p", invert_p)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {hue}")
        if not 0 <= irregularity <= 0.9:
            raise ValueError(f"irregularity must lie in [0, 0.9], got {irregularity}")
        self.max_lesions = int(max_lesions)
        self.num_classes = self.max_lesions + 1
        self.class_names = tuple(f"{n} lesion{'s' if n != 1 else ''}" for n in range(self.num_classes))
        self.size, self.aspect = tuple(size), tuple(aspect)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.noise_std, self.curve_p, self.invert_p = tuple(noise_std), curve_p, invert_p
        self.curve_strength, self.relief = tuple(curve_strength), tuple(relief)
        self.irregularity, self.edge, self.opacity = irregularity, tuple(edge), tuple(opacity)
        self.fov_threshold, self.fov_erode = fov_threshold, fov_erode
        self.margin, self.tries = int(margin), int(tries)

    def __repr__(self) -> str:
        return f"MedMix(max_lesions={self.max_lesions}, size={self.size}, aspect={self.aspect})"

    def field_of_view(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels a lesion may cover. Shape: (B, C, H, W) -> (B, 1, H, W) bool."""
        erode = max(1, round(self.fov_erode * min(x.shape[2:])))
        return AF.fov_mask(x, threshold=self.fov_threshold, erode=erode)

    def _apply(self, x, labels, *, generator, sources):
        b, c, h, w = x.shape
        dev = x.device
        if sources is None:
            sources = x.roll(1, dims=0)
        allowed_t = AF.integral_image(self.field_of_view(x))
        allowed_s = AF.integral_image(self.field_of_view(sources))
        k = self.max_lesions
        out = x.clone()
        alphas = torch.zeros(b, k, h, w, dtype=x.dtype, device=dev)
        levels = torch.full((b, k), -1, dtype=torch.long, device=dev)
        boxes = torch.full((b, k, 4), -1, dtype=torch.long, device=dev)
        src_boxes = torch.full((b, k, 4), -1, dtype=torch.long, device=dev)
        placed: list[Boxes] = []
        # Where host syncs are avoided (GPUs, ``AF.avoid_syncs``), every image gets each lesion, made invisible
        # where the image has fewer, in a window of the largest box the settings allow: the same lesions, but
        # the noise is drawn at that window's size, so the random stream is not the CPU path's.
        static = AF.avoid_syncs(x)
        for j in range(k):
            # Every draw is made for the whole batch, so the random stream does not depend on the labels.
            active = labels > j
            box, src_top, src_left = self._place(b, (h, w), allowed_t, allowed_s, placed, active, generator)
            placed.append(box)
            shape = self._shape_params(b, generator, dev)
            look = self._look_params(b, generator, dev)
            # Lesions are drawn in a window the size of the batch's largest box, not over the whole image.
            ph, pw = self.max_box(h, w) if static else (int(box.height.max()), int(box.width.max()))
            noise = AF.normal((b, c, ph, pw), generator=generator, device=dev).to(x.dtype)
            corners = (torch.stack((box.top, box.left, box.height, box.width), 1),
                       torch.stack((src_top, src_left, box.height, box.width), 1))
            if static:
                idx = torch.arange(b, device=dev)
                levels[:, j] = torch.where(active, box.level, levels[:, j])
                boxes[:, j] = torch.where(active.unsqueeze(1), corners[0], boxes[:, j])
                src_boxes[:, j] = torch.where(active.unsqueeze(1), corners[1], src_boxes[:, j])
            else:
                idx = active.nonzero().squeeze(1)
                levels[idx, j] = box.level[idx]
                boxes[idx, j] = corners[0][idx]
                src_boxes[idx, j] = corners[1][idx]
                if idx.numel() == 0:
                    continue
            top, left = box.top[idx], box.left[idx]
            win_t, win_l = top.clamp(max=h - ph), left.clamp(max=w - pw)  # window inside the image, box inside it
            alpha, shade = self._alpha(box, shape, idx, win_t, win_l, (ph, pw))  # (b', 1, ph, pw) each
            if static:
                alpha = alpha * active.view(-1, 1, 1, 1).to(alpha.dtype)  # no lesion j where the image has < j+1
            patch = AF.crop_windows(sources, src_top[idx] - (top - win_t), src_left[idx] - (left - win_l), ph, pw,
                                    batch_index=idx)
            patch = self._deform(patch, alpha, shade, {n: v[idx] for n, v in look.items()}, noise[idx])
            target = AF.crop_windows(out, win_t, win_l, ph, pw, batch_index=idx)
            blended = torch.where(alpha > 0, target * (1 - alpha) + patch * alpha, target)
            AF.paste_windows(out, blended, win_t, win_l, batch_index=idx)
            AF.paste_windows(alphas[:, j:j + 1], alpha, win_t, win_l, batch_index=idx)
        masks = (alphas > 0).any(dim=1, keepdim=True).to(x.dtype)
        extras = {"lesion_alpha": alphas, "placement": levels, "boxes": boxes, "source_boxes": src_boxes}
        return StrongOutput(out.clamp_(0, 1), labels, masks, extras)

    def max_box(self, h: int, w: int) -> tuple[int, int]:
        """Height and width no lesion box of an (h, w) image exceeds (see ``_place``), one pixel to spare."""
        side = self.size[1] * min(h, w)
        return (min(h, max(3, math.ceil(side / math.sqrt(self.aspect[0])) + 1)),
                min(w, max(3, math.ceil(side * math.sqrt(self.aspect[1])) + 1)))

    def _place(self, b, hw, allowed_t, allowed_s, placed, active, generator):
        h, w = hw
        dev = active.device
        side = min(h, w) * AF.uniform(b, *self.size, generator=generator, device=dev)
        aspect = AF.log_uniform(b, *self.aspect, generator=generator, device=dev)
        bh = (side / aspect.sqrt()).round().long().clamp_(3, h)
        bw = (side * aspect.sqrt()).round().long().clamp_(3, w)
        top, left, level = place_boxes(bh, bw, image_size=hw, allowed=allowed_t, avoid=placed, margin=self.margin,
                                       generator=generator, tries=self.tries)
        # Second chance at half the side for lesions that did not fit as drawn.
        sh, sw = (bh // 2).clamp_(min=3), (bw // 2).clamp_(min=3)
        t2, l2, lv2 = place_boxes(sh, sw, image_size=hw, allowed=allowed_t, avoid=placed, margin=self.margin,
                                  generator=generator, tries=self.tries)
        better = (level > LEVEL_INSIDE) & (lv2 < level)
        top, left, level = torch.where(better, t2, top), torch.where(better, l2, left), torch.where(better, lv2, level)
        bh, bw = torch.where(better, sh, bh), torch.where(better, sw, bw)
        src_top, src_left, _ = place_boxes(bh, bw, image_size=hw, allowed=allowed_s, avoid=[], margin=0,
                                           generator=generator, tries=self.tries)
        return Boxes(top, left, bh, bw, active, level), src_top, src_left

    def _shape_params(self, b, generator, dev):
        n = len(HARMONICS)
        amp = AF.uniform((b, n), 0, 1, generator=generator, device=dev)
        amp = amp / amp.sum(1, keepdim=True).clamp_min(1e-6) * self.irregularity * AF.uniform(
            (b, 1), 0.3, 1.0, generator=generator, device=dev)
        return {
            "amp": amp,
            "phase": AF.uniform((b, n), 0, 2 * math.pi, generator=generator, device=dev),
            "angle": AF.uniform(b, 0, math.pi, generator=generator, device=dev),
            "edge": AF.uniform(b, *self.edge, generator=generator, device=dev),
            "opacity": AF.uniform(b, *self.opacity, generator=generator, device=dev),
            "light": AF.uniform(b, 0, 2 * math.pi, generator=generator, device=dev),
        }

    def _alpha(self, box: Boxes, shape: dict[str, torch.Tensor], idx: torch.Tensor, win_top: torch.Tensor,
               win_left: torch.Tensor, win: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft mask of lesion ``box`` of the images ``idx`` (zero outside the box) and its shading ramp,
        over windows of size ``win`` whose top-left corners are ``win_top``, ``win_left``.

        Shape: (b', 1, ph, pw), (b', 1, ph, pw).
        """
        ys, xs = AF.pixel_grid(*win, device=idx.device)

        def v(t: torch.Tensor) -> torch.Tensor:
            return t[idx].to(torch.float32).view(-1, 1, 1)

        bh, bw = v(box.height), v(box.width)
        # Box-normalised coordinates: |u|, |q| < 1 exactly on the box's pixel centres.
        u = (xs + win_left.view(-1, 1, 1) - (v(box.left) + (bw - 1) / 2)) / (bw / 2)
        q = (ys + win_top.view(-1, 1, 1) - (v(box.top) + (bh - 1) / 2)) / (bh / 2)
        ca, sa = torch.cos(v(shape["angle"])), torch.sin(v(shape["angle"]))
        u, q = u * ca + q * sa, q * ca - u * sa
        rho = torch.sqrt(u * u + q * q)
        # cos(f theta + phase) from cos/sin of theta by the angle-addition recurrence (no atan2, no cos).
        safe = rho.clamp_min(1e-6)
        c1, s1 = torch.where(rho > 0, u / safe, 1.0), q / safe
        amp, phase = shape["amp"][idx], shape["phase"][idx]
        wobble = torch.zeros_like(rho)
        ck, sk = c1, s1
        for f in range(2, max(HARMONICS) + 1):
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
            if f in HARMONICS:
                i = HARMONICS.index(f)
                cp, sp = torch.cos(phase[:, i]).view(-1, 1, 1), torch.sin(phase[:, i]).view(-1, 1, 1)
                wobble += amp[:, i].view(-1, 1, 1) * (ck * cp - sk * sp)
        radius = (1 + wobble) / (1 + amp.sum(1).view(-1, 1, 1))  # <= 1: the outline stays inside the box
        alpha = _smoothstep((radius - rho) / (v(shape["edge"]) * radius)) * v(shape["opacity"])
        shade = (u * torch.cos(v(shape["light"])) + q * torch.sin(v(shape["light"]))).clamp(-1, 1)
        return alpha.unsqueeze(1), shade.unsqueeze(1)

    def _look_params(self, b, generator, dev):
        def factor(s):
            return AF.uniform(b, 1 - s, 1 + s, generator=generator, device=dev)

        p = AF.uniform((b, 2, 2), 0, 1, generator=generator, device=dev)
        return {
            "brightness": factor(self.brightness), "contrast": factor(self.contrast),
            "saturation": factor(self.saturation),
            "hue": AF.uniform(b, -self.hue, self.hue, generator=generator, device=dev),
            "order": AF.random_order(b, 4, generator=generator, device=dev),
            "p1": p[:, 0], "p2": p[:, 1],
            "curve": AF.uniform(b, 0, 1, generator=generator, device=dev) < self.curve_p,
            "invert": AF.uniform(b, 0, 1, generator=generator, device=dev) < self.invert_p,
            "strength": AF.uniform(b, *self.curve_strength, generator=generator, device=dev),
            "relief": AF.uniform(b, *self.relief, generator=generator, device=dev),
            "noise": AF.uniform(b, *self.noise_std, generator=generator, device=dev),
        }

    def _deform(self, patch: torch.Tensor, alpha: torch.Tensor, shade: torch.Tensor, look: dict[str, torch.Tensor],
                noise: torch.Tensor) -> torch.Tensor:
        """Colour jitter, Bezier intensity curve, relief shading and Gaussian noise.

        Shape: patch (b', C, H, W), alpha and shade (b', 1, H, W), noise (b', C, H, W) -> (b', C, H, W).
        """
        weight = alpha.sum(dim=(1, 2, 3)).clamp_min(1e-6)
        mean = (AF.grey(patch) * alpha).sum(dim=(1, 2, 3)) / weight
        patch = AF.color_jitter(patch, brightness=look["brightness"], contrast=look["contrast"],
                                saturation=look["saturation"], hue=look["hue"], order=look["order"],
                                contrast_mean=mean)
        xs, ys = AF.bezier_curves(look["p1"].to(patch.dtype), look["p2"].to(patch.dtype))
        ys = torch.where(look["invert"].view(-1, 1), ys.flip(1), ys)
        strength = (look["strength"] * look["curve"]).view(-1, 1, 1, 1).to(patch.dtype)
        # The curve acts on intensity (luma) and colour follows by ratio, so hue survives: a per-channel
        # curve would push reddish tissue towards grey or white.
        luma = AF.grey(patch)
        target = luma + strength * (AF.apply_curve_lut(luma, xs, ys) - luma)
        patch = patch * (target + 1e-3) / (luma + 1e-3)
        patch = patch * (1 + look["relief"].view(-1, 1, 1, 1).to(patch.dtype) * shade)
        return (patch + look["noise"].view(-1, 1, 1, 1).to(patch.dtype) * noise).clamp_(0, 1)
