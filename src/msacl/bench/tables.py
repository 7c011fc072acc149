"""Turn benchmark records into the papers' tables: Markdown, JSON and PNG, each row with mean +- std over seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from msacl.bench.grid import PAPER_NAME, Profile, Table
from msacl.runs import atomic_write_text

METRIC_NAMES = {
    "image_auroc": "AUROC", "pixel_auroc": "pixel AUROC", "iou": "IoU", "dice": "Dice",
    "iou_oracle": "IoU (oracle)", "dice_oracle": "Dice (oracle)",
}


def _stats(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


def aggregate(tables: list[Table], records: list[dict[str, Any]], datasets: list[str]) -> list[dict[str, Any]]:
    """One entry per table: rows x data sets x metrics, mean/std over seeds, and wall time per row."""
    by: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["dataset"], r["variant"], r["detector"]), []).append(r)
    out = []
    for t in tables:
        ds = [d for d in (t.datasets or datasets) if d in datasets]
        rows = []
        for row in t.rows:
            cells = {}
            for d in ds:
                recs = by.get((d, row.variant, row.detector), [])
                cell = {m: _stats([r["metrics"].get(m) for r in recs]) for m in t.metrics}
                secs = [(r.get("pretrain_seconds") or 0) + (r.get("fit_seconds") or 0) + (r.get("test_seconds") or 0)
                        for r in recs]
                cell["seconds"] = _stats(secs)
                cells[d] = cell
            rows.append({"label": row.label, "variant": row.variant, "detector": row.detector, "cells": cells})
        out.append({"key": t.key, "title": t.title, "datasets": ds, "metrics": list(t.metrics), "rows": rows})
    return out


def _fmt(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"


def _fmt_time(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    m = s["mean"]
    return f"{m:.0f} s" if m < 120 else f"{m / 60:.1f} min"


def markdown(agg: list[dict[str, Any]], profile: Profile, header: str = "") -> str:
    lines = [header] if header else []
    for t in agg:
        if not t["datasets"]:
            continue
        lines += ["", f"### {t['title']}", ""]
        cols = []
        for d in t["datasets"]:
            for m in t["metrics"]:
                cols.append((d, m))
        head = ["method"] + [f"{PAPER_NAME.get(d, d)}{'' if len(t['metrics']) == 1 else ' ' + METRIC_NAMES[m]}"
                             for d, m in cols] + ["wall time / seed"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for row in t["rows"]:
            secs = [row["cells"][d]["seconds"]["mean"] for d in t["datasets"]
                    if row["cells"][d]["seconds"]["mean"] is not None]
            wall = _fmt_time({"mean": sum(secs) if secs else None})
            cells = [_fmt(row["cells"][d][m]) for d, m in cols]
            lines.append("| " + " | ".join([row["label"], *cells, wall]) + " |")
    lines += ["", f"Profile `{profile.name}`, backbone `{profile.backbone}`; reduced from the papers:"]
    lines += [f"- {r}" for r in profile.reductions]
    return "\n".join(lines) + "\n"


def plot_figures(agg: list[dict[str, Any]], out: Path) -> list[Path]:
    """Bar charts of Fig. 6 left/right and Table 3 (mean with std error bars), like the papers' figures."""
    from msacl.report.bars import plot_bars

    paths = []
    for t in agg:
        if t["key"] not in ("fig6_left", "fig6_right", "table3") or not t["datasets"]:
            continue
        series = {PAPER_NAME.get(d, d): ([row["cells"][d]["image_auroc"]["mean"] for row in t["rows"]],
                                         [row["cells"][d]["image_auroc"]["std"] for row in t["rows"]])
                  for d in t["datasets"]}
        paths.append(plot_bars(out / f"{t['key']}.png", categories=[r["label"] for r in t["rows"]], series=series,
                               title=t["title"]))
    return paths


def write_tables(agg: list[dict[str, Any]], profile: Profile, out: Path, header: str = "") -> dict[str, Path]:
    md = out / "tables.md"
    atomic_write_text(md, markdown(agg, profile, header))
    js = out / "tables.json"
    atomic_write_text(js, json.dumps({"profile": profile.name, "tables": agg}, indent=2) + "\n")
    figs = plot_figures(agg, out)
    return {"markdown": md, "json": js, **{p.stem: p for p in figs}}
