"""Atomic file writes and checked reads: a reader (or a resumed run) never sees half a file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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
                    map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load(..., weights_only=True)`` that names the file and the problem in ``error``.

    ``what`` names the kind of file in the messages ("<path>: not a readable <what> (...)"); ``missing`` is
    the message for a file that does not exist (default "<what> not found"). ``mmap`` maps the tensors'
    storage instead of reading it, for a caller that wants the file's small entries only.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing or what + ' not found'}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
