"""The work behind ``POST /predict``: one upload checked, decoded, scored and drawn, within bounds.

Every request's work is bounded before it starts: the upload's size (``max_bytes``), the image's pixels
(read from its header: :class:`msacl.deploy.inference.InputLimits`), the heat map's size and the time it may take
(``timeout_s``). The time limit is checked between the stages (waiting for a decoding slot, decoding,
waiting for the detector, drawing), so a request that has run out of time stops at the next one instead of
holding the detector; the endpoint answers 503 at the limit in any case (``msacl.serve.app``).

At most ``decode_slots`` uploads are decoded at once (each one can be up to ``max_pixels``, so this bounds
the memory that concurrent large uploads take). One thread owns the detector and scores the images that
concurrent requests are waiting with in one forward pass, up to ``max_batch`` (:mod:`msacl.serve.batching`).
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

from msacl.deploy.inference import InputLimits
from msacl.errors import DataError, MsaclError
from msacl.serve.batching import Batcher

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
TIMEOUT_S = 30.0
MAX_BATCH = 16
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


class UploadError(Exception):
    """A refused upload: the HTTP status and the reason, naming the file."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class Deadline:
    """The moment a request's time runs out; :meth:`check` raises a 503 :class:`UploadError` after it."""

    def __init__(self, name: str, seconds: float):
        self.name, self.seconds = name, seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def error(self, stage: str) -> UploadError:
        return UploadError(503, f"{self.name}: not answered within the {self.seconds:g} s limit per request "
                                f"({stage}); try again later, or start the service with a larger "
                                f"msacl serve --timeout")

    def check(self, stage: str) -> None:
        if time.monotonic() >= self.end:
            raise self.error(stage)

    def acquire(self, lock: Any, stage: str) -> None:
        """Take ``lock`` (a Lock or Semaphore) before the deadline, else raise."""
        if not lock.acquire(timeout=self.left()):
            raise self.error(stage)


class Service:
    """The loaded run, its limits and the counters the endpoints share.

    Args:
        run: run directory written by ``msacl fit``.
        fpr: target false-positive rate of the decisions.
        device: torch device of the detector.
        convert_channels: convert images of another colour than the training images instead of refusing them.
        max_bytes: largest upload accepted.
        limits: the images' size limits and the heat map's size.
        timeout_s: time one request may take, from the end of its upload to its answer.
        decode_slots: uploads decoded at once (default: the number of cores).
        max_batch: most images of concurrent requests scored in one forward pass (1: one at a time).
    """

    def __init__(self, run: str | Path, *, fpr: float, device: str, convert_channels: bool,
                 max_bytes: int = MAX_UPLOAD_BYTES, limits: InputLimits | None = None,
                 timeout_s: float = TIMEOUT_S, decode_slots: int | None = None, max_batch: int = MAX_BATCH):
        self.run, self.fpr, self.device, self.convert_channels = str(run), fpr, device, convert_channels
        self.max_bytes, self.limits, self.timeout_s = max_bytes, limits or InputLimits(), timeout_s
        self.model: Any = None
        self.error: str | None = None
        self.loads = 0
        self.requests = 0
        self.load_seconds: float | None = None
        self.max_batch = max_batch
        self.batcher: Batcher | None = None
        self.ready = threading.Event()
        self.decoding = threading.BoundedSemaphore(decode_slots or os.cpu_count() or 1)

    def load(self) -> None:
        """Load the run (once; a second call does nothing)."""
        if self.ready.is_set():
            return
        try:
            from msacl.deploy.inference import NO_CALIBRATION, FittedRun

            t0 = time.perf_counter()
            self.model = FittedRun(self.run, fpr=self.fpr, device=self.device, convert_channels=self.convert_channels,
                                   limits=self.limits, command="msacl serve")
            self.batcher = Batcher(lambda x: self.model.score(x), self.max_batch)
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

    def close(self, wait_s: float = 120.0) -> None:
        """Stop the detector's thread (the application's shutdown), after a load in progress has ended."""
        self.ready.wait(wait_s)
        if self.batcher is not None:
            self.batcher.close()

    def health(self) -> dict[str, Any]:
        """What ``/health`` shows once the run is loaded: counters, limits and what the decisions rest on."""
        return {"status": "ok", "loads": self.loads, "requests": self.requests, "load_seconds": self.load_seconds,
                "max_upload_bytes": self.max_bytes, "timeout_s": self.timeout_s, **self.batcher.stats(),
                **self.model.summary()}

    def predict(self, data: bytes, name: str, heatmap: bool, deadline: Deadline | None = None) -> dict[str, Any]:
        """Score one uploaded file. Raises ``UploadError`` with the HTTP status and the reason."""
        deadline = deadline or Deadline(name, self.timeout_s)
        if not data:
            raise UploadError(400, f"{name}: empty upload")
        suffix = sniff_suffix(name, data[:132])
        if suffix is None:
            raise UploadError(415, f"{name}: not a supported image (PNG, JPEG, BMP, TIFF, WebP or DICOM)")
        deadline.acquire(self.decoding, "waiting to be decoded")
        try:
            inp = self._decode(data, name, suffix)
        finally:
            self.decoding.release()
        deadline.check("decoding")
        try:
            score, amap = self.batcher.submit(inp.x, deadline.left())
        except TimeoutError:
            raise deadline.error("waiting for the detector") from None
        self.requests += 1
        p = self.model.finish(name, score, amap, inp)
        out = {"file": name, "score": p.score, "decision": p.decision, "threshold": p.threshold,
               "fpr": self.fpr, "pixel_threshold": p.pixel_threshold, "lesion_fraction": p.lesion_fraction,
               "width": p.width, "height": p.height, "note": p.note}
        if self.model.decision is not None:
            out["guarantee"] = self.model.decision["image"]["guarantee"]
        if heatmap:
            deadline.check("scored; the heat map was not drawn")
            out["heatmap_png"] = base64.b64encode(self.model.heatmap_png(p)).decode("ascii")
        return out

    def _decode(self, data: bytes, name: str, suffix: str) -> Any:
        """The upload as :class:`msacl.deploy.inference.LoadedImage`; 413 over the pixel limit, 422 unreadable."""
        from msacl.deploy.inference import ImageTooLarge

        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="msacl-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.model.load_image(tmp, name=name)
        except ImageTooLarge as e:
            raise UploadError(413, str(e)) from None
        except DataError as e:
            raise UploadError(422, str(e).replace(" (--on-bad-file skip leaves such files out)", "")) from None
        finally:
            os.unlink(tmp)
