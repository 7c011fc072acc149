"""The steps ``msacl fit`` / ``test`` and ``msacl bench`` share (``msacl.detectors.pipeline``)."""

from __future__ import annotations

import pytest
import torch

from msacl.data.types import ImageSet
from msacl.detectors.pipeline import image_size_of, prepare_detector
from msacl.errors import CheckpointError, DataError, MsaclError


def _images(n: int, channels: int, h: int, w: int) -> ImageSet:
    return ImageSet(torch.rand(n, channels, h, w), torch.zeros(n, dtype=torch.long), [f"{i}.png" for i in range(n)])


def test_image_size_is_the_side_of_square_training_images():
    assert image_size_of(torch.zeros(2, 3, 48, 48)) == 48
    with pytest.raises(DataError, match=r"DIR: training images are 32x48; pass --image-size N"):
        image_size_of(torch.zeros(2, 3, 32, 48), "DIR: training images")


def test_prepare_detector_takes_size_and_channels_from_the_images():
    train = _images(2, 1, 32, 32)
    det, loaded = prepare_detector("dae", {"backbone": "tf_efficientnet_lite0", "image_size": 256, "channels": 3},
                                   train, seed=0)
    assert det.config["image_size"] == 32 and det.config["channels"] == 1
    assert loaded == {}
    # The same seed builds the same weights.
    again, _ = prepare_detector("dae", {"backbone": "tf_efficientnet_lite0"}, train, seed=0)
    for (k, a), b in zip(det.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_prepare_detector_names_the_flag_of_bad_encoder_weights(tmp_path):
    train = _images(2, 3, 32, 32)
    flags = {"global": "--encoder", "local": "--encoder-local"}
    with pytest.raises(CheckpointError, match=r"^--encoder: .*encoder weights not found"):
        prepare_detector("padim", {"backbone": "tf_efficientnet_lite0"}, train, seed=0,
                         encoders={"global": tmp_path / "missing.pt"}, flags=flags)
    with pytest.raises(MsaclError, match=r"^--encoder-local: the padim detector has no local encoder"):
        prepare_detector("padim", {"backbone": "tf_efficientnet_lite0"}, train, seed=0,
                         encoders={"local": tmp_path}, flags=flags)
    # Without flags the part is named.
    with pytest.raises(MsaclError, match=r"^local encoder: the padim detector has no local encoder"):
        prepare_detector("padim", {"backbone": "tf_efficientnet_lite0"}, train, seed=0, encoders={"local": tmp_path})
