"""Pre-training losses against naive references written directly from the papers' equations."""

from __future__ import annotations

import math

import pytest
import torch

from msacl.pretrain import losses as L

# ---------------------------------------------------------------- naive references (python loops)


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = math.sqrt(sum(float(a) ** 2 for a in v))
    return v / n if n > 0 else v * 0


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def ref_centres(z, labels, k):
    """MSACL Eq. 2: c_n = mean of f(a(x)) over the samples of class n."""
    out = []
    for n in range(k):
        rows = [z[i] for i in range(len(labels)) if int(labels[i]) == n]
        out.append(sum(rows) / len(rows))
    return torch.stack(out)


def ref_centring(z, labels, centres, squared=False):
    """MSACL Eq. 3: mean over samples of ||f(a(x)) - c_n||_2 (or its square)."""
    total = 0.0
    for i in range(z.shape[0]):
        d = math.sqrt(sum((float(z[i, j]) - float(centres[labels[i], j])) ** 2 for j in range(z.shape[1])))
        total += d * d if squared else d
    return total / z.shape[0]


def ref_msacl(z, centres, tau, alpha):
    """MSACL Eq. 4-7 with a loop over every anchor (i, n, l) and every other sample (j, m, k)."""
    b, kk, v, _ = z.shape
    zt = {(i, n, l): _unit(z[i, n, l] - centres[n]) for i in range(b) for n in range(kk) for l in range(v)}
    total, count = 0.0, 0
    for (i, n, l), a in zt.items():
        num = math.exp(_dot(a, zt[(i, n, (l + 1) % 2)]) / tau)
        den = 0.0
        for (j, m, k), other in zt.items():
            if (j, m, k) == (i, n, l):  # I(x_j^(m,k) != x^(n,l))
                continue
            kappa = 1 / (alpha * tau) if n == m else 1 / tau  # Eq. 7
            den += math.exp(kappa * _dot(a, other))
        total += -math.log(num / den)
        count += 1
    return total / count


def ref_ccd(z, tau, negatives="same", normalize=True):
    """CCD Eq. 2: positive = other weak view; negatives = other images under the same strong a_j."""
    b, kk, v, _ = z.shape
    f = {(i, j, l): (_unit(z[i, j, l]) if normalize else z[i, j, l])
         for i in range(b) for j in range(kk) for l in range(v)}
    total, count = 0.0, 0
    for (i, j, l), a in f.items():
        pos = math.exp(_dot(a, f[(i, j, 1 - l)]) / tau)
        if negatives == "same":
            neg = sum(math.exp(_dot(a, f[(ii, j, 1 - l)]) / tau) for ii in range(b) if ii != i)
        else:
            neg = sum(math.exp(_dot(a, other) / tau) for key, other in f.items()
                      if key not in ((i, j, l), (i, j, 1 - l)))
        total += -math.log(pos / (pos + neg))
        count += 1
    return total / count


def ref_nt_xent(z, tau):
    """SimCLR Eq. 1: l(i, j) = -log exp(sim(i,j)/tau) / sum_{k != i} exp(sim(i,k)/tau), averaged."""
    b = z.shape[0]
    flat = [_unit(z[i, v]) for i in range(b) for v in range(2)]
    total = 0.0
    for s in range(2 * b):
        p = s + 1 if s % 2 == 0 else s - 1
        den = sum(math.exp(_dot(flat[s], flat[t]) / tau) for t in range(2 * b) if t != s)
        total += -math.log(math.exp(_dot(flat[s], flat[p]) / tau) / den)
    return total / (2 * b)


def ref_ce(logits, labels):
    """-log softmax(logits)[label], averaged (MSACL Eq. 8 / 9)."""
    total = 0.0
    for i in range(logits.shape[0]):
        row = [float(x) for x in logits[i]]
        total += -(row[int(labels[i])] - math.log(sum(math.exp(x) for x in row)))
    return total / logits.shape[0]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- agreement with the references


@pytest.mark.parametrize("tau,alpha", [(0.2, 2.0), (0.5, 1.0), (0.1, 3.0)])
def test_msacl_contrastive_matches_loop_reference(tau, alpha):
    z, c = _rand(3, 4, 2, 6), _rand(4, 6, seed=1)
    got = L.msacl_contrastive_loss(z, c, tau=tau, alpha=alpha)
    assert torch.allclose(got, torch.tensor(ref_msacl(z, c, tau, alpha), dtype=got.dtype), atol=1e-9)


