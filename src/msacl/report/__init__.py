"""Reports of a test run: PNG figures (``plots``) and one self-contained HTML page (``html``)."""

from msacl.report.html import write_report
from msacl.report.plots import heatmap_png, plot_histograms, plot_overlays, plot_roc, plot_tsne

__all__ = ["heatmap_png", "plot_histograms", "plot_overlays", "plot_roc", "plot_tsne", "write_report"]
