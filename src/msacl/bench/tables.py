"""Turn benchmark records into the papers' tables: Markdown, JSON and PNG, each row with mean +- std over seeds."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from msacl.bench.grid import CLAIMS, NO_PRETRAIN, PAPER_NAME, Profile, Row, Table
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


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of ``a[seed] - b[seed]`` over the seeds both have, with a two-sided 95 % t interval (None with fewer
    than 2 pairs: no interval)."""
    from scipy import stats

    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None]
    if len(diffs) < 2:
        return {"mean": diffs[0], "lo": None, "hi": None, "n": 1} if diffs else None
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(diffs)}


def _bn_of(records: list[dict[str, Any]], row: Row, profile: Profile | None) -> tuple[str | None, ...]:
    """The BatchNorm settings a row runs under: the profile's plan, or else those found in the records."""
    if profile is not None:
        from msacl.bench.runner import bn_settings

        return bn_settings(row.detector, profile)
    found = sorted({r.get("bn_stats") or "" for r in records
                    if (r["variant"], r["detector"]) == (row.variant, row.detector)})
    return tuple(b or None for b in found) or (None,)


def aggregate(tables: list[Table], records: list[dict[str, Any]], datasets: list[str],
              profile: Profile | None = None) -> list[dict[str, Any]]:
    """One entry per table: rows (one per BatchNorm setting of a frozen-encoder row) x data sets x metrics, mean
    and std over seeds, the wall time per row, and for a pre-trained encoder the paired difference to the
    ImageNet row of the same detector and BatchNorm setting (per seed, 95 % interval)."""
    by: dict[tuple[str, str, str, str | None], list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["dataset"], r["variant"], r["detector"], r.get("bn_stats")), []).append(r)
    out = []
    for t in tables:
        ds = [d for d in (t.datasets or datasets) if d in datasets]
        rows = []
        for row in t.rows:
            for bn in _bn_of(records, row, profile):
                cells = {}
                for d in ds:
                    recs = by.get((d, row.variant, row.detector, bn), [])
                    ref = by.get((d, "imagenet", row.detector, bn), [])
                    cell: dict[str, Any] = {m: _stats([r["metrics"].get(m) for r in recs]) for m in t.metrics}
                    if row.variant not in NO_PRETRAIN and ref:
                        cell["vs_imagenet"] = {
                            m: paired_difference({r["seed"]: r["metrics"].get(m) for r in recs},
                                                 {r["seed"]: r["metrics"].get(m) for r in ref}) for m in t.metrics}
                    secs = [(r.get("pretrain_seconds") or 0) + (r.get("fit_seconds") or 0)
                            + (r.get("test_seconds") or 0) for r in recs]
                    cell["seconds"] = _stats(secs)
                    cells[d] = cell
                rows.append({"label": row.label, "variant": row.variant, "detector": row.detector, "bn_stats": bn,
                             "cells": cells})
        quoted = [{"label": q.label, "values": dict(q.values), "note": q.note} for q in t.quoted]
        out.append({"key": t.key, "title": t.title, "datasets": ds, "metrics": list(t.metrics), "rows": rows,
                    "quoted": quoted})
    return out


def tables_header(profile: Profile, records: list[dict[str, Any]], planned: int) -> str:
    """The first lines of tables.md, from the records alone (so that ``--report-only`` writes what the run
    wrote, bit for bit): how much of the grid is done and the machines the results were measured on."""
    machines = sorted({r.get("versions", {}).get("machine", "unknown") for r in records})
    torch_versions = sorted({r.get("versions", {}).get("torch", "unknown") for r in records})
    return (f"# msacl bench, profile `{profile.name}`, {profile.seeds} seed(s): {len(records)} of {planned} jobs "
            f"done\n\nMeasured on: {'; '.join(machines)} (torch {', '.join(torch_versions)}). Written from "
            "results.jsonl by `msacl bench` (`--report-only` rewrites it from that file alone).")


