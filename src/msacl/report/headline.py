"""The headline block at the top of ``report.html``: what a reader wants first, in four cards.

The data folder's name and the test split's size, then the image AUROC with its bootstrap interval, the
normal / abnormal decision (its threshold, the false-positive rate it was calibrated for and the test
false-positive rate and sensitivity it gives), the pixel AUROC and the Dice score. Every figure is the one
in the full table further down the page; a card whose figure the run lacks says why in its place.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msacl.metrics.records import Metrics

CSS = """
.headline { background: #eaf2fb; border: 1px solid #b9d0ea; border-radius: 8px; padding: 0.8em 1em 1em;
            margin: 1em 0 1.5em; }
.headline .data { font-size: 1.05em; margin-bottom: 0.6em; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { background: #fff; border: 1px solid #c9dbef; border-radius: 6px; padding: 0.5em 0.9em; min-width: 9em;
        flex: 1 1 9em; }
.card .label { color: #555; font-size: 0.85em; }
.card .value { font-size: 1.8em; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .detail { color: #444; font-size: 0.85em; }
.card[data-metric='decision'] { flex: 2 1 18em; }
.card[data-metric='decision'] .value { font-size: 1.2em; line-height: 1.35em; padding: 0.15em 0; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def _card(label: str, value: str | list[str], detail: str, key: str) -> str:
    """One card: a label, the figure (one line, or several) and what it means."""
    lines = "<br>".join(_esc(v) for v in ([value] if isinstance(value, str) else value))
    return (f"<div class='card' data-metric='{_esc(key)}'><div class='label'>{_esc(label)}</div>"
            f"<div class='value'>{lines}</div><div class='detail'>{_esc(detail)}</div></div>")


def data_folder(metrics: Metrics, paths: Sequence[str]) -> str:
    """The data folder's name: ``metrics.test_data``'s, else that above the test files' ``test/<class>/``."""
    if metrics.test_data:
        return Path(metrics.test_data).name or str(metrics.test_data)
    parts = Path(paths[0]).parts if paths else ()
    if len(parts) >= 3 and parts[-3] == "test":
        return parts[-4] if len(parts) >= 4 else "."
    return "(not recorded)"


def _image_card(m: Metrics) -> str:
    detail = "needs normal and abnormal test images"
    if m.image_auroc is not None:
        detail = "chance: 0.5"
        if m.image_auroc_ci_low is not None and m.image_auroc_ci_high is not None:
            level = f"{100 * m.ci_level:g}% " if m.ci_level else ""
            detail = f"[{_num(m.image_auroc_ci_low)}, {_num(m.image_auroc_ci_high)}] {level}bootstrap interval"
    return _card("Image AUROC", _num(m.image_auroc), detail, "image_auroc")


def _decision_card(m: Metrics) -> str:
    d = m.decision
    if d is None or d.threshold is None:
        return _card("Decision", "none", "no held-out normal images to calibrate a threshold on (fit with "
                                         "--holdout > 0)", "decision")
    target = "n/a" if d.fpr_target is None else f"{d.fpr_target:g}"
    value = [f"test FPR {_num(d.test_fpr)}", f"sensitivity {_num(d.test_sensitivity)}"]
    detail = (f"abnormal if score > {d.threshold:.4g}, calibrated for a false-positive rate of {target} on "
              f"{d.n} held-out normal images; the rates are this test set's")
    return _card(f"Decision at a target false-positive rate of {target}", value, detail, "decision")


def _pixel_cards(m: Metrics) -> list[str]:
    p = m.pixel
    if p is None:
        why = "the test split has no lesion masks"
        return [_card("Pixel AUROC", "n/a", why, "pixel_auroc"), _card("Dice", "n/a", why, "dice")]
    rule = p.threshold_rule or "no threshold chosen"
    return [_card("Pixel AUROC", _num(p.pixel_auroc), "every pixel of every test image; chance: 0.5", "pixel_auroc"),
            _card("Dice", _num(p.dice), f"mean over abnormal images at the map threshold ({rule})", "dice")]


def headline_html(metrics: Metrics, paths: Sequence[str]) -> str:
    """The headline block's HTML (every piece of text escaped)."""
    m = metrics
    counts = f"{m.n_normal} normal / {m.n_abnormal} abnormal test images" if m.n_images is not None else ""
    where = f" ({_esc(m.test_data)})" if m.test_data else ""
    data = f"<div class='data'>Data: <b>{_esc(data_folder(m, paths))}</b>{where}. {_esc(counts)}</div>"
    cards = [_image_card(m), _decision_card(m), *_pixel_cards(m)]
    return f"<section class='headline' id='headline'>\n{data}\n<div class='cards'>{''.join(cards)}</div>\n</section>"
