"""The benchmark's bar charts, drawn by ``msacl.report.bars``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from msacl.report.bars import plot_bars


def test_plot_bars_draws_one_bar_per_category_and_series(tmp_path):
    series = {"Kvasir": ([0.9, 0.6, None], [0.05, 0.0, None]), "ODIR": ([0.7, 0.8, 0.55], [0.0, 0.1, 0.02])}
    out = plot_bars(tmp_path / "fig.png", categories=["MSACL", "SimCLR", "random"], series=series, title="T $x$")
    assert out == tmp_path / "fig.png"
    img = np.asarray(Image.open(out).convert("RGB"))
    # 1.2 + 1.3 * 3 inches wide at 120 dpi.
    assert img.shape[1] == round((1.2 + 1.3 * 3) * 120) and img.shape[0] == round(3.6 * 120)
    # matplotlib's first two colours (tab:blue, tab:orange) fill the bars of the two series.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(img.astype(int) - colour).sum(-1) < 10).sum() > 200, colour


def test_plot_bars_refuses_series_of_the_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="series 'a': 1 means and 1 stds for 2 categories"):
        plot_bars(tmp_path / "x.png", categories=["p", "q"], series={"a": ([0.5], [0.0])}, title="t")
    assert not (tmp_path / "x.png").exists()
