"""Self-supervised pre-training: MSACL, CCD, SimCLR, RotNet, CSI and DROC on one Lightning Fabric engine.

    from msacl.pretrain import PretrainConfig, pretrain
    enc = pretrain(PretrainConfig(method="msacl", epochs=200), train, "runs/msacl", test=test)
    torchvision.models.resnet18().load_state_dict(torch.load(enc, weights_only=True))
"""

from msacl.pretrain import csi, droc  # noqa: F401  (register the csi and droc recipes)
from msacl.pretrain.centres import centre_separation, centres_and_spread
from msacl.pretrain.checkpoint import load_checkpoint
from msacl.pretrain.config import METHODS, PretrainConfig
from msacl.pretrain.engine import NonFiniteLossError, make_fabric, pretrain, step_losses
from msacl.pretrain.methods import Batch, Method, PretrainNet, build_method

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "NonFiniteLossError",
    "PretrainConfig",
    "PretrainNet",
    "build_method",
    "centre_separation",
    "centres_and_spread",
    "load_checkpoint",
    "make_fabric",
    "pretrain",
    "step_losses",
]
