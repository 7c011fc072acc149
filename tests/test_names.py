"""One list of names each (msacl.names): every CLI option and every registry offers exactly those names."""

from __future__ import annotations

import argparse

import pytest

from msacl import names
from msacl.cli.main import build_parser


def option(verb: str, flag: str) -> argparse.Action:
    """The argparse action of ``msacl VERB FLAG``."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[verb]._actions if flag in a.option_strings)


@pytest.mark.parametrize("verb, flag, listed", [
    ("pretrain", "--method", names.METHODS),
    ("demo", "--method", names.METHODS),
    ("fit", "--detector", names.DETECTORS),
    ("augment-preview", "--family", names.STRONG_FAMILIES),
])
def test_cli_choices_are_the_list(verb, flag, listed):
    assert tuple(option(verb, flag).choices) == listed


@pytest.mark.parametrize("verb, flag, listed", [
    ("pretrain", "--strong", names.STRONG_FAMILIES),
    ("fit", "--layout", names.LAYOUTS),
    ("check-data", "--layout", names.LAYOUTS),
    ("pretrain", "--backbone", names.TORCHVISION_BACKBONES + (names.LITE0,)),
    ("fit", "--backbone", names.TORCHVISION_BACKBONES + (names.LITE0,)),
])
def test_free_text_options_name_every_entry_in_their_help(verb, flag, listed):
    # Layouts take parameters and backbones any timm name, so these are not choices: the help lists them.
    help_ = option(verb, flag).help
    assert [n for n in listed if n not in help_] == []


# The lists written out again: a change to a list in msacl.names must be made here too, deliberately.
EXPECTED_METHODS = ("msacl", "ccd", "simclr", "rotnet", "csi", "droc")
EXPECTED_DETECTORS = ("padim", "patchcore", "igd", "fanogan", "msssim_ae", "dae", "panda", "ocgan", "cavga")
EXPECTED_FAMILIES = ("medmix", "rotation", "permutation", "jigsaw", "cutout", "noise", "cutpaste")
EXPECTED_LAYOUTS = ("folder", "hyper-kvasir", "lag", "liu", "covidx")
EXPECTED_TORCHVISION = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2")


def test_the_lists_are_the_expected_names():
    assert names.METHODS == EXPECTED_METHODS
    assert names.DETECTORS == EXPECTED_DETECTORS
    assert names.STRONG_FAMILIES == EXPECTED_FAMILIES
    assert names.LAYOUTS == EXPECTED_LAYOUTS
    assert names.TORCHVISION_BACKBONES == EXPECTED_TORCHVISION


def test_registries_hold_the_listed_names():
    from msacl.augment.registry import FAMILIES
    from msacl.data.layouts import LAYOUTS
    from msacl.detectors import REGISTRY
    from msacl.models import TORCHVISION
    from msacl.pretrain.config import DEFAULT_STRONG
    from msacl.pretrain.methods import METHOD_CLASSES

    assert sorted(METHOD_CLASSES) == sorted(EXPECTED_METHODS)
    assert sorted(DEFAULT_STRONG) == sorted(EXPECTED_METHODS)  # a default strong family for every method
    assert sorted(REGISTRY) == sorted(EXPECTED_DETECTORS)
    assert tuple(FAMILIES) == EXPECTED_FAMILIES
    assert tuple(LAYOUTS) == EXPECTED_LAYOUTS
    assert tuple(TORCHVISION) == EXPECTED_TORCHVISION


def test_the_config_accepts_exactly_the_listed_methods():
    from msacl.config import ConfigError, apply_overrides
    from msacl.pretrain import PretrainConfig

    for m in names.METHODS:
        assert apply_overrides(PretrainConfig(), [f"method={m}"]).method == m
    with pytest.raises(ConfigError, match=r"method: 'mocov2' is not one of \['msacl', 'ccd', 'simclr'"):
        apply_overrides(PretrainConfig(), ["method=mocov2"])


def test_a_registry_refuses_a_name_missing_from_the_list():
    from msacl.detectors import register
    from msacl.pretrain.methods import Method, register_method

    with pytest.raises(ValueError, match="detector 'mydet' is not listed in msacl.names"):
        register("mydet")

    class Mine(Method):
        name = "mine"

    with pytest.raises(ValueError, match="pre-training method 'mine' is not listed in msacl.names"):
        register_method(Mine)


def test_listed():
    assert names.listed(("a", "b", "c"), default="a") == "a (default), b or c"
    assert names.listed(("a",)) == "a"
