"""Encoders, heads and decoders shared by ``pretrain`` and ``detectors``."""

from msacl.models.decoders import Critic, Decoder, LatentAutoencoder
from msacl.models.encoders import ARCHS, Encoder, EncoderLoadError, build_backbone, build_encoder
from msacl.models.heads import AugClassifier, PatchPositionHead, ProjectionHead

__all__ = [
    "ARCHS",
    "AugClassifier",
    "Critic",
    "Decoder",
    "Encoder",
    "EncoderLoadError",
    "LatentAutoencoder",
    "PatchPositionHead",
    "ProjectionHead",
    "build_backbone",
    "build_encoder",
]
