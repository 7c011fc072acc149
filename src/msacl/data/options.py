"""How a run read its images: recorded in every run's ``config.yaml`` (pre-training and fitted runs alike)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataOptions:
    """How the training images were read (recorded so a run directory says what it was trained on).

    Attributes:
        root: the data folder.
        layout: its layout (``msacl.data.layouts``).
        image_size: the side N of the N x N images the model takes; ``None`` before it is decided.
        channels: 1 (grey) or 3 (colour), as the images were converted on loading.
        on_bad_file: what loading did with an unreadable file (``error`` or ``skip``).
        cache_dir: where decoded images were cached (None: no cache).
        source_channels: the channels of the source files (1, 3 or ``"mixed"``), which the loaded tensors no
            longer show; ``msacl predict`` and ``serve`` compare new inputs with it (fitted runs only).
    """

    root: str | None = None
    layout: str = "folder"
    image_size: int | None = None
    channels: int = 3
    on_bad_file: str = "error"
    cache_dir: str | None = None
    source_channels: int | str | None = None
