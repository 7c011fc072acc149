"""Grouped bar charts with error bars: the benchmark's figures (MSACL Fig. 6, Table 3), drawn like ``plots``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from msacl.report.plots import _figure, _plain, _save


def plot_bars(
    path: str | Path,
    *,
    categories: Sequence[str],
    series: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]],
    title: str,
    ylabel: str = "image AUROC",
    ylim: tuple[float, float] = (0.4, 1.0),
    chance: float | None = 0.5,
) -> Path:
    """One group of bars per category, one bar per series: its mean, with its std as error bar.

    Args:
        path: PNG to write.
        categories: x-axis groups (e.g. the rows of a table: methods).
        series: name (e.g. a data set) -> (means, stds), one value per category; None is drawn as 0.
        title: figure title.
        ylabel: y-axis label.
        ylim: y-axis range.
        chance: height of a dashed reference line (None: no line).
    """
    fig = _figure(1.2 + 1.3 * len(categories), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (name, (means, stds)) in enumerate(series.items()):
        if len(means) != len(categories) or len(stds) != len(categories):
            raise ValueError(f"series {name!r}: {len(means)} means and {len(stds)} stds for {len(categories)} "
                             f"categories")
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(categories))]
        ax.bar(xs, [m or 0.0 for m in means], width, yerr=[s or 0.0 for s in stds], capsize=3, label=_plain(name))
    ax.set_xticks(range(len(categories)), [_plain(c) for c in categories], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="--")
    ax.set_title(_plain(title), fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, dpi=120)
