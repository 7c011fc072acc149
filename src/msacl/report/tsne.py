"""The t-SNE picture of a pre-training run (MSACL Fig. 1), drawn from the features its engine wrote."""

from __future__ import annotations

from pathlib import Path

import torch

from msacl.report.plots import plot_tsne

TSNE_TITLE = "t-SNE of pre-trained encoder features (test split)"


def plot_run_tsne(run: str | Path) -> Path | None:
    """Draw ``run``/tsne.png from ``run``/embedding.pt (written by ``msacl.pretrain.pretrain`` with a test split);
    None when the run has no embedding (no test split, too few images, or ``tsne=false``). The title names the
    run's own seed; the t-SNE layout is drawn with the seed derived from it."""
    path = Path(run) / "embedding.pt"
    if not path.is_file():
        return None
    emb = torch.load(path, weights_only=True)
    return plot_tsne(emb["features"].numpy(), emb["labels"].numpy(), Path(run) / "tsne.png", seed=emb["tsne_seed"],
                     title=TSNE_TITLE, shown_seed=emb["seed"])
