"""Backend settings for the hardware a run is on: TF32 matmuls and cuDNN autotuning on CUDA."""

from __future__ import annotations

import torch


def tune_backends(device: torch.device | str) -> None:
    """On CUDA: TF32 for float32 matmuls and convolutions (tensor cores; about 10 bits of mantissa in the
    products, float32 accumulation) and cuDNN's autotuner (fixed input shapes, as every msacl loop has).
    Nothing on other devices."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
