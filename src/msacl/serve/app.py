"""The HTTP service of ``msacl serve``: a fitted run behind ``POST /predict``, ``GET /health`` and ``GET /``.

The run is loaded once, in a background thread started with the application, so ``/health`` answers at
once: 503 while loading, 200 with what the decisions rest on when ready (or 500 naming why loading failed).
``POST /predict`` takes the image as the multipart field ``file`` (PNG, JPEG, BMP, TIFF, WebP or DICOM) and
answers the score, the normal / abnormal decision at the run's calibrated threshold, the flagged share and
the heat map (a PNG at the image's own size, base64). A bad upload gets a 4xx with the reason in
``detail`` and the service keeps serving: 413 for a file over the size limit (refused from its
Content-Length before the body is read; without one, once the multipart parser has spooled it), 415 for
content that is no supported image, 422 for an unreadable image or one of another colour than the
training images (unless started with ``convert_channels``), 400 for an empty upload.

The detector runs one request at a time (a lock: torch already uses the cores, and the first call builds
cached helpers); decoding and drawing the heat map run concurrently in the server's thread pool.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from msacl.errors import DataError, MsaclError

try:  # module level: FastAPI reads the endpoints' annotations from this module's globals
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError:  # the serve extra is optional; create_app says how to install it
    FastAPI = None  # type: ignore[assignment,misc]

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
# Leading bytes of the formats decode() reads, for uploads whose name says nothing (e.g. "blob").
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"),
          (b"BM", ".bmp"), (b"RIFF", ".webp"))


def sniff_suffix(name: str, head: bytes) -> str | None:
    """The file suffix that ``decode`` should read an upload as, or None when it is no supported format."""
    from msacl.data.readers import DICOM_EXTENSIONS

    if len(head) >= 132 and head[128:132] == b"DICM":
        return ".dcm"
    for magic, suffix in _MAGIC:
        if head.startswith(magic):
            return suffix
    ext = Path(name or "").suffix.lower()
    # Content that matches no signature: trust a DICOM name (files without the preamble exist), nothing else.
    return ext if ext in DICOM_EXTENSIONS else None


class Service:
    """The loaded run and the counters the endpoints share.

    Args:
        run: run directory written by ``msacl fit``.
        fpr: target false-positive rate of the decisions.
        device: torch device of the detector.
        convert_channels: convert images of another colour than the training images instead of refusing them.
        max_bytes: largest upload accepted.
    """

    def __init__(self, run: str | Path, *, fpr: float, device: str, convert_channels: bool,
                 max_bytes: int = MAX_UPLOAD_BYTES):
        self.run, self.fpr, self.device, self.convert_channels = str(run), fpr, device, convert_channels
        self.max_bytes = max_bytes
        self.model: Any = None
        self.error: str | None = None
        self.loads = 0
        self.requests = 0
        self.ready = threading.Event()
        self.lock = threading.Lock()

    def load(self) -> None:
        """Load the run (once; a second call does nothing)."""
        if self.ready.is_set():
            return
        try:
            from msacl.inference import NO_CALIBRATION, FittedRun

            t0 = time.perf_counter()
            self.model = FittedRun(self.run, fpr=self.fpr, device=self.device, convert_channels=self.convert_channels)
            self.loads += 1
            self.load_seconds = round(time.perf_counter() - t0, 3)
            decision = self.model.decision
            warnings = [NO_CALIBRATION.format(run=self.run)] if decision is None else decision["warnings"]
            if warnings:
                print("\n".join(f"msacl serve: warning: {w}" for w in warnings), file=sys.stderr, flush=True)
        except MsaclError as e:
            self.error = str(e)
            print(f"msacl serve: error: {e}", file=sys.stderr, flush=True)
        finally:
            self.ready.set()

    def predict(self, data: bytes, name: str, heatmap: bool) -> dict[str, Any]:
        """Score one uploaded file. Raises ``UploadError`` with the HTTP status and the reason."""
        if not data:
            raise UploadError(400, f"{name}: empty upload")
        suffix = sniff_suffix(name, data[:132])
        if suffix is None:
            raise UploadError(415, f"{name}: not a supported image (PNG, JPEG, BMP, TIFF, WebP or DICOM)")
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="msacl-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                x, image, note = self.model.load(tmp, name=name)
            except DataError as e:
                raise UploadError(422, str(e).replace(" (--on-bad-file skip leaves such files out)", "")
                                  .replace("--convert-channels", "msacl serve --convert-channels")) from None
        finally:
            os.unlink(tmp)
        with self.lock:
            s, m = self.model.score(x.unsqueeze(0))
            self.requests += 1
        p = self.model.finish(name, float(s[0]), m[0], image, note)
        out = {"file": name, "score": p.score, "decision": p.decision, "threshold": p.threshold,
               "fpr": self.fpr, "pixel_threshold": p.pixel_threshold, "lesion_fraction": p.lesion_fraction,
               "width": int(image.shape[1]), "height": int(image.shape[0]), "note": note}
        if self.model.decision is not None:
            out["guarantee"] = self.model.decision["image"]["guarantee"]
        if heatmap:
            out["heatmap_png"] = base64.b64encode(self.model.heatmap_png(p)).decode("ascii")
        return out


class UploadError(Exception):
    """A refused upload: the HTTP status and the reason, naming the file."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _not_ready(svc: Service) -> JSONResponse | None:
    """The answer while the run is not loaded (503 loading, 500 failed to load), or None once it is."""
    if not svc.ready.is_set():
        return JSONResponse({"status": "loading", "detail": "the model is loading"}, status_code=503)
    if svc.error is not None:
        return JSONResponse({"status": "error", "detail": svc.error}, status_code=500)
    return None


