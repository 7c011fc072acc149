"""Settings of a pre-training run; defaults are the papers' (MSACL Sec. 4.2, CCD Sec. 3.2).

>>> from msacl.config import apply_overrides
>>> apply_overrides(PretrainConfig(), ["loss.tau=0.1", "method=ccd"]).loss.tau
0.1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from msacl.augment.weak import WeakConfig
from msacl.config import ConfigError
from msacl.data.options import DataOptions
from msacl.names import METHODS, Method  # noqa: F401  (METHODS: re-exported by msacl.pretrain)

# Strong family used when ``strong`` is left empty: MedMix for MSACL (Sec. 3.2); permutation for CCD,
# its best family on colonoscopy (CCD Sec. 3.3); RotNet rotates; SimCLR has no strong augmentation; CSI shifts
# and DROC augments the distribution with rotations (both papers' choice).
DEFAULT_STRONG = {"msacl": "medmix", "ccd": "permutation", "rotnet": "rotation", "simclr": None,
                  "csi": "rotation", "droc": "rotation"}


@dataclass
class ModelOptions:
    """Encoder f_theta = backbone + MLP projection head into Z (MSACL Sec. 4.2: ResNet-18, Z = 128; both papers
    start from ImageNet weights: ``init="imagenet"``)."""

    backbone: str = "resnet18"  # a torchvision ResNet or any timm CNN with feature taps (msacl.models.backbones)
    init: str | None = None  # "imagenet", a weights file (e.g. an encoder.pt), or None: random init
    proj_hidden: int = 512
    proj_dim: int = 128
    pos_hidden: int = 128
    # The papers' heads read the backbone's last pooled features h. A stride (4, 8, 16, 32) makes them read the
    # mean-pooled feature map of that tap instead (16: the deepest one PaDiM reads), so that the pretext tasks
    # shape the features a detector uses; the layers after it then get no gradient (single-device runs).
    pool_stride: int | None = None
    # BatchNorm in eval mode throughout pre-training: the initial weights' running statistics normalise every
    # view and are kept (not in the papers; their code trains BatchNorm).
    freeze_bn: bool = False


@dataclass
class LossOptions:
    """Hyper-parameters of the losses and the weights of Eq. 1 (all 1 in both papers)."""

    tau: float = 0.2  # CCD Sec. 3.2 (DROC's too); every contrastive loss of the engine but CSI's
    csi_tau: float = 0.5  # CSI's NT-Xent temperature (official training/contrastive_loss.py)
    alpha: float = 2.0  # MSACL Eq. 7: not given by the paper; > 1 as its text requires; 1 = no calibration
    squared_centring: bool = False  # MSACL Eq. 3 with ||.||_2 (False) or ||.||_2^2 (True)
    # MSACL burn-in (our reading of Eq. 2, docs/benchmarks.md): before freezing the centres, train
    # l_aug + l_pos + Eq. 5 with c_n = 0 until the closest pair of centres lies >= burnin_ratio x the
    # samples' RMS spread, checked once per epoch, for at most burnin_max_epochs epochs.
    burnin: bool = True  # False: centres of the initial encoder, as Eq. 2 is written
    burnin_max_epochs: int | None = None  # None: min(10, epochs // 4); always at most epochs - 1
    burnin_ratio: float = 0.25
    ccd_negatives: Literal["same", "all"] = "same"  # CCD Eq. 2: same strong augmentation only
    w_ctr: float = 1.0
    w_con: float = 1.0
    w_aug: float = 1.0
    w_pos: float = 1.0
    patch_frac: float = 0.75  # patch side / grid cell side of the patch-position task


@dataclass
class OptimOptions:
    """SGD with momentum (both papers) and a cosine learning-rate schedule."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not given by the papers; a common SSL value
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = 0
    # Epochs at the start in which only the heads train (the backbone frozen): the heads catch up with the
    # initial features before their gradients reach the backbone (linear probing, then fine-tuning).
    head_warmup_epochs: int = 0
    backbone_lr_mult: float = 1.0  # the backbone's learning rate as a multiple of the heads' (lr)


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run.

    ``batch_size`` is the global batch (the papers' 32): under DDP each of W processes takes
    batch_size / W images, and the contrastive losses see all of them.
    """

    method: Method = "msacl"  # one of msacl.names.METHODS
    strong: str | None = None  # None: DEFAULT_STRONG[method]
    scope: Literal["global", "local"] = "global"
    local_size: int = 32  # side of the local model's patches (both papers)
    epochs: int = 200  # CCD pre-trains 2000 epochs; MSACL does not say
    batch_size: int = 32
    seed: int = 0
    checkpoint_every: int = 10  # epochs
    sync_batchnorm: bool = True  # under multi-GPU DDP; BatchNorm statistics over the global batch
    tsne: bool = True  # RUN/tsne.png of the test split after training (MSACL Fig. 1)
    tsne_max_images: int = 2000
    # Speed only (the same maths): channels-last tensors (faster convolutions on CPUs and tensor cores),
    # torch.compile of the network (measured in docs/benchmarks.md, "Speed"), and the loss terms kept on the
    # device and written to log.jsonl every log_every steps (one host synchronisation per log_every steps).
    channels_last: bool = True
    compile: bool = False
    log_every: int = 10
    weak: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of WeakAugment
    strong_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of build_strong
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)

    def strong_family(self) -> str | None:
        """The strong augmentation family this run uses (None for SimCLR)."""
        if self.method == "simclr":
            return None
        if self.method == "rotnet":
            return "rotation"
        return self.strong or DEFAULT_STRONG[self.method]

    def validate(self) -> None:
        """Raise ConfigError for settings no run can use."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (contrastive negatives), got {self.batch_size}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.local_size >= 8, f"local_size must be >= 8, got {self.local_size}"),
            (self.loss.tau > 0, f"loss.tau must be > 0, got {self.loss.tau}"),
            (self.loss.csi_tau > 0, f"loss.csi_tau must be > 0, got {self.loss.csi_tau}"),
            (self.loss.alpha > 0, f"loss.alpha must be > 0, got {self.loss.alpha}"),
            (0 < self.loss.patch_frac < 1, f"loss.patch_frac must be in (0, 1), got {self.loss.patch_frac}"),
            (self.loss.burnin_max_epochs is None or self.loss.burnin_max_epochs >= 0,
             f"loss.burnin_max_epochs must be >= 0 or null, got {self.loss.burnin_max_epochs}"),
            (self.loss.burnin_ratio > 0, f"loss.burnin_ratio must be > 0, got {self.loss.burnin_ratio}"),
            (self.optim.lr > 0, f"optim.lr must be > 0, got {self.optim.lr}"),
            (self.optim.head_warmup_epochs >= 0,
             f"optim.head_warmup_epochs must be >= 0, got {self.optim.head_warmup_epochs}"),
            (self.optim.backbone_lr_mult >= 0,
             f"optim.backbone_lr_mult must be >= 0, got {self.optim.backbone_lr_mult}"),
            (self.model.pool_stride in (None, 4, 8, 16, 32),
             f"model.pool_stride must be 4, 8, 16, 32 or null, got {self.model.pool_stride}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        from msacl.models.backbones import backbone_spec

        backbone_spec(self.model.backbone)  # an unknown name fails here, naming the close matches
        weak_keys = {f.name for f in dataclasses.fields(WeakConfig)}
        unknown = sorted(set(self.weak) - weak_keys)
        if unknown:
            raise ConfigError(f"weak: unknown key(s) {unknown}; valid keys are {sorted(weak_keys)}")
        try:
            WeakConfig(**self.weak)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"weak: {e}") from None
        if self.method in ("simclr", "rotnet") and self.strong not in (None, self.strong_family()):
            raise ConfigError(f"method {self.method} takes no --strong (got {self.strong!r})")
