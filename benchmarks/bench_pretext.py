"""Is the pretext task learned, and does pre-training move PaDiM? (issue 11's targets, `cpu` profile settings)

For each data set and seed: MSACL and CCD pre-trained from the ImageNet encoder, MSACL from random init, and
PaDiM on each of them beside PaDiM on the ImageNet and the random-init encoders themselves. It runs through
``msacl.bench.run_grid`` (so finished jobs are skipped on a re-run and pre-training resumes) and then reads each
pre-training run's log: the last epoch's mean l_aug against ln 4, whether the burn-in ran and reached its
criterion, and the centre warning.

    python benchmarks/bench_pretext.py --out runs/pretext                       # 4 sets x 3 seeds
    python benchmarks/bench_pretext.py --out runs/pretext --data kvasir_seg_patch128 --seeds 1
    python benchmarks/bench_pretext.py --out runs/pretext-lr05 --data kvasir_seg_patch128 --set optim.lr=0.05
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA_ROOT = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data"))
DATASETS = ("kvasir_seg_patch128", "odir_fundus_256", "kermany_cxr_224", "brain_tumor_mri_224")
VARIANTS = ("random", "imagenet", "msacl", "ccd", "msacl-scratch")


def last_epoch_terms(run: Path) -> dict[str, float]:
    """Mean of each loss term over the last epoch of a pre-training log."""
    rows = [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines() if s.strip()]
    last = max(r["epoch"] for r in rows)
    rows = [r for r in rows if r["epoch"] == last]
    keys = [k for k in ("aug", "pos", "ctr", "con", "loss") if k in rows[0]]
    return {k: statistics.mean(r[k] for r in rows) for k in keys}


def main(argv: list[str] | None = None) -> int:
    from msacl.bench.grid import PROFILES, Row, Table, resolve_backbone
    from msacl.bench.runner import run_grid
    from msacl.bench.tables import paired_difference

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pretext")
    p.add_argument("--data", nargs="+", default=list(DATASETS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="pre-training epochs (default: the cpu profile's)")
    p.add_argument("--backbone", default=None, help="default: the cpu profile's (auto)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--bn-stats", nargs="+", choices=("encoder", "train"), default=["encoder", "train"],
                   help="BatchNorm statistics PaDiM runs under (default: both, so the weights' effect can be read "
                        "apart from the statistics')")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... or auto (default)")
    p.add_argument("--precision", default=None, help="pre-training precision (default: the profile's, 32-true)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="pre-training settings of every run, e.g. optim.lr=0.05, applied to the library's defaults "
                        "(not the cpu profile's own settings: a screen measures each lever from the defaults); "
                        "use a fresh --out per setting")
    a = p.parse_args(argv)
    from msacl.config import parse_key_values
    from msacl.errors import MsaclError

    try:
        overrides = parse_key_values(a.set, "--set")
    except MsaclError as e:
        p.error(str(e))
    profile = dataclasses.replace(PROFILES["cpu"], pretrain_overrides=overrides, bn_stats=tuple(a.bn_stats))
    if a.precision:
        profile.precision = a.precision
    if a.epochs:
        profile.pretrain_epochs = a.epochs
    backbone = a.backbone or resolve_backbone(profile.backbone)
    table = Table("pretext", "pretext", tuple(Row(v, v, "padim") for v in a.variants), ())
    out = Path(a.out)
    recs = run_grid(profile, [table], DATA_ROOT, out, list(a.data), seeds=a.seeds, backbone=backbone,
                    device=a.device, progress=False, log=lambda m: print(m, file=sys.stderr, flush=True))
    by: dict[tuple[str, str, str], dict[int, dict[str, float]]] = defaultdict(dict)
    for r in recs:
        by[(r["dataset"], r["variant"], r.get("bn_stats") or "encoder")][r["seed"]] = r["metrics"]
    print(f"backbone {backbone}, {profile.pretrain_epochs} pre-training epochs, PaDiM mean +- std over seeds; "
          "weights = paired difference to ImageNet under the same BatchNorm statistics [95 % t interval]")
    print(f"{'data':<22}{'encoder':<16}{'BN stats':<10}{'n':>3}{'image AUROC':>18}{'pixel AUROC':>18}"
          f"{'weights (image)':>30}")
    for d in a.data:
        for v in a.variants:
            for bn in a.bn_stats:
                runs = by.get((d, v, bn), {})
                if not runs:
                    continue
                cols = []
                for m in ("image_auroc", "pixel_auroc"):
                    xs = [x[m] for x in runs.values() if x.get(m) is not None]
                    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                    cols.append(f"{statistics.mean(xs):.3f} +- {sd:.3f}" if xs else "-")
                ref = by.get((d, "imagenet", bn), {})
                diff = None if v in ("imagenet", "random") else paired_difference(
                    {k: x["image_auroc"] for k, x in runs.items()}, {k: x["image_auroc"] for k, x in ref.items()})
                dtext = "-" if diff is None else (f"{diff['mean']:+.3f}" + (
                    f" [{diff['lo']:+.3f}, {diff['hi']:+.3f}]" if diff["lo"] is not None else " (1 seed)"))
                print(f"{d:<22}{v:<16}{bn:<10}{len(runs):>3}{cols[0]:>18}{cols[1]:>18}{dtext:>30}")
    print(f"\nlast-epoch pretext losses (ln 4 = {math.log(4):.3f}; target l_aug < 0.8 ln 4 = {0.8 * math.log(4):.3f})")
    for d in a.data:
        for v in a.variants:
            for s in range(a.seeds):
                run = out / "pretrain" / d / backbone / v / f"seed{s}"
                if not (run / "log.jsonl").is_file():
                    continue
                terms = last_epoch_terms(run)
                cj = run / "centres.json"
                c = json.loads(cj.read_text()) if cj.is_file() else {}
                burn = c.get("burnin") or {}
                print(f"{d:<22} {v:<14} seed {s}: " + " ".join(f"{k} {x:.3f}" for k, x in terms.items())
                      + (f" | burn-in {burn.get('epochs')} epoch(s), reached {burn.get('reached')}" if burn else "")
                      + (f" | centre ratio {c['min_distance'] / c['spread_rms']:.2f}" if c.get("spread_rms") else "")
                      + (" | WARNING" if c.get("warning") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
