"""Grid jobs on a SLURM cluster through submitit (``msacl bench --executor slurm``).

Each independent group (one pre-training run and the detectors on its encoder, ``msacl.bench.runner.groups_of``)
becomes one cluster job, which appends its results to ``OUT/results.jsonl`` (under a file lock: ``OUT`` must be
on a disk the nodes share) as the serial bench does; the command waits for them and then writes the tables, and
a second run of the same command resubmits only what has no result yet. ``--executor submitit-local`` runs the
same jobs as local processes through submitit's own local executor (what the tests use).

Cluster settings come from ``--cluster KEY=VALUE`` (submitit's ``update_parameters``, e.g.
``slurm_partition=gpu``, ``timeout_min=240``, ``gpus_per_node=1``, ``cpus_per_task=8``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from msacl.bench.runner import GridContext, Job, run_jobs
from msacl.errors import MsaclError

EXECUTORS = ("local", "slurm", "submitit-local")


def _group_job(ctx: GridContext, group: list[Job]) -> int:
    return len(run_jobs(ctx, group, print))


def run_on_cluster(ctx: GridContext, groups: list[list[Job]], executor: str, params: dict[str, Any], log) -> None:
    """Submit one cluster job per group, wait for all of them, and raise naming the first that failed."""
    try:
        import submitit
    except ImportError:
        raise MsaclError(f"--executor {executor} needs submitit: pip install 'msacl[cluster]'") from None
    folder = ctx.out / "submitit"
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    elif executor == "submitit-local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
    else:
        raise MsaclError(f"unknown executor {executor!r}; choose one of {EXECUTORS}")
    ex.update_parameters(**{"name": "msacl-bench", "timeout_min": 24 * 60} | params)
    if "cpus_per_task" in params:  # torch's threads: the CPUs the job was given, not those of the node
        ctx = replace(ctx, threads=int(params["cpus_per_task"]))
    with ex.batch():
        jobs = [(ex.submit(_group_job, ctx, g), g) for g in groups]
    log(f"[bench] {len(jobs)} {executor} job(s) submitted (logs in {folder})")
    failed = []
    for i, (job, group) in enumerate(jobs, 1):
        try:
            job.result()
            log(f"[bench] {executor} job {i}/{len(jobs)} done: {group[0].dataset} {group[0].variant} "
                f"seed {group[0].seed} ({len(group)} result(s))")
        except Exception as e:  # noqa: BLE001 - a cluster job's failure is reported, the others still waited for
            failed.append(f"{group[0].dataset} {group[0].variant} seed {group[0].seed}: {e}")
    if failed:
        raise MsaclError(f"{len(failed)} of {len(jobs)} cluster job(s) failed; finished results are kept and a "
                         f"second run resubmits the rest. First: {failed[0]}")
