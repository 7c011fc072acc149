"""``msacl augment-preview``: a grid of the strong augmentation classes, like MSACL Fig. 3."""

from __future__ import annotations

import argparse
import textwrap

from msacl.cli.common import add_data, add_seed, info
from msacl.errors import MsaclError
from msacl.names import STRONG_FAMILIES


def examples(verb: str) -> str:
    return textwrap.dedent(
        """\
        examples:
          msacl augment-preview --data DIR --out medmix.png                 # 4 images x MedMix classes 0-3
          msacl augment-preview --data DIR --out rot.png --family rotation --rows 3
          msacl augment-preview --data DIR --out mm.png --weak --outline    # + weak views, lesion outlines
          msacl augment-preview --data DIR --out mm.png --option size=[0.2,0.4] --option max_lesions=4
        """
    )


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    add_data(p)
    p.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write")
    p.add_argument("--family", default="medmix", choices=STRONG_FAMILIES,
                   help="strong augmentation family (default: medmix)")
    p.add_argument("--option", dest="options", metavar="KEY=VALUE", action="append", default=[],
                   help="a keyword argument of the family, value parsed as YAML (repeatable), "
                        "e.g. --option size=[0.1,0.3]")
    p.add_argument("--rows", type=int, default=4, metavar="N", help="number of images (rows) (default: 4)")
    p.add_argument("--weak", action="store_true",
                   help="add a block of rows with a weak view (SimCLR augmentation) of every panel")
    p.add_argument("--outline", action="store_true", help="outline the altered pixels (lesions, holes) in yellow")
    add_seed(p)


def _options(items: list[str]) -> dict:
    from msacl.config import parse_key_values

    return {k: tuple(v) if isinstance(v, list) else v for k, v in parse_key_values(items, "--option").items()}


def run(args: argparse.Namespace) -> int:
    import torch

    from msacl.augment import WeakAugment, build_strong
    from msacl.augment.preview import preview_grid, save_preview
    from msacl.data import load_split
    from msacl.runs import make_generator

    if args.rows < 1:
        raise MsaclError(f"--rows must be at least 1, got {args.rows}")
    if not str(args.out).lower().endswith(".png"):
        raise MsaclError(f"--out {args.out}: the preview is a PNG file; give a name ending in .png")
    try:
        family = build_strong(args.family, **_options(args.options))
    except ValueError as e:
        raise MsaclError(str(e)) from None
    data = load_split(args.data, "train", image_size=args.image_size, channels=args.channels, layout=args.layout,
                      on_bad_file=args.on_bad_file, cache_dir=args.cache_dir)
    n = len(data)
    if n == 0:
        raise MsaclError(f"{args.data}: the train split holds no images")
    g = make_generator(args.seed)
    order = torch.randperm(n, generator=g)
    rows = order[: min(args.rows, n)]
    if n < args.rows:
        info(f"only {n} training images: showing {n} rows")
    # Lesion patches come from other images where there are enough, as in training.
    sources = order[torch.arange(rows.numel()) + rows.numel()] if n >= 2 * rows.numel() else rows.roll(1)
    h, w = data.images.shape[2:]
    if args.family in ("rotation",) and h != w:
        raise MsaclError(f"{args.data}: rotation needs square images, these are {h}x{w}; use --image-size N")
    if args.family == "jigsaw" and (h % 2 or w % 2):
        raise MsaclError(f"{args.data}: jigsaw needs even image sides, these are {h}x{w}; use --image-size N")
    weak = WeakAugment(min(h, w)) if args.weak else None
    grid = preview_grid(data.images[rows], family, generator=g, sources=data.images[sources], weak=weak)
    title = f"{args.family}: classes 0..{family.num_classes - 1} (seed {args.seed})"
    path = save_preview(args.out, grid, title=title, outline=args.outline)
    info(f"wrote {path} ({rows.numel()} images x {family.num_classes} classes"
         f"{', with weak views' if weak is not None else ''})")
    return 0
