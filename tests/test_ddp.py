"""2-process DDP on CPU (gloo): the loss, the gradients and the MSACL centres equal the 1-process ones.

BatchNorm normalises with per-rank batch statistics under DDP on CPU (SyncBatchNorm needs a GPU), so the
network is compared in eval mode, where BatchNorm uses its running statistics; that isolates what the
engine itself must get right: the gathering of outputs with gradients, and the all-reduce of centres.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from msacl.pretrain import PretrainConfig, build_method, centres_and_spread, step_losses
from msacl.pretrain.centres import CentreState, check_centres

WORLD = 2
IMAGES = 4  # global batch


def _cfg() -> PretrainConfig:
    return PretrainConfig(method="msacl", batch_size=IMAGES)


def _shard(batch, rank: int):
    """Rank ``rank``'s share of a global batch (image-major layout, patches = centres then neighbours)."""
    per = IMAGES // WORLD
    v = batch.views.shape[0] // IMAGES
    sl = slice(rank * per * v, (rank + 1) * per * v)
    c, n = batch.patches.chunk(2)
    ps = slice(rank * per, (rank + 1) * per)
    return replace(batch, views=batch.views[sl], labels=batch.labels[sl],
                   patches=torch.cat([c[ps], n[ps]]), pos_labels=batch.pos_labels[ps])


def _run(fabric, state, batch, centres, images, reference=None):
    """One training step and a centre computation; with ``reference`` (the 1-process results), the
    differences to it are returned instead, keeping what travels back from a spawned worker small."""
    torch.set_num_threads(1)
    method = build_method(_cfg(), image_size=32)
    net = method.build_network()
    net.load_state_dict(state)
    net.encoder.backbone.fc.requires_grad_(False)
    model = fabric.setup_module(net)
    model.eval()  # see the module docstring
    if fabric.world_size > 1:
        batch = _shard(batch, fabric.global_rank)
    with torch.no_grad():  # the burn-in's terms (no centres), on the same global batch
        burnin = {k: v.item() for k, v in step_losses(fabric, model, method, batch, None, burnin=True).items()}
    terms = step_losses(fabric, model, method, batch, centres)
    fabric.backward(terms["loss"])
    everyone = fabric.all_gather(terms["loss"].detach())
    got_centres, _ = centres_and_spread(fabric, net, method, images,
                                        batch_size=IMAGES // WORLD * fabric.world_size, seed=0)
    # The burn-in's check: the same (all-reduced, broadcast) decision and separation on every rank.
    cfg = _cfg()
    cfg.batch_size = IMAGES // WORLD * fabric.world_size
    state = CentreState.start(cfg, method)
    check_centres(fabric, net, method, images, cfg, state, epoch=0, global_step=0, seed=0)
    losses = {k: v.item() for k, v in terms.items()}
    grads = {k: p.grad.detach().clone() for k, p in net.named_parameters() if p.grad is not None}
    if reference is None:
        return losses, grads, got_centres, burnin, state.checks
    ref_losses, ref_grads, ref_centres, _, _ = reference
    return {
        "ranks_agree": bool(torch.allclose(everyone, everyone.flatten()[0].expand_as(everyone))),
        "losses": losses,
        "burnin": burnin,
        "checks": state.checks,
        "grad_names": sorted(grads) == sorted(ref_grads),
        "grad_err": {k: (grads[k] - ref_grads[k]).abs().max().item() / (ref_grads[k].abs().max().item() + 1e-8)
                     for k in ref_grads if k in grads},
        "centres_err": (got_centres - ref_centres).abs().max().item(),
    }


def test_ddp_loss_gradients_and_centres_equal_single_process():
    from lightning.fabric import Fabric

    torch.manual_seed(0)
    method = build_method(_cfg(), image_size=32)
    state = method.build_network().state_dict()
    g = torch.Generator().manual_seed(0)
    batch = method.make_batch(torch.rand(IMAGES, 3, 32, 32, generator=g), generator=g)
    centres = torch.randn(method.num_classes, 128, generator=g) * 0.1
    images = torch.rand(8, 3, 32, 32, generator=g)

    reference = _run(Fabric(accelerator="cpu", devices=1), state, batch, centres, images)
    ddp = Fabric(accelerator="cpu", devices=WORLD, strategy="ddp_spawn")
    res = ddp.launch(_run, state, batch, centres, images, reference)

    loss1 = reference[0]
    assert res["ranks_agree"]
    assert loss1.keys() == res["losses"].keys() == {"ctr", "con", "aug", "pos", "loss"}
    for k, v in loss1.items():
        assert abs(v - res["losses"][k]) < 1e-5 * max(1.0, abs(v)), (k, v, res["losses"][k])
    assert res["grad_names"] and len(res["grad_err"]) > 50
    worst = max(res["grad_err"], key=res["grad_err"].get)
    assert res["grad_err"][worst] < 1e-4, (worst, res["grad_err"][worst])
    assert res["centres_err"] < 1e-5
    assert reference[3].keys() == res["burnin"].keys() == {"con", "aug", "pos", "loss"}
    for k, v in reference[3].items():
        assert abs(v - res["burnin"][k]) < 1e-5 * max(1.0, abs(v)), (k, v, res["burnin"][k])
    (ref_check,), (check,) = reference[4], res["checks"]
    assert ref_check["separated"] == check["separated"] and ref_check["phase"] == check["phase"]
    for k in ("min_distance", "max_distance", "spread_rms"):
        assert abs(ref_check[k] - check[k]) < 1e-4 * max(1.0, abs(ref_check[k])), (k, ref_check, check)
