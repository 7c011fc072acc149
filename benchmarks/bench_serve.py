"""`msacl serve` benchmark: throughput under load, large images, and memory over a fixed number of requests.

The service is started as its own process (`msacl serve`, 127.0.0.1 only, a free port) on a fitted run; each
client is a thread with a keep-alive HTTP connection that posts the run's own test images (PNG bytes held in
memory) to /predict in turn until its share of --requests is done or --seconds have passed. Reported per
level (1, 4 and 16 clients): completed requests, requests/s, median and 95th-percentile latency, non-200
answers and the detector's mean batch. Side-by-side references, measured in the same run: the service with
--max-batch 1 (one image per forward pass, the lock of earlier versions), its levels interleaved with the
batched service's, and the same work in-process with no HTTP, one image at a time.

--large posts a 13,000 x 13,000 PNG (refused from its header), a 2,000 x 2,000 one and a 7,000 x 7,000 one
(just under the pixel limit) while a second client polls /health every 0.1 s, and reports each answer's
time and the slowest /health. --soak N posts N images
(4 clients) and reads the service's resident memory (VmRSS) after the first 100 and after all N.

    python benchmarks/bench_serve.py                         # fits PaDiM on kvasir_seg_patch128 (128 px) first
    python benchmarks/bench_serve.py --run runs/padim --seconds 20 --requests 400
    python benchmarks/bench_serve.py --run runs/padim --no-heatmap      # JSON without the heat-map PNG
    python benchmarks/bench_serve.py --run runs/padim --large --soak 1000 --skip-levels

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


class Service:
    """``msacl serve`` on a free loopback port, as a child process, for the length of a ``with`` block."""

    def __init__(self, run: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(msacl_cmd("serve", "--run", str(run), "--port", str(self.port), "--quiet",
                                               *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Service:
        try:
            self.ready_s = wait_ready(self.url, self.proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def rss_mb(self) -> float | None:
        """The service's resident memory (Linux /proc), or None elsewhere."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def batching(self) -> dict:
        import httpx

        h = httpx.get(self.url + "/health", timeout=10).json()
        return {k: h.get(k) for k in ("max_batch", "batches", "images_scored", "mean_batch")}


def print_level(tag: str, r: dict) -> None:
    print(f"{tag:<10}{r['clients']:>3} client(s): {r['requests']:>4} requests in {r['seconds']:>6.2f} s  "
          f"{r['requests_per_s']:>7.2f} req/s  p50 {r['p50_ms']:>7.1f} ms  p95 {r['p95_ms']:>7.1f} ms  "
          f"non-200: {r['non_200']}  mean batch {r.get('mean_batch')}", flush=True)


def levels(run: Path, files: list[tuple[str, bytes]], args: argparse.Namespace, heatmap: bool) -> list[dict]:
    """Each level against the batched service and against --max-batch 1, interleaved, in both orders."""
    rows = []
    with Service(run, "--max-batch", str(args.max_batch)) as batched, Service(run, "--max-batch", "1") as single:
        print(f"services ready after {batched.ready_s:.1f} / {single.ready_s:.1f} s; {len(files)} images; "
              f"heat map: {heatmap}", flush=True)
        for svc in (batched, single):
            load_level(svc.url, files, 1, 3, 60, heatmap)  # warm-up: cached helpers, first allocations
        for rnd in range(args.rounds):
            for clients in LEVELS:
                pair = [(f"batch {args.max_batch}", batched), ("batch 1", single)]
                for tag, svc in pair if rnd % 2 == 0 else pair[::-1]:
                    before = svc.batching()
                    r = load_level(svc.url, files, clients, args.requests, args.seconds, heatmap)
                    after = svc.batching()
                    n = after["batches"] - before["batches"]
                    r["mean_batch"] = round((after["images_scored"] - before["images_scored"]) / n, 2) if n else None
                    r.update(service=tag, round=rnd)
                    rows.append(r)
                    print_level(tag, r)
    return rows


