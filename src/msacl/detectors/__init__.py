"""Anomaly detectors behind one interface (see ``base``); importing this package registers all of them.

Registered names: padim, patchcore, igd, fanogan, msssim_ae, dae, panda, ocgan, cavga.
"""

# imported to register igd, fanogan, msssim_ae, dae, cavga, ocgan and panda
from msacl.detectors import autoencoder, cavga, fanogan, igd, ocgan, panda  # noqa: F401
from msacl.detectors.base import REGISTRY, Detector, batches, build_detector, register
from msacl.detectors.padim import Padim
from msacl.detectors.patchcore import PatchCore

__all__ = ["REGISTRY", "Detector", "Padim", "PatchCore", "batches", "build_detector", "register"]
