"""``msacl pretrain`` end to end on the synthetic data set, and its user-facing errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torchvision
import yaml

from msacl.cli.main import main


def test_cli_pretrain_writes_run_and_resumes(synthetic_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--method", "simclr", "--data", str(synthetic_data), "--out", str(out), "--image-size", "32",
            "--epochs", "1", "--batch-size", "16", "--accelerator", "cpu", "--no-progress", "--seed", "3",
            "--set", "checkpoint_every=1"]
    assert main(args) == 0
    for name in ("encoder.pt", "checkpoint.pt", "log.jsonl", "tsne.png", "config.yaml", "meta.json", "command.txt"):
        assert (out / name).is_file(), name
    torchvision.models.resnet18().load_state_dict(torch.load(out / "encoder.pt", weights_only=True), strict=True)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "simclr" and cfg["seed"] == 3 and cfg["data"]["image_size"] == 32
    assert len((out / "log.jsonl").read_text().splitlines()) == 64 // 16

    # a second run into the same directory must not silently overwrite it
    capsys.readouterr()
    assert main(args) == 1
    assert "already holds a pre-training run" in capsys.readouterr().err
    # --resume with more epochs continues from epoch 1
    more = list(args)
    more[more.index("--epochs") + 1] = "2"
    assert main([*more, "--resume"]) == 0
    steps = [json.loads(s)["global_step"] for s in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_cli_print_config_and_errors(tmp_path, capsys):
    assert main(["pretrain", "--method", "ccd", "--set", "loss.alpha=1.5", "--epochs", "7", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["method"] == "ccd" and cfg["loss"]["alpha"] == 1.5 and cfg["epochs"] == 7

    assert main(["pretrain", "--out", str(tmp_path / "r")]) == 1
    assert "give --data" in capsys.readouterr().err
    assert main(["pretrain", "--set", "loss.tau=0", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "loss.tau must be > 0" in capsys.readouterr().err
    assert main(["pretrain", "--set", "loss.nope=1", "--print-config"]) == 1
    assert "unknown key 'nope'" in capsys.readouterr().err
    missing = str(tmp_path / "x.pt")
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--init", missing]) == 1
    assert "x.pt: --init weights file not found" in capsys.readouterr().err


def test_resume_from_the_run_directory_alone_and_refuse_changed_settings(synthetic_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "simclr", "--data", str(synthetic_data), "--out", str(out), "--image-size",
                 "32", "--epochs", "1", "--batch-size", "16", "--accelerator", "cpu", "--no-progress",
                 "--set", "checkpoint_every=1", "--seed", "5"]) == 0
    capsys.readouterr()
    # finished: says so, changes nothing
    before = (out / "encoder.pt").read_bytes()
    assert main(["pretrain", "--resume", str(out), "--no-progress"]) == 0
    assert "already finished its 1 epochs" in capsys.readouterr().err
    assert (out / "encoder.pt").read_bytes() == before
    # a changed setting is refused and config.yaml stays as it was
    cfg_before = (out / "config.yaml").read_text()
    assert main(["pretrain", "--resume", str(out), "--image-size", "64", "--epochs", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.image_size: 32 -> 64" in err
    assert main(["pretrain", "--resume", str(out), "--method", "rotnet"]) == 1
    assert "method: 'simclr' -> 'rotnet'" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == cfg_before
    # more epochs, nothing else retyped: data, size, seed and method come from the run
    assert main(["pretrain", "--resume", str(out), "--epochs", "2", "--no-progress", "--accelerator", "cpu"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["seed"] == 5 and cfg["data"]["image_size"] == 32
    assert max(json.loads(s)["epoch"] for s in (out / "log.jsonl").read_text().splitlines()) == 2
    # not a run
    assert main(["pretrain", "--resume", str(tmp_path / "nothing")]) == 1
    assert "no checkpoint.pt to resume from" in capsys.readouterr().err


def test_out_folder_that_is_not_a_run_and_bad_counts_are_refused(synthetic_data, tmp_path, capsys):
    import pytest

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["pretrain", "--data", str(synthetic_data), "--out", str(busy)]) == 1
    assert "not an msacl run" in capsys.readouterr().err
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(busy)]) == 1
    assert "not an msacl run" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    for verb in (["pretrain", "--data", str(synthetic_data), "--out", str(tmp_path / "x")],
                 ["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(tmp_path / "y")]):
        with pytest.raises(SystemExit):
            main([*verb, "--batch-size", "0"])
        assert "must be at least 1, got 0" in capsys.readouterr().err


def test_api_pretrain_refuses_to_overwrite_a_run(synthetic_train, tmp_path):
    import pytest

    from msacl.data.types import ImageSet
    from msacl.errors import MsaclError
    from msacl.pretrain import PretrainConfig, make_fabric, pretrain

    x = synthetic_train(16, 32)
    train = ImageSet(x, torch.zeros(16, dtype=torch.long), [str(i) for i in range(16)])
    cfg = PretrainConfig(method="simclr", epochs=1, batch_size=8, tsne=False)
    pretrain(cfg, train, tmp_path / "r", fabric=make_fabric("cpu"), progress=False)
    with pytest.raises(MsaclError, match="already holds a pre-training run"):
        pretrain(cfg, train, tmp_path / "r", fabric=make_fabric("cpu"), progress=False)


def test_torch_advice_to_unpickle_never_reaches_the_user(tmp_path):
    import pytest

    from msacl.errors import CheckpointError
    from msacl.runs import read_torch_file

    torch.save({"obj": object.__new__(argparse_like)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        read_torch_file(tmp_path / "evil.pt", error=CheckpointError, what="checkpoint")
    assert "evil.pt" in str(e.value) and "weights_only" not in str(e.value) and "could run code" in str(e.value)


class argparse_like:  # a class torch's safe loader does not know
    pass


def test_cli_warnings_are_one_line_without_source_paths(capsys):
    import warnings

    from msacl.data.problems import DataWarning

    main(["bench", "--plan", "--data", "kvasir_seg_patch128", "--tables", "fig6_right", "--seeds", "1"])
    text = warnings.formatwarning(DataWarning("a\nb  c"), DataWarning, "/x/y.py", 7)
    assert text == "warning (DataWarning): a b c\n"


def test_every_verb_takes_the_same_device_flag():
    """One device vocabulary: --device, default auto, on every verb that computes; cuda:1 for Fabric."""
    from msacl.cli.common import fabric_device
    from msacl.cli.main import build_parser
    from msacl.errors import MsaclError

    parser = build_parser()
    for verb in ("pretrain", "fit", "test", "predict", "serve", "bench"):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
        device = next(a for a in sub._actions if a.dest == "device")
        assert "--device" in device.option_strings and device.default == "auto", verb
    assert fabric_device("cuda:1", "1") == ("cuda", "[1]") and fabric_device("auto", "2") == ("auto", "2")
    with pytest.raises(MsaclError, match="give --device cuda --devices 2"):
        fabric_device("cuda:1", "2")
