"""One training loop for every pre-training method, on Lightning Fabric (CPU, one GPU, DDP on N GPUs/nodes).

Determinism: the image order of epoch e comes from a generator seeded by (seed, e) and the augmentations
of step s from one seeded by (seed, e, s, rank), so a run resumed from its last checkpoint repeats the
interrupted epoch exactly and ends with the same weights as an uninterrupted run (on the same hardware
and world size). Under DDP the contrastive losses see the global batch: outputs are all-gathered with
their gradients, and the MSACL class centres are all-reduced.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from msacl.config import ConfigError
from msacl.data.types import ImageSet
from msacl.errors import MsaclError
from msacl.pretrain.centres import (  # noqa: F401 - centre helpers, importable from here as before
    BURNIN,
    CentreState,
    centre_separation,
    centres_and_spread,
    check_centres,
)
from msacl.pretrain.checkpoint import (  # noqa: F401 - checkpoint helpers, importable from here as before
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    restore_optimizer,
    restore_weights,
    save_checkpoint,
    save_encoder,
    trim_log,
)
from msacl.pretrain.config import OptimOptions, PretrainConfig
from msacl.pretrain.methods import Batch, Method, PretrainNet, build_method
from msacl.runs import RunDir, atomic_torch_save, derive_seed, make_generator, seeded
from msacl.runs.hardware import tune_backends

# Sub-streams of the run seed, so that no two uses of randomness share a generator.
_ORDER, _AUGMENT, _CENTRES, _TSNE, _INIT = 0, 1, 2, 3, 4


class NonFiniteLossError(MsaclError):
    """A loss term became NaN or infinite; the run stopped without saving the bad weights."""


def learning_rate(opt: OptimOptions, step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to 0 (or constant) at global step ``step``."""
    if step < warmup_steps:
        return opt.lr * (step + 1) / warmup_steps
    if opt.schedule == "constant":
        return opt.lr
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return opt.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def make_fabric(accelerator: str = "auto", devices: Any = 1, num_nodes: int = 1, precision: str = "32-true"):
    """A Fabric for the CLI's device options (``devices`` as given on the command line)."""
    from lightning.fabric import Fabric

    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            devices = [int(d) for d in devices.split(",") if d.strip()]
        elif devices.lstrip("-").isdigit():
            devices = int(devices)
    return Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, precision=precision)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), t.shape[0]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n: (ctx.rank + 1) * ctx.n]


def gather(fabric, t: torch.Tensor, *, grad: bool) -> torch.Tensor:
    """Concatenate ``t`` of every rank along dim 0 (rank order); with ``grad`` gradients flow back.

    Every rank computes the same global loss from the gathered tensors. The backward sums, for each
    rank's slice, the gradients of every rank's copy of that loss (W times the gradient of the loss),
    and DDP then averages over the W ranks, so the parameters get exactly the gradient of the
    single-process loss on the global batch. Every rank must pass the same number of rows.
    """
    if fabric is None or fabric.world_size == 1:
        return t
    if grad:
        return _GatherWithGrad.apply(t)
    return fabric.all_gather(t).flatten(0, 1)


def step_losses(
    fabric, model: nn.Module, method: Method, batch: Batch, centres: torch.Tensor | None, *, burnin: bool = False
) -> dict[str, torch.Tensor]:
    """Forward one rank's share of a batch and return the loss terms of the global batch (those of the
    burn-in without centres with ``burnin``, see :mod:`msacl.pretrain.centres`)."""
    out = model(batch.views, batch.patches)
    out = {k: gather(fabric, v, grad=True) for k, v in out.items()}
    pos = None if batch.pos_labels is None else gather(fabric, batch.pos_labels, grad=False)
    global_batch = replace(batch, labels=gather(fabric, batch.labels, grad=False), pos_labels=pos)
    return method.losses(out, global_batch, centres, burnin=burnin)


def initial_network(cfg: PretrainConfig, method: Method) -> PretrainNet:
    """The network a run with ``cfg`` starts from, the same for the same seed.

    torchvision initialises layers from the global RNG; the seed's own sub-stream (under seeded()) fixes the
    initial weights without touching the caller's random state. The backbone's classifier is not part of
    f_theta: it is frozen and left out of the optimiser, so encoder.pt keeps it as built.
    """
    with seeded(derive_seed(cfg.seed, _INIT)):
        raw = method.build_network()
    for name, p in raw.encoder.backbone.named_parameters():
        if name.startswith(raw.encoder.spec.head_prefixes):
            p.requires_grad_(False)
    return raw


