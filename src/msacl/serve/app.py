"""The HTTP service of ``msacl serve``: a fitted run behind ``POST /predict``, ``GET /health`` and ``GET /``.

The run is loaded once, in a background thread started with the application, so ``/health`` answers at
once: 503 while loading, 200 with what the decisions rest on when ready (or 500 naming why loading failed).
``POST /predict`` takes the image as the multipart field ``file`` (PNG, JPEG, BMP, TIFF, WebP or DICOM) and
answers the score, the normal / abnormal decision at the run's calibrated threshold, the flagged share and
the heat map (a PNG, base64, at the image's own size or reduced to ``heatmap_side`` on its longest side).
A bad upload gets a 4xx with the reason in ``detail`` and the service keeps serving: 413 for a file over
the size limit (refused from its Content-Length before the body is read; without one, once the multipart
parser has spooled it) or an image over the pixel limit (refused from its header, before decoding), 415
for content that is no supported image, 422 for an unreadable image, one smaller than the detector can
score or one of another colour than the training images (unless started with ``convert_channels``), 400
for an empty upload; 503 when a request is not answered within ``timeout_s`` (see
:mod:`msacl.serve.service` for how each request's work is bounded).

With an API key (``api_key``), every route but ``/health`` and the page at ``/`` (which holds no data and
asks for the key) needs the header ``Authorization: Bearer KEY``, compared in constant time; other requests
get 401 before their body is read. ``/health`` without the key says only whether the service is up.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from pathlib import Path
from typing import Any

from msacl.deploy.inference import InputLimits
from msacl.errors import MsaclError
from msacl.serve.service import MAX_BATCH, MAX_UPLOAD_BYTES, TIMEOUT_S, Deadline, Service, UploadError

try:  # module level: FastAPI reads the endpoints' annotations from this module's globals
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError:  # the serve extra is optional; create_app says how to install it
    FastAPI = None  # type: ignore[assignment,misc]

OPEN_PATHS = frozenset({"/health", "/"})
KEY_HINT = "send the header 'Authorization: Bearer KEY' with the key the service was started with"


def key_matches(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries ``Bearer key``. The comparison takes the same time whatever
    the header holds (both sides hashed first, so not even the key's length shows)."""
    scheme, _, token = (header or "").strip().partition(" ")
    given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    wanted = hashlib.sha256(key.encode("utf-8")).digest()
    return hmac.compare_digest(given, wanted) and scheme.lower() == "bearer"


def _not_ready(svc: Service) -> JSONResponse | None:
    """The answer while the run is not loaded (503 loading, 500 failed to load), or None once it is."""
    if not svc.ready.is_set():
        return JSONResponse({"status": "loading", "detail": "the model is loading"}, status_code=503)
    if svc.error is not None:
        return JSONResponse({"status": "error", "detail": svc.error}, status_code=500)
    return None


def _refused(svc: Service, api_key: str | None, request: Request) -> JSONResponse | None:
    """401 without the key (where one is needed), 413 for a /predict request whose Content-Length is over
    the limit (both before the body is read), else None."""
    if api_key is not None and request.url.path not in OPEN_PATHS \
            and not key_matches(request.headers.get("authorization"), api_key):
        return JSONResponse({"detail": f"this service needs an API key: {KEY_HINT}"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="msacl"'})
    size = request.headers.get("content-length", "")
    # the multipart envelope adds a few hundred bytes to the file; 64 KiB of slack never refuses a legal file
    if request.url.path == "/predict" and size.isdigit() and int(size) > svc.max_bytes + 65536:
        return JSONResponse({"detail": f"upload of {int(size)} bytes is larger than the {svc.max_bytes} byte "
                                       f"limit (msacl serve --max-upload-mb)"}, status_code=413)
    return None


async def _answer(svc: Service, data: bytes, name: str, heatmap: bool) -> Any:
    """``svc.predict`` in a worker thread, answered within the service's time limit."""
    import anyio

    deadline = Deadline(name, svc.timeout_s)
    try:
        # abandon_on_cancel: at the limit the client gets its answer at once; the thread stops at its next stage
        with anyio.fail_after(svc.timeout_s + 0.05):
            return await anyio.to_thread.run_sync(svc.predict, data, name, heatmap, deadline, abandon_on_cancel=True)
    except TimeoutError:
        e = deadline.error("still working")
        return JSONResponse({"detail": e.detail}, status_code=e.status)
    except UploadError as e:
        return JSONResponse({"detail": e.detail}, status_code=e.status)


def create_app(run: str | Path, *, fpr: float = 0.05, device: str = "cpu", convert_channels: bool = False,
               max_bytes: int = MAX_UPLOAD_BYTES, limits: InputLimits | None = None, timeout_s: float = TIMEOUT_S,
               api_key: str | None = None, max_batch: int = MAX_BATCH, load_in_background: bool = True) -> Any:
    """The FastAPI application serving ``run`` (see the module docstring).

    Args:
        run: run directory written by ``msacl fit``.
        fpr: target false-positive rate of the decisions.
        device: torch device of the detector.
        convert_channels: convert images of another colour than the training images instead of refusing them.
        max_bytes: largest upload accepted (413 above).
        limits: the images' pixel limits and the heat map's size (``msacl.deploy.inference.InputLimits``).
        timeout_s: time one request may take once uploaded (503 after it).
        api_key: the key every route but ``/health`` and ``/`` needs, or None for none.
        max_batch: most images of concurrent requests scored in one forward pass (1: one at a time).
        load_in_background: load the run in a thread at start-up (the server answers /health meanwhile);
            False loads it before the application starts answering.
    """
    if FastAPI is None:
        raise MsaclError("msacl serve needs FastAPI and uvicorn: pip install 'msacl[serve]'")
    if api_key is not None and not api_key.strip():
        raise MsaclError("the API key is empty; give a non-empty --api-key (or MSACL_API_KEY), or none")
    from contextlib import asynccontextmanager

    from msacl.serve.page import PAGE

    svc = Service(run, fpr=fpr, device=device, convert_channels=convert_channels, max_bytes=max_bytes,
                  limits=limits, timeout_s=timeout_s, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if load_in_background:
            threading.Thread(target=svc.load, name="msacl-load", daemon=True).start()
        else:
            svc.load()
        yield
        import anyio

        await anyio.to_thread.run_sync(svc.close)

    app = FastAPI(title="msacl", description="anomaly scores and decisions for medical images", lifespan=lifespan)
    app.state.service = svc

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        refused = _refused(svc, api_key, request)
        return refused if refused is not None else await call_next(request)

    @app.get("/health")
    async def health(request: Request) -> Any:  # async: answered on the event loop, never behind busy threads
        waiting = _not_ready(svc)
        if waiting is not None:
            return waiting
        if api_key is not None and not key_matches(request.headers.get("authorization"), api_key):
            return {"status": "ok", "auth_required": True, "detail": f"details need the API key: {KEY_HINT}"}
        return {**svc.health(), "auth_required": api_key is not None}

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
        return await _answer(svc, data, name, heatmap)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app
