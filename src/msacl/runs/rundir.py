"""Run directories: what a command writes so that its result can be understood and repeated."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from msacl import __version__
from msacl.config import to_dict
from msacl.runs.atomic_io import atomic_write_text, write_json


def git_sha() -> str | None:
    """SHA of the source checkout this package runs from, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here, capture_output=True, text=True, timeout=5, check=False,
    ).stdout.strip()
    return sha + ("-dirty" if dirty else "")


class RunDir:
    """A run directory: ``config.yaml``, ``command.txt`` and ``meta.json``; each verb adds its own files.

    >>> import tempfile
    >>> run = RunDir.create(tempfile.mkdtemp() + "/run", config={"lr": 0.01}, seed=0, argv=["msacl"])
    >>> sorted(p.name for p in run.path.iterdir())
    ['command.txt', 'config.yaml', 'meta.json']
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        config: Any,
        seed: int | None,
        argv: list[str] | None = None,
        command: str | None = None,
    ) -> RunDir:
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg = to_dict(config) if not isinstance(config, dict) else config
        atomic_write_text(run.path / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        argv = list(sys.argv if argv is None else argv)
        atomic_write_text(run.path / "command.txt", " ".join(_quote(a) for a in argv) + "\n")
        meta = {
            "msacl_version": __version__,
            "git_sha": git_sha(),
            "seed": seed,
            "command": command,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        write_json(run.path / "meta.json", meta)
        return run


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_./=:,+@" for c in a) else repr(a)
