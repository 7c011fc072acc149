"""The shared engine of the trained detectors (IGD, F-anoGAN, MS-SSIM AE, DAE): data checks, the epoch
loop with a tqdm bar, seeded weight initialisation, 32 x 32 patch extraction and the patch heat map.

Losses and scores are pure functions in each detector's module; a detector only defines its per-batch
step, and ``run_epochs`` owns the pass over the data (shuffling, progress, learning-rate decay).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from msacl.config import ConfigError
from msacl.detectors.base import Detector
from msacl.detectors.common import check_images, evaluating
from msacl.errors import DataError
from msacl.models.decoders import image_hw
from msacl.runs import child_seed, make_generator

StepFn = Callable[[torch.Tensor, torch.Generator], dict[str, float]]


def collect_images(batches: Iterable[torch.Tensor], *, image_size: tuple[int, int], channels: int,
                   who: str) -> torch.Tensor:
    """Concatenate the training batches once (several epochs need to see them again) and check them.

    Raises:
        DataError: naming the batch and what is wrong (shape, size, channels, range, too few images).

    Shape: yields (B, C, H, W) float in [0, 1] -> (N, C, H, W).
    """
    parts = []
    for i, b in enumerate(batches):
        if not isinstance(b, torch.Tensor) or b.ndim != 4 or not b.is_floating_point():
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise DataError(f"{who}: training batch {i} must be a float (B, C, H, W) tensor, got {got}")
        check_images(b, f"{who}: training batch {i}", image_size=image_size, channels=channels)
        parts.append(b)
    if not parts or sum(p.shape[0] for p in parts) < 2:
        raise DataError(f"{who}: needs at least 2 training images, got {sum(p.shape[0] for p in parts)}")
    return torch.cat(parts)


def run_epochs(data: torch.Tensor, step: StepFn, *, epochs: int, batch_size: int, generator: torch.Generator,
               optimizers: Sequence[torch.optim.Optimizer] = (), lr_power: float | None = None,
               device: torch.device | None = None, progress: bool = False, desc: str = "fit",
               on_epoch_start: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Shuffle ``data`` each epoch with ``generator`` and call ``step(batch, generator)`` per mini-batch.

    A final batch of one image is dropped (BatchNorm cannot train on it). With ``lr_power`` the learning
    rate of every optimiser decays polynomially per step, ``lr0 * (1 - t / T) ** lr_power`` (IGD release).

    Returns:
        per epoch, the mean of each loss over the steps that reported it.
    """
    n = data.shape[0]
    per_epoch = n // batch_size + (1 if n % batch_size > 1 else 0)
    total = max(1, epochs * per_epoch)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    history: list[dict[str, float]] = []
    bar = tqdm(total=total, desc=desc, disable=not progress, file=sys.stderr, leave=False)
    t = 0
    try:
        for epoch in range(epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            order = torch.randperm(n, generator=generator, device=generator.device).cpu()
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for i in range(per_epoch):
                idx = order[i * batch_size:(i + 1) * batch_size]
                if lr_power is not None:
                    for opt in optimizers:
                        for group in opt.param_groups:
                            group["lr"] = group["initial_lr"] * (1 - t / total) ** lr_power
                x = data[idx]
                if device is not None:
                    x = x.to(device)
                losses = step(x, generator)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
                t += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            history.append({k: v / counts[k] for k, v in sums.items()})
    finally:
        bar.close()
    return history


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fixed-seed one so that a call without it is still reproducible."""
    return generator if generator is not None else make_generator(0)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (module construction / re-initialisation) under a fixed seed without touching the
    caller's global RNG state: ``torch.nn`` initialisers only draw from the global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def reinit(modules: Iterable[nn.Module], generator: torch.Generator) -> None:
    """Re-initialise every layer with ``reset_parameters`` in ``modules``, seeded from ``generator``."""
    with seeded(child_seed(generator)):
        for module in modules:
            for m in module.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()


def rand(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) numbers drawn from ``generator`` and placed on ``like``'s device and dtype."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(like)


def randn(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers drawn from ``generator`` on ``like``'s device and dtype."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(like)


def randperm(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(like.device)


# ---------------------------------------------------------------- patches (the local models)

def patch_grid(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one side: every ``stride`` pixels, plus a last patch flush with the edge."""
    if size < patch:
        raise ValueError(f"image side {size} is smaller than the patch size {patch}")
    offs = list(range(0, size - patch + 1, stride))
    if offs[-1] != size - patch:
        offs.append(size - patch)
    return offs


def extract_patches(x: torch.Tensor, *, patch: int = 32, stride: int = 16) -> torch.Tensor:
    """All grid patches of each image, image-major.

    Shape: (B, C, H, W) -> (B * P, C, patch, patch), P = len(patch_grid(H)) * len(patch_grid(W)).
    """
    rows, cols = patch_grid(x.shape[2], patch, stride), patch_grid(x.shape[3], patch, stride)
    tiles = [x[:, :, r:r + patch, c:c + patch] for r in rows for c in cols]
    return torch.stack(tiles, 1).flatten(0, 1)


def sample_patches(x: torch.Tensor, k: int, generator: torch.Generator, *, patch: int = 32,
                   stride: int = 16) -> torch.Tensor:
    """``k`` grid patches per image, chosen at random with ``generator``.

    Shape: (B, C, H, W) -> (B * k, C, patch, patch).
    """
    rows, cols = patch_grid(x.shape[2], patch, stride), patch_grid(x.shape[3], patch, stride)
    b = x.shape[0]
    r = torch.randint(len(rows), (b, k), generator=generator, device=generator.device).cpu()
    c = torch.randint(len(cols), (b, k), generator=generator, device=generator.device).cpu()
    tiles = [x[i, :, rows[r[i, j]]:rows[r[i, j]] + patch, cols[c[i, j]]:cols[c[i, j]] + patch]
             for i in range(b) for j in range(k)]
    return torch.stack(tiles)


def spread_patch_scores(scores: torch.Tensor, hw: tuple[int, int], *, patch: int = 32,
                        stride: int = 16) -> torch.Tensor:
    """Give every pixel the mean score of the patches that cover it.

    Shape: scores (B, P) in ``extract_patches`` order -> (B, 1, H, W).
    """
    rows, cols = patch_grid(hw[0], patch, stride), patch_grid(hw[1], patch, stride)
    total = scores.new_zeros(scores.shape[0], 1, *hw)
    count = scores.new_zeros(1, 1, *hw)
    p = 0
    for r in rows:
        for c in cols:
            total[:, :, r:r + patch, c:c + patch] += scores[:, p].view(-1, 1, 1, 1)
            count[:, :, r:r + patch, c:c + patch] += 1
            p += 1
    return total / count


def in_chunks(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor,
              chunk: int = 512) -> tuple[torch.Tensor, ...]:
    """Apply ``fn`` to slices of ``x`` along dim 0 and concatenate each output (bounded memory)."""
    outs = [fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


# ---------------------------------------------------------------- the shared detector shell

def check_unit(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def check_positive(name: str, value: float, *, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


class TwoScaleDetector(Detector):
    """A detector made of a global network on whole images and, with ``local=True``, a second one on
    ``patch_size`` patches (stride ``patch_stride``), as IGD and CCD train them.

    Weights: the global encoder is ``det.model.encoder`` (also ``det.encoder``), the local one
    ``det.local.encoder``; ``det.load_encoder(source)`` and ``det.load_encoder(source, part="local")`` load
    them (with their input normalisation) before ``fit``.

    Construction is deterministic: the networks are initialised under ``torch.manual_seed(init_seed)``
    inside ``torch.random.fork_rng`` (the caller's global RNG is untouched). ``fit`` then re-initialises
    the new layers (latent head, decoder, critic; not the encoder, whose weights the CLI may have loaded)
    from the generator it is given, and draws every other random number (shuffling, patches, noise,
    interpolation coefficients, GAN latents) from that generator too.
    """

    def __init__(self, **config: Any):
        super().__init__(**config)
        self.hw = image_hw(config["image_size"])
        self.channels_ = int(config["channels"])
        check_positive("epochs", config["epochs"], minimum=0)
        check_positive("batch_size", config["batch_size"], minimum=2)
        if config["local"]:
            p = int(config["patch_size"])
            image_hw(p)
            if p > min(self.hw):
                raise ConfigError(f"patch_size {p} is larger than the image ({self.hw[0]} x {self.hw[1]})")
            check_positive("patch_stride", config["patch_stride"])
            check_positive("patches_per_image", config["patches_per_image"])
        with seeded(config["init_seed"]):
            self.model = self.build_net(self.hw)
            self.local = self.build_net((config["patch_size"],) * 2) if config["local"] else None

    def build_net(self, hw: tuple[int, int]) -> nn.Module:
        raise NotImplementedError

    @property
    def encoder(self) -> nn.Module:
        """The global model's ``Encoder`` (weights in ``.backbone``)."""
        return self.model.encoder

    def encoder_parts(self) -> dict[str, nn.Module]:
        return {name: net.encoder for name, net in self.nets()}

    def nets(self) -> list[tuple[str, nn.Module]]:
        return [("global", self.model)] + ([("local", self.local)] if self.local is not None else [])

    def new_layers(self, net: nn.Module) -> list[nn.Module]:
        """Layers ``fit`` re-initialises from its generator (everything but the encoder)."""
        return [m for name, m in net.named_children() if name != "encoder"]

    def device(self) -> torch.device:
        return next(self.parameters()).device

    def fit(self, batches: Iterable[torch.Tensor], *, generator: torch.Generator | None = None,
            progress: bool = False) -> TwoScaleDetector:
        data = collect_images(batches, image_size=self.hw, channels=self.channels_, who=self.name)
        g = default_generator(generator)
        for _, net in self.nets():
            reinit(self.new_layers(net), g)
        self.train()
        self.history = self.fit_data(data, g, progress=progress)
        self.eval()
        return self

    def fit_data(self, data: torch.Tensor, g: torch.Generator, *, progress: bool) -> list[dict[str, float]]:
        """Train on (N, C, H, W) images (kept where they are; batches move to the model's device)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_images(x, f"{self.name}.predict", image_size=self.hw, channels=self.channels_)
        with evaluating(self):
            scores, maps = self.predict_images(x.to(self.device()))
        return scores.to(x.device), maps.to(x.device)

    def predict_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # helpers for the local network
    def local_batch(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random training patches: ``patches_per_image`` per image. Shape: (B, C, H, W) -> (B * k, C, p, p)."""
        c = self.config
        return sample_patches(x, int(c["patches_per_image"]), g, patch=int(c["patch_size"]),
                              stride=int(c["patch_stride"]))

    def local_apply(self, x: torch.Tensor,
                    fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        """``fn`` on every grid patch of every image, outputs regrouped per image.

        Shape: (B, C, H, W) -> each output of ``fn`` (B * P, ...) as (B, P, ...).
        """
        c = self.config
        patches = extract_patches(x, patch=int(c["patch_size"]), stride=int(c["patch_stride"]))
        outs = in_chunks(fn, patches, chunk=max(2, 4 * int(c["batch_size"])))
        return tuple(o.view(x.shape[0], -1, *o.shape[1:]) for o in outs)

    def spread(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """Shape: (B, P) -> (B, 1, H, W), see ``spread_patch_scores``."""
        c = self.config
        return spread_patch_scores(patch_scores, self.hw, patch=int(c["patch_size"]), stride=int(c["patch_stride"]))


    def with_local(self, x: torch.Tensor, score: torch.Tensor, pixel: torch.Tensor,
                   patch_score: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the local model's view to the global one: ``nu * s_G + (1 - nu) * mean patch s_L`` as the image
        score, and each patch's score spread over its pixels added to the map. Without a local model,
        ``(score, pixel)`` unchanged.

        Shape: x (B, C, H, W), score (B,), pixel (B, 1, H, W); ``patch_score``: (N, C, p, p) -> (N,).
        """
        if self.local is None:
            return score, pixel
        (s_p,) = self.local_apply(x, lambda p: (patch_score(p),))
        nu = self.config["nu"]
        return nu * score + (1 - nu) * s_p.mean(1), pixel + self.spread(s_p)


def config_of(local_vars: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from ``locals()`` (minus ``self``), the JSON-like ``Detector.config``."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}
