"""``msacl pretrain`` end to end on the synthetic data set, and its user-facing errors."""

from __future__ import annotations

import json

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
