"""Typed detector settings: one dataclass per detector, used by the Python API, the CLI and the bench."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from msacl.bench.grid import PROFILES
from msacl.bench.runner import detector_kwargs
from msacl.config import ConfigError
from msacl.detectors import REGISTRY, Detector, IGDOptions, Padim, PadimOptions, build_detector, options_for
from msacl.detectors.options import BlurOptions, NetworkOptions, TrainedOptions, TwoScaleOptions
from msacl.errors import CheckpointError


def test_options_object_and_keywords_build_the_same_detector():
    by_keywords = Padim(backbone="resnet18", image_size=64, n_features=20, strides=["4", 16])
    by_options = Padim(PadimOptions(backbone="resnet18", image_size=64, n_features=20, strides=[4, 16]))
    assert by_keywords.config == by_options.config
    assert by_keywords.options.strides == [4, 16]  # taps are resolved to strides once, in the options
    # keywords override an options object's fields
    assert Padim(PadimOptions(image_size=64, n_features=20), n_features=30).options.n_features == 30
    assert build_detector("padim", PadimOptions(image_size=64), eps=0.5).config["eps"] == 0.5


def test_python_api_checks_types_and_names_like_the_cli():
    with pytest.raises(ConfigError, match=r"^padim\.n_features: expected int, got 'abc'$"):
        Padim(image_size=64, n_features="abc")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['n_feature'\]; valid keys are \[.*'n_features'"):
        Padim(image_size=64, n_feature=20)
    with pytest.raises(ConfigError, match="expected PadimOptions, got IGDOptions"):
        Padim(IGDOptions())
    # strings that spell a number of the right type are read as that number, as YAML would not ("1e-3")
    assert options_for("igd", lr="1e-3", epochs="2").lr == 1e-3


def test_options_built_directly_check_types_like_make_options():
    # Built directly, not through options_for / make_options: a wrong type is still a ConfigError naming the
    # setting, not a TypeError from a range check comparing a string with a number.
    with pytest.raises(ConfigError, match=r"^sigma: expected float, got 'wide'$"):
        PadimOptions(sigma="wide")
    with pytest.raises(ConfigError, match=r"^image_size: expected int \| list\[int\], got 'big'$"):
        IGDOptions(image_size="big")
    with pytest.raises(ConfigError, match=r"^scoring: 'best' is not one of \['released', 'paper'\]$"):
        IGDOptions(scoring="best")
    # and a string spelling a number of the right type is converted as make_options converts it
    direct = IGDOptions(image_size="64", lr="1e-3")
    assert direct.image_size == 64 and direct.lr == 1e-3
    assert direct == options_for("igd", image_size="64", lr="1e-3")


def test_network_detectors_check_their_image_size_in_the_options():
    network = [name for name in REGISTRY if issubclass(REGISTRY[name].Options, NetworkOptions)]
    assert {"igd", "msssim_ae", "dae", "fanogan", "ocgan", "cavga"} <= set(network)
    for name in network:
        refused = rf"^{name}\.image_size must be (a multiple of 32|an int or \[H, W\])"
        for bad in (50, 16, [64, 48], [64]):
            with pytest.raises(ConfigError, match=refused):
                options_for(name, image_size=bad)
        assert options_for(name, image_size=[64, 96]).image_size == [64, 96]
    with pytest.raises(ConfigError, match=r"^dae\.patch_size must be a multiple of 32 .*got 20$"):
        options_for("dae", local=True, patch_size=20)
    assert options_for("dae", patch_size=20).patch_size == 20  # unused without local
    with pytest.raises(ConfigError, match=r"^igd\.patch_size 64 is larger than the image \(32 x 96\)$"):
        options_for("igd", local=True, image_size=[32, 96], patch_size=64)
    assert options_for("padim", image_size=50).image_size == 50  # feature detectors take any size


def test_settings_shared_by_detectors_are_declared_once():
    # the 13 settings IGD, MS-SSIM AE, DAE and F-anoGAN share live in TwoScaleOptions and its bases
    shared = {f.name for f in dataclasses.fields(TwoScaleOptions)}
    assert {"backbone", "image_size", "channels", "latent_dim", "local", "patch_size", "patch_stride",
            "patches_per_image", "epochs", "batch_size", "lr", "width", "init_seed"} <= shared
    for name in ("igd", "msssim_ae", "dae", "fanogan"):
        assert issubclass(REGISTRY[name].Options, TwoScaleOptions)
    for name in ("ocgan", "cavga", "panda"):
        assert issubclass(REGISTRY[name].Options, TrainedOptions)
    # the map blur of OCGAN, DAE and F-anoGAN is declared and checked once, in BlurOptions
    for name in ("ocgan", "dae", "fanogan"):
        assert issubclass(REGISTRY[name].Options, BlurOptions)
        assert "blur_sigma" not in REGISTRY[name].Options.__dict__.get("__annotations__", {})
        with pytest.raises(ConfigError, match=rf"^{name}\.blur_sigma must be at least 0, got -1"):
            options_for(name, blur_sigma=-1)
    for name in ("padim", "patchcore", "panda"):
        with pytest.raises(ConfigError, match=rf"^{name}\.sigma must be at least 0, got -1"):
            options_for(name, sigma=-1)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_bench_profiles_give_valid_settings(profile):
    p = PROFILES[profile]
    for name in REGISTRY:
        kw = detector_kwargs(name, p, "resnet18")
        opts = options_for(name, **kw)
        for key, value in p.detector_kwargs.get(name, {}).items():
            assert getattr(opts, key) == value
        assert opts.backbone == "resnet18"
        if isinstance(opts, TwoScaleOptions):
            assert opts.local is p.local
    with pytest.raises(ConfigError, match="igd.epochs: expected int, got 'many'"):
        detector_kwargs("igd", dataclasses.replace(p, detector_kwargs={"igd": {"epochs": "many"}}))


def test_a_saved_detector_with_settings_this_version_lacks_is_refused_clearly(tmp_path):
    det = Padim(image_size=64, n_features=20)
    path = tmp_path / "old.pt"
    torch.save({"detector": "padim", "config": {**det.config, "gone": 1}, "state_dict": det.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"old\.pt: its settings do not fit this version's padim detector"):
        Detector.load(path)
    # a file written with the plain-dict settings of earlier versions loads (the format did not change)
    torch.save({"detector": "padim", "config": det.config, "state_dict": det.state_dict()}, path)
    assert Detector.load(path).options == det.options
