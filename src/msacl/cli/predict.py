"""``msacl predict``: scores, normal / abnormal decisions and heat maps for new images.

Writes into ``--out``: ``scores.csv`` (one row per image: path, score, decision, threshold, target FPR,
flagged share, pixel threshold, the input's size, any conversion, heat-map file), one heat-map PNG per
image at the image's own aspect ratio and size, reduced to ``--heatmap-side`` (1,024 px) on its longest side
when larger (the pixel threshold marked on the colour bar, flagged pixels outlined), ``decision.json`` (the
thresholds, their rule, n and guarantee) and, under ``--on-bad-file skip``, ``skipped_files.txt``. An image
over ``--max-pixels`` (read from its header, before decoding) or under ``--min-side`` is a bad file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from msacl.cli.common import add_device, add_fpr, add_input_limits, info, input_limits, positive_int
from msacl.errors import DataError

if TYPE_CHECKING:
    from msacl.deploy.inference import FittedRun, LoadedImage

_EXAMPLES = """\
examples:
  msacl predict --run runs/padim new_scans/ --out preds/
  msacl predict --run runs/padim case17.dcm --out preds/ --fpr 0.01
  msacl predict --run runs/padim mixed/ --out preds/ --on-bad-file skip --convert-channels
  msacl predict --run runs/padim slides/ --out preds/ --max-pixels 200M --heatmap-side 2048

writes into --out: scores.csv (path,score,decision,threshold,fpr,lesion_fraction,...), one heat-map PNG per
image (longest side at most --heatmap-side), decision.json (thresholds, rule, n, guarantee), skipped_files.txt
(with skip). Images over --max-pixels (read from the header, before decoding) or under --min-side are bad files.
decision: abnormal when the score is above the threshold calibrated on the run's held-out normal images,
so that at most --fpr of normal images are called abnormal (split-conformal guarantee).
"""


def examples(verb: str) -> str:
    return _EXAMPLES


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="run directory written by `msacl fit`")
    p.add_argument("input", metavar="IMAGE_OR_DIR",
                   help="an image (PNG, JPEG, TIFF, BMP, DICOM) or a folder of them (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for heat maps and scores.csv")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="images per batch (default 32)")
    add_device(p)
    add_fpr(p)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error",
                   help="stop at the first unreadable or unsuitable file (default) or skip it and list it in "
                        "--out/skipped_files.txt")
    p.add_argument("--convert-channels", action="store_true",
                   help="score grey images with a run fitted on colour images (or the reverse) by converting "
                        "them, noted per image; default: refuse them, since their scores are not comparable")
    add_input_limits(p)


def list_inputs(path: Path) -> list[Path]:
    """The image files under ``path`` (itself if a file), hidden files left out; DataError if there are none."""
    from msacl.data.readers import is_hidden, is_image_file

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(is_hidden(q) for q in p.relative_to(path).parts) and is_image_file(p))
    if not files:
        raise DataError(f"{path}: no image or DICOM files found")
    return files


def _num(v: float | None, fmt: str = ".6g") -> str:
    return "" if v is None else format(v, fmt)


def _read(model: FittedRun, files: list[Path], on_bad_file: str,
          skipped: list[tuple[str, str]]) -> list[tuple[Path, LoadedImage]]:
    """(file, model.load_image(file)) of each readable file; an unreadable one stops (``on_bad_file="error"``)
    or is added to ``skipped`` with its reason."""
    loaded = []
    for f in files:
        try:
            loaded.append((f, model.load_image(f)))
        except DataError as e:
            if on_bad_file == "error":
                raise DataError(f"{e} (--on-bad-file skip leaves such files out)") from None
            skipped.append((str(f), str(e).split(": ", 1)[-1]))
    return loaded


def _heatmap_name(rel: Path, used: set[str]) -> str:
    """A heat map's file name from the input's relative path, made unique among ``used`` (and added to it)."""
    name = "__".join(rel.with_suffix("").parts) + "_heatmap.png"
    while name in used:
        name = "_" + name
    used.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from msacl.cli.common import write_csv
    from msacl.deploy.inference import NO_CALIBRATION, FittedRun
    from msacl.detectors.pipeline import resolve_device
    from msacl.runs import atomic_write_bytes, atomic_write_text, write_json

    model = FittedRun(args.run, fpr=args.fpr, device=resolve_device(args.device),
                      convert_channels=args.convert_channels, limits=input_limits(args))
    if model.decision is None:
        info(f"note: {NO_CALIBRATION.format(run=model.path)}")
    for w in (model.decision or {}).get("warnings", []):
        info(f"warning: {w}")
    src = Path(args.input)
    files = list_inputs(src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, used, skipped, converted = [], set(), [], 0
    for i in tqdm(range(0, len(files), args.batch_size), desc="predict", unit="batch"):
        # read per batch: memory does not grow with the folder
        loaded = _read(model, files[i : i + args.batch_size], args.on_bad_file, skipped)
        if not loaded:
            continue
        scores, maps = model.score(torch.stack([d.x for _, d in loaded]))
        for (f, d), s, m in zip(loaded, scores, maps, strict=True):
            p = model.finish(str(f), float(s), m, d)
            rel = f.relative_to(src) if src.is_dir() else Path(f.name)
            name = _heatmap_name(rel, used)
            atomic_write_bytes(out / name, model.heatmap_png(p, title=f"{rel}  score {p.score:.4g}" + (
                "" if p.decision is None else f"  {p.decision.upper()} (threshold {p.threshold:.4g}, "
                                              f"FPR {args.fpr:g})")))
            converted += bool(p.note)
            rows.append([str(f), f"{p.score:.6g}", p.decision or "", _num(p.threshold), f"{args.fpr:g}",
                         _num(p.lesion_fraction), _num(p.pixel_threshold), p.width, p.height, p.note, name])
    header = ["path", "score", "decision", "threshold", "fpr", "lesion_fraction", "pixel_threshold", "width",
              "height", "note", "heatmap"]
    write_csv(out / "scores.csv", header, rows)
    if skipped:
        atomic_write_text(out / "skipped_files.txt", "".join(f"{p}\t{r}\n" for p, r in skipped))
        info(f"skipped {len(skipped)} file(s); listed in {out / 'skipped_files.txt'}")
    if converted:
        info(f"{converted} image(s) of another colour than the training images were converted (see the note "
             f"column of scores.csv)")
    n_abn = sum(r[2] == "abnormal" for r in rows)
    write_json(out / "decision.json", {**model.summary(), "n_scored": len(rows), "n_abnormal": n_abn,
                                       "n_skipped": len(skipped), "n_converted": converted})
    line = f"{len(rows)} image(s) scored"
    if model.decision is not None:
        line += (f": {n_abn} abnormal, {len(rows) - n_abn} normal at a target false-positive rate of {args.fpr:g} "
                 f"(threshold {model.threshold:.4g})")
    print(f"{line} -> {out / 'scores.csv'}, heat maps in {out}")
    return 0
