"""The pretext heads learn from the backbone, and the position patches stay out of the BatchNorm statistics."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from msacl.pretrain import PretrainConfig, build_method, step_losses
from msacl.pretrain import losses as L
from msacl.pretrain import methods as M
from msacl.pretrain.methods import Batch, running_stats_frozen


def _msacl(size: int = 32, **loss):
    cfg = PretrainConfig(method="msacl", batch_size=4)
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    method = build_method(cfg, image_size=size)
    return method, method.build_network()


def _backbone_grad_norm(net) -> float:
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in net.encoder.parameters() if p.grad is not None))


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _batch(method, n: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return method.make_batch(torch.rand(n, 3, 32, 32, generator=g), generator=g)


# ---------------------------------------------------------------- f_beta and f_gamma read h (issue 11, part 1)


@pytest.mark.parametrize("term", ["aug", "pos"])
def test_pretext_losses_reach_the_backbone_when_z_is_constant(term):
    method, net = _msacl()
    last = net.projection.net[-1]
    with torch.no_grad():
        last.weight.zero_()  # z = the bias for every input: Eq. 3 and Eq. 5 can no longer move the backbone
    batch = _batch(method)
    out = net(batch.views, batch.patches)
    assert torch.equal(out["z"], out["z"][:1].expand_as(out["z"]))
    loss = (L.augmentation_loss(out["logits"], batch.labels) if term == "aug"
            else L.patch_position_loss(out["pos_logits"], batch.pos_labels))
    loss.backward()
    assert _backbone_grad_norm(net) > 1e-6


# ---------------------------------------------------------------- a disconnected classifier is caught (part 6a)


def _classifier_reads_the_image(net, batch: Batch) -> tuple[bool, bool]:
    """(the logits differ between images, l_aug sends a gradient into the backbone)."""
    net.zero_grad(set_to_none=True)
    out = net(batch.views, batch.patches)
    varies = bool(out["logits"].std(0).max() > 1e-4)
    L.augmentation_loss(out["logits"], batch.labels).backward()
    return varies, _backbone_grad_norm(net) > 1e-6


def test_a_disconnected_classifier_fails_the_check():
    method, net = _msacl()
    batch = _batch(method)
    assert _classifier_reads_the_image(net, batch) == (True, True)
    head = net.classifier
    # The check must fail for a classifier that reads a constant, and for one behind a detach.
    net.classifier = _Lambda(lambda h: head(torch.zeros_like(h)))
    assert _classifier_reads_the_image(net, batch) == (False, False)
    net.classifier = _Lambda(lambda h: head(h.detach()))
    assert _classifier_reads_the_image(net, batch) == (True, False)


# ---------------------------------------------------------------- l_aug is learned on separable lesions (part 6b)


def _lesion_batch(b: int, g: torch.Generator, size: int = 32) -> Batch:
    """b plain backgrounds, each under the 4 classes (n = 0..3 red 6 x 6 squares in distinct cells of a 3 x 3
    grid), two randomly flipped views of each: separable by construction."""
    base = 0.3 + 0.2 * torch.rand(b, 3, 1, 1, generator=g) + 0.05 * torch.rand(b, 3, size, size, generator=g)
    red = torch.tensor([0.9, 0.2, 0.2]).view(3, 1, 1)
    cell = size // 3
    views = []
    for i in range(b):
        for n in range(4):
            img = base[i].clone()
            for c in torch.randperm(9, generator=g)[:n].tolist():
                top, left = (c // 3) * cell + 1, (c % 3) * cell + 1
                img[:, top:top + 6, left:left + 6] = red
            views += [img.flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else img for _ in range(2)]
    labels = torch.arange(4).repeat_interleave(2).repeat(b)
    return Batch(views=torch.stack(views), labels=labels, num_classes=4, num_views=2)


def test_aug_loss_falls_below_chance_on_separable_lesions():
    # The burn-in objective (l_aug + Eq. 5 with c_n = 0) with the papers' optimiser (SGD, lr 0.01, momentum 0.9)
    # on a random ResNet-18; l_pos is left out (w_pos = 0) only to keep the test fast.
    method, net = _msacl(w_pos=0.0)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    aug = []
    for _ in range(20):
        terms = step_losses(None, net, method, _lesion_batch(4, g), None, burnin=True)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        aug.append(terms["aug"].item())
    assert set(terms) == {"con", "aug", "loss"}
    last = sum(aug[-5:]) / 5
    assert last < 0.9 * math.log(4), aug


# ---------------------------------------------------------------- BatchNorm statistics of full-size views only (part 4)


@pytest.mark.parametrize("kind", ["bn", "bn-cumulative", "sync"])
def test_running_stats_frozen_uses_batch_statistics_and_restores_everything(kind):
    bn = nn.SyncBatchNorm(3) if kind == "sync" else nn.BatchNorm2d(3, momentum=None if kind == "bn-cumulative" else 0.1)
    bn.train()
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    bn(x)  # some history
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with running_stats_frozen(bn):
        y = bn(x * 2 + 5)
        assert bn.momentum == 0.0
    ref = nn.functional.batch_norm(x * 2 + 5, None, None, bn.weight, bn.bias, training=True)
    torch.testing.assert_close(y, ref)
    assert bn.momentum == (None if kind == "bn-cumulative" else 0.1)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    bn(x * 3)  # outside, the statistics move again
    assert not torch.equal(bn.running_var, before["running_var"])


def _ema_check(freeze: bool, steps: int = 4) -> tuple[float, float]:
    """Train a few steps and compare every BatchNorm layer's running variance with what it must be: the
    exponential average (the layer's momentum) of the unbiased batch variances of its inputs on the full-size
    views, recorded by hooks. Returns the worst relative error against that reference and against the one
    that also averages the position patches' batches (what BatchNorm holds without the freeze)."""
    method, net = _msacl()
    bns = [m for m in net.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    views_ref = [m.running_var.clone() for m in bns]
    all_ref = [m.running_var.clone() for m in bns]
    n_views = []

    def hook(i):
        m = bns[i].momentum  # the layer's own (0.1); inside running_stats_frozen it reads 0

        def record(mod, inp):
            var = inp[0].detach().transpose(0, 1).flatten(1).var(1)  # per channel, unbiased as BatchNorm's
            all_ref[i] = (1 - m) * all_ref[i] + m * var
            if inp[0].shape[0] == n_views[0]:
                views_ref[i] = (1 - m) * views_ref[i] + m * var
        return record

    hooks = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(bns)]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    net.train()
    patch = M.running_stats_frozen
    try:
        if not freeze:
            M.running_stats_frozen = lambda module: contextlib.nullcontext()
        for _ in range(steps):
            batch = method.make_batch(torch.rand(2, 3, 32, 32, generator=g), generator=g)
            n_views[:] = [batch.views.shape[0]]
            assert batch.patches.shape[0] != n_views[0]
            terms = step_losses(None, net, method, batch, torch.zeros(4, 128))
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
    finally:
        M.running_stats_frozen = patch
        for h in hooks:
            h.remove()

    def worst(ref):
        return max(float(((m.running_var - r).abs() / r).max()) for m, r in zip(bns, ref, strict=True))

    return worst(views_ref), worst(all_ref)


def test_running_variances_are_those_of_the_full_size_views():
    views_err, mixed_err = _ema_check(freeze=True)
    assert views_err < 0.1, views_err  # in fact equal to float precision
    assert mixed_err > 0.1, mixed_err  # the patches' statistics differ: the comparison is meaningful
    # Without the freeze, the same check fails.
    views_err, mixed_err = _ema_check(freeze=False)
    assert views_err > 0.1 and mixed_err < 0.1, (views_err, mixed_err)
