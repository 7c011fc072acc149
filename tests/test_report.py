"""PNG figures and the self-contained HTML report."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msacl.errors import MsaclError
from msacl.metrics import evaluate, image_auroc
from msacl.report import heatmap_png, plot_histograms, plot_overlays, plot_roc, plot_tsne, write_report
from msacl.report.plots import overlay_ranking, overlays_figure, roc_figure
from msacl.runs import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NASTY = "<script>alert('x')</script> & $x_1$"


def _record(n_normal: int = 6, n_abnormal: int = 8, size: int = 16, channels: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n = n_normal + n_abnormal
    images = torch.rand(n, channels, size, size, generator=gen)
    masks = torch.zeros(n, 1, size, size)
    masks[n_normal:, :, 4:10, 5:11] = 1
    maps = torch.rand(n, 1, size, size, generator=gen) + 0.8 * masks
    labels = torch.cat([torch.zeros(n_normal), torch.ones(n_abnormal)])
    scores = maps.amax(dim=(1, 2, 3))
    paths = [f"data/test/{'abnormal' if labels[i] else 'normal'}/img_{i:03d}.png" for i in range(n)]
    paths[-1] = f"data/test/abnormal/{NASTY}.png"
    return images, labels, scores, maps, masks, paths


def _png_size(path: Path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_title = tag == "title"
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.title += data


def _parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def test_plots_write_valid_pngs(tmp_path):
    images, labels, scores, maps, masks, paths = _record()
    w, h = _png_size(plot_roc(scores, labels, tmp_path / "roc.png"))
    assert w > 300 and h > 300
    _png_size(plot_histograms(scores, labels, tmp_path / "hist.png", threshold=1.0))
    # maps at a coarser resolution than the images are drawn at the image's
    coarse = torch.nn.functional.avg_pool2d(maps, 2)
    w, h = _png_size(plot_overlays(images, coarse, masks, scores, paths, tmp_path / "ov.png", n=3, threshold=1.0))
    w_no_gt, _ = _png_size(plot_overlays(images, maps, None, scores, paths, tmp_path / "ov2.png", n=3))
    assert w_no_gt < w  # two columns fewer per block
    _png_size(heatmap_png(images[-1], maps[-1], tmp_path / "one.png", mask=masks[-1], threshold=1.0, title=NASTY))
    _png_size(heatmap_png(images[0, :1], maps[0, 0], tmp_path / "grey.png"))


def test_roc_legend_shows_auroc():
    _, labels, scores, *_ = _record()
    fig = roc_figure(scores, labels, "t")
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[0] == f"AUROC = {image_auroc(scores, labels):.3f}"


def test_overlays_rank_most_and_least_anomalous(tmp_path):
    scores = np.array([0.3, 0.9, 0.1, 0.5, 0.9, 0.2, 0.7])
    blocks = overlay_ranking(scores, 3)
    assert [name for name, _ in blocks] == ["Most anomalous", "Least anomalous"]
    assert blocks[0][1].tolist() == [1, 4, 6]  # highest first; the two 0.9 keep their input order
    assert blocks[1][1].tolist() == [2, 5, 0]  # lowest first
    # fewer than 2n images: each is shown once, the "least" block gets those left over
    assert [idx.tolist() for _, idx in overlay_ranking(scores, 5)] == [[1, 4, 6, 3, 0], [2, 5]]
    # n >= N: every image in the "most" block and no "least" block
    assert [(name, idx.tolist()) for name, idx in overlay_ranking(scores, 8)] == [
        ("Most anomalous", [1, 4, 6, 3, 0, 5, 2])]

    # the figure draws those images in that order: each row's image panel names its file and score
    images, _, _, maps, masks, _ = _record(n_normal=3, n_abnormal=4)
    paths = [f"data/test/img_{i}.png" for i in range(7)]
    fig = overlays_figure(images, maps, masks, scores, paths, n=3)
    drawn = [(sub.get_suptitle(), [ax.get_ylabel() for ax in sub.axes if ax.get_ylabel()]) for sub in fig.subfigs]
    assert drawn == [(name, [f"img_{i}.png\ns={scores[i]:.4g}" for i in idx]) for name, idx in blocks]
    _png_size(plot_overlays(images, maps, masks, scores, paths, tmp_path / "ov.png", n=8))
    with pytest.raises(MsaclError, match="one image, map, score and path per row"):
        plot_overlays(images[:4], maps, masks, scores, paths, tmp_path / "bad.png")


def test_plot_tsne(tmp_path):
    gen = torch.Generator().manual_seed(0)
    feats = torch.cat([torch.randn(12, 8, generator=gen), torch.randn(12, 8, generator=gen) + 3])
    labels = torch.cat([torch.zeros(12), torch.ones(12)])
    _png_size(plot_tsne(feats, labels, tmp_path / "tsne.png", seed=1))
    with pytest.raises(MsaclError, match="at least 5"):
        plot_tsne(feats[:3], labels[:3], tmp_path / "x.png")


def test_write_report_is_self_contained_and_escaped(tmp_path):
    images, labels, scores, maps, masks, paths = _record()
    run = RunDir.create(tmp_path / "run", config={"detector": "padim", "note": NASTY}, seed=0,
                        argv=["msacl", "test", "--data", NASTY])
    metrics = evaluate(scores, labels, maps, masks, threshold=1.0, n_bootstrap=100)
    feats = torch.randn(len(scores), 6, generator=torch.Generator().manual_seed(0))
    out = write_report(run.path, images=images, labels=labels, scores=scores, maps=maps, masks=masks, paths=paths,
                       metrics=metrics, title=f"PaDiM {NASTY}", n_overlays=3, features=feats)
    assert out == run.path / "report.html"
    for name in ("roc.png", "histograms.png", "overlays.png", "tsne.png"):
        _png_size(run.path / name)
    page = _parse(out)
    assert "script" not in page.tags  # nothing the user typed became markup
    assert page.title == f"PaDiM {NASTY}"
    text = "".join(page.text)
    assert NASTY in text  # shown verbatim: title, config, command and file list
    raw = out.read_text(encoding="utf-8")
    assert "<script>" not in raw and "&lt;script&gt;" in raw
    # every figure embedded, byte for byte, no external reference
    assert len(page.imgs) == 4
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.imgs]
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs)
    assert (run.path / "roc.png").read_bytes() in embedded
    assert (run.path / "overlays.png").read_bytes() in embedded
    # metric values, the CI and the group protocol appear as formatted
    assert f"{metrics['image_auroc']:.4f}" in text
    assert f"[{metrics['image_auroc_ci_low']:.4f}, {metrics['image_auroc_ci_high']:.4f}] (95% bootstrap CI)" in text
    assert f"{metrics['pixel_auroc']:.4f}" in text and f"{metrics['dice_oracle']:.4f}" in text
    assert "Image AUROC" in text and "AUPRO" in text
    assert any("only 8 abnormal images" in t for t in page.text)  # notes shown
    assert "detector: padim" in text  # config from the run directory
    assert "msacl test --data" in text  # command.txt
    assert "img_000.png" in text  # ranked file list


def test_write_report_without_maps_or_with_one_class(tmp_path):
    images, labels, scores, maps, masks, paths = _record()
    metrics = evaluate(scores, labels, n_bootstrap=0)
    out = write_report(tmp_path / "a", images=images, labels=labels, scores=scores, paths=paths, metrics=metrics,
                       title="no maps", config={"k": 1})
    page = _parse(out)
    assert len(page.imgs) == 2 and not (tmp_path / "a" / "overlays.png").exists()
    assert "returned no maps" in "".join(page.text)
    ab = labels.bool()
    idx = torch.nonzero(ab).ravel().tolist()
    metrics = evaluate(scores[ab], labels[ab], maps[ab], masks[ab], n_bootstrap=0)
    out = write_report(tmp_path / "b", images=images[ab], labels=labels[ab], scores=scores[ab], maps=maps[ab],
                       masks=masks[ab], paths=[paths[i] for i in idx], metrics=metrics, title="abnormal only",
                       n_overlays=2)
    page = _parse(out)
    assert not (tmp_path / "b" / "roc.png").exists()
    assert len(page.imgs) == 2  # histograms + overlays
    text = "".join(page.text)
    assert "only one class" in text and "n/a" in text  # image AUROC undefined, said so
    assert re.search(r"Pred \(oracle t\)|oracle threshold", text)


def test_ranked_list_names_each_image_once_when_there_are_few(tmp_path):
    images, labels, scores, maps, masks, paths = _record()
    keep = [0, 1, len(labels) - 2]  # three images, two per block asked for
    sub = {k: v[keep] for k, v in dict(images=images, labels=labels, scores=scores).items()}
    out = write_report(tmp_path, **sub, paths=[paths[i] for i in keep], title="three",
                       metrics=evaluate(sub["scores"], sub["labels"], n_bootstrap=0), n_overlays=2)
    html = out.read_text()
    ranked = html[html.index("<h2>Ranked images</h2>"):]
    assert [ranked.count(paths[i]) for i in keep] == [1, 1, 1]
    assert ranked.count("most anomalous #") == 2 and ranked.count("least anomalous #") == 1


def test_write_report_rejects_mismatched_paths(tmp_path):
    images, labels, scores, maps, masks, paths = _record()
    with pytest.raises(MsaclError, match="paths for"):
        write_report(tmp_path, images=images, labels=labels, scores=scores, paths=paths[:-1], metrics={}, title="x")
    assert not np.any([p.suffix == ".html" for p in tmp_path.iterdir()])


def test_report_draws_the_decision_threshold(tmp_path):
    images, labels, scores, maps, masks, paths = _record()
    metrics = evaluate(scores, labels, n_bootstrap=0)
    metrics.update({"decision_threshold": 1.2, "decision_fpr_target": 0.05, "decision_n": 40,
                    "decision_test_fpr": 0.1667, "decision_test_sensitivity": 0.625})
    out = write_report(tmp_path, images=images, labels=labels, scores=scores, paths=paths, metrics=metrics,
                       title="t", score_threshold=1.2)
    text = "".join(_parse(out).text)
    assert "Dashed: the decision threshold 1.2000 calibrated for a false-positive rate of 0.0500 on 40" in text
    assert "false-positive rate of 0.1667 and a sensitivity of 0.6250" in text
    assert "Decision: test sensitivity" in text
    plain = plot_histograms(scores, labels, tmp_path / "plain.png")
    assert Image.open(plain).tobytes() != Image.open(tmp_path / "histograms.png").tobytes()


def test_overlay_png_keeps_the_input_size_and_marks_the_threshold():
    import io

    from msacl.report.heatmap import BAR_WIDTH, display_scale, overlay_png

    gen = torch.Generator().manual_seed(0)
    for h, w in ((300, 500), (30, 50), (4200, 200)):
        img = torch.rand(h, w, 3, generator=gen).numpy()
        amap = torch.rand(h, w, generator=gen).numpy()
        png = overlay_png(img, amap, threshold=0.9, flagged=amap > 0.9, title=f"{NASTY} " * 6)
        s = display_scale(h, w)
        with Image.open(io.BytesIO(png)) as im:
            assert im.size[0] == round(w * s) + BAR_WIDTH
            assert round(h * s) < im.size[1] <= round(h * s) + 300  # image area plus the wrapped title
    assert display_scale(30, 50) == 7 and display_scale(300, 500) == 1 and display_scale(5000, 1000) == 0.5
    img = np.full((200, 200), 0.5, np.float32)
    amap = np.linspace(0, 1, 200 * 200, dtype=np.float32).reshape(200, 200)
    with_t = np.asarray(Image.open(io.BytesIO(overlay_png(img, amap, threshold=0.5))).convert("RGB"))
    without = np.asarray(Image.open(io.BytesIO(overlay_png(img, amap))).convert("RGB"))
    assert with_t.shape == without.shape
    diff = np.abs(with_t.astype(int) - without.astype(int)).sum(2) > 0
    assert not diff[:, :200].any()  # the image area is the same; only the colour bar gains the mark
    assert diff[:, 200:].any()
    with pytest.raises(MsaclError, match="heat map of shape"):
        overlay_png(img, amap[:10])


def _headline_metrics(scores, labels, maps, masks):
    metrics = evaluate(scores, labels, maps, masks, threshold=1.0, n_bootstrap=100)
    metrics.update({"decision_threshold": 1.2345, "decision_fpr_target": 0.05, "decision_n": 19,
                    "decision_test_fpr": 0.1667, "decision_test_sensitivity": 0.625, "threshold_rule": "val Dice",
                    "test_data": f"/somewhere/{NASTY}/kvasir"})
    return metrics


def test_report_opens_with_the_headline_block(tmp_path):
    images, labels, scores, maps, masks, paths = _record()
    metrics = _headline_metrics(scores, labels, maps, masks)
    out = write_report(tmp_path, images=images, labels=labels, scores=scores, maps=maps, masks=masks, paths=paths,
                       metrics=metrics, title="padim on kvasir", score_threshold=1.2345)
    raw = out.read_text(encoding="utf-8")
    head = raw[raw.index("<section class='headline'"):raw.index("</section>")]
    # first on the page: the headline, then the pictures, then the full table
    assert raw.index("<section class='headline'") < raw.index("<img") < raw.index("<h2>All metrics</h2>")
    text = re.sub(r"<[^>]+>", " ", head)
    assert "Data:  kvasir" in text and "6 normal / 8 abnormal test images" in text
    assert f"{metrics['image_auroc']:.3f}" in text
    assert f"[{metrics['image_auroc_ci_low']:.3f}, {metrics['image_auroc_ci_high']:.3f}] 95% bootstrap" in text
    assert "test FPR 0.167 sensitivity 0.625" in text and "abnormal if score &gt; 1.234" in text
    assert "false-positive rate of 0.05 on 19 held-out normal images" in text
    assert f"{metrics['pixel_auroc']:.3f}" in text and f"{metrics['dice']:.3f}" in text and "val Dice" in text
    assert "<script>" not in raw and "&lt;script&gt;" in head  # the folder's path is escaped


def test_headline_says_what_a_run_lacks(tmp_path):
    from msacl.metrics.records import Metrics
    from msacl.report.headline import data_folder, headline_html

    images, labels, scores, maps, masks, paths = _record()
    out = write_report(tmp_path, images=images, labels=labels, scores=scores, paths=paths,
                       metrics=evaluate(scores, labels, n_bootstrap=0), title="t")
    raw = out.read_text(encoding="utf-8")
    head = re.sub(r"<[^>]+>", " ", raw[raw.index("<section class='headline'"):raw.index("</section>")])
    assert "no held-out normal images" in head and head.count("the test split has no lesion masks") == 2
    assert "Data:  data " in head  # from the test files' paths: data/test/<class>/...
    assert data_folder(Metrics(), ["x.png"]) == "(not recorded)"
    one_class = headline_html(Metrics(n_images=3, n_normal=0, n_abnormal=3), [])
    assert "needs normal and abnormal test images" in one_class


def test_report_headline_in_headless_chromium(tmp_path):
    """The headline block is what a reader sees first: on a 1000 x 700 screenshot, its tinted box is there."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium); the headline's HTML is tested in "
                    "test_report_opens_with_the_headline_block")
    images, labels, scores, maps, masks, paths = _record()
    metrics = _headline_metrics(scores, labels, maps, masks)
    out = write_report(tmp_path, images=images, labels=labels, scores=scores, maps=maps, masks=masks, paths=paths,
                       metrics=metrics, title="padim on kvasir", score_threshold=1.2345)
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700", "--hide-scrollbars"]
    subprocess.run([chromium, *flags, f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120)
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    tint = (np.abs(px - np.array([0xEA, 0xF2, 0xFB])).sum(2) <= 3)  # the headline's background, #eaf2fb
    rows = np.nonzero(tint.any(1))[0]
    assert rows.size and rows.min() < 200 and tint.sum() > 20_000, (rows[:3], tint.sum())
    # the cards sit on it: white boxes inside the tinted area
    top, bottom = rows.min(), rows.max()
    assert (px[top:bottom, :, :] == 255).all(2).sum() > 20_000
