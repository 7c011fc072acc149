"""Run the benchmark grid with resumable, per-job results.

Every finished job appends one JSON line to ``OUT/results.jsonl``; a re-run skips jobs already there and
pre-training runs already finished (``OUT/pretrain/<data>/<variant>/seed<k>/encoder.pt``), and resumes a
pre-training run that was interrupted from its last checkpoint. Tables are rewritten after every data set.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msacl.bench.grid import CCD_STRONG, GREY, NO_PRETRAIN, VARIANTS, Profile, Row, Table, resolve_precision
from msacl.errors import DataError, MsaclError

if TYPE_CHECKING:
    from msacl.data.types import ImageSet
    from msacl.metrics.records import Metrics


@dataclass(frozen=True)
class Job:
    dataset: str
    variant: str
    detector: str
    seed: int
    backbone: str = "resnet18"
    bn_stats: str | None = None  # None: the detector has no frozen encoder (it trains its own statistics)

    @property
    def key(self) -> str:
        bn = f"|bn={self.bn_stats}" if self.bn_stats else ""
        return f"{self.dataset}|{self.backbone}|{self.variant}|{self.detector}|{self.seed}{bn}"


def bn_settings(detector: str, profile: Profile) -> tuple[str | None, ...]:
    """The BatchNorm settings ``detector``'s jobs run under: every one of ``profile.bn_stats`` for the rows that
    compare encoders (``profile.bn_compared``), the detector's default for another frozen encoder, and (None,)
    for a detector that trains its encoder."""
    from msacl.detectors.options import options_for

    o = options_for(detector, **profile.detector_kwargs.get(detector, {}))
    if not hasattr(o, "bn_stats") or not getattr(o, "freeze_encoder", True):
        return (None,)
    return tuple(profile.bn_stats) if detector in profile.bn_compared else (o.bn_stats,)


# The order a grid runs in, by what its results tell users first: Table 1's core (ImageNet, MSACL and CCD encoders
# under PaDiM and IGD), then Table 2 (localisation), then Fig. 6 and Table 3, then the other rows.
TIERS = ("table1 core", "table2", "fig6 and table3", "other rows")


def priority(table: str, row: Row) -> int:
    """The tier (index into ``TIERS``) of ``row`` of table ``table``."""
    if table == "table1" and row.variant in ("imagenet", "msacl", "ccd") and row.detector in ("padim", "igd"):
        return 0
    return {"table2": 1, "fig6_left": 2, "fig6_right": 2, "table3": 2}.get(table, 3)


def plan(tables: list[Table], datasets: list[str], seeds: int, backbone: str = "resnet18",
         profile: Profile | None = None) -> list[Job]:
    """Distinct jobs of the selected tables, ordered by data set, then variant (so pre-training is reused); each
    frozen-encoder row once per BatchNorm setting of ``profile`` (default: the ``cpu`` profile's)."""
    from msacl.bench.grid import PROFILES

    profile = profile or PROFILES["cpu"]
    bn = {r.detector: bn_settings(r.detector, profile) for t in tables for r in t.rows}
    tier: dict[Job, int] = {}
    for t in tables:
        for d in (t.datasets or datasets):
            if d not in datasets:
                continue
            for r in t.rows:
                for s in range(seeds):
                    for b in bn[r.detector]:
                        j = Job(d, r.variant, r.detector, s, backbone, b)
                        tier[j] = min(tier.get(j, len(TIERS)), priority(t.key, r))
    return sorted(tier, key=lambda j: (tier[j], datasets.index(j.dataset), j.variant != "random", j.variant,
                                       j.seed, j.detector, j.bn_stats or ""))


def pretraining_runs(jobs: list[Job]) -> list[tuple[str, str, int]]:
    """The distinct pre-training runs of ``jobs`` as (data set, variant, seed): those a job's encoder needs."""
    runs = {(j.dataset, j.variant, j.seed) for j in jobs if j.variant not in NO_PRETRAIN}
    order = {d: i for i, d in enumerate(dict.fromkeys(j.dataset for j in jobs))}  # the data sets as planned
    return sorted(runs, key=lambda r: (order[r[0]], r[1], r[2]))


def pretraining_summary(jobs: list[Job], profile: Profile, data_root: Path) -> list[str]:
    """Lines saying, per data set, how many pre-training runs ``jobs`` need and how many optimiser steps each
    takes (the training images of ``data_root``, full batches of the profile's, its epochs), with the totals:
    the steps are what a ``cpu`` run's time goes into."""
    from msacl.data.layouts import get_layout

    per_set: dict[str, int] = {}
    for dataset, _, _ in pretraining_runs(jobs):
        per_set[dataset] = per_set.get(dataset, 0) + 1
    lines, total, missing = [], 0, False
    for dataset, n_runs in per_set.items():
        root = data_root / dataset
        if not root.is_dir():
            lines.append(f"{dataset:22} {n_runs:3d} pre-training runs (steps unknown: {root} not found)")
            missing = True
            continue
        n_train = len(get_layout("folder").list_split(root, "train").samples)  # the layout load_split reads
        steps = n_train // profile.pretrain_batch * profile.pretrain_epochs
        total += n_runs * steps
        lines.append(f"{dataset:22} {n_runs:3d} pre-training runs x {steps} steps ({n_train} training images, "
                     f"batch {profile.pretrain_batch}, {profile.pretrain_epochs} epochs)")
    n_all = sum(per_set.values())
    lines.append(f"{n_all} pre-training runs, {total} optimiser steps in all"
                 + (" (of the data sets found)" if missing else ""))
    return lines


def format_duration(seconds: float) -> str:
    """A duration as a person reads it in a log line: ``45s``, ``12m``, ``1h12m``, ``2d3h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    m = round(s / 60)
    if m < 60:
        return f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h}h"


def progress_line(job: Job, number: int, total: int, finished_seconds: list[float]) -> str:
    """The log line of a job that starts: its place ``number`` of ``total`` and an ETA for the rest of the grid.

    The ETA is the mean time of the jobs ``finished_seconds`` in this invocation times the jobs left, this one
    included; without a finished job there is no ETA yet.
    """
    bn = f" (BN {job.bn_stats})" if job.bn_stats else ""
    line = f"[bench] job {number}/{total} {job.dataset} {job.variant} {job.detector}{bn} seed {job.seed}"
    if finished_seconds:
        mean = sum(finished_seconds) / len(finished_seconds)
        line += f" (ETA {format_duration(mean * (total - number + 1))})"
    return line


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _typed(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings with string values read as YAML (``"0"`` -> 0), as ``--set`` gives them."""
    import yaml

    return {k: yaml.safe_load(v) if isinstance(v, str) and v.strip() else v for k, v in settings.items()}


def check_same_pretraining(done: dict[str, dict[str, Any]], profile: Profile, path: Path) -> None:
    """Refuse to mix results of pre-training under other settings than ``profile``'s into one results file: a
    resumed grid would otherwise count them as done and put them in the same table."""
    want = _typed(profile.pretrain_overrides)
    stale = [r["key"] for r in done.values()
             if r.get("variant") not in NO_PRETRAIN and _typed(r.get("pretrain_overrides", {})) != want]
    if stale:
        got = _typed(done[stale[0]].get("pretrain_overrides", {}))
        raise MsaclError(f"{path}: {len(stale)} result(s) (e.g. {stale[0]}) come from pre-training with settings "
                         f"{got}, this profile's are {want}; use another --out, or remove those lines and their "
                         f"pretrain/ folders to run them again")


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a kill: the job is simply run again.
                continue
            out[rec["key"]] = rec
    return out


def append_result(path: Path, rec: dict[str, Any]) -> None:
    """Append one result line, under an exclusive lock (jobs side by side, or cluster jobs on a shared disk,
    append to the same file), flushed to disk before the lock is released."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pretrain_config(profile: Profile, dataset: str, variant: str, seed: int, image_size: int,
                    backbone: str = "resnet18"):
    from msacl.config import apply_settings
    from msacl.pretrain import PretrainConfig

    overrides = {"model.backbone": backbone, "model.init": "imagenet"} | dict(VARIANTS[variant])
    overrides |= profile.pretrain_overrides
    if overrides.get("method") == "ccd" and "strong" not in overrides and dataset in CCD_STRONG:
        overrides["strong"] = CCD_STRONG[dataset]
    cfg = apply_settings(PretrainConfig(), overrides)
    cfg.epochs = profile.pretrain_epochs
    cfg.batch_size = profile.pretrain_batch
    cfg.seed = seed
    cfg.checkpoint_every = max(1, profile.pretrain_epochs // 5)
    cfg.tsne = False
    cfg.data.image_size = image_size
    return cfg


def detector_kwargs(name: str, profile: Profile, backbone: str = "resnet18") -> dict[str, Any]:
    """The detector settings of a job, checked against the detector's options; image size and channels come
    from the images (``msacl.detectors.pipeline``)."""
    from msacl.detectors.options import option_names, options_for

    names = option_names(name)
    job = {"backbone": backbone, "local": profile.local}
    kw = dict(profile.detector_kwargs.get(name, {})) | {k: v for k, v in job.items() if k in names}
    options_for(name, **kw)  # a profile's wrong name or type fails here, naming the setting
    return kw


def _load_dataset(root: Path, image_size: int, progress: bool,
                  log) -> tuple[ImageSet, ImageSet, ImageSet | None, int]:
    """A data set's train, test and (when present) val splits, and the image size they were loaded at; the sets
    in ``GREY`` are loaded with one channel."""
    from msacl.data import load_split
    from msacl.detectors.pipeline import image_size_of

    if not root.is_dir():
        raise DataError(f"{root}: data set not found (pass --data-root)")
    t0 = time.perf_counter()
    ch = 1 if root.name in GREY else 3
    train = load_split(root, "train", image_size=image_size, channels=ch, progress=progress)
    size = image_size_of(train.images, f"{root}: the training images")
    test = load_split(root, "test", image_size=size, channels=ch, progress=progress)
    val = (load_split(root, "val", image_size=size, channels=ch, progress=progress) if (root / "val").is_dir()
           else None)
    log(f"[bench] {root.name}: {len(train)} train / {len(test)} test images at {size} px"
        + (f", grey ({GREY[root.name]})" if ch == 1 else "") + f" ({time.perf_counter() - t0:.1f} s to load)")
    return train, test, val, size


def _encoder(job: Job, profile: Profile, train: ImageSet, root: Path, size: int, out: Path, backbone: str,
             device: str, precision: str, progress: bool, log) -> tuple[str | Path | None, float, str | None]:
    """The encoder weights of ``job.variant`` with the seconds and precision of its pre-training: those of
    ``NO_PRETRAIN``, or a pre-trained encoder (pre-trained now unless an earlier invocation did)."""
    from msacl.detectors.pipeline import resolve_device
    from msacl.pretrain import pretrain
    from msacl.pretrain.checkpoint import epochs_done
    from msacl.pretrain.engine import make_fabric

    if job.variant in NO_PRETRAIN:
        return NO_PRETRAIN[job.variant], 0.0, None
    run_dir = out / "pretrain" / job.dataset / backbone / job.variant / f"seed{job.seed}"
    enc_path = run_dir / "encoder.pt"
    timing = run_dir / "pretrain_seconds.json"
    cfg = pretrain_config(profile, job.dataset, job.variant, job.seed, size, backbone)
    cfg.data.root = str(root)
    ckpt = run_dir / "checkpoint.pt"
    done = epochs_done(run_dir)
    if done >= cfg.epochs:
        _check_reused(run_dir, cfg)
    else:
        log(f"[bench] pre-training {job.variant} on {job.dataset} (seed {job.seed}, {cfg.epochs} epochs"
            + (f", resuming after epoch {done})" if done else ")"))
        tp = time.perf_counter()
        dev = resolve_device(device)
        fabric = make_fabric(accelerator=dev.type, precision=precision,
                             devices=[dev.index] if dev.type == "cuda" and dev.index is not None else 1)
        pretrain(cfg, train, run_dir, fabric=fabric, progress=progress, resume=ckpt.is_file())
        seconds = round(time.perf_counter() - tp, 1)
        # A resumed run's seconds are those of the epochs run now only.
        timing.write_text(json.dumps({"seconds": seconds, "precision": precision}
                                     | ({"resumed_after_epoch": done} if done else {})))
    pre = json.loads(timing.read_text()) if timing.is_file() else {}
    return enc_path, pre.get("seconds", float("nan")), pre.get("precision", "32-true")


def _check_reused(run_dir: Path, cfg: Any) -> None:
    """Refuse a finished pre-training run of ``run_dir`` whose settings are not ``cfg``'s (the data folder aside)."""
    from msacl.config import changed_settings, read_yaml_mapping, to_dict

    diff = [d for d in changed_settings(type(cfg), read_yaml_mapping(run_dir / "config.yaml"), to_dict(cfg))
            if d[0] != "data.root"]
    if diff:
        raise MsaclError(f"{run_dir}: pre-trained with other settings than this profile's ("
                         + "; ".join(f"{k}: {a!r}, now {b!r}" for k, a, b in diff[:3])
                         + "); use another --out, or remove that folder to pre-train it again")


def _versions() -> dict[str, str]:
    """The library versions a result was measured with."""
    import platform

    import torch

    import msacl

    machine = (f"{torch.cuda.get_device_name()}" if torch.cuda.is_available()
               else f"{platform.machine()} CPU, {os.cpu_count()} cores")
    return {"msacl": getattr(msacl, "__version__", "?"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": machine}


def _result_line(job: Job, metrics: Metrics) -> str:
    """The log line of a finished job: its image (and pixel) AUROC."""
    pixel_auroc = None if metrics.pixel is None else metrics.pixel.pixel_auroc
    bn = f" (BN {job.bn_stats})" if job.bn_stats else ""
    return (f"[bench] {job.dataset} {job.variant:>17} {job.detector:>9}{bn} seed {job.seed}: "
            f"image AUROC {_fmt(metrics.image_auroc)}"
            + (f", pixel AUROC {pixel_auroc:.3f}" if pixel_auroc is not None else ""))


@dataclass(frozen=True)
class GridContext:
    """What every job of one ``run_grid`` call shares; picklable, so a worker process or a cluster job gets it."""

    profile: Profile
    data_root: Path
    out: Path
    backbone: str
    device: str
    precision: str
    progress: bool
    threads: int | None = None  # torch CPU threads of a worker (None: torch's default)


def groups_of(jobs: list[Job]) -> list[list[Job]]:
    """``jobs`` in independent groups: those that share a pre-training run (data set, variant, seed) together,
    in plan order, so that a group is one pre-training run and the detectors on its encoder."""
    groups: dict[tuple[str, str, int], list[Job]] = {}
    for j in jobs:
        key = (j.dataset, j.variant, j.seed) if j.variant not in NO_PRETRAIN else (j.dataset, "", -1)
        groups.setdefault(key, []).append(j)
    return list(groups.values())


def run_jobs(ctx: GridContext, jobs: list[Job], log=print, announce=None) -> list[dict[str, Any]]:
    """Run ``jobs`` one after the other (each data set loaded once per run of consecutive jobs on it), appending
    each result to ``ctx.out/results.jsonl`` as it finishes; return the records. ``announce(job)`` is called
    before each job."""
    import torch

    from msacl.detectors.pipeline import fit_detector, prepare_detector, resolve_device, test_detector

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    dev = resolve_device(ctx.device)
    profile, recs = ctx.profile, []
    loaded: tuple[str, Any] | None = None
    for job in jobs:
        root = ctx.data_root / job.dataset
        if loaded is None or loaded[0] != job.dataset:
            loaded = None  # free the previous set before loading the next
            loaded = (job.dataset, _load_dataset(root, profile.image_size.get(job.dataset, 64), ctx.progress, log))
        train, test, val, size = loaded[1]
        if announce is not None:
            announce(job)
        t_job = time.perf_counter()
        enc_path, pre_s, pre_precision = _encoder(job, profile, train, root, size, ctx.out, ctx.backbone,
                                                  ctx.device, ctx.precision, ctx.progress, log)
        settings = detector_kwargs(job.detector, profile, ctx.backbone)
        if job.bn_stats:
            settings["bn_stats"] = job.bn_stats
        det, _ = prepare_detector(job.detector, settings, train, seed=job.seed, encoders={"global": enc_path})
        fit = fit_detector(det, train, val=val, seed=job.seed, device=dev, progress=ctx.progress)
        metrics, _, _ = test_detector(fit.detector, test, threshold=fit.threshold.threshold,
                                      seed=job.seed, device=dev, progress=ctx.progress)
        rec = {
            "key": job.key, "dataset": job.dataset, "variant": job.variant, "detector": job.detector,
            "seed": job.seed, "image_size": size, "channels": int(train.images.shape[1]),
            "profile": profile.name, "backbone": ctx.backbone, "bn_stats": job.bn_stats,
            "settings": det.config, "pretrain_overrides": dict(profile.pretrain_overrides),
            "versions": _versions(),
            "pretrain_seconds": pre_s, "pretrain_precision": pre_precision,
            "fit_seconds": round(fit.fit_seconds, 2),
            "test_seconds": metrics.test_seconds,
            "job_seconds": round(time.perf_counter() - t_job, 2),
            "metrics": metrics.numbers(),
        }
        append_result(ctx.out / "results.jsonl", rec)
        recs.append(rec)
        log(_result_line(job, metrics))
        del det, fit
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return recs


def run_grid(profile: Profile, tables: list[Table], data_root: Path, out: Path, datasets: list[str], *, seeds: int,
             backbone: str = "resnet18", device: str = "auto", progress: bool = True, jobs: int = 1,
             executor: str = "local", cluster: dict[str, Any] | None = None, log=print) -> list[dict[str, Any]]:
    """Run every job not yet in ``out/results.jsonl``; return all result records of the selected jobs.

    ``jobs`` > 1 runs independent groups of jobs (one pre-training run and the detectors on it,
    :func:`groups_of`) in that many worker processes: on the CPU each gets ``cores // jobs`` torch threads, on
    several GPUs each its own device. ``executor="slurm"`` (or ``"submitit-local"``, the same on this machine)
    hands the groups to SLURM through submitit instead (``cluster``: its ``update_parameters`` settings); the
    results file, the resume and the tables are the same either way.
    """
    from msacl.detectors.pipeline import resolve_device

    out.mkdir(parents=True, exist_ok=True)
    done = read_results(out / "results.jsonl")
    check_same_pretraining(done, profile, out / "results.jsonl")
    planned = plan(tables, datasets, seeds, backbone, profile)
    todo = [j for j in planned if j.key not in done]
    dev = resolve_device(device)
    precision = resolve_precision(profile.precision, dev.type)
    ctx = GridContext(profile, data_root, out, backbone, device, precision, progress and jobs == 1)
    log(f"[bench] pre-training on {dev.type} in {precision}")
    log(f"[bench] {len(planned)} jobs, {len(planned) - len(todo)} already done, {len(todo)} to run -> {out}"
        + (f", {jobs} at a time" if jobs > 1 else "") + (f", on {executor}" if executor != "local" else ""))
    if todo and executor != "local":
        from msacl.bench.cluster import run_on_cluster

        run_on_cluster(ctx, groups_of(todo), executor, cluster or {}, log)
    elif todo and jobs > 1:
        from msacl.bench.parallel import run_parallel

        run_parallel(ctx, groups_of(todo), jobs, dev, log)
    elif todo:
        finished: list[float] = []  # seconds of the jobs finished in this invocation, for the ETA
        clock = [time.perf_counter()]

        def announce(job: Job) -> None:  # before each job: the previous one's time, this one's place and the ETA
            now = time.perf_counter()
            if job is not todo[0]:
                finished.append(now - clock[0])
            clock[0] = now
            log(progress_line(job, len(planned) - len(todo) + len(finished) + 1, len(planned), finished))

        run_jobs(ctx, todo, log, announce)
    done = read_results(out / "results.jsonl")
    return [done[j.key] for j in planned if j.key in done]
