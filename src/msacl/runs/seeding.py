"""Explicit random generators and the seeds derived from a run's seed.

Library code draws all its randomness from a ``torch.Generator`` it is given, never from the global RNG,
so a run's seed alone decides its numbers.
"""

from __future__ import annotations

import numpy as np
import torch


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator; library code draws all randomness from one of these, never the global RNG."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. run seed, stream, epoch, step, rank)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def child_seed(g: torch.Generator) -> int:
    """Draw a seed for a derived generator (e.g. one per worker or per module) from ``g``."""
    return int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
