"""The t-SNE picture of a pre-training run: the engine computes the features (embedding.pt), the report draws them,
and nothing under msacl.pretrain imports msacl.report."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import msacl.report.tsne
from msacl.data.types import ImageSet
from msacl.pretrain import PretrainConfig, make_fabric, pretrain


def _run(tmp_path, monkeypatch, n_test: int, seed: int = 7, max_images: int = 2000):
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.rand(8, 3, 32, 32, generator=g), torch.zeros(8, dtype=torch.long),
                     [f"t{i}" for i in range(8)])
    test = ImageSet(torch.rand(n_test, 3, 32, 32, generator=g), torch.arange(n_test) % 2,
                    [f"s{i}" for i in range(n_test)])
    calls = []
    real = msacl.report.tsne.plot_tsne

    def spy(features, labels, path, **kw):
        calls.append((features, labels, path, kw))
        return real(features, labels, path, **kw)

    monkeypatch.setattr(msacl.report.tsne, "plot_tsne", spy)
    cfg = PretrainConfig(method="simclr", epochs=1, batch_size=4, checkpoint_every=1, seed=seed,
                         tsne_max_images=max_images)
    pretrain(cfg, train, tmp_path / "run", test=test, fabric=make_fabric("cpu"), progress=False)
    assert not (tmp_path / "run" / "tsne.png").exists()  # the engine draws nothing itself
    msacl.report.tsne.plot_run_tsne(tmp_path / "run")
    return calls


def test_tsne_is_drawn_by_the_report_with_the_users_seed(tmp_path, monkeypatch):
    calls = _run(tmp_path, monkeypatch, n_test=12, max_images=10)
    assert len(calls) == 1
    features, labels, path, kw = calls[0]
    assert path == tmp_path / "run" / "tsne.png" and path.is_file()
    # A seeded subsample of max_images test images, with their labels; the title names seed 7.
    assert features.shape[0] == 10 and labels.shape == (10,) and set(labels.tolist()) == {0, 1}
    assert kw["shown_seed"] == 7 and kw["seed"] != 7


def test_tsne_skipped_for_a_test_split_of_fewer_than_5_images(tmp_path, monkeypatch, capsys):
    calls = _run(tmp_path, monkeypatch, n_test=3)
    assert calls == [] and not (tmp_path / "run" / "tsne.png").exists()
    assert "t-SNE skipped" in capsys.readouterr().err


def test_pretraining_never_imports_the_report():
    pkg = Path(msacl.report.tsne.__file__).resolve().parents[1] / "pretrain"
    for f in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("msacl.report") for n in names), f"{f.name} imports {names}"
