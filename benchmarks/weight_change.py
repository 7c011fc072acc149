"""How far pre-training moved an encoder from its ImageNet start, stage by stage.

For each ``encoder.pt`` given (or run folder holding one), the relative L2 change ||w - w0|| / ||w0|| of
the learned weights (the unused classifier left out) of each stage of the backbone, against the ImageNet weights
of the same backbone (``msacl.models.build_encoder(backbone, "imagenet")``), and the same for the BatchNorm running
statistics, the means and the variances apart: a detector on a frozen encoder normalises with them, so they move
its features as much as the weights do (``bn_stats``). A stage is a top-level module, or a ``blocks.N`` /
``layerN`` group (EfficientNet / ResNet).

    python benchmarks/weight_change.py runs/pretext/pretrain/kvasir_seg_patch128/tf_efficientnet_lite0/msacl/seed0
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch

SKIP = ("classifier", "fc.", "conv_head", "bn2")  # the backbones' heads: not part of f_theta's features


def stage(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def relative_change(state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                    kind: str = "weights") -> dict[str, float]:
    """Per stage: ||w - w0|| / ||w0|| over the floating-point tensors both hold of one ``kind``: ``"weights"``
    (learned parameters), ``"running_mean"`` or ``"running_var"`` (BatchNorm running statistics)."""
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for k, v in state.items():
        if k not in ref or not v.is_floating_point() or k.startswith(SKIP):
            continue
        if (kind == "weights" and "running_" in k) or (kind != "weights" and not k.endswith(kind)):
            continue
        num[stage(k)] += float((v.double() - ref[k].double()).pow(2).sum())
        den[stage(k)] += float(ref[k].double().pow(2).sum())
    return {s: (num[s] / den[s]) ** 0.5 for s in num if den[s] > 0}


def main(argv: list[str] | None = None) -> int:
    from msacl.models.encoders import build_encoder, file_backbone, read_state_dict

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("encoders", nargs="+", help="encoder.pt files (or run folders holding one)")
    a = p.parse_args(argv)
    refs: dict[str, dict[str, torch.Tensor]] = {}
    for given in a.encoders:
        path = given if given.endswith(".pt") else f"{given.rstrip('/')}/encoder.pt"
        backbone = file_backbone(path)
        if backbone is None:
            p.error(f"{path}: the file does not say its backbone")
        if backbone not in refs:
            refs[backbone] = build_encoder(backbone, "imagenet").backbone.state_dict()
        state, _ = read_state_dict(path)
        print(path)
        for kind in ("weights", "running_mean", "running_var"):
            change = relative_change(state, refs[backbone], kind)
            print(f"  {kind:<13}" + "  ".join(f"{s} {100 * c:.1f}%" for s, c in change.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
