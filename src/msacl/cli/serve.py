"""``msacl serve``: a fitted run as an HTTP service on this machine (see ``msacl.serve``)."""

from __future__ import annotations

import argparse

from msacl.cli.common import add_fpr, info

_EXAMPLES = """\
examples:
  msacl serve --run runs/padim                      # http://127.0.0.1:8000/ : drop images, see heat maps
  msacl serve --run runs/padim --port 9000 --fpr 0.01
  curl -F file=@scan.dcm http://127.0.0.1:8000/predict   # JSON: score, decision, threshold, heatmap_png
  curl http://127.0.0.1:8000/health                      # 503 while loading, then 200

Listens on 127.0.0.1 (this machine only) unless --host says otherwise. Needs the serve extra:
pip install 'msacl[serve]'.
"""


def examples(verb: str) -> str:
    return _EXAMPLES


def add_arguments(verb: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN", help="run directory written by `msacl fit`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: only this machine can connect)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_fpr(p)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--max-upload-mb", type=float, default=50.0, metavar="MB",
                   help="largest upload accepted; larger ones get 413 (default 50)")
    p.add_argument("--convert-channels", action="store_true",
                   help="score grey images with a run fitted on colour images (or the reverse) by converting them; "
                        "default: refuse them with 422")
    p.add_argument("--quiet", action="store_true", help="no access log")


def run(args: argparse.Namespace) -> int:
    from msacl.errors import MsaclError
    from msacl.inference import open_run
    from msacl.serve import create_app

    open_run(args.run)  # a wrong path fails here, in one line, not in the server's log
    if not 0 < args.port < 65536:
        raise MsaclError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        import uvicorn
    except ImportError:
        raise MsaclError("msacl serve needs FastAPI and uvicorn: pip install 'msacl[serve]'") from None
    app = create_app(args.run, fpr=args.fpr, device=args.device, convert_channels=args.convert_channels,
                     max_bytes=int(args.max_upload_mb * 1024 * 1024))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        info(f"warning: listening on {args.host}: other machines can send images to this service (no login)")
    info(f"serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0
