"""Apply a fitted run to new images: what ``msacl predict``, ``msacl serve`` and ``msacl export`` share.

:class:`FittedRun` loads a run directory once (detector, input size and channels, calibration) and turns
one image file into a :class:`Prediction`: score, normal / abnormal decision at the run's calibrated
threshold (:mod:`msacl.metrics.calibrate`), the flagged share of the image, and the heat map at the input's own
size, or reduced so that its longest side is at most ``heatmap_side`` (1,024 px by default). The detector
sees the image as it saw its training images (resized to N x N, the run's channels); the decision and the
flagged share come from its full N x N map, whatever size the heat map is drawn at.

The work per image is bounded before any pixel is decoded: the image's size is read from its header
(PNG, JPEG, ... or the DICOM header) and an image of more than ``max_pixels`` pixels is refused
(:class:`ImageTooLarge`; 50 megapixels by default, far above any medical image a user sends), as is one
whose shorter side is under ``min_side`` (:class:`ImageTooSmall`; by default 16 px, one cell of the
coarsest feature map PaDiM and PatchCore read, ResNet layer 3 at stride 16, or the run's own image size
when that is smaller; 28 px MedMNIST images pass): enlarged further, its score would describe the
interpolation, not the image.

An input whose colour differs from the training images' (a grey DICOM against a model fitted on colour
photographs, or the reverse) is refused with a message naming the file, since its score is not
comparable: the same content scores differently in grey and in colour. ``convert_channels=True``
converts it (grey repeated into three channels, or colour to ITU-R 601 luma) and the prediction's
``note`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msacl.errors import DataError
from msacl.runs.fitted import COLOUR, FitRun

MAX_PIXELS = 50_000_000
MIN_SIDE = 16
HEATMAP_SIDE = 1024
NO_CALIBRATION = ("{run} has no calibration.json (fitted with --holdout 0 and no val/): "
                  "scores only, no normal/abnormal decision; refit with --holdout 0.1 to get decisions")


def source_channels(paths: list[str], limit: int = 32) -> int | str:
    """Channels of the source files (1 grey, 3 colour, or "mixed"), from up to ``limit`` evenly spaced files.

    Training images are converted to the run's ``channels`` when loaded, so the tensors no longer say
    whether the sources were grey; this is what new inputs are compared with.
    """
    from msacl.data.readers import decode

    if not paths:
        return "mixed"
    pick = sorted({round(i * (len(paths) - 1) / max(1, limit - 1)) for i in range(min(limit, len(paths)))})
    seen = {decode(paths[i]).channels for i in pick}
    return seen.pop() if len(seen) == 1 else "mixed"


class ImageTooLarge(DataError):
    """An input with more pixels than the limit, refused from its header before it is decoded."""


class ImageTooSmall(DataError):
    """An input whose shorter side is under the smallest the detector can score."""


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image file from its header alone (no pixel is decoded), or None when the header
    cannot be read (then decoding the file reports what is wrong with it)."""
    import warnings

    from PIL import Image

    from msacl.data.readers import is_dicom_file

    path = Path(path)
    try:
        if is_dicom_file(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
        with warnings.catch_warnings():  # Pillow warns of large images; the caller's limit decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Exception:  # noqa: BLE001 - any unreadable header is reported by decode(), naming the problem
        return None


@dataclass
class LoadedImage:
    """One decoded input, ready to score and to show.

    Attributes:
        x: the detector's input. Shape: (C, N, N) with C the run's channels.
        image: the input for display, float in [0, 1]: its own size, or reduced so that its longest side is at
            most the heat-map side. Shape: (h, w) or (h, w, 3).
        note: what was converted, or "".
        width, height: the input's own size in pixels.
    """

    x: torch.Tensor
    image: np.ndarray
    note: str
    width: int
    height: int


@dataclass
class Prediction:
    """One scored image.

    Attributes:
        path: the input (file name for uploads).
        score: image anomaly score.
        decision: "abnormal" / "normal" at the calibrated threshold, or None without calibration.
        threshold: the image threshold (None without calibration).
        pixel_threshold: map values above it are flagged (None without calibration).
        lesion_fraction: share of the image's area flagged at the detector's resolution (None without
            calibration).
        image: the input as shown (:attr:`LoadedImage.image`), float in [0, 1]. Shape: (h, w) or (h, w, 3).
        heatmap: the anomaly map resized to the shown image's size. Shape: (h, w).
        flagged: pixels above the pixel threshold at the shown image's size, or None. Shape: (h, w).
        note: what was converted, or "".
        width, height: the input's own size in pixels.
    """

    path: str
    score: float
    decision: str | None
    threshold: float | None
    pixel_threshold: float | None
    lesion_fraction: float | None
    image: np.ndarray
    heatmap: np.ndarray
    flagged: np.ndarray | None = None
    note: str = ""
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class InputLimits:
    """How much work one input may cost (see the module docstring).

    Attributes:
        max_pixels: largest width x height accepted; larger inputs are refused from their header.
        min_side: smallest shorter side accepted; None: :data:`MIN_SIDE`, or the run's image size when smaller.
        heatmap_side: longest side of the heat map drawn (the input's own size when smaller).
    """

    max_pixels: int = MAX_PIXELS
    min_side: int | None = None
    heatmap_side: int = HEATMAP_SIDE


class FittedRun:
    """A fitted run, loaded once, applied to image files.

    Args:
        run: run directory written by ``msacl fit``.
        fpr: target false-positive rate of the decisions.
        device: torch device for the detector.
        convert_channels: convert (instead of refusing) inputs whose colour differs from the training images.
        limits: the inputs' size limits and the heat map's size.
        command: the command whose flags the messages name (e.g. "msacl serve"; default: the flags alone).

        model = FittedRun("runs/padim"); p = model.predict_files(["scan.dcm"])[0]; p.score, p.decision
    """

    def __init__(self, run: str | Path, *, fpr: float = 0.05, device: str | torch.device = "cpu",
                 convert_channels: bool = False, limits: InputLimits | None = None, command: str = ""):
        self.run = FitRun.open(run)
        self.path = self.run.path
        self.size = self.run.image_size
        self.channels = self.run.channels
        self.source_channels = self.run.source_channels
        self.detector = self.run.load_detector(device)
        self.device = torch.device(device)
        self.convert_channels = convert_channels
        self.limits = limits or InputLimits()
        self.min_side = self.limits.min_side or min(MIN_SIDE, self.size)
        self.command = command
        self.display_range = self.run.threshold().display_range
        self.decision = self.run.decision(fpr)
        self.fpr = fpr

    def flag(self, name: str) -> str:
        """A flag as the messages name it: ``--max-pixels`` or ``msacl serve --max-pixels``."""
        return f"{self.command} {name}".strip()

    @property
    def threshold(self) -> float | None:
        return None if self.decision is None else float(self.decision["image"]["threshold"])

    @property
    def pixel_threshold(self) -> float | None:
        return None if self.decision is None else float(self.decision["pixel"]["threshold"])

    def colour_range(self) -> tuple[float | None, float | None]:
        """One colour scale for every heat map: the held-out maps' range, stretched to show the threshold."""
        lo, hi = self.display_range or (None, None)
        t = self.pixel_threshold
        if t is not None and hi is not None and lo is not None and t >= hi:
            hi = t + 0.1 * (t - lo)
        return lo, hi

    def check_size(self, label: str, width: int, height: int) -> None:
        """Raise :class:`ImageTooLarge` or :class:`ImageTooSmall` for an input outside the limits."""
        n, limit = width * height, self.limits.max_pixels
        if n > limit:
            raise ImageTooLarge(f"{label}: {width} x {height} px ({n / 1e6:.1f} megapixels) is over the limit of "
                                f"{limit / 1e6:g} megapixels; {self.flag('--max-pixels')} N raises it")
        if min(width, height) < self.min_side:
            raise ImageTooSmall(f"{label}: {width} x {height} px is smaller than the {self.min_side} px shorter side "
                                f"this detector can score (its input is {self.size} x {self.size} px); "
                                f"{self.flag('--min-side')} N changes the limit")

    def load(self, path: str | Path, *, name: str | None = None) -> tuple[torch.Tensor, np.ndarray, str]:
        """``(x, image, note)`` of :meth:`load_image`."""
        d = self.load_image(path, name=name)
        return d.x, d.image, d.note

    def load_image(self, path: str | Path, *, name: str | None = None) -> LoadedImage:
        """Decode one file: the detector's input, the image for display and a conversion note.

        Its size is checked from its header first (:meth:`check_size`), so a huge image costs no decoding.

        Args:
            path: PNG, JPEG, BMP, TIFF, WebP or DICOM file.
            name: how messages name the input (default: ``path``).

        Raises:
            DataError: unreadable, outside the size limits (:class:`ImageTooLarge`, :class:`ImageTooSmall`), or
                of another colour than the training images without ``convert_channels``.
        """
        import warnings

        from PIL import Image

        from msacl.data.readers import decode, resize, to_channels, to_tensor

        label = name or str(path)
        size = header_size(path)
        if size is not None:
            self.check_size(label, *size)
        try:
            with warnings.catch_warnings():  # under the limit the user chose; Pillow's own warning adds nothing
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                d = decode(path)
        except DataError as e:
            if "exceeds limit" in str(e):  # over Pillow's bomb limit, twice its warning threshold
                raise ImageTooLarge(f"{label}: over the {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels that "
                                    f"Pillow decodes at most, whatever {self.flag('--max-pixels')} says") from None
            raise DataError(str(e).replace(str(path), label, 1)) from None
        if size is None:  # a header the probe could not read, but the decoder could
            self.check_size(label, *d.size)
        note = ""
        src = self.source_channels
        channels = self.channels
        if src in (1, 3) and d.channels != src:
            what = (f"{label}: a {COLOUR[d.channels]} image ({d.mode}), but {self.path} was "
                    f"fitted on {COLOUR[src]} images")
            if not self.convert_channels:
                raise DataError(f"{what}: its score would not be comparable; pass {self.flag('--convert-channels')} "
                                f"to convert it ({'repeat the grey channel' if src == 3 else 'colour to grey'}) "
                                f"or use a run fitted on {COLOUR[d.channels]} images")
            note = "grey converted to colour (channel repeated)" if src == 3 else "colour converted to grey (luma)"
        if note.startswith("colour converted") and channels == 3:
            # A grey-trained run with 3-channel input saw grey repeated three times: give it exactly that.
            x = to_tensor(to_channels(resize(d.image.convert("L") if d.image.mode == "RGB" else d.image,
                                             self.size), 3))
        else:
            x = to_tensor(to_channels(resize(d.image, self.size), channels))
        shown = to_channels(self._shown(d.image), 3 if d.channels == 3 else 1)
        shown = shown.astype(np.float32) / 255.0 if shown.dtype == np.uint8 else shown.astype(np.float32)
        image = shown[..., 0] if shown.shape[2] == 1 else shown
        return LoadedImage(x, image, note, *d.size)

    def _shown(self, image: Any) -> Any:
        """The PIL image reduced (area average) so that its longest side is at most the heat-map side."""
        from PIL import Image

        w, h = image.size
        side = self.limits.heatmap_side
        if max(w, h) <= side:
            return image
        f = side / max(w, h)
        return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX)

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The detector on a batch. Shape: (B, C, N, N) -> scores (B,), maps (B, 1, N, N) on CPU."""
        s, m = self.detector.predict(x.to(self.device))
        return s.float().cpu(), m.float().cpu()

    def finish(self, path: str, score: float, amap: torch.Tensor, inp: LoadedImage) -> Prediction:
        """Decision, flagged share and the heat map at the shown image's size for one scored input."""
        import torch.nn.functional as F

        h, w = inp.image.shape[:2]
        native = F.interpolate(amap.reshape(1, 1, *amap.shape[-2:]), size=(h, w), mode="bilinear",
                               align_corners=False)[0, 0].numpy()
        t, tp = self.threshold, self.pixel_threshold
        decision = frac = flagged = None
        if t is not None and tp is not None:
            decision = "abnormal" if score > t else "normal"
            # Flagged at the detector's resolution, where the threshold was calibrated (bilinear resizing
            # lowers peaks), then shown at the image's size.
            hot = (amap.reshape(1, 1, *amap.shape[-2:]) > tp).float()
            frac = float(hot.mean())
            flagged = F.interpolate(hot, size=(h, w), mode="nearest")[0, 0].numpy() > 0.5
        return Prediction(path, float(score), decision, t, tp, frac, inp.image, native, flagged, inp.note,
                          inp.width, inp.height)

    def predict_files(self, paths: list[str | Path]) -> list[Prediction]:
        """Score files (one batch); DataError on the first bad one."""
        loaded = [self.load_image(p) for p in paths]
        if not loaded:
            return []
        s, m = self.score(torch.stack([d.x for d in loaded]))
        return [self.finish(str(p), float(s[i]), m[i], d) for i, (p, d) in enumerate(zip(paths, loaded, strict=True))]

    def heatmap_png(self, p: Prediction, title: str | None = None) -> bytes:
        """The overlay figure of :func:`msacl.report.heatmap.overlay_png` for one prediction."""
        from msacl.report.heatmap import overlay_png

        vmin, vmax = self.colour_range()
        if title is None:
            title = f"{Path(p.path).name}  score {p.score:.4g}"
            if p.decision is not None:
                title += f"  {p.decision.upper()} (threshold {p.threshold:.4g}, FPR {self.fpr:g})"
        return overlay_png(p.image, p.heatmap, threshold=p.pixel_threshold, flagged=p.flagged, vmin=vmin,
                           vmax=vmax, title=title)

    def summary(self) -> dict[str, Any]:
        """What the decisions rest on, for ``decision.json`` and ``/health`` (``image`` None without calibration)."""
        base = {"run": str(self.path), "detector": self.run.config.detector, "image_size": self.size,
                "channels": self.channels, "source_channels": self.source_channels, "fpr": self.fpr,
                "max_pixels": self.limits.max_pixels, "min_side": self.min_side,
                "heatmap_side": self.limits.heatmap_side}
        if self.decision is None:
            return {**base, "image": None, "pixel": None, "warnings": [NO_CALIBRATION.format(run=self.path)]}
        return {**base, **self.decision}
