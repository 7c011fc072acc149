"""Anomaly detectors behind one interface (see ``base``), each with its typed settings beside its class (the
settings several share in ``options``).

Registered names (``msacl.names.DETECTOR_CLASSES``): padim, patchcore, igd, fanogan, msssim_ae, dae, panda,
ocgan, cavga. The classes are imported on first use, here as in the registry: importing the package, or loading
one saved detector, does not import the other detectors' modules.
"""

from __future__ import annotations

import importlib
from typing import Any

from msacl.detectors.base import REGISTRY, Detector, batches, build_detector, register
from msacl.detectors.options import DetectorOptions, options_for

# exported name -> module that defines it
_LAZY = {
    "Padim": "padim", "PadimOptions": "padim", "PatchCore": "patchcore", "PatchCoreOptions": "patchcore",
    "IGDOptions": "igd", "FAnoGANOptions": "fanogan", "MSSSIMOptions": "autoencoder", "DAEOptions": "autoencoder",
    "PandaOptions": "panda", "OCGANOptions": "ocgan", "CAVGAOptions": "cavga",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"msacl.detectors.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'msacl.detectors' has no attribute {name!r}")


__all__ = ["REGISTRY", "CAVGAOptions", "DAEOptions", "Detector", "DetectorOptions", "FAnoGANOptions", "IGDOptions",
           "MSSSIMOptions", "OCGANOptions", "Padim", "PadimOptions", "PandaOptions", "PatchCore", "PatchCoreOptions",
           "batches", "build_detector", "options_for", "register"]
