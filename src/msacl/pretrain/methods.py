"""The pre-training methods as (inputs, loss terms) recipes over one network.

A method turns a batch of training images into the encoder's inputs (:meth:`Method.make_batch`) and the
network's outputs into named loss terms (:meth:`Method.losses`). The network never sees a loss and the
losses never see the network, so the engine can gather outputs across ranks in between.

========  ======================================  ==============================
method    inputs per training image               loss terms (Eq. 1 of each paper)
========  ======================================  ==============================
msacl     K strong classes x 2 weak views + pair  ctr + con (Eq. 3-7) + aug + pos;
                                                  burn-in: con (c_n = 0) + aug + pos
ccd       K strong classes x 2 weak views + pair  con (CCD Eq. 2) + aug + pos
simclr    2 weak views                            con (NT-Xent)
rotnet    1 weak view x 4 rotations               aug (4-way rotation)
csi       4 rotations x 2 weak views              con (NT-Xent, shifted instances) + aug
                                                  (shift classification); ``csi.py``
droc      1 random rotation x 2 weak views        con (one-sided, rotated copies are instances);
                                                  ``droc.py``
========  ======================================  ==============================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from msacl.augment import WeakAugment, build_strong
from msacl.models.encoders import Encoder, build_encoder
from msacl.models.heads import AugClassifier, PatchPositionHead, ProjectionHead
from msacl.names import METHOD_CLASSES
from msacl.pretrain import losses as L
from msacl.pretrain.config import PretrainConfig
from msacl.pretrain.patches import grid_geometry, patch_pairs, random_crops


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Inside, the training-mode BatchNorm layers of ``module`` normalise with batch statistics as usual but
    leave their running statistics untouched.

    The running statistics are what detectors get in ``encoder.pt``; they must describe the full-size views
    the encoder will be used on, not the small position patches (issue 11). Momentum 0 makes the update
    ``(1 - 0) * running + 0 * batch`` a no-op (exact in floating point) in BatchNorm and SyncBatchNorm alike;
    ``num_batches_tracked``, which the forward still increments, is put back, since layers with
    ``momentum=None`` (a cumulative average) count with it.
    """
    layers = [m for m in module.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in layers]
    try:
        for m in layers:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class PretrainNet(nn.Module):
    """f_theta (backbone + projection head) with the pretext heads f_beta and f_gamma.

    f_beta and f_gamma read the backbone's pooled features h, not z (see :mod:`msacl.models.heads`). The
    position patches are forwarded with BatchNorm running statistics frozen (:func:`running_stats_frozen`),
    so the backbone's running statistics are those of the full-size views only.

    Args:
        encoder: backbone returning pooled features (B, encoder.out_dim).
        num_classes: K classes of f_beta; 0 or 1 leaves f_beta out.
        with_position: build f_gamma.
        pool_stride: None: h is the backbone's pooled output (the papers); a stride: h is the mean-pooled
            feature map of that tap (``ModelOptions.pool_stride``).
        freeze_bn: keep the encoder's BatchNorm layers in eval mode whatever ``train()`` says
            (``ModelOptions.freeze_bn``).

    Shape:
        views: (N, C, H, W) -> ``z`` (N, Z) and ``logits`` (N, K);
        patches: (2P, C, p, p), P centres then their P neighbours -> ``pos_logits`` (P, 8).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        num_classes: int,
        with_position: bool,
        proj_hidden: int = 512,
        proj_dim: int = 128,
        pos_hidden: int = 128,
        pool_stride: int | None = None,
        freeze_bn: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.pool_stride = pool_stride
        self.freeze_bn = freeze_bn
        self.feature_dim = dim = encoder.out_dim if pool_stride is None else encoder.channels(pool_stride)
        self.projection = ProjectionHead(dim, proj_hidden, proj_dim)
        self.classifier = AugClassifier(dim, num_classes) if num_classes > 1 else None
        self.position = PatchPositionHead(dim, pos_hidden) if with_position else None

    def train(self, mode: bool = True) -> PretrainNet:
        super().train(mode)
        if self.freeze_bn:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """h: the pooled features the heads read. Shape: (N, C, H, W) -> (N, D)."""
        if self.pool_stride is None:
            return self.encoder(x)
        return self.encoder.features(x, (self.pool_stride,))[self.pool_stride].mean((2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """f_theta(x) in Z. Shape: (N, C, H, W) -> (N, Z)."""
        if self.projection is None:
            raise ValueError("this network has no projection head")
        return self.projection(self.features(x))

    def forward(self, views: torch.Tensor, patches: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.features(views)
        out = {} if self.projection is None else {"z": self.projection(h)}
        if self.classifier is not None:
            out["logits"] = self.classifier(h)
        if patches is not None:
            if self.position is None:
                raise ValueError("this network has no patch-position head")
            with running_stats_frozen(self.encoder):
                hp = self.features(patches)
            p = hp.shape[0] // 2
            out["pos_logits"] = self.position(hp[:p], hp[p:])
        return out


@dataclass
class Batch:
    """Encoder inputs of one step, laid out image-major as (B, K, V) so that gathering along B works.

    Attributes:
        views: augmented samples, flat index (i * K + n) * V + l. Shape: (B * K * V, C, S, S).
        labels: strong class n of each sample. Shape: (B * K * V,).
        patches: patch-position centres then neighbours, or None. Shape: (2B, C, p, p).
        pos_labels: neighbour position 0..7, or None. Shape: (B,).
    """

    views: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    num_views: int
    patches: torch.Tensor | None = None
    pos_labels: torch.Tensor | None = None

    @property
    def encoder_images(self) -> int:
        """Images put through the encoder this step (throughput counts every one)."""
        return self.views.shape[0] + (0 if self.patches is None else self.patches.shape[0])


class Method:
    """Base recipe; see the module table."""

    name = "base"
    num_views = 2
    uses_centres = False
    uses_strong = True
    pos_term = False

    def __init__(self, cfg: PretrainConfig, *, image_size: int):
        self.cfg = cfg
        family = cfg.strong_family()
        self.strong = build_strong(family, **cfg.strong_kwargs) if (family and self.uses_strong) else None
        self.num_classes = self.strong.num_classes if self.strong is not None else 1
        self.local = cfg.scope == "local"
        if self.local and image_size < cfg.local_size:
            raise ValueError(f"local scope needs images of at least {cfg.local_size} px, got {image_size}")
        self.input_size = cfg.local_size if self.local else image_size
        self.weak = WeakAugment(self.input_size, **cfg.weak)
        self.with_position = self.pos_term and cfg.loss.w_pos > 0
        if self.with_position:
            # Fail at start-up, not at the first step, if the images cannot hold a 3 x 3 grid.
            grid_geometry(image_size, image_size, self.pos_patch, patch_frac=cfg.loss.patch_frac)

    @property
    def pos_patch(self) -> int | None:
        return self.cfg.local_size if self.local else None

    def build_network(self) -> PretrainNet:
        m = self.cfg.model
        return PretrainNet(
            build_encoder(m.backbone, m.init),
            num_classes=self.num_classes,
            with_position=self.with_position,
            proj_hidden=m.proj_hidden,
            proj_dim=m.proj_dim,
            pos_hidden=m.pos_hidden,
            pool_stride=m.pool_stride,
            freeze_bn=m.freeze_bn,
        )

    def _inputs(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crops(x, self.cfg.local_size, generator=generator) if self.local else x

    def strong_classes(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image under every strong class n = 0..K-1, image-major. Shape: (B*K, C, H, W), (B*K,)."""
        b, k = x.shape[0], self.num_classes
        labels = torch.arange(k, device=x.device).repeat(b)
        if self.strong is None:
            return x, labels
        # MedMix / CutPaste cut lesions from *other* normal images: image i takes its patches from i - 1.
        sources = x.roll(1, dims=0).repeat_interleave(k, dim=0)
        out = self.strong(x.repeat_interleave(k, dim=0), labels, generator=generator, sources=sources)
        return out.images, labels

    def _strong_with_boxes(self, x: torch.Tensor, generator: torch.Generator
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`strong_classes` plus the boxes of what the family pasted (MedMix's lesions), which
        the weak crops must keep so that the views still show the class (None when nothing is pasted).

        Shape: (B*K, C, H, W), (B*K,), (B*K, L, 4) or None.
        """
        if self.strong is None:
            return (*self.strong_classes(x, generator), None)
        # The same call as strong_classes (the same draws), keeping the family's extras.
        b, k = x.shape[0], self.num_classes
        labels = torch.arange(k, device=x.device).repeat(b)
        sources = x.roll(1, dims=0).repeat_interleave(k, dim=0)
        out = self.strong(x.repeat_interleave(k, dim=0), labels, generator=generator, sources=sources)
        return out.images, labels, out.extras.get("boxes")

    def make_batch(self, x: torch.Tensor, *, generator: torch.Generator) -> Batch:
        """Inputs of one training step from normal images x. Shape: x (B, C, H, W)."""
        full = x
        x = self._inputs(x, generator)
        s, labels, boxes = self._strong_with_boxes(x, generator)
        views = torch.stack([self.weak(s, generator=generator, boxes=boxes) for _ in range(self.num_views)], dim=1)
        batch = Batch(
            views=views.flatten(0, 1),
            labels=labels.repeat_interleave(self.num_views),
            num_classes=self.num_classes,
            num_views=self.num_views,
        )
        if self.with_position:
            c, n, batch.pos_labels = patch_pairs(
                full, generator=generator, patch=self.pos_patch, patch_frac=self.cfg.loss.patch_frac
            )
            batch.patches = torch.cat([c, n])
        return batch

    def centre_batch(self, x: torch.Tensor, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2 samples: each image under every strong class, then one weak view. Shape: (B*K, ...), (B*K,)."""
        s, labels, boxes = self._strong_with_boxes(self._inputs(x, generator), generator)
        return self.weak(s, generator=generator, boxes=boxes), labels

    def weights(self) -> dict[str, float]:
        w = self.cfg.loss
        return {"ctr": w.w_ctr, "con": w.w_con, "aug": w.w_aug, "pos": w.w_pos}

    def terms(
        self, out: dict[str, torch.Tensor], batch: Batch, centres: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def burnin_terms(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms of the burn-in before the centres are frozen (methods with centres only)."""
        raise ValueError(f"method {self.name} has no burn-in")

    def losses(
        self, out: dict[str, torch.Tensor], batch: Batch, centres: torch.Tensor | None = None, *,
        burnin: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms and their weighted sum ``loss`` (Eq. 1), computed in float32; with ``burnin``
        those of :meth:`burnin_terms` (see :mod:`msacl.pretrain.centres`)."""
        out = {k: v.float() for k, v in out.items()}
        terms = self.burnin_terms(out, batch) if burnin else self.terms(out, batch, centres)
        weights = self.weights()
        terms["loss"] = L.weighted_total(terms, {k: weights.get(k, 1.0) for k in terms})
        return terms

    def _zb(self, out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        z = out["z"]
        return z.view(-1, batch.num_classes, batch.num_views, z.shape[-1])

    def _pos(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        if not self.with_position:
            return {}
        return {"pos": L.patch_position_loss(out["pos_logits"], batch.pos_labels)}


class MSACL(Method):
    """MSACL Eq. 1: l_ctr + l_MSACL + l_aug + l_pos."""

    name = "msacl"
    uses_centres = True
    pos_term = True

    def terms(self, out, batch, centres):
        if centres is None:
            raise ValueError("MSACL needs the class centres c_n (Eq. 2)")
        lo = self.cfg.loss
        return {
            "ctr": L.multi_centring_loss(out["z"], batch.labels, centres, squared=lo.squared_centring),
            "con": L.msacl_contrastive_loss(self._zb(out, batch), centres, tau=lo.tau, alpha=lo.alpha),
            "aug": L.augmentation_loss(out["logits"], batch.labels),
            **self._pos(out, batch),
        }

    def burnin_terms(self, out, batch):
        """Eq. 1 without l_ctr and with c_n = 0 in Eq. 5-6: nothing to centre on before the centres exist,
        while l_aug, l_pos and the kappa-calibrated contrastive term teach the encoder the classes."""
        lo = self.cfg.loss
        zb = self._zb(out, batch)
        origin = zb.new_zeros(batch.num_classes, zb.shape[-1])
        return {
            "con": L.msacl_contrastive_loss(zb, origin, tau=lo.tau, alpha=lo.alpha),
            "aug": L.augmentation_loss(out["logits"], batch.labels),
            **self._pos(out, batch),
        }


class CCD(Method):
    """CCD Eq. 1: l_con + l_cla + l_pos."""

    name = "ccd"
    pos_term = True

    def terms(self, out, batch, centres):
        lo = self.cfg.loss
        return {
            "con": L.ccd_contrastive_loss(self._zb(out, batch), tau=lo.tau, negatives=lo.ccd_negatives),
            "aug": L.augmentation_loss(out["logits"], batch.labels),
            **self._pos(out, batch),
        }


class SimCLR(Method):
    """SimCLR baseline: NT-Xent over two weak views."""

    name = "simclr"
    uses_strong = False

    def terms(self, out, batch, centres):
        return {"con": L.nt_xent_loss(self._zb(out, batch)[:, 0], tau=self.cfg.loss.tau)}


class RotNet(Method):
    """RotNet baseline (Gidaris et al. 2018): classify which of 4 rotations was applied to a weak view."""

    name = "rotnet"
    num_views = 1
    uses_strong = False

    def __init__(self, cfg: PretrainConfig, *, image_size: int):
        super().__init__(cfg, image_size=image_size)
        self.num_classes = 4

    def strong_classes(self, x, generator):
        b = x.shape[0]
        rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1)
        return rotated.flatten(0, 1), torch.arange(4, device=x.device).repeat(b)

    def build_network(self) -> PretrainNet:
        net = super().build_network()
        # No loss reads z (f_beta reads h): a head without gradients would stall DDP, which expects every
        # parameter to get one.
        net.projection = None
        return net

    def make_batch(self, x, *, generator):
        # Rotate the weak view (not the reverse) so the crop never reveals the rotation by its shape.
        v = self.weak(self._inputs(x, generator), generator=generator)
        views, labels = self.strong_classes(v, generator)
        return Batch(views=views, labels=labels, num_classes=4, num_views=1)

    def terms(self, out, batch, centres):
        return {"aug": L.augmentation_loss(out["logits"], batch.labels)}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: ``msacl.names.METHOD_CLASSES`` must list the recipe under its ``name``."""
    METHOD_CLASSES.check(cls.name, cls)
    return cls


for _cls in (MSACL, CCD, SimCLR, RotNet):
    register_method(_cls)


def build_method(cfg: PretrainConfig, *, image_size: int) -> Method:
    """The recipe of ``cfg.method`` for square training images of side ``image_size``."""
    if cfg.method not in METHOD_CLASSES:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(METHOD_CLASSES)}")
    return METHOD_CLASSES[cfg.method](cfg, image_size=image_size)
