"""`msacl export`: one graph from pixels to score and heat map, checked here independently of its own check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from msacl.cli.main import main
from msacl.detectors import Detector, build_detector, options_for
from msacl.errors import MsaclError

ort = pytest.importorskip("onnxruntime", reason="ONNX export needs the export extra: pip install 'msacl[export]'")
pytest.importorskip("onnx", reason="torch's ONNX exporter needs onnx (the export extra)")

TINY = {"epochs": 1, "batch_size": 16, "width": 8, "latent_dim": 16}


def _fit(data: Path, run: Path, name: str, *extra: str) -> Path:
    sets = [a for k, v in TINY.items() if k in options_for(name).to_dict() for a in ("--set", f"{k}={v}")]
    assert main(["fit", "--detector", name, "--data", str(data), "--out", str(run), "--quiet", *sets, *extra]) == 0
    return run


@pytest.fixture(scope="module")
def padim_run(synthetic_data, tmp_path_factory) -> Path:
    return _fit(synthetic_data, tmp_path_factory.mktemp("exp") / "padim", "padim", "--set", "n_features=40")


def _images(run: Path, data: Path, n: int = 5) -> torch.Tensor:
    from msacl.deploy.inference import FittedRun

    model = FittedRun(run)
    files = sorted((data / "test" / "abnormal").iterdir())[:n]
    return torch.stack([model.load(f)[0] for f in files])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_onnx_export_matches_the_detector(padim_run, synthetic_data, capsys):
    assert main(["export", "--run", str(padim_run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "parity (onnxruntime vs torch" in out and "relative" in out
    rec = json.loads((padim_run / "export.json").read_text())["onnx"]
    assert rec["parity"]["passed"] and rec["parity"]["map_max_rel"] < 1e-4 and rec["parity"]["n_images"] == 16
    assert rec["input"]["shape"] == ["batch", 3, 64, 64] and rec["decision"]["image"]["n"] == 6
    # Our own check, not the exporter's: onnxruntime on images it never saw, at a batch size it never ran.
    x = _images(padim_run, synthetic_data, 3)
    sess = ort.InferenceSession(str(padim_run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    s, m = sess.run(["score", "map"], {"image": x.numpy()})
    ref_s, ref_m = Detector.load(padim_run / "detector.pt").eval().predict(x)
    assert s.shape == (3,) and m.shape == (3, 1, 64, 64)
    assert _rel(s, ref_s.numpy()) < 1e-4 and _rel(m, ref_m.numpy()) < 1e-4
    # the decision recorded with the graph is the one `predict` makes
    t = rec["decision"]["image"]["threshold"]
    assert ((s > t) == (ref_s.numpy() > t)).all()


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")  # deprecated in torch, still the asked format
def test_torchscript_export_matches_the_detector(padim_run, synthetic_data, tmp_path, capsys):
    target = tmp_path / "padim.pt"
    assert main(["export", "--run", str(padim_run), "--format", "torchscript", "--out", str(target)]) == 0
    x = _images(padim_run, synthetic_data, 2)
    s, m = torch.jit.load(str(target)).eval()(x)
    ref_s, ref_m = Detector.load(padim_run / "detector.pt").eval().predict(x)
    assert _rel(s.numpy(), ref_s.numpy()) < 1e-5 and _rel(m.numpy(), ref_m.numpy()) < 1e-5
    assert "torchscript" in json.loads((padim_run / "export.json").read_text())


@pytest.mark.parametrize(("name", "settings"), [("padim", {"n_features": 40}), ("patchcore", {}),
                                               ("patchcore", {"reweight": True}), ("dae", TINY)])
def test_predict_runs_the_module_that_export_traces(synthetic_data, name, settings):
    """One copy of the scoring maths: ``predict`` at the detector's size is its scorer, bit for bit, and the
    trace of that scorer (the exported graph) computes the same at another batch size."""
    from msacl.data import load_split
    from msacl.detectors.base import batches

    train = load_split(synthetic_data, "train", image_size=64)
    det = build_detector(name, image_size=64, **{k: v for k, v in settings.items() if k in options_for(name).to_dict()})
    det.fit(batches(train.images[:32], 16), generator=torch.Generator().manual_seed(0))
    x = load_split(synthetic_data, "test", image_size=64).images[:6]
    want = det.predict(x)
    with torch.no_grad():
        got = det.scorer()(x)
        traced = torch.jit.trace(det.scorer(), (x[:1],), check_trace=False)
        again = traced(x)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(want, again, strict=True))


SLOW = {"fanogan", "igd", "msssim_ae"}  # ~50 s, ~15 s and ~10 s even at one epoch (dae covers the family)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in ("patchcore", "patchcore-reweight", "dae", "msssim_ae", "igd", "fanogan")])
def test_other_detectors_export(name, synthetic_data, tmp_path, capsys):
    name, _, variant = name.partition("-")
    run = _fit(synthetic_data, tmp_path / name, name, *(["--set", "reweight=true"] if variant else []))
    code = main(["export", "--run", str(run), "--format", "onnx", "--parity-images", "6"])
    err = capsys.readouterr().err
    assert code == 0, err
    par = json.loads((run / "export.json").read_text())["onnx"]["parity"]
    # SSIM maps (msssim_ae, igd) are at the limit of float32: torch's own float32 map is ~8e-5 (relative) from a
    # float64 run, so onnxruntime and torch may differ by about 1e-4; within twice that, the graph is right.
    limit = max(1e-4, 2 * (par["float32_map_rel"] or 0))
    assert par["score_max_rel"] < 1e-4 and par["map_max_rel"] < limit, par
    x = _images(run, synthetic_data, 2)
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    s, m = sess.run(None, {"image": x.numpy()})
    ref_s, ref_m = Detector.load(run / "detector.pt").eval().predict(x)
    assert _rel(s, ref_s.numpy()) < 1e-4 and _rel(m, ref_m.numpy()) < limit


def test_what_cannot_be_exported_says_why(padim_run, tmp_path, capsys):
    from msacl.deploy.export import detector_graph

    with pytest.raises(MsaclError, match="cavga cannot be exported: its maps are Grad-CAM"):
        detector_graph(build_detector("cavga", image_size=32, width=8, latent_dim=16))
    with pytest.raises(MsaclError, match="local=true"):
        detector_graph(build_detector("dae", image_size=64, local=True, width=8, latent_dim=16))
    code = main(["export", "--run", str(tmp_path / "nowhere"), "--format", "onnx"])
    assert code == 1 and "not found" in capsys.readouterr().err
