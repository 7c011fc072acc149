"""MSACL's class centres (Eq. 2): their computation, how far apart they lie, and the burn-in before freezing them.

Eq. 2's centres are "computed at the beginning of the training and frozen". Frozen centres of an encoder
that cannot yet tell the strong-augmentation classes apart make Eq. 3 and Eq. 6 satisfiable by an encoder
that ignores its input (issue 11). Our reading of the paper: the centres are computed once, from an encoder
that separates the classes. Where the initial encoder does not (a random initialisation), a burn-in trains
the same pretext without centres (l_aug + l_pos + Eq. 5 with c_n = 0), checking once per epoch whether the
closest pair of centres lies at least ``loss.burnin_ratio`` x the samples' RMS spread from each other, and
freezes the centres when it does or when ``loss.burnin_max_epochs`` is reached. ``loss.burnin=false`` freezes
those of the initial encoder, as Eq. 2 is written.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msacl.errors import MsaclError
from msacl.pretrain import losses as L
from msacl.pretrain.config import PretrainConfig
from msacl.pretrain.methods import Method, PretrainNet
from msacl.runs import derive_seed, make_generator, write_json

BURNIN, MAIN = "burnin", "main"  # the phase names log.jsonl, centres.json and checkpoint.pt record


def _world(fabric) -> tuple[int, int]:
    return (1, 0) if fabric is None else (fabric.world_size, fabric.global_rank)


def _device(fabric, model: nn.Module) -> torch.device:
    return fabric.device if fabric is not None else next(model.parameters()).device


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


@torch.no_grad()
def centres_and_spread(
    fabric, raw: PretrainNet, method: Method, images: torch.Tensor, *,
    batch_size: int, seed: int, progress: bool = False,
) -> tuple[torch.Tensor, float]:
    """Class centres c_n of MSACL Eq. 2 over the training images, identical on every rank, and the spread of
    the samples around them.

    Features are taken in training mode (BatchNorm on batch statistics, as in the loss they centre);
    the BatchNorm running statistics are restored afterwards so computing centres changes nothing else.
    ``raw`` is the unwrapped network: a DDP forward would broadcast buffers, a collective that ranks
    with fewer images would never join. The only collective here is the final all-reduce.

    Args:
        seed: seed of the augmentations; the chunk starting at image i draws from ``derive_seed(seed, i)``.

    Returns:
        c (shape (K, Z)) and the root-mean-square distance of the samples from their own class centre.
    """
    from tqdm.auto import tqdm

    world, rank = _world(fabric)
    saved = _bn_buffers(raw)
    was_training = raw.training
    raw.train()
    dtype = next(raw.parameters()).dtype  # half under "16-true"; float32 under mixed precision
    n = images.shape[0]
    if n == 0:
        raise MsaclError("no training images to compute the class centres from")
    per_rank = math.ceil(n / world)
    mine = torch.arange(rank * per_rank, min(n, (rank + 1) * per_rank))
    local_b = max(1, batch_size // world)
    k = method.num_classes
    device = _device(fabric, raw)
    sums = counts = None
    bar = tqdm(range(math.ceil(per_rank / local_b)), desc="class centres (Eq. 2)", file=sys.stderr, leave=False,
               disable=not (progress and rank == 0))
    for it in bar:
        idx, weight = mine[it * local_b: (it + 1) * local_b], 1.0
        if idx.numel() == 0:
            # Every rank runs the same number of forwards (SyncBatchNorm's are collective); a rank out of
            # images runs one on image 0 that does not count.
            idx, weight = torch.zeros(1, dtype=torch.long), 0.0
        x = images[idx].to(device)
        # Seeded by the chunk's first image, not by rank: N processes with batch B and one process with
        # batch B / N see the same chunks with the same augmentations, hence the same centres.
        g = make_generator(derive_seed(seed, int(idx[0])), device)
        views, labels = method.centre_batch(x, generator=g)
        with fabric.autocast() if fabric is not None else contextlib.nullcontext():
            z = raw.embed(views.to(dtype)).double()
        s, c = L.class_sums(z, labels, k)
        sq = (z * z).sum() * weight  # sum of ||z||^2, for the spread
        if sums is None:
            sums, counts, sumsq = s * weight, c * weight, sq
        else:
            sums, counts, sumsq = sums + s * weight, counts + c * weight, sumsq + sq
    if world > 1:
        sums = fabric.all_reduce(sums, reduce_op="sum")
        counts = fabric.all_reduce(counts, reduce_op="sum")
        sumsq = fabric.all_reduce(sumsq, reduce_op="sum")
    raw.load_state_dict(saved, strict=False)
    raw.train(was_training)
    try:
        centres = L.centres_from_sums(sums, counts)
    except ValueError as e:
        raise MsaclError(f"class centres: {e} (no training images of those strong classes)") from None
    # sum_i ||z_i - c_n(i)||^2 = sum_i ||z_i||^2 - sum_n count_n ||c_n||^2
    within = (sumsq - (counts * (centres * centres).sum(1)).sum()).clamp_min(0)
    return centres.float(), float((within / counts.sum()).sqrt())


def centre_separation(
    centres: torch.Tensor, spread: float, *, ratio: float = 0.25, burnin: str | None = None,
    from_imagenet: bool = False,
) -> dict[str, Any]:
    """How far apart the class centres lie, against the samples' spread, with a warning when they barely differ.

    Eq. 2-3 freeze the centres and pull every sample to its class centre. When the closest pair of centres
    lies nearer than ``ratio`` x the spread, the multi-centring loss pulls the classes onto one point and
    the augmentation classifier cannot learn them: what a random initialisation gives on the Kvasir patches
    (docs/benchmarks.md).

    Args:
        centres: c_n. Shape: (K, Z).
        spread: RMS distance of the samples from their own centre.
        ratio: the closest pair must lie at least ``ratio`` x ``spread`` apart.
        burnin: a sentence on the burn-in that preceded these centres, put in the warning.
        from_imagenet: the run started from ImageNet weights (the warning then does not suggest them).

    Returns:
        ``min_distance`` and ``max_distance`` between centres, ``spread_rms``, ``separated`` (bool) and
        ``warning`` (str or None).
    """
    d = torch.cdist(centres.double(), centres.double())
    off = d[~torch.eye(d.shape[0], dtype=torch.bool, device=d.device)]
    lo, hi = (float(off.min()), float(off.max())) if off.numel() else (float("nan"), float("nan"))
    separated = not (off.numel() and spread > 0 and lo < ratio * spread)
    warning = None
    if not separated:
        warning = (f"the encoder barely separates the {centres.shape[0]} strong-augmentation classes: their "
                   f"centres (Eq. 2) lie {lo:.3g}-{hi:.3g} apart, while samples lie {spread:.3g} (RMS) from their "
                   f"own centre (below {ratio:g} x). The frozen centres make the multi-centring loss (Eq. 3) pull "
                   f"the classes together. {burnin + ' ' if burnin else ''}"
                   + ("" if from_imagenet else "The papers start from ImageNet weights (--init imagenet)."))
        warning = warning.rstrip()
    return {"min_distance": lo, "max_distance": hi, "spread_rms": spread, "separated": separated,
            "warning": warning}


def burnin_cap(cfg: PretrainConfig) -> int:
    """The most burn-in epochs of a run: 0 with ``loss.burnin`` off, else ``loss.burnin_max_epochs`` or by
    default min(10, epochs // 4), and never more than epochs - 1.

    The default leaves at least three quarters of the epochs to Eq. 1 in full (on the ``cpu`` benchmark
    profile's 15 epochs: 3 of burn-in), and 10 epochs bound its cost in long runs (5% of 200 epochs),
    where the classifier separates the classes well before; epochs - 1 keeps at least one epoch of the
    loss the method is named after.
    """
    if not cfg.loss.burnin:
        return 0
    cap = cfg.loss.burnin_max_epochs
    cap = min(10, cfg.epochs // 4) if cap is None else cap
    return max(0, min(cap, cfg.epochs - 1))


@dataclass
class CentreState:
    """Where a run stands with its centres: the phase, the frozen centres and every check so far.

    Checkpoints store it, so a resumed run continues the burn-in or keeps the same frozen centres.
    """

    phase: str = MAIN
    centres: torch.Tensor | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, cfg: PretrainConfig, method: Method) -> CentreState:
        return cls(phase=BURNIN if method.uses_centres and cfg.loss.burnin else MAIN)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], device: torch.device) -> CentreState:
        c = ckpt.get("centres")
        return cls(phase=ckpt.get("phase", MAIN), centres=None if c is None else c.to(device),
                   checks=list(ckpt.get("centre_checks", [])))

    def checkpoint(self) -> dict[str, Any]:
        """The entries of checkpoint.pt (tensors on CPU; plain Python otherwise, for weights_only loading)."""
        return {"phase": self.phase, "centres": None if self.centres is None else self.centres.detach().cpu(),
                "centre_checks": [dict(c) for c in self.checks]}


def check_centres(
    fabric, raw: PretrainNet, method: Method, images: torch.Tensor, cfg: PretrainConfig, state: CentreState, *,
    epoch: int, global_step: int, seed: int, out: Path | None = None, progress: bool = False,
) -> None:
    """At the start of epoch ``epoch`` (0-based) of a run without frozen centres: compute the centres of the
    current encoder and freeze them when they are separated, when the burn-in is off or at its cap.

    Updates ``state`` and, on rank 0, writes ``out`` (centres.json) with every check so far; a warning is
    printed when the frozen centres barely differ. Every rank must call it (the centres are all-reduced).
    """
    centres, spread = centres_and_spread(fabric, raw, method, images, batch_size=cfg.batch_size, seed=seed,
                                         progress=progress)
    ratio, cap = cfg.loss.burnin_ratio, burnin_cap(cfg)
    sep = centre_separation(centres, spread, ratio=ratio)
    separated = bool(sep["separated"])
    if fabric is not None and fabric.world_size > 1:
        separated = bool(fabric.broadcast(separated, src=0))  # the all-reduced centres agree; make sure
    state.checks.append({"epoch": epoch, "global_step": global_step, "phase": state.phase,
                         **{k: sep[k] for k in ("min_distance", "max_distance", "spread_rms")},
                         "separated": separated})
    if state.phase == BURNIN and not separated and epoch < cap:
        summary = None
    else:
        if separated:
            story = None
        elif state.phase != BURNIN:
            story = "No burn-in ran (loss.burnin=false)."
        else:
            story = (f"The burn-in stopped at its cap of {epoch} epoch(s) without reaching the criterion "
                     f"(raise loss.burnin_max_epochs, by default min(10, epochs // 4), to allow more).")
        summary = centre_separation(centres, spread, ratio=ratio, burnin=story,
                                    from_imagenet=cfg.model.init == "imagenet")
        state.phase, state.centres = MAIN, centres
    rank0 = fabric is None or fabric.is_global_zero
    if rank0 and out is not None:
        write_json(out, _report(cfg, state, summary))
    if rank0 and summary is not None and summary["warning"]:
        print(f"warning: {summary['warning']}", file=sys.stderr)


def _report(cfg: PretrainConfig, state: CentreState, summary: dict[str, Any] | None) -> dict[str, Any]:
    """centres.json: the frozen centres' separation (the last check's while the burn-in runs) and every check."""
    last = state.checks[-1]
    frozen = summary is not None
    head = summary if frozen else {**{k: last[k] for k in ("min_distance", "max_distance", "spread_rms")},
                                   "separated": last["separated"], "warning": None}
    return {
        **head,
        "phase": state.phase,
        "frozen": frozen,
        "frozen_at_epoch": last["epoch"] if frozen else None,
        "burnin": {"enabled": cfg.loss.burnin, "max_epochs": burnin_cap(cfg), "ratio": cfg.loss.burnin_ratio,
                   # the burn-in starts at epoch 0 and its checks are recorded in its phase
                   "epochs": last["epoch"] if state.checks[0]["phase"] == BURNIN else 0,
                   "reached": bool(last["separated"]) if frozen and state.checks[0]["phase"] == BURNIN else None},
        "checks": state.checks,
    }