def _steps_per_epoch(cfg: PretrainConfig, train: ImageSet, world: int) -> int:
    """Check the training set against the batch and the processes; the number of (full) batches per epoch."""
    n, gb = len(train), cfg.batch_size
    if gb % world:
        raise MsaclError(f"batch_size {gb} is not divisible by the {world} processes")
    if n < gb:
        raise MsaclError(f"only {n} training images for a batch of {gb}; lower --batch-size")
    if train.images.shape[1] not in (1, 3):
        raise MsaclError(f"training images have {train.images.shape[1]} channels; expected 1 or 3")
    return n // gb  # the last incomplete batch is dropped: contrastive losses want full batches


class _Pending(NamedTuple):
    """A step whose loss terms are still on the device, until ``_Run._flush_log`` reads them."""

    epoch: int
    step: int
    lr: float
    phase: str
    images: int  # through the encoder on this rank
    time_s: float  # the host clock at the step's end since the start (on an asynchronous device: when queued)
    terms: dict[str, torch.Tensor]


class _Run:
    """One pre-training run, in named steps sharing its state: set-up or resume (``__init__``), the epochs
    (each opening with the centre check of the burn-in, :mod:`msacl.pretrain.centres`), one step, the
    checkpoints, and the end (encoder.pt, the t-SNE picture)."""

    def __init__(self, cfg: PretrainConfig, train: ImageSet, out_dir: Path, fabric, *, resume: bool) -> None:
        self.cfg, self.train, self.out_dir, self.fabric = cfg, train, out_dir, fabric
        self.steps_per_epoch = _steps_per_epoch(cfg, train, fabric.world_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = cfg.optim.warmup_epochs * self.steps_per_epoch
        self.local_b = cfg.batch_size // fabric.world_size
        # The training set moves to the device once (ODIR at 256 px is 1.4 GB in float32), not a batch a step.
        self.images = train.images.to(fabric.device)
        self.ckpt_path, self.log_path, self.enc_path = (
            out_dir / "checkpoint.pt", out_dir / "log.jsonl", out_dir / "encoder.pt")
        if not resume and self.ckpt_path.is_file():
            raise MsaclError(f"{out_dir} already holds a pre-training run (checkpoint.pt); pass resume=True to "
                             "continue it, or choose another directory")
        ckpt = load_checkpoint(self.ckpt_path, cfg) if resume else None
        self._build(ckpt)
        if ckpt is not None:
            self.start_epoch, self.global_step = ckpt["epoch"], ckpt["global_step"]
            self.state = CentreState.from_checkpoint(ckpt, fabric.device)
        else:
            self.start_epoch, self.global_step = 0, 0
            self.state = CentreState.start(cfg, self.method)
        self.saved_epoch = self.start_epoch if ckpt is not None else None  # the epoch of checkpoint.pt
        self._open_run_dir(resumed=ckpt is not None)

    def _build(self, ckpt: dict[str, Any] | None) -> None:
        """The method, its network and optimiser set up on the fabric, with the checkpoint's state if resuming."""
        cfg, fabric = self.cfg, self.fabric
        try:
            self.method = build_method(cfg, image_size=min(self.train.images.shape[-2:]))
        except (ValueError, TypeError) as e:  # a bad family name, family or WeakAugment option, too small images
            raise ConfigError(f"cannot set up {cfg.method} pre-training: {e}") from None
        raw = initial_network(cfg, self.method)
        if fabric.world_size > 1 and cfg.sync_batchnorm and fabric.device.type != "cpu":
            raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
        if ckpt is not None:
            restore_weights(self.ckpt_path, raw, ckpt["model"])
        if cfg.channels_last:
            raw = raw.to(memory_format=torch.channels_last)
        # Two groups: the backbone's (at backbone_lr_mult x lr, frozen in the head warm-up) and the heads'.
        self.backbone_params = [p for p in raw.encoder.parameters() if p.requires_grad]
        backbone_ids = set(map(id, self.backbone_params))
        heads = [p for p in raw.parameters() if p.requires_grad and id(p) not in backbone_ids]
        self.opt_raw = torch.optim.SGD(
            [{"params": self.backbone_params, "lr_mult": cfg.optim.backbone_lr_mult},
             {"params": heads, "lr_mult": 1.0}],
            lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        self.raw = raw
        self.model, self.optimizer = fabric.setup(raw, self.opt_raw)
        if cfg.compile:
            self.model = torch.compile(self.model)
        if ckpt is not None:
            restore_optimizer(self.ckpt_path, self.opt_raw, ckpt["optimizer"])

    def _open_run_dir(self, *, resumed: bool) -> None:
        """config.yaml, command.txt, meta.json, and log.jsonl emptied (new run) or cut at the checkpoint."""
        if self.fabric.is_global_zero:
            RunDir.create(self.out_dir, config=self.cfg, seed=self.cfg.seed, command="pretrain")
            if resumed:
                trim_log(self.log_path, self.global_step)
            else:
                self.log_path.write_text("")
        self.fabric.barrier()

    def train_epochs(self, progress: bool) -> None:
        """The epochs left, with a progress bar on stderr and one log.jsonl line per step."""
        from tqdm.auto import tqdm

        cfg, zero = self.cfg, self.fabric.is_global_zero
        self.bar = tqdm(total=self.total_steps, initial=self.global_step, desc=f"pretrain {cfg.method}",
                        unit="step", file=sys.stderr, dynamic_ncols=True, disable=not (progress and zero))
        self.log = open(self.log_path, "a") if zero else None  # noqa: SIM115 - closed in finally
        self.pending: list[_Pending] = []
        self.t0 = self.t_flush = time.perf_counter()
        try:
            self.model.train()
            for epoch in range(self.start_epoch, cfg.epochs):
                self._epoch(epoch, progress)
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    self._checkpoint(epoch + 1)
        finally:
            self.bar.close()
            if self.log is not None:
                self.log.close()

    def _epoch(self, epoch: int, progress: bool) -> None:
        cfg = self.cfg
        if self.method.uses_centres and self.state.centres is None:  # the start, or a burn-in epoch's
            check_centres(self.fabric, self.raw, self.method, self.train.images, cfg, self.state, epoch=epoch,
                          global_step=self.global_step, seed=derive_seed(cfg.seed, _CENTRES),
                          out=self.out_dir / "centres.json", progress=progress)
        burnin = self.state.phase == BURNIN
        # Head warm-up: a backbone without gradients takes no step (no momentum, no weight decay either).
        warm = epoch < cfg.optim.head_warmup_epochs
        for p in self.backbone_params:
            p.requires_grad_(not warm)
        order = torch.randperm(len(self.train), generator=make_generator(derive_seed(cfg.seed, _ORDER, epoch)))
        for step in range(self.steps_per_epoch):
            self._step(epoch, step, order, burnin=burnin)
        self._flush_log()

    def _step(self, epoch: int, step: int, order: torch.Tensor, *, burnin: bool) -> None:
        """One optimiser step on this rank's share of global batch ``step`` of the epoch's ``order``.

        The loss terms stay on the device; :meth:`_flush_log` reads them every ``log_every`` steps (one host
        synchronisation), writes their log lines and stops the run at the first non-finite one.
        """
        cfg, fabric, rank = self.cfg, self.fabric, self.fabric.global_rank
        lo = step * cfg.batch_size + rank * self.local_b
        x = self.images[order[lo: lo + self.local_b].to(self.images.device)].to(fabric.device, non_blocking=True)
        g = make_generator(derive_seed(cfg.seed, _AUGMENT, epoch, step, rank), fabric.device)
        lr = learning_rate(cfg.optim, self.global_step, self.total_steps, self.warmup)
        for group in self.opt_raw.param_groups:
            group["lr"] = lr * group["lr_mult"]
        batch = self.method.make_batch(x, generator=g)
        if self.cfg.channels_last:
            batch = replace(batch, views=batch.views.contiguous(memory_format=torch.channels_last))
        terms = step_losses(fabric, self.model, self.method, batch, self.state.centres, burnin=burnin)
        self.optimizer.zero_grad(set_to_none=True)
        fabric.backward(terms["loss"])
        self.optimizer.step()
        self.global_step += 1
        self.pending.append(_Pending(epoch, step, lr, self.state.phase, batch.encoder_images,
                                     time.perf_counter() - self.t0, {k: v.detach() for k, v in terms.items()}))
        if len(self.pending) >= cfg.log_every:
            self._flush_log()

    def _flush_log(self) -> None:
        """Read the pending steps' loss terms (one synchronisation), check them, log them, move the bar."""
        if not self.pending:
            return
        keys = list(self.pending[0].terms)
        values = torch.stack([torch.stack([p.terms[k].float() for k in keys]) for p in self.pending]).tolist()
        now = time.perf_counter()
        ips = sum(p.images for p in self.pending) * self.fabric.world_size / max(now - self.t_flush, 1e-9)
        first_step = self.global_step - len(self.pending)
        for i, (p, row) in enumerate(zip(self.pending, values, strict=True)):
            vals = dict(zip(keys, row, strict=True))
            self._check_finite(vals, p.epoch, p.step, first_step + i)
            if self.log is not None:
                rec = {"epoch": p.epoch + 1, "step": p.step + 1, "global_step": first_step + i + 1,
                       "phase": p.phase, "lr": p.lr, **vals, "images_per_s": ips, "time_s": p.time_s}
                self.log.write(json.dumps(rec) + "\n")
        if self.log is not None:
            self.log.flush()
        self.bar.set_postfix({**{k: f"{v:.3f}" for k, v in vals.items()}, "img/s": f"{ips:.0f}"}, refresh=False)
        self.bar.update(len(self.pending))
        self.pending, self.t_flush = [], now

    def _check_finite(self, values: dict[str, float], epoch: int, step: int, done_steps: int) -> None:
        """Stop at a NaN or infinite loss term (a term before the total), naming the step; the checkpoint on
        disk was written before it (checkpoints follow a flush of every step of their epoch)."""
        bad = [k for k, v in values.items() if not math.isfinite(v) and k != "loss"] or (
            ["loss"] if not math.isfinite(values["loss"]) else [])
        if not bad:
            return
        kept = (f"the last good checkpoint {self.ckpt_path} (after epoch {self.saved_epoch}) is kept"
                if self.saved_epoch is not None else "no checkpoint had been written yet")
        precision = str(getattr(self.fabric.strategy.precision, "precision", "32-true"))
        hint = f", train in --precision 32-true instead of {precision}" if precision != "32-true" else ""
        raise NonFiniteLossError(
            f"loss term '{bad[0]}' is {values[bad[0]]} at epoch {epoch + 1}, step {step + 1} "
            f"(global step {done_steps + 1}); training stopped and {kept}. "
            f"Try a lower learning rate (--set optim.lr=...){hint} or check the images for NaNs"
        )

    def _checkpoint(self, epoch: int) -> None:
        """checkpoint.pt and encoder.pt after ``epoch`` epochs (written by rank 0)."""
        if self.fabric.is_global_zero:
            save_checkpoint(self.ckpt_path, cfg=self.cfg, raw=self.raw, optimizer=self.opt_raw, centres=self.state,
                            epoch=epoch, global_step=self.global_step)
            save_encoder(self.raw, self.enc_path)
        self.saved_epoch = epoch
        self.fabric.barrier()

    def finish(self, test: ImageSet | None) -> None:
        """encoder.pt if a resumed run had already finished, and embedding.pt: the encoder's features of (a seeded
        subsample of) ``test`` with their labels. The engine draws nothing: the report side's ``plot_run_tsne``
        (report/tsne.py) makes tsne.png from that file."""
        cfg, fabric = self.cfg, self.fabric
        if not self.enc_path.is_file() and fabric.is_global_zero:  # resumed a run that had already finished
            save_encoder(self.raw, self.enc_path)
        if test is not None and cfg.tsne and fabric.is_global_zero:
            from msacl.pretrain.embedding import tsne_inputs

            tsne_seed = derive_seed(cfg.seed, _TSNE)
            picked = tsne_inputs(self.raw, test, seed=tsne_seed, max_images=cfg.tsne_max_images,
                                 batch_size=cfg.batch_size, device=fabric.device)
            if picked is not None:
                atomic_torch_save({"features": picked[0], "labels": picked[1], "tsne_seed": tsne_seed % 2**32,
                                   "seed": cfg.seed}, self.out_dir / "embedding.pt")
        fabric.barrier()


def pretrain(
    cfg: PretrainConfig,
    train: ImageSet,
    out_dir: str | Path,
    *,
    test: ImageSet | None = None,
    fabric=None,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Pre-train an encoder on normal images and write a run directory.

    Writes ``out_dir``/config.yaml, command.txt, meta.json (RunDir), log.jsonl (one line per step),
    checkpoint.pt (every ``cfg.checkpoint_every`` epochs and at the end), encoder.pt (a plain
    torchvision / timm state dict of the backbone) with encoder.json (backbone, normalisation, weights' source),
    for methods with class centres centres.json (``centre_separation``)
    and, with a ``test`` split, embedding.pt (the encoder's features of the test images, MSACL Fig. 1), which
    the report side draws as tsne.png (``msacl pretrain`` calls ``plot_run_tsne(out_dir)`` of report/tsne.py
    when this returns).

    Args:
        cfg: the run's settings.
        train: training images (all normal).
        out_dir: run directory.
        test: test images (normal and abnormal) for the t-SNE picture, or None.
        fabric: a launched ``lightning.fabric.Fabric``; None uses one device (GPU if available).
        progress: show a tqdm bar on stderr.
        resume: continue from ``out_dir``/checkpoint.pt.

    Returns:
        Path of encoder.pt.
    """
    cfg.validate()
    fabric = make_fabric() if fabric is None else fabric
    tune_backends(fabric.device)
    run = _Run(cfg, train, Path(out_dir), fabric, resume=resume)
    run.train_epochs(progress)
    run.finish(test)
    return run.enc_path
