"""Eq. 1 of MSACL and CCD: the weighted sum of the loss terms."""

from __future__ import annotations

import torch


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Eq. 1 of both papers: the sum of the loss terms, each with its weight (all 1 in the papers).

    Shape:
        every term: (); output: ().
    """
    missing = [k for k in terms if k not in weights]
    if missing:
        raise KeyError(f"no weight for loss term(s) {missing}")
    return sum(weights[k] * v for k, v in terms.items())  # type: ignore[return-value]