def big_png(side: int) -> bytes:
    """A real side x side RGB PNG (a gradient in seven bands), streamed through zlib row by row: 13,000 px
    make about half a megabyte, like the upload of the issue (169 megapixels, under Pillow's bomb limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    ramp = bytes((x * 255 // max(1, side - 1)) for x in range(side))
    bands = [b"\x00" + bytes(v for px in zip(ramp, ramp, bytes([30 * k]) * side, strict=True) for v in px)
             for k in range(7)]  # seven horizontal bands, each row a red-green ramp over a band's blue
    same = b"\x02" + bytes(3 * side)  # PNG filter "Up": this row equals the one above
    parts = [z.compress(bands[y * 7 // side] if y == 0 or y * 7 // side != (y - 1) * 7 // side else same)
             for y in range(side)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def timed_with_health(url: str, name: str, data: bytes) -> dict:
    """One post of ``data`` while another client polls /health every 0.1 s: its status, time, slowest /health."""
    import httpx

    health: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(3000):  # at most 5 minutes
                if done.is_set():
                    return
                t0 = time.perf_counter()
                c.get("/health")
                health.append(time.perf_counter() - t0)
                time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    r = httpx.post(url + "/predict", files={"file": (name, data, "image/png")}, timeout=300)
    took = time.perf_counter() - t0
    done.set()
    poller.join()
    return {"file": name, "bytes": len(data), "status": r.status_code, "seconds": round(took, 2),
            "health_max_ms": round(1000 * max(health), 1) if health else None, "health_polls": len(health),
            "detail": r.json().get("detail") if r.status_code != 200 else None}


def large(run: Path, files: list[tuple[str, bytes]]) -> list[dict]:
    """The 13,000 x 13,000 PNG (over the pixel limit), a 2,000 x 2,000 one and a 7,000 x 7,000 one (49 megapixels,
    the largest the default limit lets through), each with /health polled."""
    import io

    from PIL import Image

    name, data = files[0]
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((2000, 2000), Image.Resampling.BILINEAR).save(buf, "PNG")
    rows = []
    with Service(run) as svc:
        load_level(svc.url, files, 1, 3, 60, True)
        for label, blob in (("13000x13000.png", big_png(13_000)), ("2000x2000.png", buf.getvalue()),
                            ("7000x7000.png", big_png(7000))):
            r = timed_with_health(svc.url, label, blob)
            rows.append(r)
            print(f"{label}: {r['bytes'] / 1e3:.0f} KB -> {r['status']} in {r['seconds']:.2f} s; slowest /health "
                  f"{r['health_max_ms']} ms over {r['health_polls']} polls" + (f"; {r['detail']}" if r["detail"]
                                                                              else ""), flush=True)
    return rows


def soak(run: Path, files: list[tuple[str, bytes]], n: int, heatmap: bool) -> dict:
    """n posts from 4 clients; the service's resident memory after the first 100 and after all n."""
    with Service(run) as svc:
        first = load_level(svc.url, files, 4, 100, 600, heatmap)
        rss_100 = svc.rss_mb()
        rest = load_level(svc.url, files, 4, n - 100, 3600, heatmap)
        rss_n = svc.rss_mb()
    r = {"requests": first["requests"] + rest["requests"], "non_200": first["non_200"] + rest["non_200"],
         "rss_mb_after_100": None if rss_100 is None else round(rss_100, 1),
         "rss_mb_after_all": None if rss_n is None else round(rss_n, 1),
         "growth": None if not (rss_100 and rss_n) else round(rss_n / rss_100 - 1, 4)}
    print(f"soak: {r['requests']} requests ({r['non_200']} non-200); resident memory {r['rss_mb_after_100']} MB "
          f"after 100, {r['rss_mb_after_all']} MB after all ({r['growth']:+.1%})", flush=True)
    return r





def in_process(run: Path, files: list[tuple[str, bytes]], n: int, heatmap: bool) -> dict:
    """The reference: decode, score and draw one image at a time in this process, no HTTP."""
    from msacl.deploy.inference import FittedRun

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
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the levels, orders alternating (default 2)")
    ap.add_argument("--max-batch", type=int, default=16, help="the batched service's --max-batch (default 16)")
    ap.add_argument("--images", type=int, default=32, help="distinct test images posted in turn (default 32)")
    ap.add_argument("--no-heatmap", action="store_true", help="ask for JSON without the heat-map PNG")
    ap.add_argument("--skip-levels", action="store_true", help="no throughput levels (with --large / --soak)")
    ap.add_argument("--large", action="store_true", help="time a 13,000 and a 2,000 px image, /health polled")
    ap.add_argument("--soak", type=int, default=0, metavar="N", help="post N images and compare memory (N > 100)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if not 1 <= args.requests <= 100_000 or not 0 < args.seconds <= 600 or not 1 <= args.rounds <= 10:
        raise SystemExit("--requests must be in [1, 100000], --seconds in (0, 600] and --rounds in [1, 10]")
    if args.soak and not 100 < args.soak <= 100_000:
        raise SystemExit("--soak must be in (100, 100000]")
    heatmap = not args.no_heatmap
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or fit_default(Path(tmp))
        from msacl.runs.fitted import FitRun

        root = Path(FitRun.open(run).config.data.root or ".")
        pool = sorted((root / "test").rglob("*.png"))[: args.images] or sorted(root.rglob("*.png"))[: args.images]
        files = [(p.name, p.read_bytes()) for p in pool]
        out: dict = {"run": str(run), "heatmap": heatmap, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                     "cpus": os.cpu_count(), "load_average": os.getloadavg()}
        print(f"{len(files)} images of {root}; load average {out['load_average'][0]:.1f}", flush=True)
        if not args.skip_levels:
            out["levels"] = levels(run, files, args, heatmap)
            ref = in_process(run, files, min(args.requests, 60), heatmap)
            out["in_process"] = ref
            print(f"reference, in-process without HTTP, one at a time: {ref['images_per_s']:.2f} images/s  "
                  f"p50 {ref['p50_ms']:.1f} ms  p95 {ref['p95_ms']:.1f} ms", flush=True)
        if args.large:
            out["large"] = large(run, files)
        if args.soak:
            out["soak"] = soak(run, files, args.soak, heatmap)
        out["load_average_end"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
