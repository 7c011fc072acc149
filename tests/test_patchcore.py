"""PatchCore: greedy coreset vs a naive loop, nearest-neighbour scoring, Eq. 7 re-weighting, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msacl.detectors import PatchCore, batches
from msacl.detectors.patchcore import greedy_coreset, nearest_neighbour, sparse_random_projection
from msacl.errors import MsaclError
from msacl.runs import make_generator


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=make_generator(seed))


def _naive_greedy(z: np.ndarray, n: int, start: int) -> list[int]:
    """k-center greedy straight from its definition: repeatedly add the point farthest from the chosen set."""
    chosen = [start]
    for _ in range(n - 1):
        best, best_d = -1, -1.0
        for j in range(z.shape[0]):
            d = min(float(np.linalg.norm(z[j] - z[c])) for c in chosen)
            if d > best_d:
                best, best_d = j, d
        chosen.append(best)
    return chosen


def test_greedy_coreset_equals_naive_loop_without_projection():
    x = torch.randn(60, 8, generator=make_generator(0), dtype=torch.float64)
    got = greedy_coreset(x, 12, generator=make_generator(5), projection_dim=None)
    start = int(torch.randint(60, (1,), generator=make_generator(5)))
    assert got.tolist() == _naive_greedy(x.numpy(), 12, start)
    assert len(set(got.tolist())) == 12


def test_greedy_coreset_equals_naive_loop_on_projected_features():
    x = torch.randn(80, 64, generator=make_generator(1), dtype=torch.float64)
    got = greedy_coreset(x, 10, generator=make_generator(2), projection_dim=16)
    g = make_generator(2)  # same draws in the same order: projection first, then the start point
    proj = sparse_random_projection(64, 16, generator=g, dtype=torch.float64)
    start = int(torch.randint(80, (1,), generator=g))
    assert got.tolist() == _naive_greedy((x @ proj).numpy(), 10, start)
    # Seeded: same generator seed -> same coreset; the count is clipped to the number of points.
    assert torch.equal(got, greedy_coreset(x, 10, generator=make_generator(2), projection_dim=16))
    assert greedy_coreset(x[:5], 10, generator=make_generator(0)).numel() == 5


def test_sparse_random_projection_is_sparse_and_preserves_norms_on_average():
    d_in, d_out = 400, 128
    p = sparse_random_projection(d_in, d_out, generator=make_generator(0))
    density = (p != 0).float().mean().item()
    assert abs(density - 1 / math.sqrt(d_in)) < 0.01
    vals = p[p != 0].abs().unique()
    assert vals.numel() == 1 and math.isclose(vals.item(), math.sqrt(math.sqrt(d_in) / d_out), rel_tol=1e-6)
    x = torch.randn(500, d_in, generator=make_generator(1))
    ratio = ((x @ p).norm(dim=1) ** 2 / x.norm(dim=1) ** 2).mean().item()
    assert 0.9 < ratio < 1.1


def test_nearest_neighbour_matches_brute_force_in_chunks():
    g = make_generator(0)
    q, bank = torch.randn(37, 6, generator=g), torch.randn(20, 6, generator=g)
    d, i = nearest_neighbour(q, bank, k=3, chunk_size=5)
    full = ((q[:, None] - bank[None]) ** 2).sum(-1).sqrt()
    ref_d, ref_i = full.sort(dim=1)
    torch.testing.assert_close(d, ref_d[:, :3], rtol=1e-4, atol=1e-4)
    assert torch.equal(i, ref_i[:, :3])
    d1, i1 = nearest_neighbour(q, bank, chunk_size=7)
    assert d1.shape == (37, 1) and torch.equal(i1[:, 0], ref_i[:, 0])


@pytest.fixture(scope="module")
def fitted() -> tuple[PatchCore, torch.Tensor]:
    x = _images(6)
    det = PatchCore(image_size=32, coreset_ratio=0.25)
    det.fit(batches(x, 4), generator=make_generator(0))
    return det, x


def test_memory_bank_is_coreset_of_training_patches(fitted):
    det, x = fitted
    e = det.embed(x)  # (6, 384, 4, 4) for 32 px: layer2 grid
    assert e.shape == (6, 128 + 256, 4, 4)
    patches = e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
    assert det.memory_bank.shape == (round(0.25 * patches.shape[0]), 384)
    # Every bank entry is one of the training patches (distance 0 to its nearest patch).
    d, _ = nearest_neighbour(det.memory_bank, patches)
    assert d.max() < 1e-3


def test_patch_scores_are_nearest_distances(fitted):
    det, _ = fitted
    raw = PatchCore(image_size=32, sigma=0.0)
    raw.load_state_dict(det.state_dict())
    test = _images(2, seed=3)
    _, maps = raw.predict(test)
    e = raw.embed(test).permute(0, 2, 3, 1).reshape(-1, 384)
    ref = torch.cdist(e.double(), raw.memory_bank.double()).min(1).values.view(2, 1, 4, 4)
    ref_map = torch.nn.functional.interpolate(ref, size=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps.double(), ref_map, rtol=1e-3, atol=1e-3)


def test_training_images_score_zero_with_full_memory_bank():
    x = _images(3)
    det = PatchCore(image_size=32, coreset_ratio=1.0).fit(batches(x, 3))
    scores, maps = det.predict(x)
    assert maps.shape == (3, 1, 32, 32)
    assert scores.abs().max() < 1e-4
    assert det.predict(_images(2, seed=9))[0].min() > 0.1


def test_reweighting_follows_eq7(fitted):
    det, _ = fitted
    rw = PatchCore(image_size=32, coreset_ratio=0.25, reweight=True, num_neighbors=4)
    rw.load_state_dict(det.state_dict())
    test = _images(2, seed=4)
    s_plain, _ = det.predict(test)
    s_rw, _ = rw.predict(test)
    # Naive Eq. 7 from its definition.
    bank = det.memory_bank.double()
    e = det.embed(test).permute(0, 2, 3, 1).reshape(2, -1, 384).double()
    for b in range(2):
        dist = torch.cdist(e[b], bank)  # (P, M)
        patch = dist.min(1).values
        m_star = e[b, patch.argmax()]
        m_nn = bank[dist[patch.argmax()].argmin()]
        neigh = torch.cdist(m_nn[None], bank)[0].argsort()[:4]
        dn = torch.stack([torch.linalg.norm(m_star - bank[j]) for j in neigh])
        w = 1 - torch.exp(dn[0]) / torch.exp(dn).sum()
        torch.testing.assert_close(float(s_rw[b]), float(w) * float(s_plain[b]), rtol=1e-3, atol=1e-4)


def test_errors_are_clear():
    with pytest.raises(MsaclError, match="before fit"):
        PatchCore(image_size=32).predict(_images(1))
    with pytest.raises(MsaclError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0.0)


def test_detects_synthetic_lesions(synthetic_data):
    from sklearn.metrics import roc_auc_score

    from msacl.data import load_split

    train = load_split(synthetic_data, "train", image_size=64)
    test = load_split(synthetic_data, "test", image_size=64)
    torch.manual_seed(0)  # the encoder's random init
    det = PatchCore(image_size=64).fit(batches(train.images, 16), generator=make_generator(0))
    scores, maps = det.predict(test.images)
    auroc = roc_auc_score(test.labels.numpy(), scores.numpy())
    assert auroc > 0.65, auroc  # chance is 0.5 (sd ~0.08 for 24 + 24 images)
    ab = test.labels == 1
    pix = roc_auc_score(test.masks[ab].flatten().numpy() > 0.5, maps[ab].flatten().numpy())
    assert pix > 0.65, pix
