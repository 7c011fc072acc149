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
    ("fit", "--detector", tuple(names.DETECTOR_CLASSES)),  # msacl's and any a test has registered
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


@pytest.mark.parametrize("registry", [names.METHOD_CLASSES, names.DETECTOR_CLASSES, names.STRONG_CLASSES,
                                      names.LAYOUT_CLASSES], ids=lambda r: r.kind)
def test_every_registered_name_imports_to_its_class(registry):
    for name in registry:
        cls = registry[name]
        assert isinstance(cls, type) and cls.name == name, (name, cls)


def test_the_registries_are_what_the_packages_use():
    from msacl.augment.registry import FAMILIES
    from msacl.data.layouts import LAYOUTS
    from msacl.detectors import REGISTRY
    from msacl.pretrain.config import DEFAULT_STRONG

    assert REGISTRY is names.DETECTOR_CLASSES and FAMILIES is names.STRONG_CLASSES
    assert LAYOUTS is names.LAYOUT_CLASSES
    assert sorted(DEFAULT_STRONG) == sorted(names.METHODS)  # a default strong family for every method


def test_a_saved_detector_loads_without_importing_the_others(tmp_path):
    """Lazy: ``msacl --help`` and one detector import only what they use (a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, msacl.names as n; from msacl.cli.main import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'help imports torch'; "
            "n.DETECTOR_CLASSES['padim']; "
            "assert 'msacl.detectors.igd' not in sys.modules and 'msacl.detectors.cavga' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_config_accepts_exactly_the_listed_methods():
    from msacl.config import ConfigError, apply_overrides
    from msacl.pretrain import PretrainConfig

    for m in names.METHODS:
        assert apply_overrides(PretrainConfig(), [f"method={m}"]).method == m
    with pytest.raises(ConfigError, match=r"method: 'mocov2' is not one of \['msacl', 'ccd', 'simclr'"):
        apply_overrides(PretrainConfig(), ["method=mocov2"])


def test_a_registry_refuses_a_name_or_class_missing_from_the_list():
    from msacl.detectors import Detector, register
    from msacl.pretrain.methods import Method, register_method

    class Mine(Method):
        name = "mine"

    with pytest.raises(ValueError, match="pre-training method 'mine' .* is not listed in msacl.names"):
        register_method(Mine)

    class Impostor(Detector):
        pass

    # a name taken by another class is refused; a new name is a plugin's (tests/test_plugin_detector.py)
    with pytest.raises(ValueError, match=r"detector 'padim' is already msacl.detectors.padim:Padim"):
        register("padim")(Impostor)
    Impostor.__module__ = "msacl.detectors.impostor"
    with pytest.raises(ValueError, match=r"detector 'impostor' \(msacl.detectors.impostor:.*Impostor\) is not listed"):
        register("impostor")(Impostor)


def test_every_detector_msacl_registers_is_listed():
    """A built-in detector missing from msacl.names would be registered only once its module is imported."""
    import re
    from pathlib import Path

    import msacl.detectors

    found = {m for p in Path(msacl.detectors.__file__).parent.glob("*.py")
             for m in re.findall(r'@register\("([^"]+)"\)', p.read_text())}
    assert found == set(names.DETECTORS)


def test_listed():
    assert names.listed(("a", "b", "c"), default="a") == "a (default), b or c"
    assert names.listed(("a",)) == "a"
