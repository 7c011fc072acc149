"""Why CAVGA-R_u scores below chance on Kvasir patches at the `cpu` budget: a check of that surprising figure.

Runs CAVGA-R_u as the bench's `cpu` profile does (ImageNet EfficientNet-Lite0, 64 px, 15 epochs, the same
hold-out, seeds and threshold through ``msacl.detectors.pipeline``), once with the paper's loss weights and
once without the adversarial term (``w_adv=0``), and prints for each: the image AUROC of its score (mean
absolute reconstruction error), how well it reconstructs the training images (L1), and the mean score of normal
and abnormal test images. Beside them, references that share no code with the detector: the L1 reconstruction
error of a PCA of the training pixels (8 / 32 components) as a score, and the L1 distance to the mean training
image.

    python benchmarks/cavga_check.py --epochs 15 --seeds 0 1 2
    python benchmarks/cavga_check.py --epochs 100 --seeds 0 --w-adv 1
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from msacl.data import load_split
from msacl.detectors.pipeline import fit_detector, prepare_detector, test_detector

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data")) / "kvasir_seg_patch128"


def references(train: torch.Tensor, test: torch.Tensor, labels: np.ndarray) -> None:
    x, y = train.flatten(1).numpy(), test.flatten(1).numpy()
    def l1(pca: PCA, a: np.ndarray) -> np.ndarray:
        return np.abs(a - pca.inverse_transform(pca.transform(a))).mean(1)

    for k in (8, 32):
        pca = PCA(k).fit(x)
        print(f"PCA-{k} reconstruction  train L1 {l1(pca, x).mean():.3f}  "
              f"image AUROC {roc_auc_score(labels, l1(pca, y)):.3f}")
    mean = x.mean(0, keepdims=True)
    print(f"distance to the mean training image  image AUROC {roc_auc_score(labels, np.abs(y - mean).mean(1)):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--w-adv", type=float, nargs="+", default=[1.0, 0.0],
                    help="weights of the adversarial term to run (1: the paper's)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    train = load_split(args.data, "train", image_size=args.image_size, progress=False)
    test = load_split(args.data, "test", image_size=args.image_size, progress=False)
    labels = test.labels.numpy()
    references(train.images, test.images, labels)
    for w_adv in args.w_adv:
        for seed in args.seeds:
            settings = {"backbone": "tf_efficientnet_lite0", "image_size": args.image_size, "epochs": args.epochs,
                        "w_adv": w_adv}
            det, _ = prepare_detector("cavga", settings, train, seed=seed, encoders={"global": "imagenet"})
            fit = fit_detector(det, train, seed=seed)
            metrics, scores, _ = test_detector(fit.detector, test, threshold=fit.threshold.threshold, seed=seed)
            net = fit.detector.model
            with torch.no_grad():
                _, mu, _ = net.encode(train.images[:256])
                train_l1 = (net.decoder(mu) - train.images[:256]).abs().mean().item()
            s = torch.as_tensor(scores)
            name = "CAVGA-R_u" + (f" w_adv={w_adv:g}" if w_adv != 1 else "")
            print(f"{name:18} seed {seed}  train L1 {train_l1:.3f}  image AUROC {metrics.image_auroc:.3f}  "
                  f"mean score normal {s[test.labels == 0].mean():.4f} abnormal {s[test.labels == 1].mean():.4f}")


if __name__ == "__main__":
    main()
