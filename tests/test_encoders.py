from __future__ import annotations

import pytest
import torch
import torchvision

from msacl.models import EncoderLoadError, build_backbone, build_encoder


def test_feature_shapes_and_channels():
    enc = build_encoder("resnet18").eval()
    feats = enc.features(torch.rand(2, 3, 64, 64), ("layer1", "layer2", "layer3"))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "layer1": (2, 64, 16, 16), "layer2": (2, 128, 8, 8), "layer3": (2, 256, 4, 4)}
    assert [enc.channels(l) for l in ("layer1", "layer2", "layer3")] == [64, 128, 256]
    assert enc(torch.rand(2, 1, 64, 64)).shape == (2, 512)


def test_state_dict_round_trip_is_plain_torchvision(tmp_path):
    b = build_backbone("resnet18")
    torch.save(b.state_dict(), tmp_path / "enc.pt")
    torchvision.models.resnet18().load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))
    b2 = build_backbone("resnet18", init=tmp_path / "enc.pt")
    assert all(torch.equal(b.state_dict()[k], v) for k, v in b2.state_dict().items())


def test_wrong_architecture_and_corrupt_files_are_named(tmp_path):
    torch.save(build_backbone("resnet50").state_dict(), tmp_path / "r50.pt")
    with pytest.raises(EncoderLoadError, match="r50.pt.*do not fit"):
        build_backbone("resnet18", init=tmp_path / "r50.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderLoadError, match="bad.pt.*not a readable"):
        build_backbone("resnet18", init=tmp_path / "bad.pt")
    with pytest.raises(EncoderLoadError, match="not found"):
        build_backbone("resnet18", init=tmp_path / "nope.pt")
