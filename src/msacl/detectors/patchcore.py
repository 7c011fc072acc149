"""PatchCore: nearest-neighbour distance to a coreset memory bank of patch features (Roth et al. 2022).

Not in the MSACL/CCD papers, but a strong detector on top of any (e.g. MSACL pre-trained) encoder. Layer 2 and 3
features are each smoothed by a 3x3 local average (the paper's locally aware patch features), layer 3 is
upsampled bilinearly to layer-2 resolution and concatenated. A greedy k-center coreset (default 10 % of all
training patches) is selected on a seeded sparse random projection to 128 dimensions, as in the reference
implementation, and the chosen (unprojected) features are the memory bank. A test patch scores its Euclidean
distance to the nearest memory-bank entry; the map is upsampled to the image size and blurred (sigma 4), and
the image score is the maximum of the map, optionally multiplied by the paper's re-weighting (Eq. 7 of Roth et
al.: ``1 - softmax`` of the distances from the most anomalous patch to the neighbourhood of its nearest neighbour).

    det = PatchCore(backbone="resnet18", image_size=128)
    det.fit(batches(train.images, 32), generator=make_generator(0))
    scores, maps = det.predict(test.images[:8])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from msacl.config import ConfigError
from msacl.detectors.base import Detector, register
from msacl.detectors.common import check_images, resize_square, to_image_map
from msacl.detectors.options import FeatureOptions
from msacl.errors import DataError, MsaclError
from msacl.models.backbones import check_strides
from msacl.models.encoders import Encoder
from msacl.models.features import FrozenFeatures
from msacl.runs import as_generator, seeded


def sparse_random_projection(d_in: int, d_out: int, *, generator: torch.Generator,
                             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A very sparse random projection matrix (Li et al. 2006; scikit-learn's default density 1/sqrt(d_in)).

    Entries are +-sqrt(1 / (density * d_out)) with probability density / 2 each and 0 otherwise, so squared
    distances are preserved in expectation.

    Shape: (d_in, d_out).
    """
    density = 1.0 / math.sqrt(d_in)
    dev = generator.device
    keep = torch.rand(d_in, d_out, generator=generator, device=dev) < density
    sign = torch.randint(0, 2, (d_in, d_out), generator=generator, device=dev) * 2 - 1
    return (keep * sign).to(dtype) * math.sqrt(1.0 / (density * d_out))


def greedy_coreset(features: torch.Tensor, n: int, *, generator: torch.Generator,
                   projection_dim: int | None = 128, chunk_size: int = 65536) -> torch.Tensor:
    """Greedy k-center selection: each step takes the point farthest from everything chosen so far.

    The first point is drawn from ``generator``; distances are computed on a sparse random projection to
    ``projection_dim`` dimensions (None or >= D: on the features themselves), as in the reference.

    Exact, but most distances are never computed: every point remembers its nearest chosen centre a and the
    distance m to it, and by the triangle inequality a new centre c cannot come closer than m unless
    ``|c - a| < 2 m``. Only those candidates are measured, in chunks of ``chunk_size`` rows, so a step costs
    O(N) comparisons plus O(candidates * D) instead of O(N * D).

    Args:
        features: candidate points. Shape: (N, D).
        n: number of points to select (clipped to N).

    Returns:
        Indices of the selected points in selection order. Shape: (n,).
    """
    num, dim = features.shape
    n = min(int(n), num)
    if n <= 0:
        raise ValueError(f"coreset size must be positive, got {n}")
    if projection_dim is not None and projection_dim < dim:
        proj = sparse_random_projection(dim, projection_dim, generator=generator, dtype=features.dtype)
        proj = proj.to(features.device)
        z = torch.cat([c @ proj for c in features.split(chunk_size)])
    else:
        z = features.contiguous()
    dev = z.device
    idx = int(torch.randint(num, (1,), generator=generator, device=generator.device))
    chosen = torch.empty(n, dtype=torch.long, device=dev)
    centres = torch.empty(n, z.shape[1], dtype=z.dtype, device=dev)
    min_d = torch.cat([torch.linalg.vector_norm(c - z[idx], dim=1) for c in z.split(chunk_size)])
    owner = torch.zeros(num, dtype=torch.long, device=dev)  # index (into `chosen`) of each point's nearest centre
    for i in range(n):
        chosen[i] = idx
        c = z[idx]
        centres[i] = c
        if i > 0:
            to_old = torch.linalg.vector_norm(centres[:i] - c, dim=1)  # |c - a| for every earlier centre a
            maybe = to_old[owner] < 2 * min_d
            # In high intrinsic dimension the bound prunes little: then gathering rows costs more than a sweep.
            cand = torch.arange(num, device=dev) if maybe.sum() * 3 > num else torch.nonzero(maybe).squeeze(1)
            for part in cand.split(chunk_size):
                d = torch.linalg.vector_norm(z[part] - c, dim=1)
                closer = d < min_d[part]
                upd = part[closer]
                min_d[upd] = d[closer]
                owner[upd] = i
        min_d[idx] = 0.0
        idx = int(min_d.argmax())
    return chosen


