"""PNG figures of a test run: ROC, score histograms, heat-map overlays, t-SNE of features.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing opens a window, no global
backend is switched and the functions are safe in threads and notebooks. Each function writes one PNG
atomically and returns its path.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from msacl.errors import MsaclError
from msacl.metrics import image_auroc, roc_curve
from msacl.metrics._checks import check_labels, check_maps, check_masks, check_scores, to_numpy
from msacl.runs import atomic_write_bytes

NORMAL_COLOUR = "tab:blue"
ABNORMAL_COLOUR = "tab:red"
GT_COLOUR = "lime"
HEAT_CMAP = "jet"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _plain(text: str) -> str:
    """Text shown verbatim by matplotlib: a '$' in a file name would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def plot_roc(scores: Any, labels: Any, path: str | Path, *, title: str = "ROC curve (image level)") -> Path:
    """ROC curve with the AUROC in the legend and the chance diagonal.

    Args:
        scores: image anomaly scores. Shape: (N,).
        labels: 0 = normal, 1 = abnormal (both must be present). Shape: (N,).
        path: PNG to write.
        title: figure title.
    """
    return _save(roc_figure(scores, labels, title), path)


def roc_figure(scores: Any, labels: Any, title: str = "ROC curve (image level)") -> Figure:
    """The figure :func:`plot_roc` writes."""
    fpr, tpr, _ = roc_curve(scores, labels)
    auc = image_auroc(scores, labels)
    y = check_labels(labels)
    fig = _figure(4.6, 4.4)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color=ABNORMAL_COLOUR, lw=2, label=f"AUROC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance (0.5)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false-positive rate", ylabel="true-positive rate")
    ax.set_aspect("equal")
    ax.set_title(_plain(f"{title}\n{int((~y).sum())} normal, {int(y.sum())} abnormal"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def plot_histograms(
    scores: Any, labels: Any, path: str | Path, threshold: float | None = None, *, title: str = "Image scores",
    threshold_label: str | None = None,
) -> Path:
    """Histograms of the scores of normal (blue) and abnormal (red) images on shared bins.

    Args:
        scores: Shape: (N,).
        labels: 0/1. Shape: (N,).
        path: PNG to write.
        threshold: an image-score threshold to mark with a dashed line (same scale as ``scores``), or None.
        title: figure title.
        threshold_label: legend text of the threshold line (default "threshold = <value>").
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    finite = s[np.isfinite(s)]
    if finite.size == 0:
        raise MsaclError("no finite scores to plot")
    lo, hi = float(finite.min()), float(finite.max())
    p99 = float(np.percentile(finite, 99))
    clipped = hi > p99 + (p99 - lo)  # a far tail would squash the bulk into a few bins
    if clipped:
        hi = p99
    edges = np.histogram_bin_edges(np.clip(finite, lo, hi), bins=min(40, max(10, finite.size // 5)))
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    for mask, name, colour in ((~y, "normal", NORMAL_COLOUR), (y, "abnormal", ABNORMAL_COLOUR)):
        vals = s[mask & np.isfinite(s)]
        if vals.size:
            ax.hist(np.clip(vals, lo, hi), bins=edges, color=colour, alpha=0.4, label=f"{name} (n={vals.size})",
                    histtype="stepfilled")
            ax.hist(np.clip(vals, lo, hi), bins=edges, color=colour, histtype="step", linewidth=1.4)
    if clipped:
        n_out = int((finite > hi).sum())
        ax.text(0.99, 0.55, f"{n_out} image(s) above {hi:.4g}\n(max {finite.max():.4g}) counted in the last bin",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="dimgray")
    if threshold is not None:
        ax.axvline(float(threshold), color="black", ls="--", lw=1.2,
                   label=_plain(threshold_label or f"threshold = {float(threshold):.4g}"))
    ax.set(xlabel="anomaly score", ylabel="images")
    ax.set_title(_plain(title), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _image_hwc(image: Any) -> np.ndarray:
    """(C, H, W) float [0, 1] -> (H, W, 3) or (H, W) for imshow."""
    img = to_numpy(image, "image").astype(np.float32)
    if img.ndim == 2:
        return np.clip(img, 0, 1)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise MsaclError(f"an image must be (C, H, W) with C = 1 or 3; got shape {img.shape}")
    img = np.clip(img, 0, 1)
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _resize_map(amap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A detector may return maps at feature resolution; draw them at image resolution."""
    if amap.shape == hw:
        return amap
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()


def _colour_range(maps: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(maps, [1.0, 99.5])
    if hi <= lo:
        lo, hi = float(maps.min()), float(maps.max()) + 1e-12
    return float(lo), float(hi)


def _draw_overlay(ax: Any, img: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float,
                  alpha: float = 0.5) -> Any:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    im = ax.imshow(amap, cmap=HEAT_CMAP, alpha=alpha, vmin=vmin, vmax=vmax, interpolation="bilinear")
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=GT_COLOUR, linewidths=1.2)
    return im


def _short(name: str, width: int = 26) -> str:
    name = Path(str(name)).name
    return name if len(name) <= width else name[: width - 11] + "..." + name[-8:]


def plot_overlays(
    images: Any,
    maps: Any,
    masks: Any,
    scores: Any,
    paths: list[str],
    path: str | Path,
    n: int = 8,
    *,
    threshold: float | None = None,
    threshold_label: str = "Pred",
    labels: Any = None,
) -> Path:
    """Heat-map overlays of the ``n`` most (left) and ``n`` least (right) anomalous images.

    Columns per block, as MSACL Figs. 4-5: image | heat map over the image with the ground-truth contour |
    binarised prediction (when ``threshold`` is given) | ground truth (when ``masks`` is given). All heat maps
    share one colour scale (1st to 99.5th percentile of the shown maps), so the least anomalous images look
    cold when the detector is right. Which images go where: :func:`overlay_ranking`.

    Args:
        images: float in [0, 1]. Shape: (N, C, H, W).
        maps: anomaly maps (any resolution; drawn at the image's). Shape: (N, 1, h, w).
        masks: binary ground truth or None. Shape: (N, 1, H, W).
        scores: image scores that rank the images. Shape: (N,).
        paths: file of each image (the names are printed).
        path: PNG to write.
        n: images per block.
        threshold: binarisation threshold on the map values, or None for no prediction column.
        threshold_label: column title of the prediction (e.g. "Pred (oracle t)").
        labels: 0/1 per image or None; shown in the row titles. Shape: (N,).
    """
    fig = overlays_figure(images, maps, masks, scores, paths, n, threshold=threshold,
                          threshold_label=threshold_label, labels=labels)
    return _save(fig, path, dpi=90)


def overlay_ranking(scores: Any, n: int) -> list[tuple[str, np.ndarray]]:
    """The blocks of :func:`plot_overlays` as (title, image indices): "Most anomalous", the ``n`` highest
    scores from the highest down, then "Least anomalous", the ``n`` lowest of the other images from the
    lowest up. An image is shown once: with fewer than 2n images the second block is shorter, and a block
    with no image is left out. Equal scores keep their input order in the first block."""
    s = check_scores(scores)
    order = np.argsort(-s, kind="stable")
    n_most = min(n, s.size)
    n_least = min(n, s.size - n_most)
    blocks = [("Most anomalous", order[:n_most]), ("Least anomalous", order[::-1][:n_least])]
    return [b for b in blocks if len(b[1])]


def overlays_figure(
    images: Any, maps: Any, masks: Any, scores: Any, paths: list[str], n: int = 8, *,
    threshold: float | None = None, threshold_label: str = "Pred", labels: Any = None,
) -> Figure:
    """The figure :func:`plot_overlays` writes; each row's image panel is labelled with its file name and score."""
    s = check_scores(scores)
    imgs = to_numpy(images, "images")
    m = check_maps(maps)
    count = s.size
    if imgs.ndim != 4 or imgs.shape[0] != count or m.shape[0] != count or len(paths) != count:
        raise MsaclError(
            f"plot_overlays needs one image, map, score and path per row; got images {imgs.shape}, "
            f"maps {m.shape}, {count} scores, {len(paths)} paths"
        )
    hw = tuple(imgs.shape[2:])
    g = check_masks(masks, (count, *hw)) if masks is not None else None
    y = check_labels(labels, count) if labels is not None else None
    if count == 0 or n < 1:
        raise MsaclError("no images to draw")
    blocks = overlay_ranking(s, n)
    shown = np.concatenate([idx for _, idx in blocks])
    vmin, vmax = _colour_range(np.stack([_resize_map(m[i], hw) for i in shown]))
    pred_header = f"{threshold_label} (t={threshold:.3g})" if threshold is not None else None
    headers = ["Image", "Heat map"] + ([pred_header] if pred_header else []) + (["GT"] if g is not None else [])
    rows = max(len(idx) for _, idx in blocks)
    panel = 1.55
    fig = _figure(panel * len(headers) * len(blocks) + 0.4, panel * rows + 1.1)
    subfigs = np.atleast_1d(fig.subfigures(1, len(blocks), wspace=0.04))
    im = None
    for sub, (name, idx) in zip(subfigs, blocks, strict=True):
        sub.suptitle(name, fontsize=11, fontweight="bold")
        axes = np.asarray(sub.subplots(rows, len(headers), squeeze=False))
        for r in range(rows):
            for c, col in enumerate(headers):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(_plain(col), fontsize=9)
                if r >= len(idx):
                    ax.set_axis_off()
                    continue
                i = int(idx[r])
                img, amap = _image_hwc(imgs[i]), _resize_map(m[i], hw)
                mask = g[i] if g is not None else None
                if col == "Image":
                    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
                    tag = "" if y is None else (", abnormal" if y[i] else ", normal")
                    ax.set_ylabel(_plain(f"{_short(paths[i])}\ns={s[i]:.4g}{tag}"), fontsize=6.5)
                elif col == "Heat map":
                    im = _draw_overlay(ax, img, amap, mask, vmin, vmax)
                elif col == "GT":
                    ax.imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(amap >= threshold, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if im is not None:
        _shared_colour_bar(fig, im, subfigs[-1], gt=g is not None)
    return fig


def _shared_colour_bar(fig: Figure, im: Any, below: Any, *, gt: bool) -> None:
    cbar = fig.colorbar(im, ax=list(below.axes), location="bottom", shrink=0.7, aspect=30, pad=0.01)
    cbar.set_label("anomaly map value (shared scale)" + ("; green: GT contour" if gt else ""), fontsize=8)
    cbar.ax.tick_params(labelsize=7)


def heatmap_png(
    image: Any,
    amap: Any,
    path: str | Path,
    *,
    mask: Any = None,
    threshold: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    alpha: float = 0.5,
) -> Path:
    """One image with its heat map overlaid (and the GT contour, and the prediction's outline if thresholded).

    The colour scale defaults to this map's own range; pass ``vmin``/``vmax`` (e.g. from the training or
    validation maps) to compare several images on one scale.

    Args:
        image: float in [0, 1]. Shape: (C, H, W).
        amap: anomaly map (any resolution). Shape: (1, h, w) or (h, w).
        path: PNG to write.
        mask: binary ground truth or None. Shape: (1, H, W) or (H, W).
        threshold: draw the outline of ``amap >= threshold`` in white, or None.
        vmin: lower end of the colour scale.
        vmax: upper end of the colour scale.
        title: text above the image (e.g. the file name and score).
        alpha: opacity of the heat map.
    """
    img = _image_hwc(image)
    a = to_numpy(amap, "map").astype(np.float32)
    a = a[0] if a.ndim == 3 else a
    if a.ndim != 2:
        raise MsaclError(f"a heat map must be (1, h, w) or (h, w); got shape {to_numpy(amap, 'map').shape}")
    a = _resize_map(a, img.shape[:2])
    gt = None
    if mask is not None:
        gt = to_numpy(mask, "mask")
        gt = (gt[0] if gt.ndim == 3 else gt) > 0.5
        if gt.shape != img.shape[:2]:
            raise MsaclError(f"mask has shape {gt.shape} but the image is {img.shape[:2]}")
    lo = float(a.min()) if vmin is None else float(vmin)
    hi = float(a.max()) if vmax is None else float(vmax)
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    im = _draw_overlay(ax, img, a, gt, lo, max(hi, lo + 1e-12), alpha=alpha)
    if threshold is not None and (a >= threshold).any():
        ax.contour((a >= threshold).astype(float), levels=[0.5], colors="white", linewidths=1.0, linestyles="--")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(_plain(title), fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="anomaly map value")
    return _save(fig, path)


def plot_tsne(
    features: Any, labels: Any, path: str | Path, *, seed: int = 0, perplexity: float = 30.0,
    title: str = "t-SNE of image features", shown_seed: int | None = None,
) -> Path:
    """2-D t-SNE of image features, normal in blue and abnormal in red (MSACL Fig. 1 style).

    Args:
        features: one feature vector per image (e.g. the encoder's pooled output). Shape: (N, D).
        labels: 0/1. Shape: (N,).
        path: PNG to write.
        seed: ``random_state`` of scikit-learn's TSNE, so the layout is repeatable.
        shown_seed: the seed the title names (the run's own seed, when ``seed`` is derived from it).
        perplexity: capped at (N - 1) / 3 for small sets.
        title: figure title.
    """
    from sklearn.manifold import TSNE

    f = to_numpy(features, "features").astype(np.float32)
    if f.ndim != 2:
        raise MsaclError(f"features must be (N, D); got shape {f.shape}")
    y = check_labels(labels, f.shape[0])
    if f.shape[0] < 5:
        raise MsaclError(f"t-SNE needs at least 5 images; got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise MsaclError("features contain NaN or inf")
    perp = float(min(perplexity, (f.shape[0] - 1) / 3))
    emb = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(f)
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    for mask, name, colour in ((~y, "normal", NORMAL_COLOUR), (y, "abnormal", ABNORMAL_COLOUR)):
        if mask.any():
            ax.scatter(emb[mask, 0], emb[mask, 1], s=10, c=colour, alpha=0.7, label=f"{name} (n={int(mask.sum())})",
                       linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(_plain(f"{title}\nperplexity {perp:.3g}, seed {seed if shown_seed is None else shown_seed}"),
                 fontsize=10)
    ax.legend(markerscale=2)
    return _save(fig, path)
