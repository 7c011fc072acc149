"""CLI verb(s) served by this module (filled in by its issue)."""

from __future__ import annotations

import argparse

from msacl.errors import MsaclError


def examples(verb: str) -> str:
    return ""


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise MsaclError(f"'{args.verb}' is not implemented yet")