def claims_markdown(records: list[dict[str, Any]], datasets: list[str], seeds: int) -> list[str]:
    """One paragraph per claim of ``CLAIMS``: the paired difference (variant - reference, per seed, 95 % t
    interval) on each data set under each BatchNorm setting run, and a verdict. Reproduced: on every data set the
    interval lies above 0 with all ``seeds`` seeds; contradicted: on some data set it lies below 0; otherwise
    open (too few seeds or data sets, or an interval across 0)."""
    by: dict[tuple, dict[int, float]] = {}
    for r in records:
        v = r["metrics"].get("image_auroc")
        if v is not None:
            by.setdefault((r["dataset"], r["variant"], r["detector"], r.get("bn_stats")), {})[r["seed"]] = v
    lines = ["", "### The papers' claims at this budget", ""]
    for c in CLAIMS:
        sets = [d for d in (c.datasets or datasets) if d in datasets]
        bns = sorted({k[3] or "" for k in by if k[1:3] == (c.variant, c.detector)}) or [""]
        parts, verdicts = [], []
        for bn in bns:
            b = bn or None
            for d in sets:
                diff = paired_difference(by.get((d, c.variant, c.detector, b), {}),
                                         by.get((d, c.reference, c.detector, b), {}))
                where = f"{PAPER_NAME.get(d, d)}{f' (BN {bn})' if bn else ''}"
                if diff is None:
                    parts.append(f"{where}: not run yet")
                    verdicts.append("open")
                    continue
                parts.append(f"{where}: {_fmt_diff(diff)} over {diff['n']} seed(s)")
                if diff["lo"] is not None and diff["hi"] < 0:
                    verdicts.append("contradicted")
                elif diff["lo"] is not None and diff["lo"] > 0 and diff["n"] >= seeds:
                    verdicts.append("reproduced")
                else:
                    verdicts.append("open")
        verdict = ("contradicted" if "contradicted" in verdicts else
                   "reproduced" if set(verdicts) == {"reproduced"} else "open")
        lines.append(f"**{c.text}.** {c.variant} - {c.reference}, image AUROC: " + "; ".join(parts)
                     + f". Verdict at this budget, on these stand-in sets: **{verdict}**.")
        lines.append("")
    return lines


def _fmt(s: dict[str, Any], seeds: int) -> str:
    if s["mean"] is None:
        return "-"
    text = f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"
    return text + (f" (n={s['n']})" if s["n"] < seeds else "")


def _fmt_diff(d: dict[str, Any] | None) -> str:
    """A paired difference as ``Δ +0.012 [-0.003, +0.027]`` (``(1 seed)`` without an interval); "" for None."""
    if d is None:
        return ""
    if d["lo"] is None:
        return f"Δ {d['mean']:+.3f} (1 seed)"
    return f"Δ {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"


def _fmt_time(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    m = s["mean"]
    return f"{m:.0f} s" if m < 120 else f"{m / 60:.1f} min"


def markdown(agg: list[dict[str, Any]], profile: Profile, header: str = "") -> str:
    """The tables in Markdown. A cell is mean ± std over seeds, ``(n=k)`` when fewer than the profile's seeds
    finished; under it, for a pre-trained encoder, Δ: its paired difference to the ImageNet row (same detector,
    same BatchNorm setting, same seeds) with a 95 % t interval. Quoted rows (the papers' own figures for a
    method this library cannot run) are marked and explained under the table."""
    lines = [header] if header else []
    for t in agg:
        if not t["datasets"]:
            continue
        lines += ["", f"### {t['title']}", ""]
        cols = [(d, m) for d in t["datasets"] for m in t["metrics"]]
        head = ["method", "BN stats"] + [
            f"{PAPER_NAME.get(d, d)}{'' if len(t['metrics']) == 1 else ' ' + METRIC_NAMES[m]}" for d, m in cols
        ] + ["wall time / seed"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for row in t["rows"]:
            secs = [row["cells"][d]["seconds"]["mean"] for d in t["datasets"]
                    if row["cells"][d]["seconds"]["mean"] is not None]
            wall = _fmt_time({"mean": sum(secs) if secs else None})
            cells = [_fmt(row["cells"][d][m], profile.seeds)
                     + ("<br>" + _fmt_diff(diff) if (diff := row["cells"][d].get("vs_imagenet", {}).get(m)) else "")
                     for d, m in cols]
            lines.append("| " + " | ".join([row["label"], row["bn_stats"] or "trained", *cells, wall]) + " |")
        notes = []
        for i, q in enumerate(t["quoted"], 1):
            cells = [f"{q['values'][d]:.3f}" if d in q["values"] and m == t["metrics"][0] else "-" for d, m in cols]
            lines.append("| " + " | ".join([f"{q['label']} (quoted{'*' * i})", "-", *cells, "-"]) + " |")
            notes.append(f"{'*' * i} {q['note']}")
        if notes:
            lines += [""] + notes
    lines += ["", "BN stats: the BatchNorm statistics of a frozen encoder (`encoder`: stored with the weights; "
              "`train`: re-estimated on the training images); `trained`: the detector trains its encoder. "
              "Δ: paired difference to the ImageNet row of the same detector and BN setting, mean over seeds "
              "[95 % t interval]. (n=k): only k seeds finished."]
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


def write_tables(agg: list[dict[str, Any]], profile: Profile, out: Path, header: str = "",
                 records: list[dict[str, Any]] | None = None, datasets: list[str] | None = None) -> dict[str, Path]:
    """tables.md (with the claims' paragraphs when ``records`` are given), tables.json and the bar charts."""
    md = out / "tables.md"
    text = markdown(agg, profile, header)
    if records is not None:
        text += "\n".join(claims_markdown(records, datasets or [], profile.seeds))
    atomic_write_text(md, text)
    js = out / "tables.json"
    atomic_write_text(js, json.dumps({"profile": profile.name, "tables": agg}, indent=2) + "\n")
    figs = plot_figures(agg, out)
    return {"markdown": md, "json": js, **{p.stem: p for p in figs}}