def nearest_neighbour(queries: torch.Tensor, bank: torch.Tensor, *, k: int = 1,
                      chunk_size: int | None = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance to the k nearest memory-bank entries, in chunks of queries (bounded memory; None:
    one search, as under a trace, which would freeze the number of chunks).

    Shape: queries (Q, D), bank (M, D) -> distances (Q, k), indices (Q, k), nearest first.
    """
    dists, idxs = [], []
    one = chunk_size is None or torch.jit.is_tracing()
    for q in [queries] if one else queries.split(chunk_size):
        d = torch.cdist(q, bank)
        _, i = d.topk(k, dim=1, largest=False) if k > 1 else d.min(1, keepdim=True)
        # cdist expands |a - b|^2 through a matrix product, whose cancellation errors grow to ~1e-2 for
        # near-identical vectors: recompute the k chosen distances directly.
        dists.append(torch.linalg.vector_norm(q.unsqueeze(1) - bank[i], dim=-1))
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)



@dataclass
class PatchCoreOptions(FeatureOptions):
    """PatchCore (see ``msacl.detectors.patchcore.PatchCore``)."""

    coreset_ratio: float = 0.1
    projection_dim: int = 128
    reweight: bool = False
    num_neighbors: int = 9

    def check(self) -> None:
        super().check()
        if not 0 < self.coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")


@register("patchcore")
class PatchCore(Detector):
    """PatchCore detector.

    Args:
        backbone: encoder backbone (weights: ``load_encoder``, which also sets the input normalisation).
        image_size: side of the square images it is fitted on; other sizes are resized to it in ``predict``.
        strides: feature taps of the patch features (8 + 16 = ResNet layer2 + layer3, as in the paper).
        coreset_ratio: fraction of all training patches kept in the memory bank (paper: 0.1; 1.0 keeps all).
        projection_dim: dimension of the random projection used for the coreset search (reference: 128).
        sigma: Gaussian blur of the pixel map in pixels (4); 0 disables it.
        reweight: multiply the image score by the paper's neighbourhood re-weighting.
        num_neighbors: neighbourhood size b of the re-weighting (reference: 9).

    Buffers: ``memory_bank`` (M, D) and ``n_train``.
    """

    Options: ClassVar[type[PatchCoreOptions]] = PatchCoreOptions
    options: PatchCoreOptions

    def __init__(self, options: PatchCoreOptions | None = None, /, **kwargs: Any):
        super().__init__(options, **kwargs)
        with seeded(self.options.init_seed):  # the random init, before any weights are loaded
            encoder = Encoder(self.options.backbone)
        strides = check_strides(self.options.strides, encoder.spec)
        self.options = dataclasses.replace(self.options, strides=strides)
        self.encoder = encoder
        # Inference runs on a BatchNorm-folded channels-last copy: ~40 % less CPU time than the plain encoder.
        self._features = FrozenFeatures()
        self.strides = strides
        self.image_size = self.options.image_size
        dim = sum(self.encoder.channels(s) for s in strides)
        self.pool = torch.nn.AvgPool2d(3, stride=1, padding=1)
        self.register_buffer("memory_bank", torch.zeros(0, dim))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The bank's size is only known after fitting: take the saved one before the shape check.
        bank = state_dict.get(prefix + "memory_bank")
        if isinstance(bank, torch.Tensor):
            self.memory_bank = torch.empty_like(bank, device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Locally aggregated patch features. Shape: (B, C, S, S) -> (B, D, h, w)."""
        feats = self._features(self.encoder, x, self.strides)
        size = feats[self.strides[0]].shape[-2:]
        parts = []
        for layer in self.strides:
            f = self.pool(feats[layer])
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            parts.append(f)
        return torch.cat(parts, 1)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor], *, generator: torch.Generator | None = None,
            progress: bool = False) -> PatchCore:
        """Collect all training patch features, then keep a greedy coreset of them as the memory bank.

        ``generator`` (None: seeded with 0) draws the projection and the first coreset point.
        """
        g = as_generator(generator)
        dev = self.memory_bank.device
        data = list(batches)
        for x in data:
            check_images(x, "patchcore.fit")
        self.adapt_batchnorm(resize_square(x.to(dev), self.image_size) for x in data)
        self.encoder.eval()
        feats, n = [], 0
        for x in tqdm(data, desc="patchcore features", unit="batch", disable=not progress):
            e = self.embed(resize_square(x.to(dev), self.image_size))
            feats.append(e.permute(0, 2, 3, 1).reshape(-1, e.shape[1]))
            n += x.shape[0]
        if n == 0:
            raise DataError("patchcore: no training images")
        bank = torch.cat(feats)
        del feats
        k = max(1, int(round(bank.shape[0] * self.options.coreset_ratio)))
        if k < bank.shape[0]:
            idx = greedy_coreset(bank, k, generator=g, projection_dim=self.options.projection_dim)
            bank = bank[idx]
        self.memory_bank = bank.contiguous()
        self.n_train.fill_(n)
        return self

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: (N, C, H, W) -> scores (N,), maps (N, 1, H, W) (:meth:`predict_resized`)."""
        if int(self.n_train) == 0:
            raise MsaclError("patchcore: predict called before fit (empty memory bank)")
        check_images(x, "patchcore.predict")
        self.encoder.eval()
        return self.predict_resized(x, self.memory_bank.device)

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each patch's distance to its nearest memory-bank entry, upsampled and smoothed into the pixel map;
        the image score is its maximum (times the re-weighting with ``reweight``).
        Shape: (B, C, N, N) -> (B,), (B, 1, N, N)."""
        e = self.embed(x)
        b, dim, h, w = e.shape
        q = e.permute(0, 2, 3, 1).reshape(-1, dim)
        dist, nn_idx = nearest_neighbour(q, self.memory_bank)
        patch = dist[:, 0].view(b, h, w)
        maps = to_image_map(patch, (self.image_size, self.image_size), self.options.sigma)
        scores = maps.flatten(1).amax(1)
        if self.options.reweight:
            scores = scores * self.reweighting(q.view(b, h * w, dim), dist[:, 0].view(b, -1),
                                               nn_idx[:, 0].view(b, -1))
        return scores, maps

    def reweighting(self, patches: torch.Tensor, dist: torch.Tensor, nn_idx: torch.Tensor) -> torch.Tensor:
        """Roth et al. 2022, Eq. 7: ``1 - exp|m* - m_nn| / sum_{m in N_b(m_nn)} exp|m* - m|`` for each image.

        m* is the image's patch farthest from the bank, m_nn its nearest bank entry and N_b(m_nn) the b nearest
        bank entries of m_nn (including itself).

        Shape: patches (B, P, D), dist (B, P), nn_idx (B, P) -> (B,).
        """
        rows = torch.arange(patches.shape[0], device=patches.device)
        worst = dist.argmax(1)
        m_star = patches[rows, worst]  # (B, D)
        m_nn = self.memory_bank[nn_idx[rows, worst]]  # (B, D)
        b = min(int(self.options.num_neighbors), self.memory_bank.shape[0])
        _, support = nearest_neighbour(m_nn, self.memory_bank, k=b)  # (B, b); support[:, 0] is m_nn itself
        d = torch.linalg.vector_norm(m_star.unsqueeze(1) - self.memory_bank[support], dim=-1)  # (B, b)
        return 1.0 - torch.softmax(d, dim=1)[:, 0]
