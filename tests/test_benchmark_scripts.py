"""The measuring helpers of the benchmark scripts (benchmarks/ is not a package: loaded by path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weight_change_is_the_relative_l2_change_per_stage():
    wc = load("weight_change")
    ref = {"conv_stem.weight": torch.ones(4), "blocks.0.0.conv.weight": torch.full((3,), 2.0),
           "blocks.0.1.conv.weight": torch.full((1,), 2.0), "blocks.0.0.bn.running_var": torch.ones(3),
           "classifier.weight": torch.ones(2)}
    state = {"conv_stem.weight": torch.tensor([1.0, 1.0, 1.0, 3.0]), "blocks.0.0.conv.weight": torch.full((3,), 2.2),
             "blocks.0.1.conv.weight": torch.full((1,), 2.2), "blocks.0.0.bn.running_var": torch.full((3,), 9.0),
             "classifier.weight": torch.zeros(2)}
    got = wc.relative_change(state, ref)
    # stem: ||(0, 0, 0, 2)|| / ||(1, 1, 1, 1)|| = 1; blocks.0 (both of its blocks): every weight 2 -> 2.2, so 0.1;
    # running statistics and the classifier are left out
    assert got == pytest.approx({"conv_stem": 1.0, "blocks.0": 0.1})
    # ... and reported on their own: the variance 1 -> 9 is a relative change of 8
    assert wc.relative_change(state, ref, "running_var") == pytest.approx({"blocks.0": 8.0})
    assert wc.relative_change(state, ref, "running_mean") == {}


def test_naive_padim_score_is_the_largest_mahalanobis_distance_of_the_map():
    pn = load("padim_naive")
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(20, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    got = pn.padim_scores(train, test)
    want = []
    for t in test:  # one location at a time, from the definition
        dists = []
        for i in range(2):
            for j in range(2):
                x = train[:, :, i, j].double()
                cov = torch.cov(x.T) + 0.01 * torch.eye(3, dtype=torch.float64)
                d = t[:, i, j].double() - x.mean(0)
                dists.append(float(d @ torch.linalg.solve(cov, d)) ** 0.5)
        want.append(max(dists))
    assert got.tolist() == pytest.approx(want, rel=1e-6)  # float32 in, float32 out
