"""The one epoch loop of the detectors that train (IGD, F-anoGAN, MS-SSIM AE, DAE, PANDA, OCGAN, CAVGA), with a
progress bar, checkpoints and resume, as ``msacl pretrain`` has for encoders.

A detector's ``fit`` opens a :class:`FitLoop` and runs its phases through it (``loop.run("gan", ...)``). With
``det.checkpointing(path)`` (``msacl fit`` sets ``RUN/fit_checkpoint.pt``) the loop writes, every ``every``
epochs and at the end of each phase, the detector's state dict, the optimisers, the generator's state, the
history and the detector's ``extra`` tensors, atomically. ``det.checkpointing(path, resume=True)`` (``msacl
fit --resume``) loads that file at the start of ``fit`` and continues where it stopped: finished phases are
skipped, the interrupted one restarts at its next epoch with the same generator state, so the result equals
an uninterrupted fit (same hardware). Only settings whose name ends in ``epochs`` may change on resume.

    det.checkpointing("runs/x/fit_checkpoint.pt", resume=True)
    det.fit(batches(train.images, 32), generator=make_generator(0), progress=True)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from msacl.errors import CheckpointError
from msacl.runs import atomic_torch_save, read_torch_file

FORMAT = "msacl-fit"
VERSION = 1
StepFn = Callable[[torch.Tensor, torch.Generator], dict[str, float]]


class FitCheckpoint:
    """Where a fit saves its state (``path``), how often (``every`` epochs), and whether to resume from it."""

    def __init__(self, path: str | Path, *, every: int = 1, resume: bool = False):
        if int(every) < 1:
            raise CheckpointError(f"checkpoint every must be at least 1 epoch, got {every}")
        self.path, self.every, self.resume = Path(path), int(every), bool(resume)


class CheckpointedFit:
    """Mixin of the detectors that train through :class:`FitLoop`: ``det.checkpointing(path, resume=...)``."""

    def checkpointing(self, path: str | Path | None, *, every: int = 1, resume: bool = False) -> None:
        """Save the fit's state to ``path`` every ``every`` epochs; with ``resume`` continue from it (None: off)."""
        self._fit_checkpoint = None if path is None else FitCheckpoint(path, every=every, resume=resume)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.endswith("epochs")}


def _cpu(obj: Any) -> Any:
    """Tensors (also inside dicts and lists) moved to the CPU, so a checkpoint loads on any machine."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_cpu(v) for v in obj]
    return obj


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Mini-batches in one epoch of ``n`` images (a final batch of one image is dropped)."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches; a final batch of one image is dropped (BatchNorm cannot train on it)."""
    order = torch.randperm(n, generator=generator, device=generator.device).cpu()
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in out if b.numel() > 1]


