"""Options shared by several verbs, and the user-facing printing helpers."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msacl.names import LAYOUTS, LITE0, TORCHVISION_BACKBONES, listed

if TYPE_CHECKING:
    from msacl.data.types import ImageSet


def positive_int(text: str) -> int:
    """argparse type of counts such as --batch-size and --epochs: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fpr_value(text: str) -> float:
    """argparse type of --fpr: a false-positive rate strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.05, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value:g}")
    return value


def add_fpr(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fpr", type=fpr_value, default=0.05, metavar="ALPHA",
                   help="target false-positive rate of the normal/abnormal decision (default 0.05): the threshold "
                        "is calibrated on held-out normal images (split conformal; see RUN/decision.json)")


def pixel_count(text: str) -> int:
    """argparse type of --max-pixels: a whole number of pixels, or megapixels with an M suffix (50M)."""
    mega = text.strip().upper().endswith("M")
    try:
        value = float(text.strip()[:-1]) * 1e6 if mega else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel count such as 50000000 or 50M, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 pixel, got {text}")
    return int(value)


def add_input_limits(p: argparse.ArgumentParser) -> None:
    """--max-pixels, --min-side and --heatmap-side of ``predict`` and ``serve``; their defaults (None here, so
    that building the parser imports no torch) are those of ``msacl.deploy.inference.InputLimits``."""
    p.add_argument("--max-pixels", type=pixel_count, default=None, metavar="N",
                   help="largest image accepted, width x height, read from the file's header before decoding "
                        "(default 50M: a 7,000 x 7,000 image; Pillow decodes at most 179M whatever this says)")
    p.add_argument("--min-side", type=positive_int, default=None, metavar="PX",
                   help="smallest shorter side accepted (default 16, or the run's image size when smaller): a "
                        "smaller image is enlarged so much that its score describes the interpolation")
    p.add_argument("--heatmap-side", type=positive_int, default=None, metavar="PX",
                   help="longest side of the heat maps drawn (default 1024; smaller images keep their own size); "
                        "the decision always uses the detector's full map")


def input_limits(args: argparse.Namespace) -> Any:
    """The ``msacl.deploy.inference.InputLimits`` of the flags of :func:`add_input_limits` (library defaults for those
    not given)."""
    from msacl.deploy.inference import InputLimits

    given = {k: getattr(args, k) for k in ("max_pixels", "min_side", "heatmap_side") if getattr(args, k) is not None}
    return InputLimits(**given)


def add_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with settings (see --print-config)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting with a dotted key, e.g. --set loss.tau=0.1 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def add_data(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--data", required=required, metavar="DIR",
                   help="data folder with train/normal, test/normal, test/abnormal[, test/masks]")
    p.add_argument("--layout", default="folder",
                   help=f"data layout: {listed(LAYOUTS, default='folder')}")
    p.add_argument("--image-size", type=int, default=None, metavar="N", help="resize images to N x N")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="channels the images are converted to (default: 3)")
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error",
                   help="stop at the first unreadable file (default) or skip it and list it in the run dir")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="keep decoded, resized images here so later runs skip decoding")


def add_backbone(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", "--arch", dest="backbone", default=None, metavar="NAME",
                   help=f"encoder backbone: a torchvision ResNet ({', '.join(TORCHVISION_BACKBONES)}) or "
                        f"any timm CNN (e.g. {LITE0}); default: the encoder file's, else resnet18")


def backbone_for(given: str | None, weights: str | Path | None) -> str | None:
    """The backbone to build: ``--backbone`` if given, else the one an msacl ``encoder.pt`` was written for.

    A weights file of another backbone than the one given is refused when it is loaded (its metadata says).
    """
    if given is not None or weights is None or str(weights) == "imagenet" or not Path(weights).exists():
        return given  # a missing file is reported by the verb, naming its flag
    from msacl.detectors.base import encoder_file
    from msacl.models.encoders import file_backbone

    return file_backbone(encoder_file(weights))


DEVICE_HELP = "cpu, cuda, cuda:1, mps or auto (default: auto, the first GPU where there is one, else the CPU)"


def add_device(p: argparse.ArgumentParser, *, distributed: bool = False) -> None:
    """``--device``, the same flag with the same values for every verb; with ``distributed`` (pre-training on
    Lightning Fabric) also ``--devices``, ``--num-nodes`` and ``--precision``, and ``--accelerator``, Lightning's
    name of ``--device``."""
    names = ("--device", "--accelerator") if distributed else ("--device",)
    p.add_argument(*names, dest="device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    if distributed:
        p.add_argument("--devices", default="1", help="number of devices, or a list such as 0,1 (default: 1)")
        p.add_argument("--num-nodes", type=int, default=1, help="nodes for multi-node DDP (default: 1)")
        p.add_argument("--precision", default="32-true",
                       help="Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed (default: 32-true)")


def fabric_device(device: str, devices: str) -> tuple[str, str]:
    """``--device`` and ``--devices`` as Lightning's accelerator and devices: ``cuda:1`` is accelerator
    ``cuda`` on device ``[1]`` (then ``--devices`` must be left at 1)."""
    kind, _, index = device.partition(":")
    if not index:
        return device, devices
    if devices != "1":
        from msacl.errors import MsaclError

        raise MsaclError(f"--device {device} names one device; give --device {kind} --devices {devices} instead")
    return kind, f"[{index}]"


def info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def report_skipped(run_dir: str | Path, *sets: ImageSet | None) -> None:
    """List the files skipped under ``--on-bad-file skip`` in ``run_dir/skipped_files.txt`` and say so."""
    from msacl.data import write_skipped

    n = write_skipped(run_dir, *[s for s in sets if s is not None])
    if n:
        info(f"skipped {n} unreadable file(s); listed in {Path(run_dir) / 'skipped_files.txt'}")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV file (``header`` then ``rows``, newline-terminated), written atomically."""
    from msacl.runs import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
