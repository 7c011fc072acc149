"""Encoders, heads and decoders shared by ``pretrain`` and ``detectors``."""

from msacl.models.encoders import ARCHS, Encoder, EncoderLoadError, build_backbone, build_encoder

__all__ = ["ARCHS", "Encoder", "EncoderLoadError", "build_backbone", "build_encoder"]
