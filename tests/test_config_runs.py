from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch
import yaml

from msacl.config import ConfigError, apply_overrides, load_config, to_dict
from msacl.runs import RunDir, atomic_torch_save, make_generator, write_json


@dataclass
class Loss:
    tau: float = 0.2
    alpha: float = 0.5


@dataclass
class Cfg:
    method: Literal["msacl", "ccd"] = "msacl"
    epochs: int = 10
    layers: list[str] = field(default_factory=lambda: ["layer1", "layer2"])
    loss: Loss = field(default_factory=Loss)
    init: str | None = None
    kwargs: dict[str, object] = field(default_factory=dict)


def test_overrides_nested_and_typed():
    cfg = apply_overrides(Cfg(), ["loss.tau=0.1", "epochs=3", "layers=[layer3]", "init=/x.pt"])
    assert cfg.loss.tau == 0.1 and cfg.epochs == 3 and cfg.layers == ["layer3"] and cfg.init == "/x.pt"
    assert isinstance(cfg.loss, Loss)


@pytest.mark.parametrize(
    "bad, words",
    [
        ("loss.tauu=1", "unknown key 'tauu'"),
        ("epochs=abc", "expected int"),
        ("epochs=1.5", "expected an integer"),
        ("method=simclr", "not one of"),
        ("nonsense", "--set .nonsense. is not of the form KEY=VALUE"),
    ],
)
def test_bad_override_names_the_problem(bad, words):
    with pytest.raises(ConfigError, match=words):
        apply_overrides(Cfg(), [bad])


def test_free_form_mapping_takes_new_keys_and_their_consumer_checks_them():
    cfg = apply_overrides(Cfg(), ["kwargs.crop_scale=[0.8, 1.0]", "kwargs.blur_p=0"])
    assert cfg.kwargs == {"crop_scale": [0.8, 1.0], "blur_p": 0}
    # The pre-training config checks its weak-augmentation keywords against WeakConfig.
    from msacl.pretrain.config import PretrainConfig

    ok = load_config(PretrainConfig, None, ["weak.crop_scale=[0.8, 1.0]"])
    ok.validate()
    assert ok.weak == {"crop_scale": [0.8, 1.0]}
    with pytest.raises(ConfigError, match="unknown key.*crop_scal"):
        load_config(PretrainConfig, None, ["weak.crop_scal=[0.8, 1.0]"]).validate()
    with pytest.raises(ConfigError, match="crop_scale must satisfy"):
        load_config(PretrainConfig, None, ["weak.crop_scale=[1.5, 1.0]"]).validate()


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"epochs": 5, "loss": {"alpha": 0.25}}))
    cfg = load_config(Cfg, p, ["loss.tau=0.3"])
    assert (cfg.epochs, cfg.loss.alpha, cfg.loss.tau) == (5, 0.25, 0.3)
    p.write_text(yaml.safe_dump({"epochz": 5}))
    with pytest.raises(ConfigError, match="epochz"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "missing.yaml")


def test_run_dir_records_everything(tmp_path):
    run = RunDir.create(tmp_path / "run", config=Cfg(), seed=7, argv=["msacl", "fit", "--seed", "7"])
    meta = json.loads((run.path / "meta.json").read_text())
    assert meta["seed"] == 7 and meta["msacl_version"]
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == to_dict(Cfg())
    assert (run.path / "command.txt").read_text().strip() == "msacl fit --seed 7"
    write_json(run.path / "metrics.json", {"image_auroc": torch.tensor(0.75)})
    assert json.loads((run.path / "metrics.json").read_text()) == {"image_auroc": 0.75}


def test_atomic_save_leaves_no_temp_files(tmp_path):
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], torch.ones(3))


def test_generator_same_seed_same_numbers():
    a = torch.rand(5, generator=make_generator(3))
    b = torch.rand(5, generator=make_generator(3))
    c = torch.rand(5, generator=make_generator(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_key_value_items_are_parsed_once_for_every_flag():
    from msacl.config import ConfigError, parse_key_values

    assert parse_key_values(["a=3", "b=[8, 16]", "c=true", "d=", "e=x=y"], "--set") == {
        "a": 3, "b": [8, 16], "c": True, "d": "", "e": "x=y"}
    for bad in ("novalue", "=3"):
        with pytest.raises(ConfigError, match="--cluster .* is not of the form KEY=VALUE"):
            parse_key_values([bad], "--cluster")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_key_values(["a=[1,"], "--option")


def test_changed_settings_compares_sections_key_by_key_and_mappings_whole():
    from msacl.config import changed_settings, to_dict
    from msacl.pretrain import PretrainConfig

    before = to_dict(PretrainConfig())
    after = to_dict(apply_overrides(PretrainConfig(), ["loss.w_pos=0", "strong_kwargs.max_lesions=2"]))
    assert changed_settings(PretrainConfig, before, after) == [
        ("strong_kwargs", {}, {"max_lesions": 2}), ("loss.w_pos", 1.0, 0.0)]
    assert changed_settings(PretrainConfig, before, before) == []
