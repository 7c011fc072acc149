"""Anomaly detectors behind one interface (see ``base``), each with its typed settings beside its class (the
settings several share in ``options``); importing this package registers all of them.

Registered names: padim, patchcore, igd, fanogan, msssim_ae, dae, panda, ocgan, cavga.
"""

# importing each detector's module registers it
from msacl.detectors.autoencoder import DAEOptions, MSSSIMOptions
from msacl.detectors.base import REGISTRY, Detector, batches, build_detector, register
from msacl.detectors.cavga import CAVGAOptions
from msacl.detectors.fanogan import FAnoGANOptions
from msacl.detectors.igd import IGDOptions
from msacl.detectors.ocgan import OCGANOptions
from msacl.detectors.options import DetectorOptions, options_for
from msacl.detectors.padim import Padim, PadimOptions
from msacl.detectors.panda import PandaOptions
from msacl.detectors.patchcore import PatchCore, PatchCoreOptions

__all__ = ["REGISTRY", "CAVGAOptions", "DAEOptions", "Detector", "DetectorOptions", "FAnoGANOptions", "IGDOptions",
           "MSSSIMOptions", "OCGANOptions", "Padim", "PadimOptions", "PandaOptions", "PatchCore", "PatchCoreOptions",
           "batches", "build_detector", "options_for", "register"]
