"""What a pre-training run writes to resume from, and how a resume reads it back.

checkpoint.pt holds the settings, weights, optimiser state, epoch, global step and class-centre state; a resumed
run must share the settings of ``RESUME_KEYS`` with it (the others, epochs, lr, ..., may change), and it drops the
log lines of the steps it will repeat. encoder.pt is the backbone alone, for the detectors and for users.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msacl.config import ConfigError, from_dict, to_dict
from msacl.errors import CheckpointError
from msacl.pretrain.centres import CentreState
from msacl.pretrain.config import PretrainConfig
from msacl.pretrain.methods import PretrainNet
from msacl.runs import atomic_torch_save, read_torch_file, write_json

CHECKPOINT_FORMAT = "msacl-pretrain"
CHECKPOINT_VERSION = 3  # 3: two optimiser groups (backbone, heads)
# Settings a resumed run must share with its checkpoint; the others (epochs, lr, ...) may change.
RESUME_KEYS = ("method", "strong", "scope", "local_size", "batch_size", "seed", "model.backbone", "model.init",
               "model.proj_hidden", "model.proj_dim", "model.pos_hidden")


def _identity(cfg: PretrainConfig) -> dict[str, Any]:
    """The settings of RESUME_KEYS, with the strong family as actually used (None -> the default)."""
    flat = _flat(to_dict(cfg))
    flat["strong"] = cfg.strong_family()
    return {k: flat[k] for k in RESUME_KEYS}


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


def load_checkpoint(path: str | Path, cfg: PretrainConfig | None = None, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint (weights only) and check it belongs to a run like ``cfg``; ``mmap`` maps its tensors
    instead of reading them (for a caller that reads the epoch and settings only)."""
    path = Path(path)
    ckpt = read_torch_file(path, error=CheckpointError, what="checkpoint", missing="no checkpoint to resume from",
                           mmap=mmap)
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
                for k in RESUME_KEYS if theirs.get(k) != ours.get(k)]
        if diff:
            raise CheckpointError(f"{path}: written by a run with other settings; " + "; ".join(diff))
    return ckpt


def run_progress(run_dir: str | Path, cfg: PretrainConfig | None = None) -> tuple[int, int] | None:
    """(epochs finished, epochs planned) of the ``msacl pretrain`` run in ``run_dir``, from its checkpoint.pt
    (checked against ``cfg``'s settings where given, as :func:`load_checkpoint`); None where it has none. The
    weights and optimiser state are mapped, not read."""
    ckpt = Path(run_dir) / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    state = load_checkpoint(ckpt, cfg, mmap=True)
    return int(state["epoch"]), int(state["config"].get("epochs", state["epoch"]))


def epochs_done(run_dir: str | Path, cfg: PretrainConfig | None = None) -> int:
    """Epochs the run in ``run_dir`` has finished with its encoder.pt written (0 without checkpoint.pt or
    encoder.pt). encoder.pt is written at every checkpoint: a run is finished when this reaches its epochs."""
    progress = run_progress(run_dir, cfg)
    return progress[0] if progress is not None and (Path(run_dir) / "encoder.pt").is_file() else 0


def restore_weights(path: Path, raw: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's network weights into ``raw`` (strict), as a CheckpointError naming ``path`` if they
    do not fit."""
    try:
        raw.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{path}: weights do not fit this network ({detail})") from None


def restore_optimizer(path: Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimiser state, as a CheckpointError naming ``path`` if it does not fit."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimiser state does not fit this network ({e})") from None


def save_encoder(raw: PretrainNet, path: Path) -> None:
    """encoder.pt: the backbone's plain torchvision / timm state dict (float32, CPU, classifier untouched) with
    its input normalisation in the metadata; the same facts in encoder.json beside it, for people."""
    atomic_torch_save(raw.encoder.export_state(), path)
    write_json(path.with_suffix(".json"), raw.encoder.metadata())


def trim_log(log: Path, upto_step: int) -> None:
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
