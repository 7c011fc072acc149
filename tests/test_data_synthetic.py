"""The synthetic set: deterministic, labelled synthetic, masks matching lesions, detectable but not trivially."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

from msacl.data import load_split, write_synthetic
from msacl.errors import DataError

SMALL = dict(size=32, n_train=4, n_test_normal=3, n_test_abnormal=3)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = _digest(write_synthetic(tmp_path / "a", **SMALL))
    b = _digest(write_synthetic(tmp_path / "b", **SMALL))
    c = _digest(write_synthetic(tmp_path / "c", seed=1, **SMALL))
    assert a == b
    assert len(a) == 4 + 3 + 3 + 3 + 1
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) == 13


def test_layout_counts_and_readme(synthetic_data):
    counts = {d: len(list((synthetic_data / d).iterdir()))
              for d in ("train/normal", "test/normal", "test/abnormal", "test/masks")}
    assert counts == {"train/normal": 64, "test/normal": 24, "test/abnormal": 24, "test/masks": 24}
    readme = (synthetic_data / "README.txt").read_text()
    assert readme.startswith("SYNTHETIC DATA - not medical images") and "seed=0" in readme
    assert Image.open(next((synthetic_data / "train/normal").iterdir())).size == (64, 64)


def test_masks_are_binary_blobs_of_plausible_size(synthetic_data):
    fractions = []
    for p in sorted((synthetic_data / "test/masks").iterdir()):
        m = np.asarray(Image.open(p))
        assert set(np.unique(m)) == {0, 255}
        fractions.append((m > 0).mean())
    assert 0.01 < min(fractions) and max(fractions) < 0.12


def test_lesion_changes_the_image_inside_its_mask(synthetic_data):
    test = load_split(synthetic_data, "test")
    ab = test.labels == 1
    x, m = test.images[ab], test.masks[ab]
    ring = (F.max_pool2d(m, 9, 1, 4) - m).clamp(0, 1)  # tissue just around each lesion
    inside = (x * m).sum((2, 3)) / m.sum((2, 3))
    around = (x * ring).sum((2, 3)) / ring.sum((2, 3))
    # lesions are darker than the tissue around them in (nearly) every image, by a moderate amount
    diff = (around - inside).mean(1)
    assert (diff > 0).float().mean() >= 0.9 and 0.02 < diff.median() < 0.3


def test_grey_variant_and_refusing_to_overwrite(tmp_path):
    root = write_synthetic(tmp_path / "g", channels=1, **SMALL)
    assert Image.open(root / "train/normal/normal_0000.png").mode == "L"
    write_synthetic(root, **SMALL)  # a synthetic folder is replaced
    assert Image.open(root / "train/normal/normal_0000.png").mode == "RGB"
    other = tmp_path / "mine"
    other.mkdir()
    (other / "scan.png").write_bytes(b"x")
    with pytest.raises(DataError, match="exists and is not a synthetic data set"):
        write_synthetic(other, **SMALL)
    with pytest.raises(DataError, match="channels must be 1 or 3"):
        write_synthetic(tmp_path / "x", channels=2)


def test_detectable_but_not_trivially(tmp_path):
    """A per-pixel Gaussian on raw pixels (no learning) separates the classes clearly but far from perfectly."""
    root = write_synthetic(tmp_path / "s", n_train=64, n_test_normal=60, n_test_abnormal=60)
    train, test = load_split(root, "train"), load_split(root, "test")
    mu, sd = train.images.mean(0), train.images.std(0) + 1e-3
    z = F.avg_pool2d(((test.images - mu) / sd).pow(2).sum(1, keepdim=True), 5, 1, 2)
    image_auroc = roc_auc_score(test.labels.numpy(), z.flatten(1).amax(1).numpy())
    pixel_auroc = roc_auc_score(test.masks.flatten().numpy() > 0.5, z.flatten().numpy())
    # an image-level statistic (mean and spread of colour) alone does not give the lesions away
    feats = torch.cat([train.images.mean((2, 3)), train.images.std((2, 3))], 1)
    tfeats = torch.cat([test.images.mean((2, 3)), test.images.std((2, 3))], 1)
    colour_auroc = roc_auc_score(test.labels.numpy(), torch.cdist(tfeats, feats).min(1).values.numpy())
    assert 0.6 < image_auroc < 0.9, image_auroc
    assert 0.75 < pixel_auroc < 0.95, pixel_auroc
    assert colour_auroc < 0.65, colour_auroc
