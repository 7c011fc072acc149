"""Anomaly detectors behind one interface (see ``base``), each with its typed settings (see ``options``);
importing this package registers all of them.

Registered names: padim, patchcore, igd, fanogan, msssim_ae, dae, panda, ocgan, cavga.
"""

# imported to register igd, fanogan, msssim_ae, dae, cavga, ocgan and panda
from msacl.detectors import autoencoder, cavga, fanogan, igd, ocgan, panda  # noqa: F401
from msacl.detectors.base import REGISTRY, Detector, batches, build_detector, register
from msacl.detectors.options import (
    CAVGAOptions,
    DAEOptions,
    DetectorOptions,
    FAnoGANOptions,
    IGDOptions,
    MSSSIMOptions,
    OCGANOptions,
    PadimOptions,
    PandaOptions,
    PatchCoreOptions,
    options_for,
)
from msacl.detectors.padim import Padim
from msacl.detectors.patchcore import PatchCore

__all__ = ["REGISTRY", "CAVGAOptions", "DAEOptions", "Detector", "DetectorOptions", "FAnoGANOptions", "IGDOptions",
           "MSSSIMOptions", "OCGANOptions", "Padim", "PadimOptions", "PandaOptions", "PatchCore", "PatchCoreOptions",
           "batches", "build_detector", "options_for", "register"]