@pytest.mark.parametrize("negatives", ["same", "all"])
@pytest.mark.parametrize("normalize", [True, False])
def test_ccd_contrastive_matches_loop_reference(negatives, normalize):
    z = _rand(4, 3, 2, 5) * (1.0 if normalize else 0.3)
    got = L.ccd_contrastive_loss(z, tau=0.2, negatives=negatives, normalize=normalize)
    want = ref_ccd(z, 0.2, negatives, normalize)
    assert torch.allclose(got, torch.tensor(want, dtype=got.dtype), atol=1e-9)


def test_nt_xent_matches_loop_reference():
    z = _rand(5, 2, 7)
    got = L.nt_xent_loss(z, tau=0.5)
    assert torch.allclose(got, torch.tensor(ref_nt_xent(z, 0.5), dtype=got.dtype), atol=1e-9)


@pytest.mark.parametrize("squared", [False, True])
def test_centring_and_centres_match_loop_reference(squared):
    z, labels = _rand(12, 5), torch.tensor([0, 1, 2, 3] * 3)
    c = L.class_centres(z, labels, 4)
    assert torch.allclose(c, ref_centres(z, labels, 4))
    got = L.multi_centring_loss(z, labels, c, squared=squared)
    assert torch.allclose(got, torch.tensor(ref_centring(z, labels, c, squared), dtype=got.dtype))


def test_classification_terms_match_loop_reference():
    logits, labels = _rand(9, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3])
    want = torch.tensor(ref_ce(logits, labels), dtype=logits.dtype)
    assert torch.allclose(L.augmentation_loss(logits, labels), want)
    pos_logits, pos_labels = _rand(6, 8, seed=3), torch.tensor([0, 7, 3, 4, 5, 1])
    assert torch.allclose(L.patch_position_loss(pos_logits, pos_labels),
                          torch.tensor(ref_ce(pos_logits, pos_labels), dtype=logits.dtype))


def test_weighted_total_is_eq1():
    terms = {"ctr": torch.tensor(1.0), "con": torch.tensor(2.0), "aug": torch.tensor(3.0)}
    assert float(L.weighted_total(terms, {"ctr": 1, "con": 1, "aug": 1})) == 6.0
    assert float(L.weighted_total(terms, {"ctr": 0.5, "con": 0, "aug": 2})) == 6.5
    with pytest.raises(KeyError, match="aug"):
        L.weighted_total(terms, {"ctr": 1, "con": 1})


# ---------------------------------------------------------------- closed forms


