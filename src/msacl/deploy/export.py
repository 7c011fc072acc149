"""Export a fitted run as one graph, image pixels in, image score and heat map out (ONNX or TorchScript).

The graph takes what the detector takes: float32 images in [0, 1], shape (B, C, N, N) with the run's
channels and size, already decoded and resized to N x N (the preprocessing of ``msacl predict``: Pillow's
antialiased bilinear resize). It returns ``score`` (B,) and ``map`` (B, 1, N, N), the detector's own
outputs, so the thresholds of :mod:`msacl.metrics.calibrate` apply unchanged (they are written beside the graph).
The batch axis is dynamic.

The graph is the detector's own scoring module (``det.scorer()``: ``predict_images``, the computation
``predict`` runs after checking, moving and resizing its input), traced (``torch.jit.trace``; ONNX through
torch's TorchScript-based exporter), so no second copy of the scoring maths exists. Every export is checked
against ``det.predict`` on the run's own images (:func:`parity`) and refused when they disagree.

Not exportable: CAVGA (its maps are Grad-CAM, computed by autograd while scoring) and the local (patch) models
of IGD, F-anoGAN, the MS-SSIM auto-encoder and the DAE (``local=true``: patches are cut in chunks sized at
trace time). Detectors without a ``predict_images`` are
traced through ``predict`` and kept only if the parity check passes.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msacl.errors import MsaclError

FORMATS = ("onnx", "torchscript")
OPSET = 17
# Relative differences (largest |difference| over the largest |value| of the torch output). Below the target
# the export is as good as float32 allows; above the limit the graph computes something else and is refused.
# In between (SSIM maps, whose variance terms cancel, come near the target) it is kept with a warning.
PARITY_TARGET = 1e-4
PARITY_LIMIT = 1e-2


def detector_graph(det: Any) -> nn.Module:
    """The module to export: the detector's own scoring module (:meth:`msacl.detectors.Detector.scorer`).

    Raises:
        MsaclError: the detector scores in a way a trace cannot keep (CAVGA, the local patch models).
    """
    if det.not_exportable:
        raise MsaclError(f"{det.name} cannot be exported: {det.not_exportable}")
    if getattr(det, "local", None) is not None:
        raise MsaclError(f"{det.name} with local=true cannot be exported (its patch grid is cut in chunks "
                         "whose sizes a trace would freeze)")
    return det.scorer()


def export_graph(graph: nn.Module, example: torch.Tensor, path: Path, fmt: str) -> Path:
    """Trace ``graph`` on ``example`` and write it as ``fmt`` ("onnx" or "torchscript") to ``path``.

    Raises:
        MsaclError: the graph cannot be traced or converted (naming the operation where torch says).
    """
    if fmt not in FORMATS:
        raise MsaclError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings say that Python values are frozen into the graph: intended (see the module docstring).
        warnings.simplefilter("ignore")
        graph(example)  # builds the detectors' cached helpers (folded encoder copies) outside the trace
        try:
            if fmt == "torchscript":
                traced = torch.jit.trace(graph, (example,), check_trace=False)
                traced.save(str(path))
            else:
                torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET,
                                  input_names=["image"], output_names=["score", "map"],
                                  dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "map": {0: "batch"}})
        except MsaclError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporters raise many types; the message is what matters
            raise MsaclError(f"export to {fmt} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    return path


def load_runner(path: Path, fmt: str) -> Any:
    """A callable (B, C, N, N) float32 numpy -> (scores, maps) numpy, running the exported file."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise MsaclError("the ONNX parity check needs onnxruntime: pip install 'msacl[export]'") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda x: tuple(sess.run(["score", "map"], {"image": x}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, the format is what was asked for
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            s, m = module(torch.from_numpy(x))
        return s.numpy(), m.numpy()

    return run


