"""Strong families: the shared contract for every family, then each family against a naive reference."""

from __future__ import annotations

import pytest
import scipy.ndimage as ndi
import torch

from msacl.augment import STRONG_FAMILIES, StrongOutput, build_strong
from msacl.augment.geometric import CYCLIC_TILE_PERMUTATIONS, jigsaw_permutations

EIGHT = ndi.generate_binary_structure(2, 2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    low = torch.rand(b, c, 5, 5, generator=gen(seed)) * 0.8 + 0.1
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def components(mask: torch.Tensor) -> int:
    return ndi.label(mask.cpu().numpy() > 0, structure=EIGHT)[1]


# ---------------------------------------------------------------- contract shared by every family


@pytest.mark.parametrize("name", STRONG_FAMILIES)
@pytest.mark.parametrize("c", [1, 3])
def test_family_contract(name, c):
    fam = build_strong(name)
    k = fam.num_classes
    x = images(2 * k, c)
    labels = torch.arange(k).repeat(2)
    out = fam(x, labels, generator=gen(0))
    assert isinstance(out, StrongOutput)
    assert out.images.shape == x.shape and out.images.dtype == x.dtype
    assert out.masks.shape == (2 * k, 1, 32, 32) and out.masks.dtype == x.dtype
    assert torch.equal(out.labels, labels)
    assert out.images.min() >= 0 and out.images.max() <= 1
    # Class 0 is the identity, with an empty mask.
    assert torch.equal(out.images[labels == 0], x[labels == 0])
    assert out.masks[labels == 0].sum() == 0
    # Every other class changes the image.
    for n in range(1, k):
        for i in (labels == n).nonzero().squeeze(1).tolist():
            assert not torch.equal(out.images[i], x[i]), f"{name} class {n} left image {i} unchanged"
    assert len(fam.class_names) == k


@pytest.mark.parametrize("name", STRONG_FAMILIES)
def test_family_is_deterministic_given_the_generator(name):
    fam = build_strong(name)
    x = images(8)
    labels = torch.arange(fam.num_classes).repeat(8)[:8]
    a = fam(x, labels, generator=gen(5))
    b = fam(x, labels, generator=gen(5))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    if name not in ("rotation", "permutation", "jigsaw"):  # the geometric families draw nothing
        c = fam(x, labels, generator=gen(6))
        assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("name", STRONG_FAMILIES)
def test_family_rejects_bad_labels_and_shapes(name):
    fam = build_strong(name)
    x = images(2)
    with pytest.raises(ValueError, match="labels must lie"):
        fam(x, torch.tensor([0, fam.num_classes]), generator=gen())
    with pytest.raises(ValueError, match="labels must be"):
        fam(x, torch.tensor([0]), generator=gen())
    with pytest.raises(ValueError, match="image batch"):
        fam(x[0], torch.tensor([0, 0]), generator=gen())
    with pytest.raises(ValueError, match="sources"):
        fam(x, torch.tensor([0, 1]), generator=gen(), sources=images(2, size=16))


def test_build_strong_names_and_errors():
    assert set(STRONG_FAMILIES) == {"medmix", "rotation", "permutation", "jigsaw", "cutout", "noise", "cutpaste"}
    expected = {"medmix": 4, "rotation": 4, "permutation": 4, "jigsaw": 4, "cutout": 4, "noise": 4, "cutpaste": 3}
    assert {n: build_strong(n).num_classes for n in STRONG_FAMILIES} == expected
    with pytest.raises(ValueError, match="unknown strong augmentation 'mixup'.*medmix"):
        build_strong("mixup")
    with pytest.raises(ValueError, match="'rotation' has no option 'angle'; its options are: none"):
        build_strong("rotation", angle=3)
    with pytest.raises(ValueError, match="no option 'holes'.*max_holes, size, fill, margin"):
        build_strong("cutout", holes=3)
    assert build_strong("medmix", max_lesions=5).num_classes == 6


def test_random_labels_cover_every_class():
    fam = build_strong("medmix")
    lab = fam.random_labels(4000, generator=gen(1))
    counts = torch.bincount(lab, minlength=4)
    assert lab.dtype == torch.int64 and counts.numel() == 4
    assert (counts > 900).all() and (counts < 1100).all()


# ---------------------------------------------------------------- geometric families


def test_rotation_class_k_is_rot90_k_times():
    x = images(8, size=16)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = build_strong("rotation")(x, labels, generator=gen())
    for i, k in enumerate(labels.tolist()):
        assert torch.equal(out.images[i], torch.rot90(x[i], k, dims=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        build_strong("rotation")(torch.rand(1, 3, 8, 6), torch.tensor([1]), generator=gen())


def naive_half_swap(img: torch.Tensor, n: int) -> torch.Tensor:
    _, h, w = img.shape
    if n in (1, 3):
        img = torch.cat([img[:, :, w // 2:], img[:, :, : w // 2]], dim=2)
    if n in (2, 3):
        img = torch.cat([img[:, h // 2:], img[:, : h // 2]], dim=1)
    return img


@pytest.mark.parametrize("hw", [(16, 16), (15, 9)])
def test_permutation_swaps_halves(hw):
    x = torch.rand(8, 3, *hw, generator=gen(2))
    labels = torch.tensor([0, 1, 2, 3, 1, 2, 3, 0])
    out = build_strong("permutation")(x, labels, generator=gen())
    for i, n in enumerate(labels.tolist()):
        assert torch.equal(out.images[i], naive_half_swap(x[i], n))


def naive_jigsaw(img: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
    _, h, w = img.shape
    th, tw = h // 2, w // 2
    tiles = [img[:, r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(2) for c in range(2)]
    new = [tiles[p] for p in perm]
    return torch.cat([torch.cat(new[:2], dim=2), torch.cat(new[2:], dim=2)], dim=1)


def test_jigsaw_moves_tiles_as_its_permutation_table_says():
    fam = build_strong("jigsaw")
    assert fam.permutations == CYCLIC_TILE_PERMUTATIONS
    x = torch.rand(8, 2, 12, 10, generator=gen(3))
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = fam(x, labels, generator=gen())
    for i, n in enumerate(labels.tolist()):
        assert torch.equal(out.images[i], naive_jigsaw(x[i], fam.permutations[n]))
    # One clockwise step: the top-left tile goes to the top-right.
    assert torch.equal(out.images[1, :, :6, 5:], x[1, :, :6, :5])
    with pytest.raises(ValueError, match="even"):
        fam(torch.rand(1, 3, 9, 9), torch.tensor([1]), generator=gen())


def test_jigsaw_permutation_sets():
    every = jigsaw_permutations(24)
    assert len(set(every)) == 24 and every[0] == (0, 1, 2, 3)
    assert jigsaw_permutations(6)[:4] == CYCLIC_TILE_PERMUTATIONS
    assert build_strong("jigsaw", num_classes=10).num_classes == 10
    assert build_strong("jigsaw", permutations=[[0, 1, 2, 3], [3, 2, 1, 0]]).num_classes == 2
    with pytest.raises(ValueError, match="identity"):
        build_strong("jigsaw", permutations=[[1, 0, 2, 3], [0, 1, 2, 3]])
    with pytest.raises(ValueError, match="2..24"):
        build_strong("jigsaw", num_classes=25)


# ---------------------------------------------------------------- cutout, noise, cutpaste


@pytest.mark.parametrize("fill", ["mean", "zero", "noise"])
def test_cutout_makes_n_separate_holes_and_nothing_else(fill):
    fam = build_strong("cutout", fill=fill)
    x = images(16, size=40)
    labels = torch.arange(4).repeat(4)
    out = fam(x, labels, generator=gen(4))
    for i, n in enumerate(labels.tolist()):
        m = out.masks[i, 0] > 0
        assert components(m) == n
        assert torch.equal(out.images[i][:, ~m], x[i][:, ~m])
        if n and fill == "mean":
            mean = x[i].mean(dim=(1, 2))
            torch.testing.assert_close(out.images[i][:, m], mean[:, None].expand(-1, int(m.sum())))
        if n and fill == "zero":
            assert out.images[i][:, m].abs().sum() == 0


def test_noise_classes():
    fam = build_strong("noise", gaussian_std=(0.05, 0.05), speckle_std=(0.2, 0.2), salt_pepper=(0.1, 0.1))
    x = torch.full((4, 3, 64, 64), 0.5)
    out = fam(x, torch.arange(4), generator=gen(5))
    d = out.images - x
    assert d[1].std().item() == pytest.approx(0.05, rel=0.05)  # Gaussian: sigma
    assert d[2].std().item() == pytest.approx(0.2 * 0.5, rel=0.05)  # speckle: sigma * x
    flipped = out.masks[3, 0] > 0
    assert flipped.float().mean().item() == pytest.approx(0.1, abs=0.015)
    vals = out.images[3][:, flipped]
    assert ((vals == 0) | (vals == 1)).all() and (vals == vals[:1]).all()  # all channels alike
    assert torch.equal(out.images[3][:, ~flipped], x[3][:, ~flipped])
    assert out.masks[1].min() == 1 and out.masks[2].min() == 1


def test_cutpaste_changes_only_the_pasted_region():
    fam = build_strong("cutpaste")
    x = images(12, size=64)
    labels = torch.tensor([1, 2] * 6)
    out = fam(x, labels, generator=gen(6))
    for i, n in enumerate(labels.tolist()):
        m = out.masks[i, 0] > 0
        assert torch.equal(out.images[i][:, ~m], x[i][:, ~m])
        frac = m.float().mean().item()
        if n == 1:
            assert 0.01 < frac < 0.17  # 2-15 % of the image, bar rounding
        else:
            assert 0 < m.sum() <= (16 * 25 / 16 + 8)  # a scar of at most 4 x 6.25 px at 64 px, plus rounding
        assert components(m) == 1


def test_cutpaste_takes_patches_from_sources_when_given():
    fam = build_strong("cutpaste", jitter=0.0)
    x = torch.zeros(4, 3, 32, 32)
    src = torch.ones(4, 3, 32, 32) * torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    out = fam(x, torch.tensor([1, 1, 2, 2]), generator=gen(7), sources=src)
    m = out.masks[:, 0] > 0
    torch.testing.assert_close(out.images.permute(1, 0, 2, 3)[:, m],
                               torch.tensor([0.2, 0.4, 0.6]).view(3, 1).expand(3, int(m.sum())))
