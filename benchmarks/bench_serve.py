"""`msacl serve` benchmark: requests per second and latency with 1, 4 and 16 concurrent clients on loopback.

The service is started as its own process (`msacl serve`, 127.0.0.1 only, a free port) on a fitted run; each
client is a thread with a keep-alive HTTP connection that posts the run's own test images (PNG bytes held in
memory) to /predict in turn until its share of --requests is done or --seconds have passed. Reported per
level: completed requests, requests/s, median and 95th-percentile latency, and non-200 answers. Side-by-side
reference, measured in the same run: the same work in-process with no HTTP (msacl.inference.FittedRun: decode,
score, draw the heat map), one image at a time.

    python benchmarks/bench_serve.py                         # fits PaDiM on kvasir_seg_patch128 (128 px) first
    python benchmarks/bench_serve.py --run runs/padim --seconds 20 --requests 400
    python benchmarks/bench_serve.py --no-heatmap            # JSON without the heat-map PNG

Traffic goes to 127.0.0.1 only, and every loop is bounded by a count and a time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path(os.environ.get("MSACL_DATA_ROOT", HERE.parents[1] / "shared" / "data")) / "kvasir_seg_patch128"
LEVELS = (1, 4, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def msacl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "msacl.cli.main", *args]


def fit_default(tmp: Path) -> Path:
    data = DEFAULT_DATA if DEFAULT_DATA.is_dir() else None
    if data is None:
        from msacl.data.synthetic import write_synthetic

        data = write_synthetic(tmp / "data")
    run = tmp / "padim"
    print(f"fitting PaDiM on {data} -> {run}", flush=True)
    subprocess.run(msacl_cmd("fit", "--detector", "padim", "--data", str(data), "--out", str(run), "--quiet"),
                   check=True)
    return run


def wait_ready(url: str, proc: subprocess.Popen, limit_s: float = 300.0) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"the service was not ready within {limit_s:.0f} s")


def load_level(url: str, files: list[tuple[str, bytes]], clients: int, n_requests: int, seconds: float,
               heatmap: bool) -> dict:
    """``clients`` threads share ``n_requests`` posts, stopping early at ``seconds``."""
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = files[(i + k) % len(files)]
                t0 = time.perf_counter()
                r = c.post("/predict", files={"file": (name, data, "image/png")},
                           params={"heatmap": str(heatmap).lower()})
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"clients": clients, "requests": len(lat), "seconds": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 2) if wall else None,
            "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
            "p95_ms": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1) if lat else None,
            "non_200": sum(v for k, v in codes.items() if k != 200)}


def in_process(run: Path, files: list[tuple[str, bytes]], n: int, heatmap: bool) -> dict:
    """The reference: decode, score and draw one image at a time in this process, no HTTP."""
    from msacl.inference import FittedRun

    model = FittedRun(run)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for name, data in files:
            p = Path(d) / name
            p.write_bytes(data)
            paths.append(p)
        lat = []
        for i in range(n + 2):
            t0 = time.perf_counter()
            d = model.load_image(paths[i % len(paths)])
            s, m = model.score(d.x.unsqueeze(0))
            p = model.finish(str(paths[i % len(paths)]), float(s[0]), m[0], d)
            if heatmap:
                model.heatmap_png(p)
            if i >= 2:  # the first calls build cached helpers
                lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"images": len(lat), "images_per_s": round(len(lat) / sum(lat), 2),
            "p50_ms": round(1000 * statistics.median(lat), 1),
            "p95_ms": round(1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a fitted run (default: fit PaDiM first)")
    ap.add_argument("--requests", type=int, default=300, help="posts per concurrency level at most (default 300)")
    ap.add_argument("--seconds", type=float, default=30.0, help="time per level at most (default 30)")
    ap.add_argument("--images", type=int, default=32, help="distinct test images posted in turn (default 32)")
    ap.add_argument("--no-heatmap", action="store_true", help="ask for JSON without the heat-map PNG")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if not 1 <= args.requests <= 100_000 or not 0 < args.seconds <= 600:
        raise SystemExit("--requests must be in [1, 100000] and --seconds in (0, 600]")
    heatmap = not args.no_heatmap
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or fit_default(Path(tmp))
        from msacl.inference import open_run

        _, cfg = open_run(run)
        root = Path(cfg["data"]["root"])
        pool = sorted((root / "test").rglob("*.png"))[: args.images] or sorted(root.rglob("*.png"))[: args.images]
        files = [(p.name, p.read_bytes()) for p in pool]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(msacl_cmd("serve", "--run", str(run), "--port", str(port), "--quiet"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready_s = wait_ready(url, proc)
            print(f"service ready after {ready_s:.1f} s; {len(files)} images of {root}; heat map: {heatmap}",
                  flush=True)
            load_level(url, files, 1, 3, 60, heatmap)  # warm-up: cached helpers, first allocations
            rows = []
            for clients in LEVELS:
                r = load_level(url, files, clients, args.requests, args.seconds, heatmap)
                rows.append(r)
                print(f"{clients:>3} client(s): {r['requests']:>4} requests in {r['seconds']:>6.2f} s  "
                      f"{r['requests_per_s']:>7.2f} req/s  p50 {r['p50_ms']:>7.1f} ms  p95 {r['p95_ms']:>7.1f} ms  "
                      f"non-200: {r['non_200']}", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        ref = in_process(run, files, min(args.requests, 60), heatmap)
        print(f"reference, in-process without HTTP, one at a time: {ref['images_per_s']:.2f} images/s  "
              f"p50 {ref['p50_ms']:.1f} ms  p95 {ref['p95_ms']:.1f} ms", flush=True)
        out = {"run": str(run), "heatmap": heatmap, "levels": rows, "in_process": ref, "ready_s": round(ready_s, 1),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count()}
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