def _oversized(svc: Service, request: Request) -> JSONResponse | None:
    """413 for a /predict request whose Content-Length is over the limit (before its body is read), else None."""
    size = request.headers.get("content-length", "")
    # the multipart envelope adds a few hundred bytes to the file; 64 KiB of slack never refuses a legal file
    if request.url.path == "/predict" and size.isdigit() and int(size) > svc.max_bytes + 65536:
        return JSONResponse({"detail": f"upload of {int(size)} bytes is larger than the {svc.max_bytes} byte "
                                       f"limit (msacl serve --max-upload-mb)"}, status_code=413)
    return None


def create_app(run: str | Path, *, fpr: float = 0.05, device: str = "cpu", convert_channels: bool = False,
               max_bytes: int = MAX_UPLOAD_BYTES, load_in_background: bool = True) -> Any:
    """The FastAPI application serving ``run`` (see the module docstring).

    Args:
        run: run directory written by ``msacl fit``.
        fpr: target false-positive rate of the decisions.
        device: torch device of the detector.
        convert_channels: convert images of another colour than the training images instead of refusing them.
        max_bytes: largest upload accepted (413 above).
        load_in_background: load the run in a thread at start-up (the server answers /health meanwhile);
            False loads it before the application starts answering.
    """
    if FastAPI is None:
        raise MsaclError("msacl serve needs FastAPI and uvicorn: pip install 'msacl[serve]'")
    from contextlib import asynccontextmanager

    from msacl.serve.page import PAGE

    svc = Service(run, fpr=fpr, device=device, convert_channels=convert_channels, max_bytes=max_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if load_in_background:
            threading.Thread(target=svc.load, name="msacl-load", daemon=True).start()
        else:
            svc.load()
        yield

    app = FastAPI(title="msacl", description="anomaly scores and decisions for medical images", lifespan=lifespan)
    app.state.service = svc

    @app.middleware("http")
    async def limit_size(request: Request, call_next: Any) -> Any:
        refused = _oversized(svc, request)
        return refused if refused is not None else await call_next(request)

    @app.get("/health")
    def health() -> Any:
        waiting = _not_ready(svc)
        if waiting is not None:
            return waiting
        return {"status": "ok", "loads": svc.loads, "requests": svc.requests, "load_seconds": svc.load_seconds,
                "max_upload_bytes": svc.max_bytes, **svc.model.summary()}

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile = File(...), heatmap: bool = Query(True)) -> Any:  # noqa: B008
        waiting = _not_ready(svc)
        if waiting is not None:
            return waiting
        name = Path(file.filename or "upload").name
        # Read at most one byte past the limit: a huge upload is refused without being held in memory.
        data = await file.read(svc.max_bytes + 1)
        if len(data) > svc.max_bytes:
            return JSONResponse({"detail": f"{name}: larger than the {svc.max_bytes} byte limit "
                                           f"(msacl serve --max-upload-mb)"}, status_code=413)
        from starlette.concurrency import run_in_threadpool

        try:
            return await run_in_threadpool(svc.predict, data, name, heatmap)
        except UploadError as e:
            return JSONResponse({"detail": e.detail}, status_code=e.status)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    return app
