"""PaDiM benchmark: wall time and accuracy against anomalib, and peak memory of a 5,000-image fit.

1. Side by side with anomalib's PaDiM on the same folder data set, image size and backbone state: our
   random-init ResNet-18 state dict and our channel subset are saved to temporary files and handed to
   ``peer_anomalib_padim.py``, which runs in anomalib's own virtual environment (``--peer-python``).
   "fit" is loading the training images plus fitting; "test" is loading the test images, predicting and
   computing image and pixel AUROC (anomalib's test also computes F1 scores and draws its visualisations).
   Wall and CPU seconds (user + system, all threads) are both printed: on a shared machine the CPU time is
   the steadier figure.
   Target: our fit + test time <= 1/5 of anomalib's.
2. Memory: a PaDiM fit at 256 px over 5,000 images streamed as synthetic batches (never all in memory),
   run in a fresh process so its peak RSS is its own. Target: peak RSS < 3 GB.

    python benchmarks/bench_padim.py                      # kvasir_seg_patch128 at 128 px, then memory
    python benchmarks/bench_padim.py --data DIR --size 128 --peer-python ~/peer-venv/bin/python
    python benchmarks/bench_padim.py --only memory --memory-images 500
    python benchmarks/bench_padim.py --only compare --repeat 1    # one run of each instead of three

Set up the peer environment (once; it is never the project's own):
    python3 -m venv ~/peer-venv && ~/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data")) / "kvasir_seg_patch128"
SETUP = ("python3 -m venv ~/peer-venv && ~/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 "
         "anomalib==2.7.0")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def ours(data: Path, size: int, tmp: Path, device: str = "cpu") -> dict:
    from msacl.data import load_split
    from msacl.detectors import Padim, batches
    from msacl.metrics import image_auroc, pixel_auroc
    from msacl.runs import make_generator

    torch.manual_seed(0)  # the encoder's random init: the same state goes to the peer
    det = Padim(image_size=size)
    torch.save(det.encoder.backbone.state_dict(), tmp / "backbone.pt")
    det.to(device)

    t, c = time.perf_counter(), time.process_time()
    train = load_split(data, "train", image_size=size)
    det.fit(batches(train.images, 32), generator=make_generator(0))
    fit_s, fit_cpu = time.perf_counter() - t, time.process_time() - c
    torch.save(det.channel_index.clone(), tmp / "channel_index.pt")

    t, c = time.perf_counter(), time.process_time()
    test = load_split(data, "test", image_size=size)
    scores, maps = zip(*(det.predict(x) for x in batches(test.images, 32)), strict=True)
    scores, maps = torch.cat(scores).cpu(), torch.cat(maps).cpu()
    out = {"fit_s": fit_s, "fit_cpu_s": fit_cpu, "image_AUROC": image_auroc(scores, test.labels)}
    if test.masks is not None:
        out["pixel_AUROC"] = pixel_auroc(maps, test.masks)
    out["test_s"], out["test_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    out["n_train"], out["n_test"] = len(train), len(test)
    return out


def peer(python: str, data: Path, size: int, tmp: Path, masks: bool, timeout: int,
         device: str = "cpu") -> dict | None:
    if not Path(python).expanduser().is_file():
        print(f"peer python {python} not found; anomalib is not run. Set it up with:\n  {SETUP}")
        return None
    cmd = [str(Path(python).expanduser()), str(HERE / "peer_anomalib_padim.py"), str(data), str(size),
           "--state-dict", str(tmp / "backbone.pt"), "--channel-index", str(tmp / "channel_index.pt")]
    if masks:
        cmd.append("--masks")
    cmd += ["--accelerator", "gpu" if device.startswith("cuda") else "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        print(f"anomalib run failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        return None
    return json.loads(lines[-1])


def compare(args: argparse.Namespace) -> None:
    data = Path(args.data)
    if not (data / "train" / "normal").is_dir():
        raise SystemExit(f"{data}: not a data folder with train/normal (pass --data)")
    print(f"data {data.name}, {args.size} px, random-init ResNet-18 layers 1-3, d=100, "
          f"{torch.get_num_threads()} torch threads")
    runs: list[tuple[dict, dict | None]] = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        # Alternate the two, so a slow spell of a shared machine falls on both rather than on one.
        for _ in range(args.repeat):
            a = ours(data, args.size, tmp, args.device)
            b = peer(args.peer_python, data, args.size, tmp, masks="pixel_AUROC" in a, timeout=args.peer_timeout,
                     device=args.device)
            runs.append((a, b))
            if b is None:
                break
    print(f"\n{'':16}{'fit s':>8}{'test s':>8}{'total s':>9}{'CPU s':>8}{'image AUROC':>13}{'pixel AUROC':>13}")
    for a, b in runs:
        for name, r in [("msacl", a)] + ([("anomalib 2.7.0", b)] if b is not None else []):
            f, t, c = r["fit_s"], r["test_s"], r["fit_cpu_s"] + r["test_cpu_s"]
            ia, pa = (f"{r[k]:13.4f}" if r.get(k) is not None else f"{'-':>13}"
                      for k in ("image_AUROC", "pixel_AUROC"))
            print(f"{name:16}{f:8.1f}{t:8.1f}{f + t:9.1f}{c:8.1f}{ia}{pa}")
    pairs = [(a, b) for a, b in runs if b is not None]
    if pairs:
        wall = [(b["fit_s"] + b["test_s"]) / (a["fit_s"] + a["test_s"]) for a, b in pairs]
        cpu = [(b["fit_cpu_s"] + b["test_cpu_s"]) / (a["fit_cpu_s"] + a["test_cpu_s"]) for a, b in pairs]
        ratio = statistics.median(wall)
        verdict = "meets" if ratio >= 5 else "MISSES"
        print(f"\nanomalib / msacl, median of {len(pairs)}: wall time {ratio:.1f}x ({verdict} the >= 5x target; "
              f"each run {', '.join(f'{w:.1f}' for w in wall)}), CPU time {statistics.median(cpu):.1f}x")
    print(f"({runs[0][0]['n_train']} train / {runs[0][0]['n_test']} test images)")


def memory(args: argparse.Namespace) -> None:
    from msacl.detectors import Padim
    from msacl.runs import make_generator

    size, n, bs = args.memory_size, args.memory_images, 32
    det = Padim(image_size=size)
    base = peak_rss_mb()
    g = make_generator(0)

    def stream():
        for i in range(0, n, bs):
            # Smooth random "tissue": low-resolution noise upsampled, so features are not pure noise.
            low = torch.rand(min(bs, n - i), 3, size // 16, size // 16, generator=g)
            yield torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)

    t = time.perf_counter()
    det.fit(stream(), generator=make_generator(0), progress=not args.quiet)
    dt = time.perf_counter() - t
    peak = peak_rss_mb()
    state_mb = sum(b.numel() * b.element_size() for b in det.buffers()) / 2**20
    print(f"PaDiM fit, {n} images of {size} px streamed in batches of {bs}: {dt:.1f} s ({n / dt:.1f} img/s)")
    print(f"peak RSS {peak:.0f} MB (after imports and model construction: {base:.0f} MB; "
          f"fitted statistics {state_mb:.0f} MB); target < 3072 MB: {'met' if peak < 3072 else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="folder data set (default: kvasir_seg_patch128)")
    ap.add_argument("--size", type=int, default=128, help="image size of the comparison (default 128)")
    ap.add_argument("--peer-python", default="~/peer-venv/bin/python", help="python of the anomalib venv")
    ap.add_argument("--peer-timeout", type=int, default=3600)
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of both; the median ratio is reported")
    ap.add_argument("--memory-images", type=int, default=5000)
    ap.add_argument("--memory-size", type=int, default=256)
    ap.add_argument("--only", choices=("compare", "memory"), default=None)
    ap.add_argument("--device", default="cpu", help="device of both detectors in the comparison: cpu (default) "
                    "or cuda (the memory test stays on the CPU: it measures the process's peak RSS)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.only in (None, "compare"):
        compare(args)
    if args.only is None:
        # A fresh process, so the peak RSS measured is that of the streaming fit alone.
        print()
        cmd = [sys.executable, __file__, "--only", "memory", "--memory-images", str(args.memory_images),
               "--memory-size", str(args.memory_size)] + (["--quiet"] if args.quiet else [])
        subprocess.run(cmd, check=True)
    elif args.only == "memory":
        memory(args)


if __name__ == "__main__":
    main()