def parity(det: Any, runner: Any, images: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    """Largest differences between the exported graph and ``det.predict`` on ``images``.

    Every image is run once alone and once in batches of ``batch_sizes[-1]`` (the graph's batch axis is
    dynamic, and a frozen batch size would show here), each batch against ``det.predict`` on the same batch:
    convolutions round differently at different batch sizes, which is not the export's doing.

    Returns:
        ``score_max_abs``, ``map_max_abs`` (largest absolute differences), ``score_max_rel``, ``map_max_rel``
        (divided by the largest absolute torch value), ``n_images``, ``batch_sizes`` and ``passed`` (both
        relative differences below :data:`PARITY_TARGET`).
    """
    worst = {"score": 0.0, "map": 0.0}
    scale = {"score": 0.0, "map": 0.0}
    for bs in batch_sizes:
        for i in range(0, images.shape[0], bs):
            x = images[i : i + bs]
            with torch.no_grad():
                ref = [t.float().cpu().numpy() for t in det.predict(x)]
            got = runner(x.cpu().numpy().astype(np.float32))
            for k, r, g in zip(("score", "map"), ref, got, strict=True):
                worst[k] = max(worst[k], float(np.abs(np.asarray(g).reshape(r.shape) - r).max()))
                scale[k] = max(scale[k], float(np.abs(r).max()))
    out: dict[str, Any] = {"n_images": int(images.shape[0]), "batch_sizes": list(batch_sizes)}
    for k in ("score", "map"):
        out[f"{k}_max_abs"] = worst[k]
        out[f"{k}_max_rel"] = worst[k] / (scale[k] or 1.0)
    worst_rel = max(out["score_max_rel"], out["map_max_rel"])
    out["passed"] = bool(math.isfinite(worst_rel) and worst_rel < PARITY_TARGET)
    out["usable"] = bool(math.isfinite(worst_rel) and worst_rel < PARITY_LIMIT)
    out["target_rel"] = PARITY_TARGET
    out.update(float32_error(det, images[: batch_sizes[-1]]))
    return out


def float32_error(det: Any, images: torch.Tensor) -> dict[str, float | None]:
    """How far the detector's own float32 outputs are from a float64 run of it (relative, as in :func:`parity`).

    Two float32 implementations cannot be expected to agree more closely than either agrees with the exact
    result; for SSIM maps (variance terms that cancel, divided by a constant of 9e-4) this is near 1e-4.
    """
    import copy

    try:
        d64 = copy.deepcopy(det).double().eval()
        with torch.no_grad():
            r32 = [t.double() for t in det.predict(images)]
            r64 = d64.scorer()(images.double())
    except Exception:  # noqa: BLE001 - a detector that cannot run in float64 just gets no reference
        return {"float32_score_rel": None, "float32_map_rel": None}
    return {f"float32_{k}_rel": float((a - b).abs().max() / (b.abs().max() or 1.0))
            for k, a, b in zip(("score", "map"), r32, r64, strict=True)}


def run_images(model: Any, n: int = 16) -> tuple[torch.Tensor, list[str]]:
    """Up to ``n`` of the run's own images, prepared as ``msacl predict`` prepares inputs: half held-out normals
    (``calibration.json``), half from the data folder's ``test/`` (abnormal first), as far as they exist."""
    from msacl.data.readers import is_image_file

    normals = (model.run.calibration() or {}).get("paths", [])
    root = Path(model.run.config.data.root or "")
    tests: list[str] = []
    for sub in ("test/abnormal", "test/normal", "test", "train/normal"):
        if (root / sub).is_dir():
            tests += [str(p) for p in sorted((root / sub).rglob("*")) if p.is_file() and is_image_file(p)]
            if len(tests) >= n:
                break
    picked = list(dict.fromkeys(normals[: n // 2] + tests))[:n]
    picked += [p for p in normals if p not in picked][: n - len(picked)]
    images, used = [], []
    for p in picked:
        try:
            images.append(model.load(p)[0])
            used.append(p)
        except Exception:  # noqa: BLE001 - a file moved or changed since fitting is not the export's concern
            continue
    if not images:
        raise MsaclError(f"{model.path}: none of the run's images can be read for the parity check (data folder "
                         f"{root} and calibration.json)")
    return torch.stack(images), used


def export_run(run: str | Path, fmt: str = "onnx", *, out: str | Path | None = None, fpr: float = 0.05,
               n_images: int = 16) -> dict[str, Any]:
    """Export a fitted run as one graph and check it against the detector on the run's own images.

    Args:
        run: run directory written by ``msacl fit``.
        fmt: "onnx" or "torchscript".
        out: file to write (default ``RUN/model.onnx`` or ``RUN/model.torchscript.pt``).
        fpr: target false-positive rate of the thresholds recorded with the graph.
        n_images: images of the parity check.

    Returns:
        The record written to ``RUN/export.json`` under ``fmt``: file, input and outputs, thresholds, parity.

    Raises:
        MsaclError: the detector cannot be exported (saying why), or the exported graph disagrees with it.
    """
    import json
    import time

    from msacl.deploy.inference import FittedRun
    from msacl.runs import write_json

    if fmt not in FORMATS:
        raise MsaclError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model = FittedRun(run, fpr=fpr, device="cpu")
    det = model.detector.cpu().eval()
    path = Path(out) if out is not None else model.path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    images, used = run_images(model, n_images)
    t0 = time.perf_counter()
    graph = detector_graph(det)
    export_graph(graph, images[:2], path, fmt)
    seconds = time.perf_counter() - t0
    check = parity(det, load_runner(path, fmt), images)
    if not check["usable"]:
        path.unlink(missing_ok=True)
        raise MsaclError(f"{det.name}: the exported {fmt} graph disagrees with the detector (largest relative "
                         f"difference: scores {check['score_max_rel']:.3g}, maps {check['map_max_rel']:.3g}); "
                         f"nothing written")
    record = {
        "format": fmt, "file": str(path), "bytes": path.stat().st_size, "export_seconds": round(seconds, 2),
        "detector": det.name, "opset": OPSET if fmt == "onnx" else None, "torch": torch.__version__,
        "input": {"name": "image", "shape": ["batch", model.channels, model.size, model.size], "dtype": "float32",
                  "range": [0, 1], "preparation": f"decoded, resized to {model.size} x {model.size} (bilinear, "
                  "antialiased), channels as in training; see msacl.deploy.inference.FittedRun.load"},
        "outputs": {"score": ["batch"], "map": ["batch", 1, model.size, model.size]},
        "decision": model.decision, "parity": {**check, "images": used},
    }
    if fmt == "onnx":
        import onnxruntime

        record["onnxruntime"] = onnxruntime.__version__
    summary_path = model.path / "export.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary[fmt] = record
    write_json(summary_path, summary)
    return record
