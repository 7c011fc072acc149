"""`msacl fit` / `test` / `predict` end to end on the synthetic data set, for every registered detector."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from msacl.cli.main import main
from msacl.detectors import REGISTRY, options_for
from msacl.runs.fitted import FitRun

FAST = {"padim": [], "patchcore": []}
# Trained detectors: one tiny epoch is enough to check the plumbing.
OTHERS = sorted(set(REGISTRY) - set(FAST))


def _tiny(name: str) -> list[str]:
    sets = []
    defaults = options_for(name).to_dict()
    for key, value in (("epochs", 1), ("batch_size", 16), ("width", 8), ("latent_dim", 16)):
        if key in defaults:
            sets += ["--set", f"{key}={value}"]
    return sets


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def fitted_runs(synthetic_data, tmp_path_factory) -> dict[str, Path]:
    runs = {}
    for name in list(FAST):
        run = tmp_path_factory.mktemp("runs") / name
        assert main(["fit", "--detector", name, "--data", str(synthetic_data), "--out", str(run), "--quiet",
                     "--seed", "3"]) == 0
        runs[name] = run
    return runs


@pytest.mark.parametrize("name", list(FAST))
def test_fit_writes_a_complete_run(fitted_runs, name):
    run = fitted_runs[name]
    for f in ("config.yaml", "command.txt", "meta.json", "detector.pt", "threshold.json", "holdout.txt",
              "calibration.json"):
        assert (run / f).is_file(), f
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["detector"] == name and cfg["data"]["image_size"] == 64 and cfg["seed"] == 3
    assert cfg["data"]["source_channels"] == 3  # the synthetic set is RGB
    # the image size is stored once: data.image_size, which the detector's settings take it from
    assert "image_size" not in cfg["detector_kwargs"]
    assert FitRun.open(run).load_detector().options.image_size == 64
    # 10% of the 64 training images held out, never fitted on; the threshold comes from their maps.
    held = (run / "holdout.txt").read_text().split()
    assert len(held) == 6 and all("train" in h for h in held)
    thr = json.loads((run / "threshold.json").read_text())
    assert isinstance(thr["threshold"], float) and "0.99 quantile" in thr["rule"]
    assert "decision" not in thr  # decisions come from calibration.json at the verb's --fpr
    fit = json.loads((run / "fit.json").read_text())
    assert fit == {"fit_seconds": fit["fit_seconds"], "n_train": 58, "n_holdout": 6}


@pytest.mark.parametrize("name", list(FAST))
def test_test_writes_metrics_scores_and_report(fitted_runs, name, capsys, synthetic_data):
    run = fitted_runs[name]
    code, out, _ = cli(capsys, "test", "--run", run)
    assert code == 0
    m = json.loads((run / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "iou", "dice", "iou_oracle", "dice_oracle", "threshold"):
        assert m[key] is not None, key
    assert m["image_auroc"] > 0.6 and m["pixel_auroc"] > 0.6
    assert m["threshold"] == pytest.approx(json.loads((run / "threshold.json").read_text())["threshold"])
    with open(run / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 48 and {r["label"] for r in rows} == {"0", "1"}
    assert all(Path(r["path"]).is_file() for r in rows)
    assert (run / "report.html").is_file() and "report" in out and "image AUROC" in out
    # The decision at the default 5 % false-positive rate, calibrated on the 6 held-out normals: too few for 5 %
    # (19 are needed), so the largest held-out score is the threshold and the guarantee is 1/7; said so.
    d = json.loads((run / "decision.json").read_text())
    assert d["image"]["n"] == 6 and d["image"]["k"] == 6 and d["image"]["fpr_bound"] == pytest.approx(1 / 7)
    assert d["warnings"] and "too few" in d["warnings"][0]
    cal = json.loads((run / "calibration.json").read_text())
    assert d["image"]["threshold"] == pytest.approx(max(cal["image_scores"]))
    t = m["decision_threshold"]
    assert t == d["image"]["threshold"] and m["decision_n"] == 6 and m["decision_fpr_target"] == 0.05
    assert {r["decision"] for r in rows} <= {"normal", "abnormal"}
    assert all((r["decision"] == "abnormal") == (float(r["score"]) > t) for r in rows)
    normal = [r for r in rows if r["label"] == "0"]
    assert m["decision_test_fpr"] == pytest.approx(sum(r["decision"] == "abnormal" for r in normal) / len(normal),
                                                   abs=1e-6)
    assert "decision at FPR 0.05" in out
    assert "Dashed: the decision threshold" in (run / "report.html").read_text()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", list(FAST))
def test_predict_folder_file_and_other_size(fitted_runs, name, capsys, synthetic_data, tmp_path):
    run = fitted_runs[name]
    src = synthetic_data / "test" / "abnormal"
    code, out, err = cli(capsys, "predict", "--run", run, src, "--out", tmp_path / "p", "--fpr", "0.2")
    assert code == 0, err
    rows = _rows(tmp_path / "p" / "scores.csv")
    assert len(rows) == len(list(src.iterdir())) == 24
    assert all((tmp_path / "p" / r["heatmap"]).is_file() for r in rows)
    d = json.loads((tmp_path / "p" / "decision.json").read_text())
    cal = json.loads((run / "calibration.json").read_text())
    # n = 6, alpha = 0.2: k = ceil(7 * 0.8) = 6, the largest held-out score
    assert d["image"]["k"] == 6 and d["image"]["threshold"] == pytest.approx(sorted(cal["image_scores"])[5])
    t, tp = d["image"]["threshold"], d["pixel"]["threshold"]
    for r in rows:
        assert float(r["threshold"]) == pytest.approx(t, rel=1e-5) and r["fpr"] == "0.2"
        assert r["decision"] == ("abnormal" if float(r["score"]) > float(r["threshold"]) else "normal")
        assert 0 <= float(r["lesion_fraction"]) <= 1 and float(r["pixel_threshold"]) == pytest.approx(tp, rel=1e-5)
        # PaDiM and PatchCore score an image by its map's maximum, so the pixel threshold is the image threshold
        # and an image is called abnormal exactly when part of it is flagged.
        assert (r["decision"] == "abnormal") == (float(r["lesion_fraction"]) > 0)
        assert (r["width"], r["height"], r["note"]) == ("64", "64", "")
    assert tp == pytest.approx(t)
    assert {r["decision"] for r in rows} == {"normal", "abnormal"}  # both branches of the check above ran
    assert f"{d['n_abnormal']} abnormal" in out
    # A single image of another size and aspect ratio: scored at the fitted size, drawn at its own.
    from PIL import Image

    from msacl.report.heatmap import BAR_WIDTH

    one = tmp_path / "wide.png"
    Image.open(next(src.iterdir())).convert("RGB").resize((360, 200)).save(one)
    assert cli(capsys, "predict", "--run", run, one, "--out", tmp_path / "q")[0] == 0
    (row,) = _rows(tmp_path / "q" / "scores.csv")
    assert (row["width"], row["height"]) == ("360", "200") and row["heatmap"] == "wide_heatmap.png"
    with Image.open(tmp_path / "q" / "wide_heatmap.png") as im:
        w, h = im.size
    assert w == 360 + BAR_WIDTH and 200 < h <= 200 + 40  # image area 360 x 200, one title line above it


def test_predict_reads_dicom(fitted_runs, capsys, tmp_path):
    from conftest import dicom_bytes

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "case1.dcm").write_bytes(dicom_bytes(48))
    # A grey 16-bit DICOM against a run fitted on colour images: refused, naming the file and the way out.
    code, _, err = cli(capsys, "predict", "--run", fitted_runs["padim"], folder, "--out", tmp_path / "d")
    assert code == 1 and "case1.dcm" in err and "grey" in err and "colour" in err and "--convert-channels" in err
    last = err.strip().splitlines()[-1]  # one line: file, problem, way out
    assert last.startswith("msacl predict: error: ") and "case1.dcm" in last and "--convert-channels" in last
    code, _, err = cli(capsys, "predict", "--run", fitted_runs["padim"], folder, "--out", tmp_path / "d",
                       "--convert-channels")
    assert code == 0, err
    assert (tmp_path / "d" / "case1_heatmap.png").is_file()
    (row,) = _rows(tmp_path / "d" / "scores.csv")
    assert row["note"] == "grey converted to colour (channel repeated)" and "converted" in err
    assert (row["width"], row["height"]) == ("48", "48")


def test_predict_skips_bad_files_when_asked(fitted_runs, synthetic_data, capsys, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    good = sorted((synthetic_data / "test" / "normal").iterdir())[:2]
    for p in good:
        shutil.copy(p, src / p.name)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.open(good[0]).convert("L").save(src / "grey.png")
    code, _, err = cli(capsys, "predict", "--run", fitted_runs["padim"], src, "--out", tmp_path / "e")
    assert code == 1 and "broken.png" in err and "--on-bad-file skip" in err
    code, out, err = cli(capsys, "predict", "--run", fitted_runs["padim"], src, "--out", tmp_path / "s",
                         "--on-bad-file", "skip")
    assert code == 0, err
    assert [Path(r["path"]).name for r in _rows(tmp_path / "s" / "scores.csv")] == [p.name for p in good]
    skipped = (tmp_path / "s" / "skipped_files.txt").read_text().splitlines()
    assert [Path(line.split("\t")[0]).name for line in skipped] == ["broken.png", "grey.png"]
    assert "skipped 2 file(s)" in err
    d = json.loads((tmp_path / "s" / "decision.json").read_text())
    assert d["n_scored"] == 2 and d["n_skipped"] == 2


def test_same_seed_gives_identical_scores(fitted_runs, synthetic_data, capsys, tmp_path):
    run2 = tmp_path / "again"
    assert cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", run2, "--quiet",
               "--seed", "3")[0] == 0
    a = torch.load(fitted_runs["padim"] / "detector.pt", weights_only=True)["state_dict"]
    b = torch.load(run2 / "detector.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_encoder_from_pretrain_run_dir_is_loaded(synthetic_data, capsys, tmp_path):
    torch.manual_seed(11)
    state = torchvision.models.resnet18().state_dict()
    pre = tmp_path / "pre"
    pre.mkdir()
    torch.save(state, pre / "encoder.pt")
    run = tmp_path / "run"
    code, _, err = cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", run, "--quiet",
                       "--encoder", pre, "--holdout", "0", "--set", "n_features=20")
    assert code == 0, err
    saved = torch.load(run / "detector.pt", weights_only=True)
    assert saved["config"]["n_features"] == 20
    sd = saved["state_dict"]
    assert torch.equal(sd["encoder.backbone.layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    thr = json.loads((run / "threshold.json").read_text())
    assert thr["threshold"] is None and not (run / "holdout.txt").exists()
    assert not (run / "calibration.json").exists()
    # No held-out normals: predict gives scores, no decision, and says why.
    one = sorted((synthetic_data / "test" / "normal").iterdir())[0]
    code, _, err = cli(capsys, "predict", "--run", run, one, "--out", tmp_path / "p")
    assert code == 0 and "no calibration.json" in err
    (row,) = _rows(tmp_path / "p" / "scores.csv")
    assert row["decision"] == "" and row["threshold"] == "" and float(row["score"]) > 0
    # No threshold: test still runs and reports the oracle only.
    assert cli(capsys, "test", "--run", run, "--no-report")[0] == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["iou"] is None and m["iou_oracle"] is not None


def test_val_with_masks_sets_best_dice_threshold(synthetic_data, capsys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    for sub in ("normal", "abnormal", "masks"):
        (data / "val" / sub).mkdir(parents=True)
        for p in sorted((data / "test" / sub).iterdir())[:4]:
            shutil.copy(p, data / "val" / sub / p.name)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "fit", "--detector", "padim", "--data", data, "--out", run, "--quiet",
                         "--set", "n_features=20")
    assert code == 0, err
    thr = json.loads((run / "threshold.json").read_text())
    assert "best mean Dice" in thr["rule"] and isinstance(thr["threshold"], float)
    assert not (run / "holdout.txt").exists()
    assert json.loads((run / "fit.json").read_text())["n_train"] == 64


@pytest.mark.parametrize("setting, expected", [
    ("n_features=abc", "padim.n_features: expected int, got 'abc'"),
    ("n_features=1.5", "padim.n_features: expected an integer, got 1.5"),
    ("eps=[1, 2]", "padim.eps: expected float, got [1, 2]"),
])
def test_fit_refuses_a_setting_of_the_wrong_type_in_one_line(synthetic_data, capsys, tmp_path, setting, expected):
    code, out, err = cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", tmp_path / "r",
                         "--set", setting)
    assert code == 1 and out == ""
    assert err == f"msacl fit: error: {expected}\n"  # one line naming the key and the type it wants
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("detector, given, got", [
    ("dae", ["--set", "image_size=50"], "50"),
    ("ocgan", ["--image-size", "50"], "50"),
    ("cavga", ["--set", "image_size=[64, 48]"], "[64, 48]"),
])
def test_fit_refuses_an_image_size_the_decoders_cannot_build_in_one_line(synthetic_data, capsys, tmp_path, detector,
                                                                         given, got):
    code, out, err = cli(capsys, "fit", "--detector", detector, "--data", synthetic_data, "--out", tmp_path / "r",
                         "--quiet", *given)
    assert code == 1 and out == ""
    assert err == f"msacl fit: error: {detector}.image_size must be a multiple of 32 (at least 32), got {got}\n"
    assert not (tmp_path / "r").exists()


def test_fit_refuses_a_non_square_image_size_in_one_line(synthetic_data, capsys, tmp_path):
    # [64, 96] is a size CAVGA's options accept, but fit loads the images square at one side.
    code, out, err = cli(capsys, "fit", "--detector", "cavga", "--data", synthetic_data, "--out", tmp_path / "r",
                         "--quiet", "--set", "image_size=[64,96]")
    assert code == 1 and out == ""
    assert err == ("msacl fit: error: image_size: fit takes square images, give one int (--image-size N), "
                   "got [64, 96]\n")
    assert not (tmp_path / "r").exists()


def test_fit_checks_a_config_file_like_set(synthetic_data, capsys, tmp_path):
    (tmp_path / "padim.yaml").write_text("n_features: 20\nsigma: wide\n")
    code, _, err = cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", tmp_path / "r",
                       "--config", tmp_path / "padim.yaml")
    assert code == 1 and err == "msacl fit: error: padim.sigma: expected float, got 'wide'\n"


def test_print_config_and_bad_settings(synthetic_data, capsys, tmp_path):
    code, out, _ = cli(capsys, "fit", "--detector", "patchcore", "--data", synthetic_data, "--out", tmp_path / "r",
                       "--set", "coreset_ratio=0.05", "--print-config")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["detector_kwargs"]["coreset_ratio"] == 0.05 and cfg["detector_kwargs"]["strides"] == [8, 16]
    assert not (tmp_path / "r").exists()
    code, _, err = cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", tmp_path / "r",
                       "--set", "n_feature=20")
    assert code == 1 and "n_feature" in err and "valid keys" in err and "n_features" in err
    assert not (tmp_path / "r").exists()
    code, _, err = cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", tmp_path / "r",
                       "--encoder", tmp_path / "nope.pt")
    assert code == 1 and "nope.pt" in err and "not found" in err
    code, _, err = cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", tmp_path / "r",
                       "--encoder-local", tmp_path / "nope.pt")
    assert code == 1 and "--encoder-local" in err and "no local" in err
    code, _, err = cli(capsys, "fit", "--detector", "padim", "--data", tmp_path / "missing", "--out", tmp_path / "r")
    assert code == 1 and "missing" in err


def test_test_and_predict_explain_a_bad_run_dir(capsys, tmp_path):
    code, _, err = cli(capsys, "test", "--run", tmp_path / "nowhere")
    assert code == 1 and "nowhere" in err and "not found" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "predict", "--run", tmp_path / "empty", tmp_path, "--out", tmp_path / "o")
    assert code == 1 and "not a fitted run" in err and "msacl fit" in err


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_test_refuses_another_channel_count_as_predict_does(fitted_runs, name, synthetic_data, capsys):
    code, _, err = cli(capsys, "test", "--run", fitted_runs[name], "--data", synthetic_data, "--channels", "1",
                       "--no-report", "--quiet")
    assert code == 1 and "--channels 1" in err and "fitted on 3-channel images" in err and "not comparable" in err
    code, _, _ = cli(capsys, "test", "--run", fitted_runs[name], "--data", synthetic_data, "--channels", "3",
                     "--no-report", "--quiet")
    assert code == 0


def test_refuses_to_overwrite_a_fitted_run(fitted_runs, synthetic_data, capsys):
    code, _, err = cli(capsys, "fit", "--detector", "padim", "--data", synthetic_data, "--out", fitted_runs["padim"])
    assert code == 1 and "--force" in err


# F-anoGAN's two training stages take ~50 s even at one epoch on 2 CPU cores; PANDA's default ResNet-152 ~25 s
# (tests/test_panda.py runs its CLI on Lite0).
SLOW = {"fanogan", "panda"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in OTHERS])
def test_other_detectors_end_to_end(name, synthetic_data, capsys, tmp_path):
    run = tmp_path / name
    code, _, err = cli(capsys, "fit", "--detector", name, "--data", synthetic_data, "--out", run, "--quiet",
                       *_tiny(name))
    assert code == 0, err
    code, _, err = cli(capsys, "test", "--run", run, "--no-report")
    assert code == 0, err
    m = json.loads((run / "metrics.json").read_text())
    assert m["image_auroc"] is not None and m["pixel_auroc"] is not None
    code, _, err = cli(capsys, "predict", "--run", run, synthetic_data / "test" / "normal", "--out", tmp_path / "p")
    assert code == 0, err


def test_colour_input_for_a_grey_trained_run(fitted_runs, synthetic_data, tmp_path):
    """The reverse case: a run whose training images were grey gets a colour image (edited config.yaml)."""
    from msacl.deploy.inference import FittedRun
    from msacl.errors import DataError

    run = tmp_path / "grey_run"
    shutil.copytree(fitted_runs["padim"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["source_channels"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    colour = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
    with pytest.raises(DataError, match=r"a colour image \(RGB\), but .* fitted on grey images.*--convert-channels"):
        FittedRun(run).load(colour)
    x, image, note = FittedRun(run, convert_channels=True).load(colour)
    assert note == "colour converted to grey (luma)" and image.shape == (64, 64, 3)
    assert x.shape == (3, 64, 64) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey, as in training


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["data"].pop("image_size"), r"data.image_size is missing"),
    (lambda c: c.update(seed="x"), r"config.yaml.seed: expected int, got 'x'"),
    (lambda c: c.update(extra=1), r"unknown key\(s\) \['extra'\]"),
    (lambda c: c.update(command="pretrain"), r"not written by `msacl fit`"),
    (lambda c: c.update(detector="patchcore"), r"detector.pt holds a padim detector, config.yaml says patchcore"),
    (lambda c: c["data"].update(image_size=32), r"detector.pt takes 64 px images, config.yaml says 32"),
])
def test_every_verb_refuses_a_run_whose_files_disagree(fitted_runs, synthetic_data, capsys, tmp_path, edit, message):
    """The fitted run is opened in one place (FitRun): a damaged config.yaml is named, by test and predict alike."""
    run = tmp_path / "run"
    shutil.copytree(fitted_runs["padim"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    edit(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    image = sorted((synthetic_data / "test" / "normal").iterdir())[0]
    for verb in (["test", "--run", run, "--no-report"], ["predict", "--run", run, image, "--out", tmp_path / "p"]):
        code, _, err = cli(capsys, *verb)
        assert code == 1 and re.search(message, err), err


def test_fit_config_round_trips_config_yaml(fitted_runs):
    from msacl.config import from_dict
    from msacl.runs.fitted import FitConfig

    raw = yaml.safe_load((fitted_runs["patchcore"] / "config.yaml").read_text())
    config = from_dict(FitConfig, raw)
    assert config.to_dict() == raw and config.detector_settings()["image_size"] == raw["data"]["image_size"]
    # a run's config.yaml given to --config fits the same detector settings, image size included
    assert REGISTRY["patchcore"].Options(**config.detector_settings()).to_dict() == \
        FitRun.open(fitted_runs["patchcore"]).load_detector().config
