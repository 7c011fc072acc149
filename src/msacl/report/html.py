"""A self-contained HTML report of one test run (figures embedded, so the page can be mailed alone).

The page opens with the headline block (:mod:`msacl.report.headline`: the data folder, image AUROC with its
interval, the decision at the calibrated threshold, pixel AUROC and Dice), then the pictures (ROC curve,
score histograms, heat-map overlays, t-SNE), then the full metrics table, the ranked images and the run's
settings.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections.abc import Mapping
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from msacl import __version__
from msacl.config import to_dict
from msacl.errors import MsaclError
from msacl.metrics._checks import check_labels, check_scores
from msacl.metrics.records import DecisionMetrics, Metrics, PixelMetrics
from msacl.report.headline import CSS as HEADLINE_CSS
from msacl.report.headline import headline_html
from msacl.report.plots import overlay_ranking, plot_histograms, plot_overlays, plot_roc, plot_tsne
from msacl.runs import atomic_write_text

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
.sub { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.88em; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.notes li { color: #8a4b00; }
"""

# Metric rows shown first, in this order, with a plain-words label; any other key follows.
_LABELS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO (FPR <= 0.3)",
    "iou": "IoU (mean over abnormal images)",
    "dice": "Dice (mean over abnormal images)",
    "decision_fpr_target": "Decision: target false-positive rate",
    "decision_threshold": "Decision: image-score threshold (abnormal if above)",
    "decision_n": "Decision: held-out normal images it is calibrated on",
    "decision_fpr_bound": "Decision: guaranteed false-positive rate at most",
    "decision_rule": "Decision: rule",
    "decision_test_fpr": "Decision: test false-positive rate",
    "decision_test_sensitivity": "Decision: test sensitivity",
    "pixel_decision_threshold": "Decision: pixel threshold (P(normal image has a flagged pixel) <= target)",
    "pixel_decision_normal_images_flagged": "Decision: test normal images with a flagged pixel",
    "pixel_decision_abnormal_images_flagged": "Decision: test abnormal images with a flagged pixel",
    "pixel_decision_pixel_fpr": "Decision: test normal-image pixels flagged",
    "pixel_decision_pixel_sensitivity": "Decision: test lesion pixels flagged",
    "pixel_decision_dice": "Decision: Dice at the pixel threshold (abnormal images)",
    "threshold": "Threshold (IoU / Dice)",
    "threshold_rule": "Threshold (IoU / Dice) chosen by",
    "groups_iou": "IoU, group protocol",
    "groups_dice": "Dice, group protocol",
    "iou_oracle": "IoU at oracle threshold",
    "dice_oracle": "Dice at oracle threshold",
    "oracle_threshold": "Oracle threshold (best test Dice)",
    "groups_iou_oracle": "IoU, group protocol, oracle",
    "groups_dice_oracle": "Dice, group protocol, oracle",
    "groups_n": "Groups",
    "groups_size": "Abnormal images per group",
    "min_area": "Connected-component filter (min px)",
    "n_images": "Test images",
    "n_normal": "Normal test images",
    "n_abnormal": "Abnormal test images",
}


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4f}" if abs(float(v)) < 1e4 else f"{float(v):.4g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    return str(v)


def _metrics_table(metrics: dict[str, Any]) -> str:
    """Rows 'name | value', folding ``k_ci_low``/``k_ci_high`` into k's row and leaving ``notes`` out."""
    keys = [k for k in _LABELS if k in metrics] + sorted(k for k in metrics if k not in _LABELS)
    level = metrics.get("ci_level")
    rows = []
    for k in keys:
        if k in ("notes", "ci_level") or k.endswith(("_ci_low", "_ci_high")):
            continue
        if k.endswith("_std") and k[:-4] in metrics:
            continue
        v = metrics[k]
        text = _fmt(v)
        lo, hi = metrics.get(f"{k}_ci_low"), metrics.get(f"{k}_ci_high")
        if lo is not None and hi is not None:
            pct = f"{100 * float(level):g}% " if level else ""
            text += f"  [{_fmt(lo)}, {_fmt(hi)}] ({pct}bootstrap CI)"
        std = metrics.get(f"{k}_std")
        if std is not None:
            text += f"  \u00b1 {_fmt(std)} (std over groups)"
        cls = " class='num'" if isinstance(v, (int, float, np.number)) else ""
        rows.append(f"<tr><th>{_esc(_LABELS.get(k, k))}</th><td{cls}>{_esc(text)}</td></tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _figure(path: Path, alt: str, caption: str) -> str:
    return f"<figure>{_img_tag(path, alt)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _config_text(run_dir: Path, config: Any) -> str | None:
    if config is not None:
        cfg = config if isinstance(config, dict) else to_dict(config) if is_dataclass(config) else config
        return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False) if isinstance(cfg, dict) else str(cfg)
    p = run_dir / "config.yaml"
    return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None


def _ranked_table(scores: np.ndarray, labels: np.ndarray, paths: list[str], n: int) -> str:
    """The n most and the n least anomalous images, the blocks of the overlay picture (``overlay_ranking``)."""
    rows = []
    for title, idx in overlay_ranking(scores, n):
        title = title.lower()
        for rank, i in enumerate(idx, 1):
            lab = "abnormal" if labels[i] else "normal"
            rows.append(f"<tr><td>{_esc(title)} #{rank}</td><td class='num'>{_esc(_fmt(float(scores[i])))}</td>"
                        f"<td>{lab}</td><td>{_esc(paths[i])}</td></tr>")
    return ("<table><tr><th>rank</th><th>score</th><th>label</th><th>file</th></tr>\n"
            + "\n".join(rows) + "\n</table>")


def write_report(
    run_dir: str | Path,
    *,
    images: Any,
    labels: Any,
    scores: Any,
    maps: Any = None,
    masks: Any = None,
    paths: list[str],
    metrics: Metrics | Mapping[str, Any],
    title: str,
    config: Any = None,
    features: Any = None,
    n_overlays: int = 8,
    score_threshold: float | None = None,
) -> Path:
    """Write ``run_dir/report.html`` and its figures (``roc.png``, ``histograms.png``, ``overlays.png``).

    The page holds, in this order: the headline block, the notes, the ROC curve, the score histograms,
    heat-map overlays of the most and least anomalous images, the t-SNE picture, the full metrics table
    (with bootstrap intervals), the ranked file list, and the run's config, command and metadata (read from
    ``run_dir`` when present). Figures are embedded as base64, so the HTML file is complete on its own;
    every piece of text is HTML-escaped.

    Args:
        run_dir: the run directory (created if missing).
        images: test images, float in [0, 1]. Shape: (N, C, H, W).
        labels: 0 = normal, 1 = abnormal. Shape: (N,).
        scores: image anomaly scores. Shape: (N,).
        maps: anomaly maps or None. Shape: (N, 1, h, w).
        masks: binary ground truth or None. Shape: (N, 1, H, W).
        paths: source file of each image.
        metrics: the test split's :class:`msacl.metrics.records.Metrics`, or a flat dict of its keys (that of
            :func:`msacl.metrics.evaluate`; any flat dict works: the table shows its keys).
        title: page title (e.g. "PaDiM on kvasir_seg_patch128").
        config: the run's config (dict or dataclass); None reads ``run_dir/config.yaml``.
        features: image features for a t-SNE figure (``tsne.png``), or None. Shape: (N, D).
        n_overlays: images per block of the overlay figure.
        score_threshold: the calibrated image-score threshold, drawn on the histograms with the test
            false-positive rate and sensitivity it gives (``metrics.decision``), or None.

    Returns:
        Path of ``report.html``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    if len(paths) != s.size:
        raise MsaclError(f"{len(paths)} paths for {s.size} scores")
    paths = [str(p) for p in paths]
    record = metrics if isinstance(metrics, Metrics) else Metrics.from_dict(dict(metrics))
    table = record.to_dict() if isinstance(metrics, Metrics) else dict(metrics)
    skipped: list[str] = []
    parts = [_detection_section(run_dir, s, y, score_threshold, record.decision or DecisionMetrics(), skipped)]
    if maps is not None:
        parts.append(_localisation_section(run_dir, images, maps, masks, s, y, paths, n_overlays,
                                           record.pixel or PixelMetrics()))
    else:
        skipped.append("heat-map overlays: the detector returned no maps")
    if features is not None:
        ts = plot_tsne(features, y, run_dir / "tsne.png")
        parts.append(f"<h2>Features</h2>\n{_figure(ts, 't-SNE', 't-SNE of image features.')}")
    parts.append(f"<h2>All metrics</h2>\n{_metrics_table(table)}")
    parts.append(f"<h2>Ranked images</h2>\n{_ranked_table(s, y, paths, min(n_overlays, s.size))}")
    run_info = _run_section(run_dir, config)
    if run_info:
        parts.append(run_info)
    page = _page(title, run_dir, headline_html(record, paths), list(record.notes) + skipped, parts)
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out


def _detection_section(run_dir: Path, s: np.ndarray, y: np.ndarray, score_threshold: float | None,
                       decision: DecisionMetrics, skipped: list[str]) -> str:
    """The ROC curve and the score histograms (with the decision threshold, when given)."""
    if 0 < int(y.sum()) < y.size:
        roc = plot_roc(s, y, run_dir / "roc.png")
        roc_html = _figure(roc, "ROC curve", "Image-level ROC curve; dashed: chance.")
    else:
        roc_html = ""
        skipped.append("ROC curve: the test set has only one class")
    hist_label = None
    if score_threshold is not None:
        target = "n/a" if decision.fpr_target is None else f"{decision.fpr_target:g}"
        hist_label = (f"threshold {float(score_threshold):.4g} (FPR target {target})"
                      f"\ntest FPR {_fmt(decision.test_fpr)}, sensitivity {_fmt(decision.test_sensitivity)}")
    hist = plot_histograms(s, y, run_dir / "histograms.png", threshold=score_threshold, threshold_label=hist_label)
    hist_cap = "Image anomaly scores of normal (blue) and abnormal (red) images."
    if score_threshold is not None:
        hist_cap += (f" Dashed: the decision threshold {_fmt(score_threshold)} calibrated for a false-positive rate "
                     f"of {_fmt(decision.fpr_target)} on {_fmt(decision.n)} held-out "
                     f"normal images; on this test set it gives a false-positive rate of "
                     f"{_fmt(decision.test_fpr)} and a sensitivity of {_fmt(decision.test_sensitivity)}.")
    hist_html = _figure(hist, "Score histograms", hist_cap)
    return f"<h2>Detection</h2>\n<div class='row'>{roc_html}{hist_html}</div>"


def _localisation_section(run_dir: Path, images: Any, maps: Any, masks: Any, s: np.ndarray, y: np.ndarray,
                          paths: list[str], n_overlays: int, pixel: PixelMetrics) -> str:
    """The heat-map overlays, binarised at the validation-chosen threshold (else the oracle one)."""
    thr, thr_label, thr_words = pixel.threshold, "Pred", "the validation-chosen threshold"
    if thr is None and pixel.oracle_threshold is not None:
        thr, thr_label, thr_words = pixel.oracle_threshold, "Pred (oracle t)", "the oracle threshold"
    ov = plot_overlays(images, maps, masks, s, paths, run_dir / "overlays.png", n=n_overlays,
                       threshold=thr, threshold_label=thr_label, labels=y)
    cap = ("Left: most anomalous images; right: least anomalous. Columns: image, heat map over the image"
           + (" with the ground-truth contour (green)" if masks is not None else "")
           + (f", prediction binarised at {thr_words} ({_fmt(thr)})" if thr is not None else "")
           + (", ground truth" if masks is not None else "") + ".")
    return f"<h2>Localisation</h2>\n{_figure(ov, 'Heat-map overlays', cap)}"


def _run_section(run_dir: Path, config: Any) -> str | None:
    """The run's config, command and metadata, or None when there is none of them."""
    cfg = _config_text(run_dir, config)
    run_info = []
    if cfg is not None:
        run_info.append(f"<h3>Config</h3>\n<pre>{_esc(cfg)}</pre>")
    for name, heading in (("command.txt", "Command"), ("meta.json", "Run metadata")):
        p = run_dir / name
        if p.is_file():
            run_info.append(f"<h3>{heading}</h3>\n<pre>{_esc(p.read_text(encoding='utf-8', errors='replace'))}</pre>")
    return "<h2>Run</h2>\n" + "\n".join(run_info) if run_info else None


def _page(title: str, run_dir: Path, headline: str, notes: list[str], parts: list[str]) -> str:
    notes_html = ("<ul class='notes'>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>") if notes else ""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}{HEADLINE_CSS}</style>
</head>
<body>
<h1>{_esc(title)}</h1>
<div class="sub">{_esc(f"run directory {run_dir.name} - msacl {__version__} - written {now}")}</div>
{headline}
{notes_html}
{chr(10).join(parts)}
</body>
</html>
"""
