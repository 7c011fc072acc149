"""``load_split``: list a split, decode and resize every file once (in a thread pool), and return an ImageSet.

The returned ImageSet is the in-memory cache: training epochs index its tensors and never decode again.
With ``cache_dir`` the decoded tensors are also kept on disk, keyed by a hash of every file's path, mtime
and size and of the loading settings, so a later run on unchanged files skips decoding altogether.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from msacl.data.layouts import SPLITS, Layout, get_layout
from msacl.data.listing import Listing, Sample
from msacl.data.problems import DataWarning, Problem, emit_warnings, is_fatal, raise_errors
from msacl.data.readers import decode, mask_pixels, resize, to_channels
from msacl.data.types import ImageSet
from msacl.errors import DataError

# Bump when decoding changes, so stale disk caches are not reused.
CACHE_FORMAT = 1

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Decoded:
    """What decoding one sample found; ``pixels`` is None when the sample is unusable or was not kept."""

    sample: Sample
    ok: bool = False
    pixels: np.ndarray | None = None  # (H, W, C) uint8, or float32 in [0, 1]
    mask: np.ndarray | None = None  # (H, W) bool
    native: tuple[int, int] | None = None  # (width, height) of the source
    mode: str | None = None
    channels: int | None = None
    coverage: float | None = None
    problems: list[Problem] = field(default_factory=list)


def _problem_from(e: DataError, path: Path, *, of: Path | None = None) -> Problem:
    msg = getattr(e, "problem", None) or str(e).removeprefix(f"{path}: ")
    if of is not None:
        msg += f" (mask of {of.name})"
    return Problem(str(path), msg, getattr(e, "kind", "unreadable"))


def decode_sample(s: Sample, *, size: int | None, channels: int, allow_upsample: bool = True,
                  keep: bool = True) -> Decoded:
    """Decode one sample (image and mask), check it and, if ``keep``, resize it to size x size."""
    out = Decoded(s)
    try:
        d = decode(s.path)
    except DataError as e:
        out.problems.append(_problem_from(e, s.path))
        return out
    w, h = d.size
    out.native, out.mode, out.channels = (w, h), d.mode, d.channels
    if size is not None and (w < size or h < size):
        if not allow_upsample:
            out.problems.append(Problem(str(s.path), f"{w}x{h} is smaller than {size}x{size} and upsampling is "
                                        "off (allow_upsample=False)", "too-small"))
            return out
        out.problems.append(Problem(str(s.path), f"{w}x{h}, upsampled to {size}x{size}", "small-image",
                                    severity="warning"))
    m = None
    if s.mask is not None:
        try:
            md = decode(s.mask)
        except DataError as e:
            out.problems.append(_problem_from(e, s.mask, of=s.path))
            return out
        if md.size != d.size:
            out.problems.append(Problem(str(s.mask), f"mask is {md.size[0]}x{md.size[1]} but its image "
                                        f"{s.path.name} is {w}x{h}", "mask-size"))
            return out
        m, st = mask_pixels(md)
        out.coverage = st.coverage
        if st.non_binary > 0:
            out.problems.append(Problem(str(s.mask), f"{st.non_binary:.1%} of pixels neither 0 nor 255",
                                        "non-binary-mask", severity="warning"))
        if st.coverage == 0:
            out.problems.append(Problem(str(s.mask), f"no lesion pixel in the mask of abnormal image {s.path.name}",
                                        "empty-mask", severity="warning"))
    out.ok = True
    if keep:
        out.pixels = to_channels(resize(d.image, size), channels)
        if m is not None:
            out.mask = np.asarray(resize(Image.fromarray(m), size, nearest=True), dtype=bool)
    return out


def _map(fn: Callable[[T], R], items: list[T], *, num_workers: int | None, desc: str,
         progress: bool | None) -> list[R]:
    workers = min(8, os.cpu_count() or 1) if num_workers is None else max(1, int(num_workers))
    bar = dict(total=len(items), desc=desc, unit="img", file=sys.stderr, leave=False,
               disable=None if progress is None else not progress)
    if workers == 1 or len(items) < 16:
        return list(tqdm(map(fn, items), **bar))
    # Pillow releases the GIL while decoding and resizing, so threads give real parallelism here.
    with ThreadPoolExecutor(workers) as ex:
        return list(tqdm(ex.map(fn, items), **bar))


def decode_listing(listing: Listing, *, size: int | None, channels: int, allow_upsample: bool = True,
                   keep: bool = True, num_workers: int | None = None, progress: bool | None = None) -> list[Decoded]:
    def fn(s: Sample) -> Decoded:
        return decode_sample(s, size=size, channels=channels, allow_upsample=allow_upsample, keep=keep)

    return _map(fn, listing.samples, num_workers=num_workers, desc=f"decoding {listing.split}", progress=progress)


def _examples(paths: Iterable[str], k: int = 3) -> str:
    paths = list(paths)
    return ", ".join(paths[:k]) + (f", ... ({len(paths)} in all)" if len(paths) > k else "")


def split_problems(listing: Listing, results: list[Decoded], root: Path, *, size: int | None,
                   channels: int) -> list[Problem]:
    """Every problem of a split: listing, per file, and split-wide (mixed colour modes, differing sizes)."""
    problems = list(listing.problems) + [p for r in results for p in r.problems]
    ok = [r for r in results if r.ok]
    by_ch: dict[int, list[Decoded]] = {}
    for r in ok:
        by_ch.setdefault(int(r.channels or 0), []).append(r)
    if len(by_ch) > 1:
        name = {1: "grey", 3: "colour"}
        parts = []
        for label, cls in ((0, "normal"), (1, "abnormal")):
            n = Counter(name.get(int(r.channels or 0), "?") for r in ok if r.sample.label == label)
            if n:
                parts.append(f"{cls} " + ", ".join(f"{v} {k}" for k, v in sorted(n.items())))
        examples = "; ".join(f"{name.get(ch, '?')} e.g. {rs[0].sample.path.name} ({rs[0].mode})"
                             for ch, rs in sorted(by_ch.items()))
        msg = f"mixed channel counts ({'; '.join(parts)}; {examples}), all converted to {channels} channel(s)"
        share = {lab: [int(r.channels or 0) == 1 for r in ok if r.sample.label == lab] for lab in (0, 1)}
        if share[0] and share[1] and channels == 3:
            g0, g1 = sum(share[0]) / len(share[0]), sum(share[1]) / len(share[1])
            if abs(g0 - g1) > 0.2:
                msg += (f"; grey are {g0:.0%} of normal but {g1:.0%} of abnormal images, a shortcut a detector can "
                        "learn: consider channels=1 (--channels 1)")
        problems.append(Problem(str(root / listing.split), msg, "mixed-channels", severity="warning"))
    if size is None and ok:
        sizes: dict[tuple[int, int], list[str]] = {}
        for r in ok:
            sizes.setdefault(r.native, []).append(r.sample.path.name)  # type: ignore[arg-type]
        if len(sizes) > 1:
            desc = "; ".join(f"{len(v)} are {w}x{h} (e.g. {_examples(v, 2)})" for (w, h), v in
                             sorted(sizes.items(), key=lambda kv: -len(kv[1])))
            problems.append(Problem(str(root / listing.split), f"images differ in size: {desc}; set an image "
                                    "size (image_size=N, --image-size N)", "mixed-sizes", skippable=False))
    return problems


def _file_stamp(p: Path) -> list[object]:
    try:
        st = p.stat()
        return [str(p), st.st_mtime_ns, st.st_size]
    except OSError:
        return [str(p), None, None]


def cache_key(root: Path, listing: Listing, layout: Layout, settings: dict[str, object]) -> str:
    """Hash of every listed file's path, mtime and size, the layout and the loading settings."""
    files = []
    for s in listing.samples:
        files.append(_file_stamp(s.path))
        if s.mask is not None:
            files.append(_file_stamp(s.mask))
    payload = {
        "format": CACHE_FORMAT, "root": str(root), "resolved": str(root.resolve()), "split": listing.split,
        "layout": layout.name, "params": layout.params(), "settings": settings, "files": files,
        "problems": [[p.path, p.kind] for p in listing.problems],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_cache(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("key") != key:
            raise ValueError("key mismatch")
        return data
    except Exception as e:  # a cache is disposable: rebuild rather than fail
        warnings.warn(f"{path}: unreadable cache file ({e}); decoding again", DataWarning, stacklevel=3)
        return None


def _to_imageset(data: dict) -> ImageSet:
    raw = data["images"].permute(0, 3, 1, 2)  # stored (N, H, W, C)
    # One pass from (N, H, W, C) to a contiguous float (N, C, H, W); scaling in place avoids a second copy.
    images = raw.to(torch.float32, memory_format=torch.contiguous_format)
    if raw.dtype == torch.uint8:
        images.div_(255.0)
    masks = data["masks"].float() if data["masks"] is not None else None
    return ImageSet(images=images, labels=data["labels"].long(), paths=list(data["paths"]), masks=masks,
                    skipped=[(str(a), str(b)) for a, b in data["skipped"]])


def _hint(root: Path, fatal: list[Problem], on_bad_file: str) -> str:
    hint = f"`msacl check-data {root}` lists every problem"
    if on_bad_file == "error" and any(p.skippable for p in fatal):
        hint += "; on_bad_file='skip' (--on-bad-file skip) leaves bad files out and lists them"
    return hint


def _check_arguments(split: str, *, channels: int, on_bad_file: str, image_size: int | None) -> None:
    """load_split's arguments that need no file: a DataError naming the first bad one."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if on_bad_file not in ("error", "skip"):
        raise DataError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")


def _stack(ok: list[Decoded], *, channels: int, with_masks: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoded images as one (N, H, W, C) tensor (uint8 when every image is, else float32 in [0, 1]) and
    their masks as (N, 1, H, W) uint8 (zero where an image has none), or None unless ``with_masks``."""
    dtype = np.uint8 if all(r.pixels.dtype == np.uint8 for r in ok) else np.float32  # type: ignore[union-attr]
    h, w = ok[0].pixels.shape[:2]  # type: ignore[union-attr]
    arr = np.empty((len(ok), h, w, channels), dtype=dtype)
    for i, r in enumerate(ok):
        px = r.pixels
        arr[i] = px if px.dtype == dtype else px.astype(np.float32) / 255.0  # type: ignore[union-attr]
    raw = torch.from_numpy(arr)  # (N, H, W, C): permuted once, when converted to float
    masks = None
    if with_masks:
        masks = torch.zeros(len(ok), 1, h, w, dtype=torch.uint8)
        for i, r in enumerate(ok):
            if r.mask is not None:
                masks[i, 0] = torch.from_numpy(np.array(r.mask, dtype=np.uint8))
    return raw, masks


def load_split(
    root: str | os.PathLike[str],
    split: str,
    *,
    image_size: int | None = None,
    channels: int = 3,
    layout: str | Layout = "folder",
    on_bad_file: str = "error",
    cache_dir: str | os.PathLike[str] | None = None,
    allow_upsample: bool = True,
    num_workers: int | None = None,
    progress: bool | None = None,
) -> ImageSet:
    """Load one split of a data folder as decoded, resized tensors.

    Args:
        root: the data folder.
        split: "train" (normal images, label 0), "val" or "test" (normal images, label 0, then abnormal
            images, label 1; masks when the split has a mask folder, all-zero for normal images).
        image_size: resize every image (and mask) to image_size x image_size; None uses the layout's paper
            size (``folder``: the native size, which must then be the same for every image).
        channels: 1 (grey) or 3 (RGB).
        layout: a name from :data:`LAYOUTS` with optional parameters ("hyper-kvasir:n_train=1000") or a Layout.
        on_bad_file: "error" raises on the first problems found; "skip" leaves bad files out and records
            them in ``ImageSet.skipped``.
        cache_dir: keep the decoded tensors here, keyed by the files' paths, mtimes and sizes and the settings.
        allow_upsample: False refuses (as a bad file) images smaller than image_size instead of upsampling.
        num_workers: decoding threads (default: up to 8).
        progress: tqdm bar on stderr; None shows it only on a terminal.

    Returns:
        The split. ``images`` Shape: (N, channels, H, W); ``masks`` Shape: (N, 1, H, W) or None.

    Raises:
        DataError: a missing or empty folder, or (under on_bad_file="error") any bad file, naming each.

        train = load_split("data/kvasir", "train", image_size=256)
        test = load_split("data/kvasir", "test", image_size=256)  # test.masks: (N, 1, 256, 256)
    """
    _check_arguments(split, channels=channels, on_bad_file=on_bad_file, image_size=image_size)
    lay = get_layout(layout)
    size = int(image_size) if image_size is not None else lay.default_image_size
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found" if not root.exists() else f"{root}: not a folder")
    listing = lay.list_split(root, split)
    fatal = [p for p in listing.problems if is_fatal(p, on_bad_file)]
    raise_errors(fatal, hint=_hint(root, fatal, on_bad_file))

    cache_file = key = None
    settings = {"size": size, "channels": channels, "allow_upsample": allow_upsample, "on_bad_file": on_bad_file}
    if cache_dir is not None:
        key = cache_key(root, listing, lay, settings)
        cache_file = Path(cache_dir) / f"{split}-{key[:32]}.pt"
        data = _read_cache(cache_file, key)
        if data is not None:
            emit_warnings([Problem(**p) for p in data["warnings"]])
            return _to_imageset(data)

    results = decode_listing(listing, size=size, channels=channels, allow_upsample=allow_upsample,
                             num_workers=num_workers, progress=progress)
    problems = split_problems(listing, results, root, size=size, channels=channels)
    fatal = [p for p in problems if is_fatal(p, on_bad_file)]
    raise_errors(fatal, hint=_hint(root, fatal, on_bad_file))
    ok = [r for r in results if r.ok]
    if not ok:
        raise DataError(f"{root}: no usable image in the {split} split "
                        f"({len(problems)} problems; `msacl check-data {root}` lists them)")
    emit_warnings(problems)

    raw, masks = _stack(ok, channels=channels, with_masks=listing.masks_expected)
    data = {
        "key": key, "images": raw, "labels": torch.tensor([r.sample.label for r in ok], dtype=torch.long),
        "masks": masks, "paths": [str(r.sample.path) for r in ok],
        "skipped": [(p.path, p.message) for p in problems if p.severity == "error" and p.skippable],
        "warnings": [p.to_dict() for p in problems if p.severity == "warning"],
    }
    if cache_file is not None:
        from msacl.runs import atomic_torch_save

        atomic_torch_save(data, cache_file)
    return _to_imageset(data)


def write_skipped(run_dir: str | os.PathLike[str], *sets: ImageSet, name: str = "skipped_files.txt") -> int:
    """Write the files left out under ``on_bad_file="skip"`` to ``run_dir/skipped_files.txt``.

    One ``path<TAB>reason`` line per file; the file is written only when something was skipped.

    Returns:
        How many files were skipped (for the CLI to print).
    """
    from msacl.runs import atomic_write_text

    rows = list(dict.fromkeys((p, r) for s in sets for p, r in s.skipped))
    if rows:
        atomic_write_text(Path(run_dir) / name, "".join(f"{p}\t{r}\n" for p, r in rows))
    return len(rows)
