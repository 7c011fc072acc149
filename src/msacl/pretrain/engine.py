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
from typing import Any

import torch
from torch import nn

from msacl.config import ConfigError, from_dict, to_dict
from msacl.data.types import ImageSet
from msacl.errors import CheckpointError, MsaclError
from msacl.pretrain.centres import (  # noqa: F401 - centre helpers, importable from here as before
    BURNIN,
    CentreState,
    centre_separation,
    centres_and_spread,
    check_centres,
)
from msacl.pretrain.config import OptimOptions, PretrainConfig
from msacl.pretrain.methods import Batch, Method, PretrainNet, build_method
from msacl.runs import (
    RunDir,
    atomic_torch_save,
    derive_seed,
    make_generator,
    read_torch_file,
    seeded,
    write_json,
)

CHECKPOINT_FORMAT = "msacl-pretrain"
CHECKPOINT_VERSION = 2
# Settings a resumed run must share with its checkpoint; the others (epochs, lr, ...) may change.
_RESUME_KEYS = ("method", "strong", "scope", "local_size", "batch_size", "seed", "model.backbone", "model.init",
                "model.proj_hidden", "model.proj_dim", "model.pos_hidden")
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


def _identity(cfg: PretrainConfig) -> dict[str, Any]:
    """The settings of _RESUME_KEYS, with the strong family as actually used (None -> the default)."""
    flat = _flat(to_dict(cfg))
    flat["strong"] = cfg.strong_family()
    return {k: flat[k] for k in _RESUME_KEYS}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("model", "loss", "optim", "data"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_checkpoint(
    path: Path, *, cfg: PretrainConfig, raw: PretrainNet, optimizer: torch.optim.Optimizer,
    centres: CentreState, epoch: int, global_step: int,
) -> None:
    """Write everything a resumed run needs, atomically (a kill mid-write leaves the previous file).

    ``centres`` gives the phase, the frozen centres (None during the burn-in) and the centre checks so far.
    """
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": to_dict(cfg),
            "epoch": epoch,
            "global_step": global_step,
            "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            **centres.checkpoint(),
        },
        path,
    )


