"""PaDiM: streaming statistics, Eq. 12, the channel subset, persistence and detection on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from msacl.detectors import Padim, batches, build_detector
from msacl.detectors.common import gaussian_blur, gaussian_kernel1d
from msacl.detectors.padim import gaussian_from_sums, mahalanobis_map
from msacl.errors import DataError, MsaclError
from msacl.runs import make_generator


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=make_generator(seed))


@pytest.fixture(scope="module")
def fitted() -> tuple[Padim, torch.Tensor]:
    x = _images(7)
    det = Padim(image_size=32, n_features=20)
    det.fit(batches(x, 3), generator=make_generator(1))  # uneven batches: 3 + 3 + 1
    return det, x


def test_streaming_statistics_equal_naive_two_pass(fitted):
    det, x = fitted
    # Naive: one image at a time, then numpy's two-pass mean and unbiased covariance per position.
    emb = np.stack([det.embed(x[i : i + 1])[0].double().numpy() for i in range(x.shape[0])])  # (N, d, P)
    n, d, p = emb.shape
    assert det.mean.shape == (d, p) and det.inv_cov.shape == (p, d, d) and int(det.n_train) == n
    np.testing.assert_allclose(det.mean.numpy(), emb.mean(0), rtol=1e-5, atol=1e-5)
    for pos in (0, 5, p // 2, p - 1):
        cov = np.cov(emb[:, :, pos], rowvar=False) + 0.01 * np.eye(d)
        # inv_cov is float32: compare its product with the naive covariance to the identity.
        prod = det.inv_cov[pos].double().numpy() @ cov
        np.testing.assert_allclose(prod, np.eye(d), atol=2e-3)


def test_gaussian_from_sums_matches_numpy_cov():
    g = make_generator(0)
    e = torch.randn(9, 4, 6, generator=g, dtype=torch.float64) * 3 + 5  # (N, D, P), far from zero mean
    total = e.sum(0)
    outer = torch.einsum("ndp,nep->pde", e, e)
    mean, cov = gaussian_from_sums(9, total, outer, eps=0.01)
    for pos in range(6):
        ref = np.cov(e[:, :, pos].numpy(), rowvar=False) + 0.01 * np.eye(4)
        np.testing.assert_allclose(cov[pos].numpy(), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mean.numpy(), e.mean(0).numpy(), rtol=1e-12)
    with pytest.raises(DataError, match="at least 2"):
        gaussian_from_sums(1, total, outer)


def _naive_eq12(emb: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    b, _, p = emb.shape
    out = torch.zeros(b, p, dtype=torch.float64)
    for i in range(b):
        for w in range(p):
            delta = (emb[i, :, w] - mean[:, w]).double()
            out[i, w] = torch.sqrt(delta @ inv_cov[w].double() @ delta)
    return out


def test_mahalanobis_map_equals_naive_loop():
    g = make_generator(0)
    emb = torch.randn(3, 5, 7, generator=g)
    mean = torch.randn(5, 7, generator=g)
    a = torch.randn(7, 5, 5, generator=g)
    inv_cov = a @ a.transpose(1, 2) + 0.1 * torch.eye(5)  # symmetric positive definite
    got = mahalanobis_map(emb, mean, inv_cov)
    assert got.shape == (3, 7)
    torch.testing.assert_close(got.double(), _naive_eq12(emb, mean, inv_cov), rtol=1e-4, atol=1e-5)
    # Closed form: with the identity it is the Euclidean distance; at the mean it is zero.
    eye = torch.eye(5).expand(7, 5, 5).contiguous()
    torch.testing.assert_close(mahalanobis_map(emb, mean, eye), (emb - mean).norm(dim=1))
    assert mahalanobis_map(mean.unsqueeze(0), mean, inv_cov).abs().max() == 0


def test_patch_scores_of_fitted_detector_follow_eq12(fitted):
    det, x = fitted
    test = _images(2, seed=5)
    got = det.patch_scores(test)
    assert got.shape == (2, 8, 8)
    ref = _naive_eq12(det.embed(test), det.mean, det.inv_cov).view(2, 8, 8)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_predict_shapes_score_is_map_max_and_resizes(fitted):
    det, _ = fitted
    test = _images(3, seed=6)
    scores, maps = det.predict(test)
    assert scores.shape == (3,) and maps.shape == (3, 1, 32, 32)
    torch.testing.assert_close(scores, maps.flatten(1).amax(1))
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    # Another input size is resized to the fitted one; maps come back at the input's size.
    s2, m2 = det.predict(torch.nn.functional.interpolate(test, size=48, mode="bilinear"))
    assert m2.shape == (3, 1, 48, 48) and s2.shape == (3,)
    # Grey images are accepted (the encoder repeats the channel).
    assert det.predict(test[:, :1])[1].shape == (3, 1, 32, 32)


def test_channel_index_reproducible_from_seed():
    x = _images(4)

    def index(seed: int, **kw) -> torch.Tensor:
        return Padim(image_size=32, **kw).fit(batches(x, 4), generator=make_generator(seed)).channel_index

    a, b, c = index(3), index(3), index(4)
    assert a.shape == (100,)  # the paper's d for ResNet-18
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, a.unique()) and int(a.max()) < 64 + 128 + 256
    assert index(3, n_features=448).tolist() == list(range(448))  # all channels
    with pytest.raises(MsaclError, match="n_features"):
        Padim(image_size=32, n_features=449)


def test_errors_are_clear():
    det = build_detector("padim", image_size=32, n_features=10)
    with pytest.raises(MsaclError, match="before fit"):
        det.predict(_images(1))
    with pytest.raises(DataError, match="at least 2"):
        det.fit(batches(_images(1), 4))
    with pytest.raises(MsaclError, match="feature tap 'layer9'"):
        Padim(strides=["layer9"])
    with pytest.raises(MsaclError, match="feature tap 2: choose strides"):
        Padim(strides=[2, 4])
    with pytest.raises(DataError, match=r"padim.fit: expected images of shape \(B, 1\|3, H, W\), got \(2, 32, 32\)"):
        det.fit([torch.rand(2, 32, 32)])
    # the same check as the trained detectors': values outside [0, 1] (e.g. ImageNet-normalised) are refused
    with pytest.raises(DataError, match=r"padim.fit: pixel values must be finite and in \[0, 1\]"):
        det.fit([torch.rand(2, 3, 32, 32) * 2 - 1])


@pytest.mark.parametrize("bad, got", [(float("nan"), "min nan, max nan"), (float("inf"), "min 0.5, max inf"),
                                      (-float("inf"), "min -inf, max 0.5")])
def test_non_finite_pixels_are_refused_naming_them(bad, got):
    det = build_detector("padim", image_size=32, n_features=10)
    x = torch.full((2, 3, 32, 32), 0.5)
    x[1, 0, 5, 7] = bad
    with pytest.raises(DataError, match=rf"^padim.fit: pixel values must be finite and in \[0, 1\] \(got {got}\)$"):
        det.fit([x])


def test_fit_streams_from_a_generator_without_length():
    x = _images(5)
    det = Padim(image_size=32, n_features=10)
    det.fit((x[i : i + 2] for i in range(0, 5, 2)), generator=make_generator(0))
    ref = Padim(image_size=32, n_features=10)
    ref.encoder.load_state_dict(det.encoder.state_dict())  # random init draws from the global RNG
    ref.fit(batches(x, 5), generator=make_generator(0))
    torch.testing.assert_close(det.mean, ref.mean)
    torch.testing.assert_close(det.inv_cov, ref.inv_cov, rtol=1e-3, atol=1e-3)


def test_gaussian_blur_matches_scipy():
    g = make_generator(0)
    m = torch.rand(2, 1, 40, 36, generator=g, dtype=torch.float64)
    ref = np.stack([scipy.ndimage.gaussian_filter(m[i, 0].numpy(), 4.0, mode="mirror", truncate=4.0)
                    for i in range(2)])
    np.testing.assert_allclose(gaussian_blur(m, 4.0)[:, 0].numpy(), ref, rtol=1e-10, atol=1e-12)
    assert gaussian_kernel1d(4.0).numel() == 33  # 2 * int(4 * sigma + 0.5) + 1, as anomalib
    small = torch.rand(1, 1, 8, 8, generator=g)  # smaller than the kernel: replicate padding, still shape-true
    assert gaussian_blur(small, 4.0).shape == small.shape
    assert torch.equal(gaussian_blur(small, 0.0), small)


def test_detects_synthetic_lesions(synthetic_data):
    from sklearn.metrics import roc_auc_score

    from msacl.data import load_split

    train = load_split(synthetic_data, "train", image_size=64)
    test = load_split(synthetic_data, "test", image_size=64)
    torch.manual_seed(0)  # the encoder's random init
    det = Padim(image_size=64).fit(batches(train.images, 16), generator=make_generator(0))
    scores, maps = det.predict(test.images)
    auroc = roc_auc_score(test.labels.numpy(), scores.numpy())
    assert auroc > 0.75, auroc  # chance is 0.5 (sd ~0.08 for 24 + 24 images)
    if test.masks is not None:
        ab = test.labels == 1
        pix = roc_auc_score(test.masks[ab].flatten().numpy() > 0.5, maps[ab].flatten().numpy())
        assert pix > 0.7, pix


@pytest.mark.parametrize("hw,size", [((8, 8), (32, 32)), ((7, 5), (28, 20)), ((4, 4), (16, 16))])
def test_image_map_operator_equals_upsample_then_blur(hw, size):
    from msacl.detectors.common import to_image_map

    m = torch.rand(3, *hw, generator=make_generator(0), dtype=torch.float64)
    up = torch.nn.functional.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(to_image_map(m, size, 4.0), gaussian_blur(up, 4.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(to_image_map(m, size, 0.0), up, rtol=1e-12, atol=1e-12)


def test_folded_features_match_the_encoder_and_follow_new_weights():
    from msacl.models import FrozenFeatures
    from msacl.models.encoders import build_encoder

    torch.manual_seed(0)
    enc = build_encoder().eval()
    # Non-trivial BatchNorm statistics, so folding has something to fold.
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    frozen = FrozenFeatures()
    x = _images(2, size=64)
    strides = (4, 8, 16)
    with torch.no_grad():
        ref = enc.features(x, strides)
    got = frozen(enc, x, strides)
    for k in strides:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        enc.backbone.conv1.weight.mul_(2.0)  # new weights (as load_state_dict writes them): the copy follows
        ref2 = enc.features(x, strides)
    torch.testing.assert_close(frozen(enc, x, strides)[16], ref2[16], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ref2[16], ref[16])


@pytest.mark.parametrize("size", [32, 44])  # layer grids 8/4/2 (integer factors) and 11/6/3 (interpolated)
def test_embed_equals_concatenated_upsampled_layers(size):
    # Reference: concatenate all layer maps at layer-1 resolution (nearest), then take the channel subset.
    det = Padim(image_size=size, n_features=40)
    det.fit(batches(_images(4, size), 2), generator=make_generator(3))
    x = _images(3, size, seed=9)
    feats = det.encoder.eval().features(x, det.strides)
    grid = feats[4].shape[-2:]
    full = torch.cat([torch.nn.functional.interpolate(feats[s], size=grid, mode="nearest") for s in det.strides], 1)
    ref = full[:, det.channel_index].flatten(2)
    torch.testing.assert_close(det.embed(x), ref, rtol=1e-4, atol=1e-4)
