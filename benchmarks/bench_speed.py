"""Pre-training step speed against an earlier commit, each speed lever on its own, side by side in one run.

MSACL from ImageNet EfficientNet-Lite0 at 64 px, batch 32, on the Kvasir training patches: the `cpu` profile's
pre-training step. Each variant runs in a fresh process (``PYTHONPATH`` at that variant's source), and the
variants take turns, ``--rounds`` times, so that a slow phase of the machine falls on all of them; the figure is
the median of the rounds. A step's time comes from the engine's own log: the time between the end of the warm-up
steps and the last step, over the steps between, so set-up, the class-centre pass and torch.compile's compilation
(reported apart) are left out.

    python benchmarks/bench_speed.py                          # against b7b4be2, 2 rounds, 3 + 10 steps
    python benchmarks/bench_speed.py --base b7b4be2 --rounds 3 --variants base cl+log10 cl+log10+compile

Variants: ``base`` (the commit ``--base``, as it was), and the current source with ``plain`` (channels-last off,
a log line and a synchronisation every step: the engine as it was), ``cl`` (channels-last), ``cl+log10`` (and
the loss terms logged every 10 steps: the default) and ``cl+log10+compile`` (and torch.compile).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA_ROOT = Path(os.environ.get("MSACL_DATA_ROOT", REPO.parent / "shared" / "data"))

# settings of the current source per variant (PretrainConfig fields); None: the --base commit
VARIANTS: dict[str, dict | None] = {
    "base": None,
    "plain": {"channels_last": False, "log_every": 1},
    "cl": {"channels_last": True, "log_every": 1},
    "cl+log10": {"channels_last": True, "log_every": 10},
    "cl+log10+compile": {"channels_last": True, "log_every": 10, "compile": True},
}

CHILD = r"""
import json, sys, tempfile, time, torch
from pathlib import Path
settings, data, size, batch, warmup, steps, threads, device, precision = json.loads(sys.argv[1])
torch.set_num_threads(threads)
from msacl.data import load_split
from msacl.pretrain import PretrainConfig, make_fabric, pretrain
train = load_split(data, "train", image_size=size)
n = batch * (warmup + steps)
train = train.subset(torch.arange(n) % len(train))
cfg = PretrainConfig(method="msacl", epochs=1, batch_size=batch, checkpoint_every=10**6, tsne=False)
cfg.model.backbone, cfg.model.init = "tf_efficientnet_lite0", "imagenet"
for k, v in (settings or {}).items():
    setattr(cfg, k, v)
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    pretrain(cfg, train, d, fabric=make_fabric(device, 1, 1, precision), progress=False)
    wall = time.perf_counter() - t0
    rows = [json.loads(s) for s in (Path(d) / "log.jsonl").read_text().splitlines()]
t = {r["global_step"]: r["time_s"] for r in rows}
first = [r for r in rows if r["global_step"] == 1][0]
print(json.dumps({"step_s": (t[warmup + steps] - t[warmup]) / steps, "first_step_s": t[1], "wall_s": wall,
                  "loss1": first["loss"], "threads": torch.get_num_threads()}))
"""


def source_of(commit: str, into: Path) -> Path:
    """The ``src`` folder of ``commit``, unpacked under ``into`` (``git archive``, no work tree touched)."""
    tar = into / "src.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "src"


def run_variant(src: Path, settings: dict | None, args: argparse.Namespace) -> dict:
    payload = json.dumps([settings, str(DATA_ROOT / "kvasir_seg_patch128"), args.size, args.batch_size,
                          args.warmup, args.steps, args.threads, args.device, args.precision])
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", CHILD, payload], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="b7b4be2", help="the commit to compare with (default: b7b4be2)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (with compile: more, see the docstring)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--precision", default="32-true", help="32-true (default), bf16-mixed")
    a = p.parse_args(argv)
    times: dict[str, list[dict]] = {v: [] for v in a.variants}
    with tempfile.TemporaryDirectory() as d:
        base_src = source_of(a.base, Path(d)) if "base" in a.variants else None
        for r in range(a.rounds):
            for v in a.variants:
                src = base_src if VARIANTS[v] is None else REPO / "src"
                t0 = time.perf_counter()
                res = run_variant(src, VARIANTS[v], a)
                times[v].append(res)
                print(f"round {r + 1} {v:<18} {res['step_s']:.3f} s/step (process {time.perf_counter() - t0:.0f} s, "
                      f"first step {res['first_step_s']:.1f} s, loss at step 1 {res['loss1']:.5f})",
                      file=sys.stderr, flush=True)
    print(f"MSACL pre-training, Lite0 from ImageNet, {a.size} px, batch {a.batch_size}, {a.device} "
          f"({a.precision}), {a.threads} threads, "
          f"{a.steps} timed steps after {a.warmup}, median of {a.rounds} interleaved rounds")
    ref = statistics.median(x["step_s"] for x in times[a.variants[0]])
    print(f"| variant | s/step | steps/s | vs {a.variants[0]} | first step s (incl. compile) | loss at step 1 |")
    print("|---|---|---|---|---|---|")
    for v in a.variants:
        s = statistics.median(x["step_s"] for x in times[v])
        print(f"| {v if v != 'base' else f'base ({a.base})'} | {s:.3f} | {1 / s:.3f} | {ref / s:.2f}x | "
              f"{statistics.median(x['first_step_s'] for x in times[v]):.1f} | {times[v][0]['loss1']:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
