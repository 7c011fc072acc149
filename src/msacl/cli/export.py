"""``msacl export``: a fitted run as one ONNX or TorchScript graph, checked against the detector."""

from __future__ import annotations

import argparse

from msacl.cli.common import add_fpr, info, positive_int

_EXAMPLES = """\
examples:
  msacl export --run runs/padim --format onnx                 # runs/padim/model.onnx
  msacl export --run runs/padim --format torchscript --out padim.pt

The graph maps images (float32 in [0, 1], shape (B, C, N, N), the run's channels and size) to scores (B,)
and heat maps (B, 1, N, N). At export it is run with onnxruntime (or torch.jit) on the run's own images and
compared with the detector; the largest differences are printed and recorded in RUN/export.json with the
input description and the decision thresholds at --fpr. Needs the export extra for ONNX:
pip install 'msacl[export]'.
exportable: padim, patchcore, igd, fanogan, msssim_ae, dae; not: patchcore with reweight=true, and the
local (patch) models (local=true), see msacl.deploy.export.
"""


def examples(verb: str) -> str:
    return _EXAMPLES


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="run directory written by `msacl fit`")
    p.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (default) or torchscript")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="file to write (default RUN/model.onnx or RUN/model.torchscript.pt)")
    p.add_argument("--parity-images", type=positive_int, default=16, metavar="N",
                   help="images of the run used for the parity check (default 16)")
    add_fpr(p)


def run(args: argparse.Namespace) -> int:
    from msacl.deploy.export import export_run

    rec = export_run(args.run, args.fmt, out=args.out, fpr=args.fpr, n_images=args.parity_images)
    par = rec["parity"]
    runtime = "onnxruntime" if args.fmt == "onnx" else "torch.jit"
    print(f"exported {rec['detector']} as {args.fmt} -> {rec['file']} ({rec['bytes'] / 1e6:.1f} MB, "
          f"{rec['export_seconds']:.1f} s)")
    print(f"parity ({runtime} vs torch, {par['n_images']} run images, batch sizes {par['batch_sizes']}): "
          f"scores max |diff| {par['score_max_abs']:.3g} (relative {par['score_max_rel']:.3g}), "
          f"maps max |diff| {par['map_max_abs']:.3g} (relative {par['map_max_rel']:.3g})")
    if par.get("float32_map_rel") is not None:
        print(f"for scale: the detector's own float32 outputs differ from a float64 run of it by "
              f"{par['float32_score_rel']:.3g} (scores) and {par['float32_map_rel']:.3g} (maps), relative")
    if not par["passed"]:
        info(f"warning: above the {par['target_rel']:g} relative target (kept: below 0.01, the limit for a graph "
             f"that computes the same thing); compare with the float32 figures above before relying on it")
    if rec["decision"] is not None:
        d = rec["decision"]
        print(f"decision: abnormal if score > {d['image']['threshold']:.6g} (FPR {d['fpr']:g}); flagged pixels: "
              f"map > {d['pixel']['threshold']:.6g}; recorded in the run's export.json")
    return 0
