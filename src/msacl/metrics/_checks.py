"""Input conversion and validation shared by the metric functions.

Metrics accept torch tensors or numpy arrays and work in numpy on the CPU. Maps stay float32 (never a
float64 copy of every pixel); masks become bool after a check that they are binary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from msacl.errors import MsaclError


class MetricError(MsaclError, ValueError):
    """Scores, labels, maps or masks that a metric cannot use (shape, values, classes)."""


def to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise MetricError(f"{name}: cannot be read as an array ({e})") from e


def check_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Image scores as a 1-D float64 array without NaN."""
    s = to_numpy(scores, name)
    if s.ndim != 1:
        raise MetricError(f"{name} must be one score per image, shape (N,); got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) and s.dtype != np.bool_:
        raise MetricError(f"{name} must be numeric; got dtype {s.dtype}")
    s = s.astype(np.float64)
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise MetricError(f"{name}: {n_nan} of {s.size} values are NaN (did the detector diverge?)")
    return s


def check_labels(labels: Any, n: int | None = None, name: str = "labels") -> np.ndarray:
    """Image labels as a 1-D bool array (True = abnormal); only 0/1 allowed."""
    y = to_numpy(labels, name)
    if y.ndim != 1:
        raise MetricError(f"{name} must have shape (N,); got shape {y.shape}")
    if n is not None and y.shape[0] != n:
        raise MetricError(f"{name} has {y.shape[0]} entries but there are {n} scores")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise MetricError(
            f"{name} must be 0 (normal) or 1 (abnormal); found {np.unique(y[bad])[:5].tolist()}"
        )
    return y.astype(bool)


def require_both_classes(y: np.ndarray, what: str, name: str = "labels") -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "abnormal (1)" if n_pos else "normal (0)"
        raise MetricError(
            f"{what} needs both normal (0) and abnormal (1) {name}; all {y.size} are {only}"
        )


def check_maps(maps: Any, name: str = "maps") -> np.ndarray:
    """Anomaly maps as a float32 array of shape (N, H, W); (N, 1, H, W) is accepted."""
    m = to_numpy(maps, name)
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise MetricError(f"{name} must be (N, 1, H, W) or (N, H, W); got shape {m.shape}")
        m = m[:, 0]
    if m.ndim != 3:
        raise MetricError(f"{name} must be (N, 1, H, W) or (N, H, W); got shape {m.shape}")
    if m.dtype != np.float32:
        m = m.astype(np.float32)
    n_nan = int(np.isnan(m).sum())
    if n_nan:
        raise MetricError(f"{name}: {n_nan} pixel scores are NaN")
    return m


def check_masks(masks: Any, shape: tuple[int, ...] | None = None, name: str = "masks") -> np.ndarray:
    """Ground-truth masks as a bool array of shape (N, H, W); values must be 0/1 (or bool)."""
    g = to_numpy(masks, name)
    if g.ndim == 4:
        if g.shape[1] != 1:
            raise MetricError(f"{name} must be (N, 1, H, W) or (N, H, W); got shape {g.shape}")
        g = g[:, 0]
    if g.ndim != 3:
        raise MetricError(f"{name} must be (N, 1, H, W) or (N, H, W); got shape {g.shape}")
    if shape is not None and g.shape != tuple(shape):
        raise MetricError(f"{name} have shape {g.shape} but the anomaly maps have shape {tuple(shape)}")
    if g.dtype != np.bool_:
        bad = (g != 0) & (g != 1)
        n_bad = int(bad.sum())
        if n_bad:
            vals = np.unique(g[bad])[:5].tolist()
            raise MetricError(
                f"{name} must be binary (0/1); {n_bad} pixels have other values, e.g. {vals} "
                "(masks saved as 0/255 must be divided by 255)"
            )
        g = g.astype(bool)
    return g


def check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError) as e:
        raise MetricError(f"threshold must be a number; got {threshold!r}") from e
    if np.isnan(t):
        raise MetricError("threshold is NaN")
    return t
