"""``msacl serve``: a fitted run as an HTTP service on this machine (see ``msacl.serve``)."""

from __future__ import annotations

import argparse
import ipaddress
import os

from msacl.cli.common import add_device, add_fpr, add_input_limits, info, input_limits, positive_int

KEY_ENV = "MSACL_API_KEY"

_EXAMPLES = """\
examples:
  msacl serve --run runs/padim                      # http://127.0.0.1:8000/ : drop images, see heat maps
  msacl serve --run runs/padim --port 9000 --fpr 0.01
  curl -F file=@scan.dcm http://127.0.0.1:8000/predict   # JSON: score, decision, threshold, heatmap_png
  curl http://127.0.0.1:8000/health                      # 503 while loading, then 200
  export MSACL_API_KEY=$(openssl rand -hex 16); msacl serve --run runs/padim --host 0.0.0.0
  curl -H "Authorization: Bearer $MSACL_API_KEY" -F file=@scan.dcm http://HOST:8000/predict

Listens on 127.0.0.1 (this machine only) unless --host says otherwise; beyond it, set an API key.
Each request is bounded: --max-upload-mb, --max-pixels (read from the image's header), --heatmap-side,
--timeout. Needs the serve extra: pip install 'msacl[serve]'.
"""


def examples(verb: str) -> str:
    return _EXAMPLES


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="run directory written by `msacl fit`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: only this machine can connect)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_fpr(p)
    add_device(p)
    p.add_argument("--max-upload-mb", type=float, default=50.0, metavar="MB",
                   help="largest upload accepted; larger ones get 413 (default 50)")
    add_input_limits(p)
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds one request may take once uploaded, queueing included; then 503 (default 30)")
    p.add_argument("--max-batch", type=positive_int, default=16, metavar="N",
                   help="most images of concurrent requests scored in one forward pass (default 16; 1: one at a "
                        "time)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${KEY_ENV}; "
                        f"the variable keeps the key out of the process list)")
    p.add_argument("--convert-channels", action="store_true",
                   help="score grey images with a run fitted on colour images (or the reverse) by converting them; "
                        "default: refuse them with 422")
    p.add_argument("--quiet", action="store_true", help="no access log")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_warning(host: str, port: int, key: str | None) -> str | None:
    """What binding to ``host`` exposes, and to whom, or None on loopback."""
    if is_loopback(host):
        return None
    who = "any machine that can reach this one" if host in ("0.0.0.0", "::") else f"any machine that can reach {host}"
    if key is None:
        return (f"warning: listening on {host}:{port} without an API key: {who} on port {port} can send images "
                f"and read the scores, decisions and the run's thresholds; set {KEY_ENV} (or --api-key) to require "
                f"a key, or keep the default --host 127.0.0.1")
    return (f"note: listening on {host}:{port}; {who} can connect, and requests without the API key get 401. "
            f"HTTP is not encrypted: the key and the images cross the network in clear unless a TLS proxy "
            f"stands in front")


def run(args: argparse.Namespace) -> int:
    from msacl.errors import MsaclError
    from msacl.runs.fitted import FitRun
    from msacl.serve import create_app

    FitRun.open(args.run)  # a wrong path fails here, in one line, not in the server's log
    if not 0 < args.port < 65536:
        raise MsaclError(f"--port must be between 1 and 65535, got {args.port}")
    if not args.timeout > 0:
        raise MsaclError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    key = args.api_key if args.api_key is not None else os.environ.get(KEY_ENV)
    if key is not None and not key.strip():
        raise MsaclError(f"the API key is empty; give a non-empty --api-key (or {KEY_ENV}), or none")
    if key is not None and len(key) < 16:
        info(f"warning: the API key has {len(key)} characters; 16 or more random ones (openssl rand -hex 16) "
             f"resist guessing")
    try:
        import uvicorn
    except ImportError:
        raise MsaclError("msacl serve needs FastAPI and uvicorn: pip install 'msacl[serve]'") from None
    from msacl.detectors.pipeline import resolve_device

    device = str(resolve_device(args.device))
    app = create_app(args.run, fpr=args.fpr, device=device, convert_channels=args.convert_channels,
                     max_bytes=int(args.max_upload_mb * 1024 * 1024), limits=input_limits(args),
                     timeout_s=args.timeout, api_key=key, max_batch=args.max_batch)
    warning = exposure_warning(args.host, args.port, key)
    if warning:
        info(warning)
    info(f"serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)"
         + ("; API key required" if key is not None else ""))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0