class FitLoop:
    """The passes over the data of one ``fit``, with progress, checkpoints and resume.

    Args:
        det: the detector (its ``config``, ``state_dict`` and optional ``_fit_checkpoint``).
        generator: every random number of the fit comes from it; its state is checkpointed.
        phases: ``(name, epochs)`` in the order ``run`` will be called (for the bar's total and skipping).
        steps_per_epoch: mini-batches per epoch (for the bar).
        progress: show a tqdm bar on stderr.
    """

    def __init__(self, det: torch.nn.Module, generator: torch.Generator, *, phases: Sequence[tuple[str, int]],
                 steps_per_epoch: int, progress: bool = False):
        self.det, self.g = det, generator
        self.order = [name for name, _ in phases]
        self.ckpt: FitCheckpoint | None = getattr(det, "_fit_checkpoint", None)
        self.saved: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.step = 0  # mini-batches done in the current phase (restored on resume)
        done = 0
        if self.ckpt is not None and self.ckpt.resume and self.ckpt.path.is_file():
            self.saved = self._read()
            self._restore_detector()
            idx = self.order.index(self.saved["phase"])
            done = sum(e for _, e in phases[:idx]) + int(self.saved["epoch"])
        total = sum(e for _, e in phases) * steps_per_epoch
        self.bar = tqdm(total=total, initial=done * steps_per_epoch, desc=getattr(det, "name", "fit"),
                        disable=not progress, file=sys.stderr, leave=False, unit="step")

    def _read(self) -> dict[str, Any]:
        path = self.ckpt.path
        obj = read_torch_file(path, error=CheckpointError, what="fit checkpoint")
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
            raise CheckpointError(f"{path}: not an msacl fit checkpoint (version {VERSION})")
        name = getattr(self.det, "name", None)
        if obj.get("detector") != name:
            raise CheckpointError(f"{path}: written by a {obj.get('detector')} fit, not {name}")
        ours, theirs = _comparable(self.det.config), _comparable(obj.get("config", {}))
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if diff:
            k = diff[0]
            raise CheckpointError(f"{path}: written by a fit with other settings ({k}: checkpoint "
                                  f"{theirs.get(k)!r}, now {ours.get(k)!r}); only *epochs may change")
        if obj.get("phase") not in self.order:
            raise CheckpointError(f"{path}: unknown phase {obj.get('phase')!r} (this fit has {self.order})")
        return obj

    def _restore_detector(self) -> None:
        try:
            self.det.load_state_dict(self.saved["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"{self.ckpt.path}: state does not fit this detector: {e}") from None
        self.g.set_state(self.saved["generator"])
        self.extra = dict(self.saved.get("extra", {}))
        self.history = list(self.saved.get("history", []))

    def skipped(self, phase: str) -> bool:
        """Whether the checkpoint this fit resumed from is past ``phase`` (its work is in the loaded state)."""
        return self.saved is not None and self.order.index(self.saved["phase"]) > self.order.index(phase)

    def run(self, phase: str, data: torch.Tensor, step: StepFn, *, epochs: int, batch_size: int,
            optimizers: dict[str, torch.optim.Optimizer] | None = None, device: torch.device | None = None,
            lr_power: float | None = None,
            on_epoch_end: Callable[[int], None] | None = None) -> list[dict[str, float]]:
        """``epochs`` shuffled passes of ``step(batch, generator)`` over ``data``; returns the whole fit's history
        (per epoch, the mean of each loss that steps reported).

        With ``lr_power`` the learning rate of every optimiser decays polynomially per step over the phase,
        ``lr0 * (1 - t / T) ** lr_power`` (IGD release). ``self.step`` counts the phase's mini-batches (``t``)."""
        optimizers = optimizers or {}
        start = 0
        if self.skipped(phase):
            return self.history
        if self.saved is not None and self.saved["phase"] == phase:
            start = int(self.saved["epoch"])
            for key, opt in optimizers.items():
                if key in self.saved.get("optimizers", {}):
                    opt.load_state_dict(self.saved["optimizers"][key])
        n = data.shape[0]
        per_epoch = steps_per_epoch(n, batch_size)
        total = max(1, epochs * per_epoch)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.step = start * per_epoch
        for epoch in range(start, epochs):
            self.epoch = epoch  # steps that change with the epoch (OCGAN's negative mining) read it
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for idx in epoch_batches(n, batch_size, self.g):
                if lr_power is not None:
                    for opt in optimizers.values():
                        for group in opt.param_groups:
                            group["lr"] = group["initial_lr"] * (1 - self.step / total) ** lr_power
                x = data[idx] if device is None else data[idx].to(device)
                for k, v in step(x, self.g).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
                self.step += 1
                self.bar.update(1)
                self.bar.set_postfix({k: f"{sums[k] / counts[k]:.4g}" for k in sums}, refresh=False)
            self.history.append({k: v / counts[k] for k, v in sums.items()})
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if (epoch + 1) % (self.ckpt.every if self.ckpt else 1) == 0 or epoch + 1 == epochs:
                self.save(phase, epoch + 1, optimizers)
        if start >= epochs:  # a phase resumed at its end still records that it is done
            self.save(phase, epochs, optimizers)
        return self.history

    def save(self, phase: str, epoch: int, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Write the checkpoint (no-op without ``det.checkpointing``)."""
        if self.ckpt is None:
            return
        state = {k: v.detach().cpu() for k, v in self.det.state_dict().items()}
        extra = _cpu(self.extra)
        atomic_torch_save({"format": FORMAT, "version": VERSION, "detector": getattr(self.det, "name", None),
                           "config": self.det.config, "phase": phase, "epoch": epoch, "state_dict": state,
                           "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                           "generator": self.g.get_state(), "history": self.history, "extra": extra},
                          self.ckpt.path)

    def close(self) -> None:
        self.bar.close()
