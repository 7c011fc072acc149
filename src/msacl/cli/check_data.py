"""``msacl check-data DIR``: validate a data folder before using it.

Prints, per split, the counts (normal / abnormal / masks), image sizes and colour modes, the mean mask
coverage, folders that are not read, and every problem found (all of them, not just the first). Exits 1 when
any problem would stop loading, 0 otherwise.
"""

from __future__ import annotations

import argparse

from msacl.names import LAYOUTS, listed


def examples(verb: str) -> str:
    return f"""\
examples:
  msacl check-data data/kvasir                         # train/normal, test/{{normal,abnormal,masks}}
  msacl check-data data/kvasir --image-size 256 --json check.json
  msacl check-data data/hyper-kvasir --layout hyper-kvasir
  msacl check-data data/covidx --layout covidx:train_file=train_COVIDx9A.txt,test_file=test_COVIDx9A.txt
  msacl check-data data/polyp-frames --splits test      # a folder with a test split only

layouts: {listed(LAYOUTS, default="folder")}; parameters as NAME:key=value,... (see docs/data.md)
exit status: 0 usable (warnings allowed), 1 at least one error
"""


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="the data folder")
    p.add_argument("--layout", default="folder",
                   help=f"data layout: {listed(LAYOUTS, default='folder')}, with optional "
                        "parameters, e.g. hyper-kvasir:n_train=1600,n_test_normal=500")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="size the data will be loaded at: images smaller than N x N are reported "
                        "(default: the layout's paper size; native for folder)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="channels it will be loaded with")
    p.add_argument("--splits", default=None, metavar="LIST",
                   help="comma-separated splits to check, e.g. test (default: train, test and val if present)")
    p.add_argument("--no-upsample", action="store_true",
                   help="count images smaller than --image-size as errors instead of warnings")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON to FILE")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="decoding threads (default: up to 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from msacl.data import SPLITS, check_folder
    from msacl.errors import DataError
    from msacl.runs import write_json

    splits = None
    if args.splits:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        bad = [s for s in splits if s not in SPLITS]
        if bad or not splits:
            named = ", ".join(bad) if bad else repr(args.splits)
            raise DataError(f"--splits: unknown split(s) {named}; choose from {', '.join(SPLITS)}")
    if args.image_size is not None and args.image_size < 1:
        raise DataError(f"--image-size must be positive, got {args.image_size}")
    report = check_folder(args.dir, layout=args.layout, image_size=args.image_size, channels=args.channels,
                          splits=splits, allow_upsample=not args.no_upsample, num_workers=args.workers,
                          progress=False if args.no_progress else None)
    print(report.format(), flush=True)
    if args.json:
        write_json(args.json, report.to_dict())
    return 0 if report.ok else 1
