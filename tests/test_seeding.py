"""The generator helpers of msacl.runs: every generator built from a seed, and the seeded global RNG."""

from __future__ import annotations

import torch
from torch import nn

from msacl.runs import as_generator, child_generator, child_seed, derive_seed, make_generator, seeded


def test_a_seed_gives_the_stream_torch_gives_it():
    ref = torch.Generator()
    ref.manual_seed(12345)
    assert torch.equal(torch.rand(8, generator=make_generator(12345)), torch.rand(8, generator=ref))
    assert not torch.equal(torch.rand(8, generator=make_generator(1)), torch.rand(8, generator=make_generator(2)))


def test_as_generator_passes_a_generator_through_and_seeds_none():
    g = make_generator(3)
    assert as_generator(g) is g
    assert torch.equal(torch.rand(4, generator=as_generator(None)), torch.rand(4, generator=make_generator(0)))
    assert torch.equal(torch.rand(4, generator=as_generator(None, 9)), torch.rand(4, generator=make_generator(9)))


def test_child_generator_is_seeded_by_a_draw_from_the_parent():
    a, b = make_generator(5), make_generator(5)
    child = child_generator(a)
    assert torch.equal(torch.rand(4, generator=child), torch.rand(4, generator=make_generator(child_seed(b))))
    # The parent moved on by exactly that one draw.
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


def test_seeded_fixes_layer_initialisation_and_restores_the_global_rng():
    torch.manual_seed(99)
    before = torch.random.get_rng_state()
    with seeded(derive_seed(7, 1)):
        first = nn.Linear(4, 3).weight.detach().clone()
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded(derive_seed(7, 1)):
        again = nn.Linear(4, 3).weight.detach().clone()
    torch.manual_seed(derive_seed(7, 1))
    assert torch.equal(first, again) and torch.equal(first, nn.Linear(4, 3).weight)
    with seeded(derive_seed(7, 2)):
        assert not torch.equal(first, nn.Linear(4, 3).weight)
