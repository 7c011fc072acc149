"""Session-wide fixtures: one thread per test process, the shared real data sets, a synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """Where the real data sets live: $MSACL_DATA_ROOT, else ../shared/data beside the repository."""
    return Path(os.environ.get("MSACL_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "kvasir_seg_patch128").is_dir():
        pytest.skip(f"real data sets not found at {root} (set MSACL_DATA_ROOT)")
    return root