def load_checkpoint(path: str | Path, cfg: PretrainConfig | None = None) -> dict[str, Any]:
    """Read a checkpoint (weights only) and check it belongs to a run like ``cfg``."""
    path = Path(path)
    ckpt = read_torch_file(path, error=CheckpointError, what="checkpoint", missing="no checkpoint to resume from")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an msacl pre-training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not supported "
                              f"(this msacl reads version {CHECKPOINT_VERSION})")
    if cfg is not None:
        try:
            theirs = _identity(from_dict(PretrainConfig, ckpt["config"]))
        except (ConfigError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: its settings cannot be read by this msacl ({e})") from None
        ours = _identity(cfg)
        diff = [f"{k}: checkpoint {theirs.get(k)!r}, now {ours.get(k)!r}"
                for k in _RESUME_KEYS if theirs.get(k) != ours.get(k)]
        if diff:
            raise CheckpointError(f"{path}: written by a run with other settings; " + "; ".join(diff))
    return ckpt


def _load_model_state(path: Path, raw: nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        raw.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{path}: weights do not fit this network ({detail})") from None


def save_encoder(raw: PretrainNet, path: Path) -> None:
    """encoder.pt: the backbone's plain torchvision / timm state dict (float32, CPU, classifier untouched) with
    its input normalisation in the metadata; the same facts in encoder.json beside it, for people."""
    atomic_torch_save(raw.encoder.export_state(), path)
    write_json(path.with_suffix(".json"), raw.encoder.metadata())


def _clean_log(log: Path, upto_step: int) -> None:
    """Keep the log lines of steps up to ``upto_step`` (a resumed run repeats the later ones)."""
    if not log.is_file():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the run was killed
        if rec.get("global_step", 0) <= upto_step:
            keep.append(line)
    log.write_text("".join(x + "\n" for x in keep))


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
    and, with a ``test`` split, tsne.png.

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
    from tqdm.auto import tqdm

    cfg.validate()
    if fabric is None:
        fabric = make_fabric()
    out_dir = Path(out_dir)
    world, rank = fabric.world_size, fabric.global_rank
    n = len(train)
    gb = cfg.batch_size
    if gb % world:
        raise MsaclError(f"batch_size {gb} is not divisible by the {world} processes")
    if n < gb:
        raise MsaclError(f"only {n} training images for a batch of {gb}; lower --batch-size")
    if train.images.shape[1] not in (1, 3):
        raise MsaclError(f"training images have {train.images.shape[1]} channels; expected 1 or 3")
    local_b = gb // world
    steps_per_epoch = n // gb  # the last incomplete batch is dropped: contrastive losses want full batches
    total_steps = steps_per_epoch * cfg.epochs
    image_size = min(train.images.shape[-2:])

    ckpt_path, log_path, enc_path = out_dir / "checkpoint.pt", out_dir / "log.jsonl", out_dir / "encoder.pt"
    if not resume and ckpt_path.is_file():
        raise MsaclError(f"{out_dir} already holds a pre-training run (checkpoint.pt); pass resume=True to continue "
                         "it, or choose another directory")
    ckpt = load_checkpoint(ckpt_path, cfg) if resume else None

    try:
        method = build_method(cfg, image_size=image_size)
    except (ValueError, TypeError) as e:  # a bad family name, family or WeakAugment option, too small images
        raise ConfigError(f"cannot set up {cfg.method} pre-training: {e}") from None
    # torchvision initialises layers from the global RNG; seeded() fixes the initial weights without
    # touching the caller's random state.
    with seeded(derive_seed(cfg.seed, _INIT)):
        raw = method.build_network()
    # The classifier is not part of f_theta: frozen and left out of the optimiser, so encoder.pt keeps it as built.
    for name, p in raw.encoder.backbone.named_parameters():
        if name.startswith(raw.encoder.spec.head_prefixes):
            p.requires_grad_(False)
    if world > 1 and cfg.sync_batchnorm and fabric.device.type != "cpu":
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    if ckpt is not None:
        _load_model_state(ckpt_path, raw, ckpt["model"])
    params = [p for p in raw.parameters() if p.requires_grad]
    opt_raw = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                              weight_decay=cfg.optim.weight_decay)
    model, optimizer = fabric.setup(raw, opt_raw)
    if ckpt is not None:
        try:
            opt_raw.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_path}: optimiser state does not fit this network ({e})") from None
    device = fabric.device

    start_epoch, global_step = (ckpt["epoch"], ckpt["global_step"]) if ckpt is not None else (0, 0)
    state = CentreState.from_checkpoint(ckpt, device) if ckpt is not None else CentreState.start(cfg, method)

    if fabric.is_global_zero:
        RunDir.create(out_dir, config=cfg, seed=cfg.seed, command="pretrain")
        if ckpt is not None:
            _clean_log(log_path, global_step)
        else:
            log_path.write_text("")
    fabric.barrier()

    warmup = cfg.optim.warmup_epochs * steps_per_epoch
    bar = tqdm(total=total_steps, initial=global_step, desc=f"pretrain {cfg.method}", unit="step",
               file=sys.stderr, dynamic_ncols=True, disable=not (progress and fabric.is_global_zero))
    log = open(log_path, "a") if fabric.is_global_zero else None  # noqa: SIM115 - closed in finally
    saved_epoch = start_epoch if ckpt is not None else None
    t0 = time.perf_counter()
    try:
        model.train()
        for epoch in range(start_epoch, cfg.epochs):
            if method.uses_centres and state.centres is None:  # the start, or a burn-in epoch's (centres.py)
                check_centres(fabric, raw, method, train.images, cfg, state, epoch=epoch, global_step=global_step,
                              seed=derive_seed(cfg.seed, _CENTRES), out=out_dir / "centres.json", progress=progress)
            burnin = state.phase == BURNIN
            order = torch.randperm(n, generator=make_generator(derive_seed(cfg.seed, _ORDER, epoch)))
            for step in range(steps_per_epoch):
                t_step = time.perf_counter()
                lo = step * gb + rank * local_b
                x = train.images[order[lo: lo + local_b]].to(device, non_blocking=True)
                g = make_generator(derive_seed(cfg.seed, _AUGMENT, epoch, step, rank), device)
                lr = learning_rate(cfg.optim, global_step, total_steps, warmup)
                for group in opt_raw.param_groups:
                    group["lr"] = lr
                batch = method.make_batch(x, generator=g)
                terms = step_losses(fabric, model, method, batch, state.centres, burnin=burnin)
                values = {k: v.item() for k, v in terms.items()}
                bad = [k for k, v in values.items() if not math.isfinite(v) and k != "loss"] or (
                    ["loss"] if not math.isfinite(values["loss"]) else [])
                if bad:
                    kept = (f"the last good checkpoint {ckpt_path} (after epoch {saved_epoch}) is kept"
                            if saved_epoch is not None else "no checkpoint had been written yet")
                    precision = str(getattr(fabric.strategy.precision, "precision", "32-true"))
                    hint = f", train in --precision 32-true instead of {precision}" if precision != "32-true" else ""
                    raise NonFiniteLossError(
                        f"loss term '{bad[0]}' is {values[bad[0]]} at epoch {epoch + 1}, step {step + 1} "
                        f"(global step {global_step + 1}); training stopped and {kept}. "
                        f"Try a lower learning rate (--set optim.lr=...){hint} or check the images for NaNs"
                    )
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(terms["loss"])
                optimizer.step()
                global_step += 1
                dt = time.perf_counter() - t_step
                ips = batch.encoder_images * world / dt
                if log is not None:
                    rec = {"epoch": epoch + 1, "step": step + 1, "global_step": global_step, "phase": state.phase,
                           "lr": lr, **values, "images_per_s": ips, "time_s": time.perf_counter() - t0}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                bar.set_postfix({**{k: f"{v:.3f}" for k, v in values.items()}, "img/s": f"{ips:.0f}"},
                                refresh=False)
                bar.update(1)
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.checkpoint_every == 0 or last:
                if fabric.is_global_zero:
                    save_checkpoint(ckpt_path, cfg=cfg, raw=raw, optimizer=opt_raw, centres=state,
                                    epoch=epoch + 1, global_step=global_step)
                    save_encoder(raw, enc_path)
                saved_epoch = epoch + 1
                fabric.barrier()
    finally:
        bar.close()
        if log is not None:
            log.close()

    if not enc_path.is_file() and fabric.is_global_zero:  # resumed a run that had already finished
        save_encoder(raw, enc_path)
    if test is not None and cfg.tsne and fabric.is_global_zero:
        from msacl.pretrain.embedding import TSNE_TITLE, tsne_inputs
        from msacl.report import plot_tsne

        # The features are computed here; the report draws them, its title naming the seed the user gave.
        tsne_seed = derive_seed(cfg.seed, _TSNE)
        picked = tsne_inputs(raw, test, seed=tsne_seed, max_images=cfg.tsne_max_images, batch_size=gb, device=device)
        if picked is not None:
            plot_tsne(picked[0].numpy(), picked[1].numpy(), out_dir / "tsne.png", seed=tsne_seed % 2**32,
                      title=TSNE_TITLE, shown_seed=cfg.seed)
    fabric.barrier()
    return enc_path

