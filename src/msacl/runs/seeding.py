"""Explicit random generators and the seeds derived from a run's seed.

Library code draws all its randomness from a ``torch.Generator`` it is given, never from the global RNG,
so a run's seed alone decides its numbers. Every generator built from a seed comes from
:func:`make_generator` (directly, or through :func:`as_generator` and :func:`child_generator`); the one
place the global RNG must be seeded, ``torch.nn``'s layer initialisers, goes through :func:`seeded`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator; library code draws all randomness from one of these, never the global RNG."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def as_generator(generator: torch.Generator | None, seed: int = 0) -> torch.Generator:
    """``generator``, or a fresh one seeded with ``seed``, so that a call without one is still repeatable."""
    return generator if generator is not None else make_generator(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. run seed, stream, epoch, step, rank)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def child_seed(g: torch.Generator) -> int:
    """Draw a seed for a derived generator (e.g. one per worker or per module) from ``g``."""
    return int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())


def child_generator(g: torch.Generator) -> torch.Generator:
    """A generator on ``g``'s device seeded with :func:`child_seed` drawn from ``g`` (an independent stream)."""
    return make_generator(child_seed(g), g.device)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global generators (CPU, and CUDA once it is in use) seeded with ``seed``.

    For module construction and re-initialisation only: ``torch.nn``'s initialisers draw from the global
    generators. Their state is restored after the block, so the caller's random state is left as it was.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(int(seed))
        if cuda:  # modules already on a GPU initialise from its generator
            torch.cuda.manual_seed_all(int(seed))
        yield
