"""Pre-training engine: patches, batches, gradients, run directory, checkpoints, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision

from msacl.config import ConfigError
from msacl.data.types import ImageSet
from msacl.errors import CheckpointError, MsaclError
from msacl.pretrain import (
    NonFiniteLossError,
    PretrainConfig,
    build_method,
    centre_separation,
    centres_and_spread,
    load_checkpoint,
    make_fabric,
    pretrain,
)
from msacl.pretrain.checkpoint import run_progress
from msacl.pretrain.engine import initial_network, learning_rate
from msacl.pretrain.patches import NEIGHBOURS, grid_geometry, patch_pairs, random_crops
from msacl.runs import derive_seed, make_generator


def _images(n: int, size: int = 32, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, dtype=torch.long)
    return ImageSet(torch.rand(n, 3, size, size, generator=g), labels, [f"img{i}.png" for i in range(n)])


def _coords(b: int, h: int, w: int) -> torch.Tensor:
    """Images whose channel 0 holds the row and channel 1 the column of each pixel."""
    rows = torch.arange(h).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(w).view(1, 1, w).expand(b, h, w)
    return torch.stack([rows, cols, torch.zeros_like(rows)], 1).float()


def _tiny(method: str, **kw) -> PretrainConfig:
    cfg = PretrainConfig(method=method, epochs=1, batch_size=4, checkpoint_every=1, **kw)
    cfg.tsne = False
    return cfg


# ---------------------------------------------------------------- patches


@pytest.mark.parametrize("size,patch", [(64, None), (256, None), (256, 32), (64, 32), (32, None)])
def test_patch_pairs_are_neighbours_with_gaps(size, patch):
    x = _coords(64, size, size)
    c, n, labels = patch_pairs(x, generator=torch.Generator().manual_seed(1), patch=patch)
    cell, p = grid_geometry(size, size, patch)
    assert c.shape == n.shape == (64, 3, p, p) and labels.shape == (64,)
    assert set(labels.tolist()) == set(range(8))  # 64 draws cover all 8 positions
    for i in range(64):
        (r0, c0), (r1, c1) = (int(c[i, 0, 0, 0]), int(c[i, 1, 0, 0])), (int(n[i, 0, 0, 0]), int(n[i, 1, 0, 0]))
        dr, dc = NEIGHBOURS[int(labels[i])]
        # the neighbour lies in the cell (dr, dc) of the grid centred on the centre patch's cell
        for start0, start1, d in ((r0, r1, dr), (c0, c1, dc)):
            gap = start1 - (start0 + p) if d == 2 else (start0 - (start1 + p) if d == 0 else None)
            if gap is not None:
                assert gap >= 1, "adjacent patches must not touch (Doersch et al. gap)"
            else:
                assert abs(start1 - start0) < cell - p + 1
    assert c.max() < size and n.max() < size


def test_random_crops_copy_the_right_pixels():
    x = _coords(5, 40, 50)
    out = random_crops(x, 16, generator=torch.Generator().manual_seed(0))
    for i in range(5):
        top, left = int(out[i, 0, 0, 0]), int(out[i, 1, 0, 0])
        assert torch.equal(out[i], x[i, :, top:top + 16, left:left + 16])
    with pytest.raises(ValueError, match="cannot crop"):
        random_crops(x, 41, generator=torch.Generator())


# ---------------------------------------------------------------- batches and gradients


def test_msacl_batch_layout_and_identity_class():
    method = build_method(PretrainConfig(method="msacl"), image_size=32)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    k = method.num_classes
    s, labels = method.strong_classes(x, torch.Generator().manual_seed(0))
    assert torch.equal(labels, torch.arange(k).repeat(3))
    assert torch.allclose(s[::k], x), "class 0 of every image must be the image itself"
    assert not torch.allclose(s[1::k], x)
    batch = method.make_batch(x, generator=torch.Generator().manual_seed(0))
    assert batch.views.shape == (3 * k * 2, 3, 32, 32)
    assert torch.equal(batch.labels, torch.arange(k).repeat_interleave(2).repeat(3))
    assert batch.patches.shape[0] == 6 and batch.pos_labels.shape == (3,)
    assert batch.encoder_images == 3 * k * 2 + 6


def test_local_scope_and_rotnet_batches():
    x = torch.rand(2, 3, 64, 64)
    local = build_method(PretrainConfig(method="ccd", scope="local"), image_size=64)
    b = local.make_batch(x, generator=torch.Generator().manual_seed(0))
    assert b.views.shape[-2:] == (32, 32) and b.patches.shape[-1] <= 32
    rot = build_method(PretrainConfig(method="rotnet"), image_size=64)
    b = rot.make_batch(x, generator=torch.Generator().manual_seed(0))
    assert b.views.shape == (8, 3, 64, 64) and b.labels.tolist() == [0, 1, 2, 3] * 2
    assert torch.equal(torch.rot90(b.views[0], 1, dims=(1, 2)), b.views[1])
    with pytest.raises(ValueError, match="local scope"):
        build_method(PretrainConfig(method="ccd", scope="local"), image_size=28)


@pytest.mark.parametrize("name", ["msacl", "ccd", "simclr", "rotnet"])
def test_every_parameter_gets_a_finite_gradient(name):
    torch.manual_seed(0)
    method = build_method(PretrainConfig(method=name), image_size=32)
    net = method.build_network()
    net.encoder.backbone.fc.requires_grad_(False)
    batch = method.make_batch(torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    centres = torch.randn(method.num_classes, 128) if method.uses_centres else None
    terms = method.losses(net(batch.views, batch.patches), batch, centres)
    expected = {"msacl": {"ctr", "con", "aug", "pos"}, "ccd": {"con", "aug", "pos"},
                "simclr": {"con"}, "rotnet": {"aug"}}[name]
    assert set(terms) == expected | {"loss"}
    assert terms["loss"].item() == pytest.approx(sum(terms[k].item() for k in expected), rel=1e-5)
    terms["loss"].backward()
    for pname, p in net.named_parameters():
        if pname.startswith("encoder.backbone.fc."):
            assert p.grad is None
            continue
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


def test_schedule_and_seeds():
    from msacl.pretrain.config import OptimOptions

    opt = OptimOptions(lr=0.1)
    assert learning_rate(opt, 0, 100, 0) == pytest.approx(0.1)
    assert learning_rate(opt, 50, 100, 0) == pytest.approx(0.05)
    assert learning_rate(opt, 99, 100, 0) < 0.001
    assert learning_rate(OptimOptions(lr=0.1, warmup_epochs=1), 4, 100, 10) == pytest.approx(0.05)
    assert learning_rate(OptimOptions(lr=0.1, schedule="constant"), 70, 100, 0) == 0.1
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)


def test_initial_network_is_fixed_by_the_seed_and_freezes_the_classifier():
    cfg = _tiny("simclr")
    method = build_method(cfg, image_size=32)
    rng = torch.get_rng_state()
    a = initial_network(cfg, method)
    assert torch.equal(torch.get_rng_state(), rng), "the caller's random state must not move"
    b = initial_network(cfg, method)
    other = initial_network(_tiny("simclr", seed=cfg.seed + 1), method)
    wa, wb, wo = (n.encoder.backbone.conv1.weight for n in (a, b, other))
    assert torch.equal(wa, wb) and not torch.equal(wa, wo)
    frozen = {name for name, p in a.encoder.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"fc.weight", "fc.bias"}


# ---------------------------------------------------------------- runs


def test_pretrain_writes_a_complete_run(tmp_path):
    train = _images(8)
    test = ImageSet(torch.rand(10, 3, 32, 32), torch.tensor([0] * 5 + [1] * 5), [f"t{i}" for i in range(10)])
    cfg = _tiny("msacl")
    cfg.tsne = True
    enc = pretrain(cfg, train, tmp_path / "run", test=test, fabric=make_fabric("cpu"), progress=False)
    run = tmp_path / "run"
    assert enc == run / "encoder.pt"
    for name in ("config.yaml", "command.txt", "meta.json", "checkpoint.pt", "log.jsonl", "embedding.pt",
                 "centres.json"):
        assert (run / name).is_file(), name
    from msacl.report.tsne import plot_run_tsne

    assert plot_run_tsne(run) == run / "tsne.png" and (run / "tsne.png").is_file()
    sep = json.loads((run / "centres.json").read_text())
    assert 0 < sep["min_distance"] <= sep["max_distance"] and sep["spread_rms"] > 0
    state = torch.load(enc, weights_only=True)
    torchvision.models.resnet18().load_state_dict(state, strict=True)
    lines = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in lines] == [1, 2]
    assert all(math.isfinite(r[k]) for r in lines for k in ("ctr", "con", "aug", "pos", "loss", "images_per_s"))
    ckpt = load_checkpoint(run / "checkpoint.pt", cfg)
    assert ckpt["epoch"] == 1 and ckpt["centres"].shape == (4, 128)
    # the seed fixes the initial weights; fc is not part of f_theta and is written exactly as initialised
    initial = initial_network(cfg, build_method(cfg, image_size=32)).encoder.backbone.state_dict()
    assert torch.equal(state["fc.weight"], initial["fc.weight"]) and torch.equal(state["fc.bias"], initial["fc.bias"])
    assert not torch.equal(state["conv1.weight"], initial["conv1.weight"])


def test_non_finite_loss_stops_with_term_and_step_and_keeps_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = _tiny("simclr")
    pretrain(cfg, _images(8), run, fabric=make_fabric("cpu"), progress=False)
    before = (run / "checkpoint.pt").read_bytes()
    bad = _images(8)
    bad.images[:] = float("nan")
    cfg.epochs = 2
    with pytest.raises(NonFiniteLossError, match=r"'con' is nan at epoch 2, step 1.*checkpoint.*after epoch 1"):
        pretrain(cfg, bad, run, fabric=make_fabric("cpu"), progress=False, resume=True)
    assert (run / "checkpoint.pt").read_bytes() == before
    # Under reduced precision the message also suggests float32.
    with pytest.raises(NonFiniteLossError, match=r"--precision 32-true instead of bf16-mixed"):
        pretrain(cfg, bad, run, fabric=make_fabric("cpu", precision="bf16-mixed"), progress=False, resume=True)


def test_bad_checkpoints_are_named(tmp_path):
    run = tmp_path / "run"
    cfg = _tiny("rotnet")
    with pytest.raises(CheckpointError, match="checkpoint.pt: no checkpoint to resume"):
        pretrain(cfg, _images(8), run, fabric=make_fabric("cpu"), progress=False, resume=True)
    pretrain(cfg, _images(8), run, fabric=make_fabric("cpu"), progress=False)
    load_checkpoint(run / "checkpoint.pt", _tiny("rotnet", strong="rotation"))  # the family it used anyway
    other = _tiny("rotnet")
    other.model.backbone = "resnet34"
    with pytest.raises(CheckpointError,
                       match=r"checkpoint.pt: .*model.backbone: checkpoint 'resnet18', now 'resnet34'"):
        pretrain(other, _images(8), run, fabric=make_fabric("cpu"), progress=False, resume=True)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if "layer4" not in k}
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="checkpoint.pt: weights do not fit this network"):
        pretrain(cfg, _images(8), run, fabric=make_fabric("cpu"), progress=False, resume=True)
    assert run_progress(run) == (cfg.epochs, cfg.epochs)  # read with the tensors mapped, not loaded
    good = (run / "checkpoint.pt").read_bytes()
    for bad in (b"\x00garbage", good[: len(good) // 2]):
        (run / "checkpoint.pt").write_bytes(bad)
        with pytest.raises(CheckpointError, match="checkpoint.pt: not a readable checkpoint"):
            load_checkpoint(run / "checkpoint.pt")
        with pytest.raises(CheckpointError, match="checkpoint.pt: not a readable checkpoint"):
            run_progress(run)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown strong augmentation 'nope'"):
        pretrain(_tiny("ccd", strong="nope"), _images(8), tmp_path, fabric=make_fabric("cpu"), progress=False)
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        pretrain(PretrainConfig(batch_size=1), _images(8), tmp_path, progress=False)
    with pytest.raises(MsaclError, match="only 3 training images for a batch of 4"):
        pretrain(_tiny("simclr"), _images(3), tmp_path, fabric=make_fabric("cpu"), progress=False)


def test_init_loads_local_weights(tmp_path):
    donor = torchvision.models.resnet18()
    torch.save(donor.state_dict(), tmp_path / "imagenet.pt")
    cfg = PretrainConfig(method="simclr")
    cfg.model.init = str(tmp_path / "imagenet.pt")
    net = build_method(cfg, image_size=32).build_network()
    assert torch.equal(net.encoder.backbone.conv1.weight, donor.conv1.weight)


def test_centres_and_spread_equal_a_plain_loop_over_images_and_the_warning_follows_the_ratio():
    cfg = _tiny("msacl")
    method = build_method(cfg, image_size=32)
    net = method.build_network()
    images = _images(6).images
    bn_before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    centres, spread = centres_and_spread(None, net, method, images, batch_size=4, seed=3)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in bn_before.items()), "BatchNorm buffers changed"
    # Reference without the code's own helpers (embed, class_sums, centres_from_sums): the same chunks of
    # images with the same augmentations (the chunk starting at image i draws from derive_seed(seed, i)), in
    # training mode as the loss sees them; backbone, then projection head, then one image at a time into
    # its class's running sum.
    net.train()
    k = method.num_classes
    sums, counts, rows = [torch.zeros(128, dtype=torch.float64) for _ in range(k)], [0] * k, []
    with torch.no_grad():
        for lo in range(0, 6, 4):
            views, lab = method.centre_batch(images[lo:lo + 4], generator=make_generator(derive_seed(3, lo)))
            z = net.projection(net.encoder(views)).double()
            for i in range(z.shape[0]):
                n = int(lab[i])
                sums[n] += z[i]
                counts[n] += 1
                rows.append((n, z[i]))
    assert counts == [6] * k  # every image under every class
    ref = torch.stack([sums[n] / counts[n] for n in range(k)])
    torch.testing.assert_close(centres.double(), ref, rtol=1e-5, atol=1e-5)
    ref_spread = math.sqrt(sum(float(((zi - ref[n]) ** 2).sum()) for n, zi in rows) / len(rows))
    assert spread == pytest.approx(ref_spread, rel=1e-5)
    # The warning: closest pair of centres against ratio x spread.
    c = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    sep = centre_separation(c, 1.0)
    assert (sep["min_distance"], sep["max_distance"], sep["separated"], sep["warning"]) == (5.0, 10.0, True, None)
    sep = centre_separation(c, 21.0, burnin="No burn-in ran.")  # 5 < 0.25 * 21
    assert not sep["separated"] and "barely separates the 3" in sep["warning"]
    assert "No burn-in ran." in sep["warning"] and "--init imagenet" in sep["warning"]
    assert centre_separation(c, 21.0, ratio=0.2)["separated"]  # 5 >= 0.2 * 21
