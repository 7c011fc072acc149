"""PaDiM written out in a few lines on timm's own feature extractor: a check of a surprising PaDiM figure that
shares no code with ``msacl.detectors.padim`` or ``msacl.models.features``.

For EfficientNet-Lite0 encoders (``imagenet`` or an ``encoder.pt``): timm's ``features_only`` taps at strides
4, 8 and 16 (inputs normalised with Lite0's 0.5 / 0.5), upsampled to the stride-4 grid and concatenated (all
176 channels, no random subset), one Gaussian per location with covariance + 0.01 I, fitted on every training
image; the image score is the largest Mahalanobis distance of the map (no blur). Prints the image AUROC per
encoder, so differences between encoders can be compared with the bench's. ``--bn-stats train`` re-estimates the
BatchNorm running statistics on the training images first, written out here as well (torch's cumulative average,
``momentum=None``, over one pass in train mode), against ``msacl``'s ``bn_stats="train"``.

    python benchmarks/padim_naive.py ../shared/data/odir_fundus_256 imagenet \\
        runs/pretext/pretrain/odir_fundus_256/tf_efficientnet_lite0/msacl/seed0/encoder.pt
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def features(model: torch.nn.Module, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        maps = model((x - 0.5) / 0.5)
        maps = [F.interpolate(m, size=maps[0].shape[-2:], mode="nearest") for m in maps]
        out.append(torch.cat(maps, 1).double())
    return torch.cat(out)


def reestimate_bn(model: torch.nn.Module, images: torch.Tensor, batch: int = 128) -> None:
    """BatchNorm running statistics of ``model`` replaced by the cumulative mean over one pass of ``images``."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    features(model, images, batch)
    model.eval()


def padim_scores(train: torch.Tensor, test: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Largest per-location Mahalanobis distance of each test feature map. Shapes: (N, C, H, W) -> (M,)."""
    n, c, h, w = train.shape
    x = train.permute(2, 3, 0, 1).reshape(h * w, n, c)
    mean = x.mean(1, keepdim=True)
    xc = x - mean
    cov = xc.transpose(1, 2) @ xc / (n - 1) + eps * torch.eye(c, dtype=x.dtype)
    prec = torch.linalg.inv(cov)
    y = test.permute(2, 3, 0, 1).reshape(h * w, len(test), c) - mean
    return torch.einsum("lnc,lcd,lnd->ln", y, prec, y).clamp_min(0).sqrt().amax(0)


def main(argv: list[str] | None = None) -> int:
    import timm
    from sklearn.metrics import roc_auc_score

    from msacl.data import load_split
    from msacl.models.encoders import build_encoder, read_state_dict

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a folder-layout data set")
    p.add_argument("encoders", nargs="+", help="imagenet, or EfficientNet-Lite0 encoder.pt files")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3, choices=(1, 3),
                   help="1: load grey (as the bench loads brain MRI)")
    p.add_argument("--bn-stats", choices=("encoder", "train"), default="encoder")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    train = load_split(a.data, "train", image_size=a.image_size, channels=a.channels, progress=False)
    test = load_split(a.data, "test", image_size=a.image_size, channels=a.channels, progress=False)
    for enc in a.encoders:
        state = (build_encoder("tf_efficientnet_lite0", "imagenet").backbone.state_dict() if enc == "imagenet"
                 else read_state_dict(enc)[0])
        model = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3))
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            p.error(f"{enc}: not an EfficientNet-Lite0 state ({len(missing)} missing keys, e.g. {missing[0]})")
        model.eval()
        if a.bn_stats == "train":
            reestimate_bn(model, train.images)
        scores = padim_scores(features(model, train.images), features(model, test.images))
        print(f"{enc}: image AUROC {roc_auc_score(test.labels.numpy(), scores.numpy()):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
