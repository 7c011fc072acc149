"""``msacl bench``: the papers' tables on the shared data sets, resumable, with wall times."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from msacl.cli.common import add_device, info
from msacl.errors import MsaclError
from msacl.names import LITE0

if TYPE_CHECKING:
    from msacl.bench.grid import Profile, Table


def examples(verb: str) -> str:
    return """\
examples:
  msacl bench --data-root ../shared/data --out runs/bench                       # cpu profile, all data sets
  msacl bench --data-root ../shared/data --data kvasir_seg_patch128 --tables table2 fig6_right
  msacl bench --profile paper --data-root /data/msacl --out runs/paper --device cuda
  msacl bench --plan                                                             # list the jobs, run nothing

Re-running the same command skips finished jobs and resumes interrupted pre-training. Results:
OUT/results.jsonl (one line per job), OUT/tables.md, OUT/tables.json, OUT/fig6_left.png, OUT/fig6_right.png,
OUT/table3.png.
"""


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    from msacl.bench.grid import DATASETS

    p.add_argument("--profile", choices=("cpu", "paper"), default="cpu",
                   help="cpu: reduced to fit two cores (default); paper: the papers' settings, for GPUs")
    p.add_argument("--data", nargs="+", default=None, metavar="NAME",
                   help=f"data sets under --data-root (default: all of {', '.join(DATASETS)})")
    p.add_argument("--data-root", default=os.environ.get("MSACL_DATA_ROOT", "../shared/data"), metavar="DIR",
                   help="folder holding the data sets (default: $MSACL_DATA_ROOT or ../shared/data)")
    p.add_argument("--tables", nargs="+", default=None, metavar="KEY",
                   help="table1 table2 table3 fig6_left fig6_right (default: all)")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="seeds per row (default: 3)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="override pre-training epochs")
    p.add_argument("--precision", default=None, metavar="P",
                   help="pre-training precision, e.g. 32-true, bf16-mixed, or auto (bf16-mixed where the device "
                        "computes bf16 natively); default 32-true")
    p.add_argument("--bn-stats", nargs="+", choices=("encoder", "train"), default=None, metavar="S",
                   help="BatchNorm statistics of the encoder-comparison rows (PaDiM): encoder (stored with the "
                        "weights), train (re-estimated on the training images), or both (the default), so that "
                        "the weights' effect is never mixed with the statistics'")
    p.add_argument("--backbone", "--arch", dest="backbone", default=None, metavar="NAME",
                   help="encoder backbone of every row (default: the profile's; cpu: resnet18 when its ImageNet "
                        "weights can be had, else tf_efficientnet_lite0)")
    p.add_argument("--out", default="runs/bench", metavar="DIR", help="output folder (default: runs/bench)")
    add_device(p)
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="independent grid jobs side by side in N processes (CPU: the cores split between them; "
                        "several GPUs: one per device); default: one per GPU, or 2 on a CPU with 2 or more cores "
                        "(two one-thread jobs finished the Kvasir grid 1.23x sooner than one two-thread job: "
                        "docs/benchmarks.md, Speed)")
    p.add_argument("--executor", choices=("local", "slurm", "submitit-local"), default="local",
                   help="local (default), or hand the jobs to SLURM through submitit (pip install "
                        "'msacl[cluster]'; submitit-local: the same on this machine)")
    p.add_argument("--cluster", metavar="KEY=VALUE", nargs="+", default=[],
                   help="submitit settings of each cluster job, e.g. slurm_partition=gpu timeout_min=240 "
                        "gpus_per_node=1 cpus_per_task=8 (values parsed as YAML)")
    p.add_argument("--plan", action="store_true",
                   help="print the jobs and the pre-training runs and steps they need, and exit")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the tables from OUT/results.jsonl without running any job (e.g. after a stop)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _profile(args: argparse.Namespace) -> Profile:
    """A copy of ``--profile`` with ``--epochs`` and ``--precision`` applied."""
    import dataclasses

    from msacl.bench.grid import PROFILES

    profile = dataclasses.replace(PROFILES[args.profile])
    if args.epochs is not None:
        profile.pretrain_epochs = args.epochs
        profile.reductions = tuple(r for r in profile.reductions if "pre-training epochs" not in r) + (
            f"{args.epochs} pre-training epochs instead of 2000",)
    if args.precision is not None:
        profile.precision = args.precision
    if args.bn_stats is not None:
        profile.bn_stats = tuple(args.bn_stats)
    if args.seeds is not None:
        profile.seeds = args.seeds
    return profile


def _selection(args: argparse.Namespace, profile: Profile) -> tuple[list[Table], list[str]]:
    """The tables (``--tables``) and data sets (``--data``) to run; an error when none of them meet."""
    from msacl.bench.grid import DATASETS, tables

    all_tables = tables(profile.ablation_detector, profile.family_detector)
    if args.tables:
        unknown = sorted(set(args.tables) - {t.key for t in all_tables})
        if unknown:
            raise MsaclError(f"unknown table(s) {unknown}; choose from {[t.key for t in all_tables]}")
        all_tables = [t for t in all_tables if t.key in args.tables]
    datasets = list(args.data or DATASETS)
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise MsaclError(f"unknown data set(s) {unknown}; the bench knows {list(DATASETS)}")
    idle = [t for t in all_tables if t.datasets and not set(t.datasets) & set(datasets)]
    for t in idle:
        info(f"[bench] {t.key} is defined on {', '.join(t.datasets)} only: nothing of it runs on "
             f"{', '.join(datasets)}")
    if len(idle) == len(all_tables):
        raise MsaclError(f"no job to run: the selected table(s) cover other data sets than {', '.join(datasets)}; "
                         f"table1 covers every data set")
    return all_tables, datasets


def run(args: argparse.Namespace) -> int:
    import time

    from msacl.bench.grid import resolve_backbone
    from msacl.bench.runner import plan, pretraining_summary, read_results, run_grid
    from msacl.bench.tables import aggregate, tables_header, write_tables
    from msacl.config import to_dict
    from msacl.runs import RunDir

    profile = _profile(args)
    seeds = args.seeds or profile.seeds
    all_tables, datasets = _selection(args, profile)
    backbone = args.backbone or (profile.backbone if args.plan or args.report_only
                                 else resolve_backbone(profile.backbone, log=info))
    if backbone == "auto":  # --plan / --report-only never look for weights: read the backbone of earlier results
        backbone = _backbone_of(Path(args.out) / "results.jsonl") or LITE0
    profile.backbone = backbone
    jobs = plan(all_tables, datasets, seeds, backbone, profile)
    if args.plan:
        for j in jobs:
            print(f"{j.dataset:22} {j.backbone:22} {j.variant:18} {j.detector:10} seed {j.seed}"
                  + (f"  BN {j.bn_stats}" if j.bn_stats else ""))
        print(f"{len(jobs)} jobs")
        print("\n".join(pretraining_summary(jobs, profile, Path(args.data_root))))
        return 0
    out = Path(args.out)
    if args.report_only:
        done = read_results(out / "results.jsonl")
        records = [done[j.key] for j in jobs if j.key in done]
        if not records:
            raise MsaclError(f"{out / 'results.jsonl'}: no results of the selected jobs yet")
        header = tables_header(profile, records, len(jobs))
        files = write_tables(aggregate(all_tables, records, datasets, profile), profile, out, header, records,
                             datasets)
        print(files["markdown"].read_text())
        return 0
    RunDir.create(out, config={"profile": to_dict(profile), "datasets": datasets, "seeds": seeds,
                               "tables": [t.key for t in all_tables], "backbone": backbone},
                  seed=None, command="bench")
    t0 = time.perf_counter()
    jobs = default_jobs(args.device) if args.jobs is None else args.jobs
    if jobs < 1:
        raise MsaclError(f"--jobs must be at least 1, got {jobs}")
    records = run_grid(profile, all_tables, Path(args.data_root), out, datasets, seeds=seeds,
                       backbone=backbone, device=args.device, progress=not args.quiet, jobs=jobs,
                       executor=args.executor, cluster=_cluster_settings(args.cluster), log=info)
    info(f"[bench] this invocation ran {time.perf_counter() - t0:.0f} s")
    header = tables_header(profile, records, len(jobs))
    files = write_tables(aggregate(all_tables, records, datasets, profile), profile, out, header, records,
                             datasets)
    print(files["markdown"].read_text())
    print(f"tables: {files['markdown']}  {files['json']}")
    return 0


def _backbone_of(results: Path) -> str | None:
    """The backbone of the last result in ``results`` (None when there is none)."""
    from msacl.bench.runner import read_results

    recs = list(read_results(results).values())
    return recs[-1].get("backbone") if recs else None


def _cluster_settings(items: list[str]) -> dict:
    """``--cluster KEY=VALUE`` items as submitit settings (values parsed as YAML)."""
    from msacl.config import parse_key_values

    return parse_key_values(items, "--cluster")


def default_jobs(device: str) -> int:
    """``--jobs`` when not given: one worker per GPU on CUDA; on a CPU, 2 where there are 2 or more cores (measured
    faster than one two-thread job on the development machine's 2 cores), else 1."""
    import torch

    from msacl.detectors.pipeline import resolve_device

    if resolve_device(device).type == "cuda":
        return max(1, torch.cuda.device_count())
    return 2 if (os.cpu_count() or 1) >= 2 else 1
