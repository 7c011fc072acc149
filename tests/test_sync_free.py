"""Augmentations without host synchronisations (issue 21): on a GPU every image runs every operation and
``torch.where`` keeps it where it applies, so the host never waits for the device; the values are those of the
CPU path, which indexes the selected images.

"No host sync" is checked on the CPU under ``FakeTensorMode``: tensors there have shapes but no data, so any
operation that would read data on the host (``nonzero``, ``int(t)``, ``if t.any()``) raises.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from msacl.augment import MedMix, WeakAugment
from msacl.augment import functional as AF
from msacl.augment.placement import LEVEL_INSIDE, Boxes, place_boxes
from msacl.augment.registry import build_strong
from msacl.names import STRONG_FAMILIES
from msacl.pretrain import PretrainConfig
from msacl.pretrain.methods import build_method


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fields_of_view(b: int, size: int = 64) -> torch.Tensor:
    """Images with a round field of view of random radius (some too small for a box to fit inside)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = torch.rand(b, generator=gen(1)) * size / 2
    disc = ((ys - size / 2) ** 2 + (xs - size / 2) ** 2).sqrt() < r.view(-1, 1, 1)
    return torch.rand(b, 3, size, size, generator=gen(2)) * 0.5 + 0.4 * disc.unsqueeze(1)


def test_avoid_syncs_follows_the_device_unless_forced():
    x = torch.zeros(1)
    assert not AF.avoid_syncs(x)
    with AF.sync_free():
        assert AF.avoid_syncs(x)
        with AF.sync_free(False):
            assert not AF.avoid_syncs(x)
        assert AF.avoid_syncs(x)
    assert not AF.avoid_syncs(x)
    assert AF.avoid_syncs(torch.zeros(1, device="meta"))


def test_a_host_sync_is_caught_by_the_check():
    with pytest.raises(Exception, match="nonzero|data-dependent|local_scalar"), FakeTensorMode(
            allow_non_fake_inputs=True):
        (torch.rand(4, generator=gen()) > 0.5).nonzero()


@pytest.mark.parametrize("family", STRONG_FAMILIES)
def test_strong_families_do_not_sync(family):
    strong, g = build_strong(family), gen()
    x = fields_of_view(8)
    with AF.sync_free(), FakeTensorMode(allow_non_fake_inputs=True):
        strong(x, strong.random_labels(8, generator=g), generator=g)


@pytest.mark.parametrize("method", ["msacl", "ccd"])
def test_pretraining_batches_do_not_sync(method):
    m = build_method(PretrainConfig(method=method), image_size=64)
    x = fields_of_view(8)
    with AF.sync_free(), FakeTensorMode(allow_non_fake_inputs=True):
        m.make_batch(x, generator=gen())
        m.centre_batch(x, generator=gen())


def test_color_jitter_is_the_same_either_way():
    b, g = 64, gen(3)
    x = torch.rand(b, 3, 16, 16, generator=g)
    keep = torch.rand(4, b, generator=g) < 0.3  # some factors exactly neutral, so an op skips some images
    args = dict(brightness=torch.where(keep[0], 1.0, 0.5 + torch.rand(b, generator=g)),
                contrast=torch.where(keep[1], 1.0, 0.5 + torch.rand(b, generator=g)),
                saturation=torch.where(keep[2], 1.0, 0.5 + torch.rand(b, generator=g)),
                hue=torch.where(keep[3], 0.0, torch.rand(b, generator=g) - 0.5),
                order=AF.random_order(b, 4, generator=g, device="cpu"))
    with AF.sync_free():
        every = AF.color_jitter(x, **args)
    assert torch.equal(every, AF.color_jitter(x, **args))


def test_weak_views_are_the_same_either_way():
    weak = WeakAugment(32)
    x = fields_of_view(32)
    with AF.sync_free():
        every = weak(x, generator=gen(4))
    torch.testing.assert_close(every, weak(x, generator=gen(4)), rtol=0, atol=1e-6)


