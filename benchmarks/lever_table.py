"""One Markdown row per pre-training setting screened with ``bench_pretext.py`` (issue 20's lever screen).

Each folder is the ``--out`` of one ``bench_pretext.py --variants imagenet msacl --set ...`` run; a row gives the
setting, the last epoch's mean l_aug (chance: ln 4 = 1.386), the centre ratio (closest pair of class centres /
RMS spread of the samples, at the last centre check), PaDiM image and pixel AUROC on the MSACL encoder under both
BatchNorm settings, the weight effect (MSACL minus ImageNet, both with statistics re-estimated on the training
images, paired by seed) and the pre-training minutes.

    python benchmarks/lever_table.py runs/screen/default runs/screen/wpos0 ... [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_pretext import last_epoch_terms  # noqa: E402


def _mean(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f}" if xs else "-"


def row(out: Path, seed: int | None = None) -> str:
    from msacl.bench.runner import read_results
    from msacl.bench.tables import paired_difference

    recs = [r for r in read_results(out / "results.jsonl").values() if seed is None or r["seed"] == seed]

    def auc(variant: str, bn: str, metric: str = "image_auroc") -> dict[int, float]:
        return {r["seed"]: r["metrics"][metric] for r in recs
                if r["variant"] == variant and r.get("bn_stats") == bn and r["metrics"].get(metric) is not None}

    runs = sorted((out / "pretrain").glob(f"*/*/msacl/seed{'*' if seed is None else seed}"))
    laug, ratio, minutes = [], [], []
    for run in runs:
        if (run / "log.jsonl").is_file():
            laug.append(last_epoch_terms(run).get("aug", float("nan")))
        c = json.loads((run / "centres.json").read_text()) if (run / "centres.json").is_file() else {}
        if c.get("spread_rms"):
            ratio.append(c["min_distance"] / c["spread_rms"])
        t = run / "pretrain_seconds.json"
        timing = json.loads(t.read_text()) if t.is_file() else {}
        if timing and "resumed_after_epoch" not in timing:  # a resumed run's seconds are those after the resume
            minutes.append(timing["seconds"] / 60)
    effect = paired_difference(auc("msacl", "train"), auc("imagenet", "train"))
    eff = "-" if effect is None else f"{effect['mean']:+.3f}" + (
        f" [{effect['lo']:+.3f}, {effect['hi']:+.3f}]" if effect["lo"] is not None else "")
    overrides = next((r.get("pretrain_overrides") or {} for r in recs if r["variant"] == "msacl"), {})
    sets = " ".join(f"`{k}={v}`" for k, v in overrides.items())
    cells = [out.name, sets or "(defaults)", _mean(laug), _mean(ratio),
             _mean(list(auc("msacl", "encoder").values())), _mean(list(auc("msacl", "train").values())),
             _mean(list(auc("msacl", "encoder", "pixel_auroc").values())),
             _mean(list(auc("msacl", "train", "pixel_auroc").values())), eff,
             f"{statistics.fmean(minutes):.1f}" if minutes else "-"]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outs", nargs="+", type=Path, help="bench_pretext.py --out folders")
    p.add_argument("--seed", type=int, default=None, help="only this seed (default: every seed, averaged)")
    a = p.parse_args(argv)
    print("| run | setting | l_aug | centre ratio | PaDiM image AUROC, BN encoder | BN train | pixel AUROC, BN "
          "encoder | BN train | weights: MSACL - ImageNet (BN train) | pre-training min |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for out in a.outs:
        print(row(out, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