def test_msacl_closed_form_two_orthogonal_classes():
    # One image, two classes; both views of class 0 at e1, of class 1 at e2 (after centring).
    # Anchor (0, 0): numerator exp(1/tau); denominator exp(1/(alpha tau)) [its positive] + 2 x exp(0).
    tau, alpha = 0.2, 2.0
    z = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    z[0, 0, :, 0] = 5.0
    z[0, 1, :, 1] = 3.0
    expected = -1 / tau + math.log(math.exp(1 / (alpha * tau)) + 2)
    got = L.msacl_contrastive_loss(z, torch.zeros(2, 3, dtype=torch.float64), tau=tau, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert got.item() < 0  # with alpha > 1 the numerator can exceed its own denominator term


def test_features_equal_to_centres():
    z = _rand(2, 4, 2, 6)
    c = z.mean(dim=(0, 2))
    z = c.view(1, 4, 1, 6).expand(2, 4, 2, 6).clone().requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(2).repeat(2)
    ctr = L.multi_centring_loss(z.reshape(-1, 6), labels, c)
    con = L.msacl_contrastive_loss(z, c)
    assert ctr.item() == pytest.approx(0.0, abs=1e-9)
    # every centred feature is 0, so every similarity is 0: -log(1 / (S - 1)) with S = 16 samples
    assert con.item() == pytest.approx(math.log(15), rel=1e-9)
    (ctr + con).backward()
    assert torch.isfinite(z.grad).all()


def test_aligned_views_closed_forms():
    tau, b = 0.2, 3
    # orthonormal, perfectly aligned views: each positive has similarity 1, every negative 0
    z = torch.eye(b * 2, dtype=torch.float64).view(b, 2, 1, b * 2)[:, :, 0].unsqueeze(2).expand(b, 2, 2, b * 2)
    same = -1 / tau + math.log(math.exp(1 / tau) + (b - 1))
    assert L.ccd_contrastive_loss(z, tau=tau).item() == pytest.approx(same, rel=1e-12)
    every = -1 / tau + math.log(math.exp(1 / tau) + (b * 2 * 2 - 2))
    assert L.ccd_contrastive_loss(z, tau=tau, negatives="all").item() == pytest.approx(every, rel=1e-12)
    assert L.nt_xent_loss(z[:, 0], tau=tau).item() == pytest.approx(
        -1 / tau + math.log(math.exp(1 / tau) + (2 * b - 2)), rel=1e-12)


def test_alpha_one_without_centres_is_ntxent_over_all_samples():
    z = _rand(3, 4, 2, 6)
    a = L.msacl_contrastive_loss(z, torch.zeros(4, 6, dtype=torch.float64), tau=0.3, alpha=1.0)
    b = L.ccd_contrastive_loss(z, tau=0.3, negatives="all")
    assert torch.allclose(a, b)
    assert not torch.allclose(a, L.msacl_contrastive_loss(z, torch.zeros(4, 6, dtype=torch.float64), tau=0.3))


def test_centring_loss_is_not_squared_by_default():
    z, c = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    assert L.multi_centring_loss(z, torch.tensor([0]), c).item() == pytest.approx(5.0)
    assert L.multi_centring_loss(z, torch.tensor([0]), c, squared=True).item() == pytest.approx(25.0)


# ---------------------------------------------------------------- invariances, gradients, errors


def test_batch_permutation_invariance():
    z, c = _rand(5, 4, 2, 6), _rand(4, 6, seed=2)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(L.msacl_contrastive_loss(z, c), L.msacl_contrastive_loss(z[perm], c))
    assert torch.allclose(L.ccd_contrastive_loss(z), L.ccd_contrastive_loss(z[perm]))
    assert torch.allclose(L.nt_xent_loss(z[:, 0]), L.nt_xent_loss(z[perm, 0]))
    # relabelling the classes (and their centres) changes nothing either
    cp = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(L.msacl_contrastive_loss(z, c), L.msacl_contrastive_loss(z[:, cp], c[cp]))
    # swapping the two weak views of every sample changes nothing
    assert torch.allclose(L.msacl_contrastive_loss(z, c), L.msacl_contrastive_loss(z.flip(2), c))


def test_every_loss_has_finite_gradients():
    z = _rand(3, 4, 2, 6).requires_grad_(True)
    c = _rand(4, 6, seed=5)
    logits = _rand(24, 4).requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(2).repeat(3)
    total = (L.msacl_contrastive_loss(z, c) + L.multi_centring_loss(z.reshape(-1, 6), labels, c)
             + L.ccd_contrastive_loss(z) + L.nt_xent_loss(z[:, 0]) + L.augmentation_loss(logits, labels))
    total.backward()
    for t in (z, logits):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(B, K, V, D\)"):
        L.msacl_contrastive_loss(torch.randn(4, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError, match="two weak views"):
        L.msacl_contrastive_loss(torch.randn(2, 4, 3, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError, match="negatives"):
        L.ccd_contrastive_loss(torch.randn(2, 4, 2, 8), negatives="other")
    with pytest.raises(ValueError, match=r"\(B, 2, D\)"):
        L.nt_xent_loss(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="class"):
        L.class_centres(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_model_overfits_one_batch(seed):
    # A linear "encoder" on fixed inputs must be able to drive Eq. 1 (ctr + con + aug) down markedly.
    g = torch.Generator().manual_seed(seed)
    b, k, d_in, d = 4, 4, 32, 16
    x = torch.randn(b, k, 2, d_in, generator=g)
    x = x + 2.0 * torch.randn(1, k, 1, d_in, generator=g)  # each class shifts the inputs differently
    with torch.random.fork_rng(devices=[]):  # layer init draws from the global generator: pin it
        torch.manual_seed(seed)
        enc = torch.nn.Linear(d_in, d)
        head = torch.nn.Linear(d, k)
    labels = torch.arange(k).repeat_interleave(2).repeat(b)
    with torch.no_grad():
        c = L.class_centres(enc(x).reshape(-1, d), labels, k)
    opt = torch.optim.SGD([*enc.parameters(), *head.parameters()], lr=0.05, momentum=0.9)

    def loss():
        z = enc(x)
        return (L.multi_centring_loss(z.reshape(-1, d), labels, c) + L.msacl_contrastive_loss(z, c)
                + L.augmentation_loss(head(z.reshape(-1, d)), labels))

    first = loss().item()
    for _ in range(150):
        opt.zero_grad()
        loss_value = loss()
        loss_value.backward()
        opt.step()
    last = loss().item()
    assert last < first - 2.0, (first, last)


def test_loss_functions_follow_the_input_dtype():
    z = torch.randn(2, 4, 2, 8, dtype=torch.float64)
    assert L.msacl_contrastive_loss(z, torch.zeros(4, 8, dtype=torch.float64)).dtype == torch.float64
    assert L.ccd_contrastive_loss(z.float()).dtype == torch.float32