def test_placement_is_the_same_either_way():
    b, size = 32, 64
    allowed = AF.integral_image(MedMix().field_of_view(fields_of_view(b, size)))
    h = torch.randint(3, 30, (b,), generator=gen(5))
    w = torch.randint(3, 30, (b,), generator=gen(6))
    first = Boxes(torch.full((b,), 20), torch.full((b,), 20), torch.full((b,), 10), torch.full((b,), 10),
                  torch.rand(b, generator=gen(7)) < 0.5, torch.zeros(b, dtype=torch.long))
    kw = dict(image_size=(size, size), allowed=allowed, avoid=[first], margin=2, tries=4)
    with AF.sync_free():
        every = place_boxes(h, w, generator=gen(8), **kw)
    plain = place_boxes(h, w, generator=gen(8), **kw)
    assert (plain[2] > LEVEL_INSIDE).any() and (plain[2] == LEVEL_INSIDE).any()  # both paths of the search ran
    for a, p in zip(every, plain, strict=True):
        assert torch.equal(a, p)


def test_medmix_lesions_are_the_same_either_way():
    # One lesion without noise: the only draw that differs (the noise, drawn at the window's size) is unused.
    mm = MedMix(max_lesions=1, noise_std=(0.0, 0.0))
    x = fields_of_view(32)
    labels = torch.arange(32) % 2
    with AF.sync_free():
        every = mm(x, labels, generator=gen(9))
    plain = mm(x, labels, generator=gen(9))
    torch.testing.assert_close(every.images, plain.images, rtol=0, atol=1e-5)
    assert torch.equal(every.masks, plain.masks)
    for k in ("placement", "boxes", "source_boxes"):
        assert torch.equal(every.extras[k], plain.extras[k]), k
    torch.testing.assert_close(every.extras["lesion_alpha"], plain.extras["lesion_alpha"], rtol=0, atol=1e-6)


def test_medmix_without_syncs_pastes_n_lesions_in_class_n():
    mm = MedMix()
    b = 64
    x = fields_of_view(b)
    labels = torch.arange(b) % mm.num_classes
    with AF.sync_free():
        out = mm(x, labels, generator=gen(10))
    present = out.extras["boxes"][..., 2] > 0
    assert torch.equal(present.sum(1), labels)
    assert torch.equal(out.extras["placement"] >= 0, present)
    alpha = out.extras["lesion_alpha"]
    assert torch.equal(alpha.flatten(2).amax(2) > 0, present)  # a visible lesion exactly where one is listed
    assert torch.equal(out.masks[:, 0] > 0, (alpha > 0).any(1))
    assert torch.equal(out.images[labels == 0], x[labels == 0])
    h, w = mm.max_box(64, 64)
    assert (out.extras["boxes"][..., 2] <= h).all() and (out.extras["boxes"][..., 3] <= w).all()


def test_max_box_bounds_every_drawn_box():
    mm = MedMix(size=(0.3, 0.35), aspect=(0.5, 2.0))
    g, b = gen(11), 4096
    for size in (28, 64, 256):  # the whole image allowed (None), so that no box has to shrink
        box, _, _ = mm._place(b, (size, size), None, None, [], torch.ones(b, dtype=torch.bool), g)
        h, w = mm.max_box(size, size)
        assert int(box.height.max()) <= h and int(box.width.max()) <= w
        assert int(box.height.max()) >= h - 3  # tight: the bound is not the whole image


def test_out_of_range_labels_still_fail_without_syncs():
    mm = MedMix()
    with AF.sync_free(), pytest.raises(RuntimeError, match="labels must lie in 0..3"):
        mm(torch.rand(2, 3, 32, 32), torch.tensor([0, 4]), generator=gen())
    with pytest.raises(ValueError, match="labels must lie in 0..3, got 0..4"):
        mm(torch.rand(2, 3, 32, 32), torch.tensor([0, 4]), generator=gen())
