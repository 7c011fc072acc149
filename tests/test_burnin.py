"""MSACL's burn-in before the class centres are frozen (issue 11, part 2; src/msacl/pretrain/centres.py)."""

from __future__ import annotations

import json

import pytest
import torch

from msacl.data.types import ImageSet
from msacl.pretrain import PretrainConfig, build_method, load_checkpoint, make_fabric, pretrain
from msacl.pretrain import losses as L
from msacl.pretrain.centres import burnin_cap


def _images(n: int = 8, size: int = 32) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.rand(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long),
                    [f"img{i}.png" for i in range(n)])


def _cfg(epochs: int, **loss) -> PretrainConfig:
    cfg = PretrainConfig(method="msacl", epochs=epochs, batch_size=4, checkpoint_every=1, tsne=False)
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return cfg


def _run(tmp_path, cfg):
    run = tmp_path / "run"
    pretrain(cfg, _images(), run, fabric=make_fabric("cpu"), progress=False)
    log = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]
    return log, json.loads((run / "centres.json").read_text()), load_checkpoint(run / "checkpoint.pt", cfg)


def test_burnin_cap():
    assert burnin_cap(PretrainConfig(epochs=200)) == 10
    assert burnin_cap(PretrainConfig(epochs=15)) == 3
    assert burnin_cap(PretrainConfig(epochs=3)) == 0
    assert burnin_cap(_cfg(20, burnin=False)) == 0
    assert burnin_cap(_cfg(20, burnin_max_epochs=5)) == 5
    assert burnin_cap(_cfg(20, burnin_max_epochs=50)) == 19  # one epoch of Eq. 1 in full at least


def test_burnin_terms_are_eq1_without_centring_and_with_zero_centres():
    method = build_method(PretrainConfig(method="msacl"), image_size=32)
    net = method.build_network()
    g = torch.Generator().manual_seed(0)
    batch = method.make_batch(torch.rand(2, 3, 32, 32, generator=g), generator=g)
    out = net(batch.views, batch.patches)
    terms = method.losses(out, batch, None, burnin=True)
    assert set(terms) == {"con", "aug", "pos", "loss"}
    zb = out["z"].view(2, 4, 2, -1)
    torch.testing.assert_close(terms["con"], L.msacl_contrastive_loss(zb, torch.zeros(4, zb.shape[-1])))
    torch.testing.assert_close(terms["loss"], terms["con"] + terms["aug"] + terms["pos"])
    with pytest.raises(ValueError, match="centres"):
        method.losses(out, batch, None)
    ccd = build_method(PretrainConfig(method="ccd"), image_size=32)
    with pytest.raises(ValueError, match="no burn-in"):
        ccd.losses(out, batch, None, burnin=True)


def test_burnin_that_never_separates_stops_at_its_cap(tmp_path, capsys):
    # An unreachable criterion (ratio 1e6): the burn-in runs its cap of 1 epoch, then the centres freeze.
    log, sep, ckpt = _run(tmp_path, _cfg(3, burnin_max_epochs=1, burnin_ratio=1e6))
    assert [r["phase"] for r in log] == ["burnin"] * 2 + ["main"] * 4
    assert all("ctr" not in r for r in log[:2]) and all("ctr" in r for r in log[2:])
    assert [(c["epoch"], c["global_step"], c["phase"], c["separated"]) for c in sep["checks"]] == [
        (0, 0, "burnin", False), (1, 2, "burnin", False)]
    assert sep["phase"] == "main" and sep["frozen"] and sep["frozen_at_epoch"] == 1
    assert sep["burnin"] == {"enabled": True, "max_epochs": 1, "ratio": 1e6, "epochs": 1, "reached": False}
    assert "cap of 1 epoch" in sep["warning"] and sep["warning"] in capsys.readouterr().err
    assert sep["min_distance"] == sep["checks"][-1]["min_distance"]
    assert ckpt["phase"] == "main" and ckpt["centres"].shape == (4, 128) and len(ckpt["centre_checks"]) == 2


@pytest.mark.parametrize("burnin", [True, False])
def test_separated_centres_or_no_burnin_freeze_at_once(tmp_path, burnin):
    # ratio 1e-9: the initial encoder already meets the criterion (as ImageNet weights should).
    ratio = 1e-9 if burnin else 1e6
    log, sep, _ = _run(tmp_path, _cfg(2, burnin=burnin, burnin_max_epochs=1, burnin_ratio=ratio))
    assert [r["phase"] for r in log] == ["main"] * 4
    assert len(sep["checks"]) == 1 and sep["frozen_at_epoch"] == 0 and sep["burnin"]["epochs"] == 0
    if burnin:
        assert sep["burnin"]["reached"] is True and sep["warning"] is None
    else:
        assert sep["burnin"]["reached"] is None and sep["checks"][0]["phase"] == "main"
        assert "No burn-in ran (loss.burnin=false)" in sep["warning"]


def test_the_warning_suggests_imagenet_only_to_runs_that_did_not_start_there():
    import torch

    from msacl.pretrain.centres import centre_separation

    close = torch.tensor([[0.0, 0.0], [0.01, 0.0]])
    assert "--init imagenet" in centre_separation(close, 1.0)["warning"]
    warning = centre_separation(close, 1.0, from_imagenet=True)["warning"]
    assert warning and "--init imagenet" not in warning and "barely separates" in warning
