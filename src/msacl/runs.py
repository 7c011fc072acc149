"""Run directories, atomic file writes and explicit random generators.

Every command that computes something writes a run directory holding what is needed to understand
and repeat it: the resolved config, the command line, the package version and git SHA, the seed and,
where there are metrics, ``metrics.json``.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from msacl import __version__
from msacl.config import to_dict


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    A reader (or a resumed run) sees either the old file or the complete new one, never half a file,
    even if the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a truncated file behind."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_torch_file(path: str | Path, *, error: type[Exception], what: str, missing: str | None = None,
                    map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` that names the file and the problem in ``error``.

    ``what`` names the kind of file in the messages ("<path>: not a readable <what> (...)"); ``missing`` is
    the message for a file that does not exist (default "<what> not found").
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing or what + ' not found'}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        text = str(e).strip()
        if "weights_only" in text or "Weights only load failed" in text:
            # torch's own advice (load with weights_only=False) would run code from the file: never give it
            reason = "it holds Python objects besides tensors, which msacl does not load (it could run code)"
        else:
            reason = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        raise error(f"{path}: not a readable {what} ({reason})") from None


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator; library code draws all randomness from one of these, never the global RNG."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. run seed, stream, epoch, step, rank)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def child_seed(g: torch.Generator) -> int:
    """Draw a seed for a derived generator (e.g. one per worker or per module) from ``g``."""
    return int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())


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
