"""Encoders, their feature taps, heads and decoders shared by ``pretrain`` and ``detectors``."""

from msacl.models.backbones import STRIDES, TORCHVISION, BackboneError, BackboneSpec, backbone_spec
from msacl.models.decoders import Critic, Decoder, LatentAutoencoder
from msacl.models.encoders import IMAGENET, Encoder, EncoderLoadError, build_backbone, build_encoder
from msacl.models.features import FrozenFeatures, feature_grid, fold_batchnorm
from msacl.models.heads import AugClassifier, PatchPositionHead, ProjectionHead
from msacl.models.weights import WeightsUnavailable, imagenet_state

__all__ = [
    "IMAGENET",
    "STRIDES",
    "TORCHVISION",
    "AugClassifier",
    "BackboneError",
    "BackboneSpec",
    "Critic",
    "Decoder",
    "Encoder",
    "EncoderLoadError",
    "FrozenFeatures",
    "LatentAutoencoder",
    "PatchPositionHead",
    "ProjectionHead",
    "WeightsUnavailable",
    "backbone_spec",
    "build_backbone",
    "build_encoder",
    "feature_grid",
    "fold_batchnorm",
    "imagenet_state",
]
