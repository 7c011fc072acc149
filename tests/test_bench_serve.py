"""The helpers of benchmarks/bench_serve.py (loaded by path: benchmarks/ is not a package)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_big_png_is_a_valid_image_of_the_size_asked_in_few_bytes():
    data = _bench().big_png(700)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size == (700, 700) and im.mode == "RGB"
        a = np.asarray(im)
    assert a[0, 0].tolist() == [0, 0, 0] and a[0, -1].tolist() == [255, 255, 0]  # the ramp
    assert len(np.unique(a[:, 350, 2])) == 7  # seven bands of blue
    assert (a[1:100] == a[0]).all()  # rows of a band repeat ("Up" filter rows decode to the row above)
    assert len(data) < a.nbytes / 50
