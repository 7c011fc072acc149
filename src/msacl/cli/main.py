"""Entry point of the ``msacl`` console script."""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from msacl import __version__
from msacl.errors import MsaclError

# verb -> (module under msacl.cli, one-line help). Verb modules import torch and friends inside
# `run`, so `msacl --help` stays fast.
VERBS: dict[str, tuple[str, str]] = {
    "check-data": ("check_data", "validate a data folder and report counts, sizes and every problem"),
    "augment-preview": ("augment_preview", "draw a grid of the strong augmentation classes (MSACL Fig. 3)"),
    "pretrain": ("pretrain", "self-supervised pre-training: MSACL, CCD, SimCLR, RotNet, CSI or DROC"),
    "fit": ("fit", "fit an anomaly detector (PaDiM, IGD, ...) on normal images"),
    "test": ("test", "score a test split: metrics.json and report.html"),
    "predict": ("predict", "scores, normal/abnormal decisions and heat maps for new images"),
    "export": ("export", "a fitted run as one ONNX or TorchScript graph, checked against the detector"),
    "serve": ("serve", "a fitted run as an HTTP service: POST /predict, GET /health, a web page at /"),
    "bench": ("bench", "the papers' tables on the shared data sets"),
    "demo": ("demo", "pre-train, fit PaDiM, test and write a report in a few minutes"),
}

DESCRIPTION = textwrap.dedent(
    """\
    msacl: find disease in medical images when only healthy images are available for training.

    A typical session:
      msacl check-data DIR                                   # is the folder usable?
      msacl pretrain --method msacl --data DIR --out runs/pre
      msacl fit --detector padim --data DIR --encoder runs/pre/encoder.pt --out runs/padim
      msacl test --run runs/padim --data DIR                 # metrics.json + report.html
    """
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msacl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"msacl {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_) in VERBS.items():
        mod = importlib.import_module(f"msacl.cli.{module}")
        p = sub.add_parser(
            verb, help=help_, description=help_, epilog=mod.examples(verb),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(verb, p)
        p.set_defaults(_module=mod)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """Warnings as users read them: one line, the warning's kind and text, no source path."""
    text = " ".join(str(message).split())
    return f"warning: {text}\n" if category is UserWarning else f"warning ({category.__name__}): {text}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return int(args._module.run(args) or 0)
    except MsaclError as e:
        print(f"msacl {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"msacl {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
