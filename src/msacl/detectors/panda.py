"""PANDA: adapting pre-trained features for anomaly detection (Reiss et al., CVPR 2021).

An ImageNet-pretrained encoder phi (start with ``det.load_encoder("imagenet")``) is fine-tuned on the normal
images with the compactness loss of Deep-SVDD around the centre c of the initial features (PANDA Eq. 1,
``L = sum_x ||phi(x) - c||^2``), kept from collapsing by early stopping (few epochs, the default) or by EWC
(Eq. 3, ``+ lambda / 2 * sum_i F_i (theta_i - theta*_i)^2``). The anomaly score of x is its kNN distance to
the training features after adaptation (Eq. 2).

Details the paper leaves open, from the official code (github.com/talreiss/PANDA):

* ``losses.py``, ``CompactnessLoss``: the loss is divided by the feature size and averaged over the batch,
  ``mean_x ||phi(x) - c||^2 / D``; ``EWCLoss``: lambda = 1e4, the classifier excluded.
* ``panda.py``: c is the mean feature of the training set under the initial weights and stays fixed; SGD with
  lr 1e-2, momentum 0.9, weight decay 5e-5; the gradient's total norm is clipped to 1e-3 every step; 15 epochs
  of batch 32; the network stays in eval mode throughout (BatchNorm keeps its ImageNet statistics).
* ``utils.py``: the stem, layer1, layer2 and fc are frozen (here: every module up to the stride-8 feature tap,
  and the classifier, for any backbone); phi is the pooled penultimate feature; the score is the *sum* of the
  squared L2 distances to the k = 2 nearest training features (faiss ``IndexFlatL2``). ResNet-152 is the
  release's default backbone.

Ours: the Fisher information of EWC is estimated on the training images with labels drawn from the ImageNet
classifier's own softmax (the release loads a diagonal precomputed on ImageNet, which cannot be had offline);
that is why early stopping is the default.

Heat map (PANDA has none for its kNN score; its segmentation section follows SPADE, Cohen & Hoshen 2020): for
each position of the adapted encoder's feature maps at ``map_strides`` (resized to the shallowest one's grid),
the mean L2 distance to its ``map_k`` nearest features among all positions of the ``map_images`` training
images nearest in phi (SPADE's K = 50, kappa = 1), upsampled bilinearly and Gaussian-blurred (sigma 4, SPADE).
The training feature maps are kept in float16 (``map_bank``: N x C x h x w, e.g. 282 images of 64 px with
ResNet-18: 28 MB).

    det = Panda(backbone="resnet18", image_size=64); det.load_encoder("imagenet")
    det.fit(batches(train.images, 32), generator=make_generator(0))
    scores, maps = det.predict(test.images[:8])
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from msacl.config import ConfigError
from msacl.detectors.base import Detector, register
from msacl.detectors.common import check_images, resize_square, to_image_map
from msacl.detectors.fitloop import CheckpointedFit, FitLoop, steps_per_epoch
from msacl.detectors.options import FrozenEncoderOptions, TrainedOptions, check_positive
from msacl.errors import DataError, MsaclError
from msacl.models.backbones import check_strides, sequential_parts
from msacl.models.encoders import Encoder
from msacl.runs import as_generator, seeded

# ---------------------------------------------------------------- losses and scores (pure functions)


def compactness_loss(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """PANDA Eq. 1 as released: ``mean_x ||phi(x) - c||^2 / D``.

    Shape:
        f: (B, D) features phi(x); c: (D,).
        returns: scalar.
    """
    return ((f - c) ** 2).sum(1).div(f.shape[1]).mean()


def ewc_penalty(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor], fisher: Sequence[torch.Tensor], *,
                lam: float = 1e4) -> torch.Tensor:
    """PANDA Eq. 3's regulariser: ``lam / 2 * sum_i F_i (theta_i - theta*_i)^2``.

    Shape: params, anchors, fisher: matching lists of tensors of any shape -> scalar.
    """
    total = sum(((f * (p - a) ** 2).sum() for p, a, f in zip(params, anchors, fisher, strict=True)),
                torch.zeros((), device=params[0].device))
    return lam * total / 2


def knn_score(train: torch.Tensor, test: torch.Tensor, *, k: int = 2, chunk: int = 1024) -> torch.Tensor:
    """PANDA Eq. 2 as released: the sum of the squared L2 distances to the k nearest training features.

    Shape:
        train: (N, D); test: (M, D).
        returns: (M,).
    """
    k = min(int(k), train.shape[0])
    out = []
    for q in test.split(chunk):
        d2 = (q.unsqueeze(1) - train.unsqueeze(0)).pow(2).sum(-1) if q.shape[0] * train.shape[0] <= 2**20 \
            else torch.cdist(q, train).pow(2)
        out.append(d2.topk(k, dim=1, largest=False).values.sum(1))
    return torch.cat(out)


def spade_map(test: torch.Tensor, bank: torch.Tensor, *, k: int = 1) -> torch.Tensor:
    """SPADE's pixel score: mean L2 distance of each test position to its k nearest features among all
    positions of the given training maps.

    Shape:
        test: (C, h, w) one image's features; bank: (K, C, h', w') its nearest training images' features.
        returns: (h, w).
    """
    c, h, w = test.shape
    q = test.reshape(c, -1).T
    g = bank.permute(0, 2, 3, 1).reshape(-1, c)
    d = torch.cdist(q, g)
    return d.topk(min(k, g.shape[0]), dim=1, largest=False).values.mean(1).view(h, w)


# ---------------------------------------------------------------- detector


def adapted_parameters(encoder: Encoder) -> list[str]:
    """Names (in ``encoder.backbone``) of the parameters PANDA trains: those after the stride-8 tap, not the
    classifier (the release freezes conv1, bn1, layer1, layer2 and fc of its ResNets)."""
    tap = encoder.spec.tap(8).module
    parts = sequential_parts(encoder.backbone, [tap])
    names = [n for n, _ in parts]
    frozen_until = names.index(tap)
    trained = [n for n in names[frozen_until + 1:]]
    out = []
    for name, _ in encoder.backbone.named_parameters():
        if name.startswith(encoder.spec.head_prefixes):
            continue
        if any(name == t or name.startswith(t + ".") for t in trained):
            out.append(name)
    return out



@dataclass
class PandaOptions(TrainedOptions, FrozenEncoderOptions):
    """PANDA (see ``msacl.detectors.panda.Panda``)."""

    backbone: str = "resnet152"
    image_size: int = 224
    epochs: int = 15
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-5
    grad_clip: float = 1e-3
    k: int = 2
    regularizer: Literal["early", "ewc"] = "early"
    ewc_lambda: float = 1e4
    map_strides: list[int | str] = field(default_factory=lambda: [8, 16])
    map_images: int = 50
    map_k: int = 1
    sigma: float = 4.0

    def check(self) -> None:
        super().check()
        for name in ("k", "map_images", "map_k", "image_size"):
            check_positive(name, getattr(self, name))
        check_positive("sigma", self.sigma, minimum=0)
        if self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip}")


@register("panda")
class Panda(CheckpointedFit, Detector):
    """PANDA detector (see the module docstring for the equations, the released details and the map).

    Args:
        backbone: encoder backbone (the release: ResNet-152); load ImageNet weights with ``load_encoder``.
        image_size: images are resized to ``image_size`` x ``image_size`` (the release: 224).
        epochs, batch_size, lr, momentum, weight_decay, grad_clip: the release's 15, 32, 1e-2, 0.9, 5e-5, 1e-3.
        k: neighbours of the kNN score (2).
        regularizer: ``"early"`` (few epochs; default) or ``"ewc"`` (Fisher estimated on the training images).
        ewc_lambda: lambda of EWC (1e4).
        map_strides: feature taps of the heat map (8, 16). map_images: SPADE's K nearest images (50).
        map_k: SPADE's kappa nearest features per position (1). sigma: Gaussian blur of the map (4).

    Buffers: ``center`` (D,), ``train_features`` (N, D), ``map_bank`` (N, C, h, w) float16, ``n_train``.
    """

    Options: ClassVar[type[PandaOptions]] = PandaOptions
    options: PandaOptions

    def __init__(self, options: PandaOptions | None = None, /, **kwargs: Any):
        super().__init__(options, **kwargs)
        with seeded(self.options.init_seed):  # the random init, before any weights are loaded
            encoder = Encoder(self.options.backbone)
        strides = check_strides(self.options.map_strides, encoder.spec)
        self.options = dataclasses.replace(self.options, map_strides=strides)
        self.encoder = encoder
        self.trained = adapted_parameters(encoder)
        dim = sum(encoder.channels(s) for s in strides)
        self.register_buffer("center", torch.zeros(encoder.out_dim))
        self.register_buffer("train_features", torch.zeros(0, encoder.out_dim))
        self.register_buffer("map_bank", torch.zeros(0, dim, 1, 1, dtype=torch.float16))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Sizes known only after fitting: take the saved shapes before the shape check.
        for key in ("train_features", "map_bank"):
            t = state_dict.get(prefix + key)
            if isinstance(t, torch.Tensor):
                setattr(self, key, torch.empty_like(t, device=getattr(self, key).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def device(self) -> torch.device:
        return self.center.device

    # -------------------------------------------------------------- features

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features. Shape: (B, C, S, S) -> (B, D)."""
        return self.encoder(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps of the heat map, on the shallowest tap's grid. Shape: (B, C, S, S) -> (B, C', h, w)."""
        feats = self.encoder.features(x, self.options.map_strides)
        size = feats[self.options.map_strides[0]].shape[-2:]
        return torch.cat([f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear",
                                                                       align_corners=False)
                          for f in feats.values()], 1)

    @torch.no_grad()
    def _features(self, data: torch.Tensor, *, maps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        bs, dev = self.options.batch_size, self.device()
        f, m = [], []
        for i in range(0, data.shape[0], bs):
            x = data[i:i + bs].to(dev)
            f.append(self.phi(x))
            if maps:
                m.append(self.embed(x).half())
        return torch.cat(f), (torch.cat(m) if maps else None)

    # -------------------------------------------------------------- fit

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The backbone's parameters PANDA adapts (named in ``trained``), in the order of
        :meth:`fisher_diagonal`'s list."""
        named = dict(self.encoder.backbone.named_parameters())
        return [named[n] for n in self.trained]

    def fisher_diagonal(self, data: torch.Tensor, g: torch.Generator) -> list[torch.Tensor]:
        """Diagonal Fisher of the trained parameters, ``E_x E_{y ~ p(y|x)} (d log p(y|x) / d theta)^2``, with the
        backbone's own classifier (ours: on the training images; the release's was computed on ImageNet)."""
        params = self.trained_parameters()
        fisher = [torch.zeros_like(p) for p in params]
        dev = self.device()
        for i in range(data.shape[0]):
            logits = self.encoder.backbone(self.encoder.backbone_input(data[i:i + 1].to(dev)))
            y = torch.multinomial(logits.softmax(1).detach().cpu(), 1, generator=g).to(dev).view(-1)
            grads = torch.autograd.grad(F.cross_entropy(logits, y), params, allow_unused=True)
            for acc, gr in zip(fisher, grads, strict=True):
                if gr is not None:
                    acc += gr.detach() ** 2
        return [f / data.shape[0] for f in fisher]

    def fit(self, batches: Iterable[torch.Tensor], *, generator: torch.Generator | None = None,
            progress: bool = False) -> Panda:
        c = self.options
        g = as_generator(generator)
        parts = []
        for i, b in enumerate(batches):
            check_images(b, f"panda.fit: training batch {i}")
            parts.append(resize_square(b, c.image_size))
        if sum(p.shape[0] for p in parts) < 2:
            raise DataError(f"panda: needs at least 2 training images, got {sum(p.shape[0] for p in parts)}")
        data = torch.cat(parts)
        if self.encoder.source == "random init":
            warnings.warn("panda adapts pre-trained features; the encoder is randomly initialised "
                          "(load ImageNet weights: det.load_encoder('imagenet') / --encoder imagenet)", stacklevel=2)
        n = data.shape[0]
        loop = FitLoop(self, g, phases=[("adapt", c.epochs)], steps_per_epoch=steps_per_epoch(n, c.batch_size),
                       progress=progress)
        params = self.trained_parameters()
        trained = set(map(id, params))
        flags = [(p, p.requires_grad) for p in self.encoder.parameters()]
        self.encoder.eval()  # the release trains in eval mode: BatchNorm keeps the pre-trained statistics
        try:
            for p, _ in flags:
                p.requires_grad_(id(p) in trained)
            if loop.saved is None:
                # Statistics of the weights before adaptation; a resumed fit has them in its checkpoint.
                self.adapt_batchnorm(data[i:i + c.batch_size].to(self.device()) for i in range(0, n, c.batch_size))
                self.center.copy_(self._features(data)[0].mean(0))
                if c.regularizer == "ewc":
                    loop.extra = {"anchor": [p.detach().clone() for p in params],
                                  "fisher": self.fisher_diagonal(data, g)}
            dev = self.device()
            anchors = [t.to(dev) for t in loop.extra.get("anchor", [])]
            fisher = [t.to(dev) for t in loop.extra.get("fisher", [])]
            opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

            def step(x: torch.Tensor, _: torch.Generator) -> dict[str, float]:
                loss = compactness_loss(self.phi(x), self.center)
                out = {"compact": loss.item()}
                if fisher:
                    ewc = ewc_penalty(params, anchors, fisher, lam=c.ewc_lambda)
                    loss = loss + ewc
                    out["ewc"] = ewc.item()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
                opt.step()
                return out

            self.history = loop.run("adapt", data, step, epochs=c.epochs, batch_size=c.batch_size,
                                    optimizers={"sgd": opt}, device=dev)
        finally:
            loop.close()
            for p, flag in flags:
                p.requires_grad_(flag)
        self.train_features, self.map_bank = self._features(data, maps=True)
        self.n_train.fill_(n)
        return self

    # -------------------------------------------------------------- predict

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: (N, C, H, W) -> scores (N,), maps (N, 1, H, W); images are resized to ``image_size`` first."""
        if int(self.n_train) == 0:
            raise MsaclError("panda: predict called before fit")
        check_images(x, "panda.predict")
        c = self.options
        self.encoder.eval()
        s = c.image_size
        xs = resize_square(x.to(self.device()), s)
        f = self.phi(xs)
        scores = knn_score(self.train_features, f, k=c.k)
        emb = self.embed(xs).float()
        k_img = min(c.map_images, self.train_features.shape[0])
        near = torch.cdist(f, self.train_features).topk(k_img, dim=1, largest=False).indices
        patch = torch.stack([spade_map(emb[i], self.map_bank[near[i]].float(), k=c.map_k)
                             for i in range(emb.shape[0])])
        maps = to_image_map(patch, (s, s), c.sigma)
        if tuple(x.shape[-2:]) != (s, s):
            maps = F.interpolate(maps, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return scores.to(x.device), maps.to(x.device)
