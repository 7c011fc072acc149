"""Session-wide fixtures: one thread per test process, the shared real data sets, a synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# A user's detector, imported by test_plugin_detector.py alone: collected (even for doctests) it would be
# registered for the whole session.
collect_ignore = ["plugin_detector.py"]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Tests never download anything: connections leave loopback only (DDP tests use it), and weight caches
    point at an empty folder, so that an ImageNet look-up either finds an offline source or fails loudly."""
    import socket

    real_connect = socket.socket.connect

    def connect(self, address):  # noqa: ANN001
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host in ("localhost", "::1") or host.startswith("127.") or "/" in host):
            return real_connect(self, address)
        raise OSError(f"tests do not use the network (tried to connect to {address})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    caches = tmp_path_factory.getbasetemp() / "weight-caches"
    monkeypatch.setenv("TORCH_HOME", str(caches / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(caches / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MSACL_WEIGHTS_DIR", str(caches / "msacl"))


def shared_data_root() -> Path:
    """Where the real data sets live: $MSACL_DATA_ROOT, else ../shared/data beside the repository."""
    return Path(os.environ.get("MSACL_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "kvasir_seg_patch128").is_dir():
        pytest.skip(f"real data sets not found at {root} (set MSACL_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set (folder layout, 64 px, 64 train / 24 + 24 test with masks), written once per session.

    Read-only for tests: copy it (shutil.copytree) before changing anything in it.
    """
    from msacl.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="session")
def fitted_padim(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PaDiM run fitted on the synthetic set by ``msacl fit`` (n_features=40), once per session.

    Read-only for tests (predict and serve read it; export writes into its run, so test_export fits its own).
    """
    from msacl.cli.main import main

    out = tmp_path_factory.mktemp("fitted") / "padim"
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(out), "--quiet",
                 "--set", "n_features=40"]) == 0
    return out


@pytest.fixture(scope="session")
def synthetic_train(synthetic_data: Path):
    """``synthetic_train(n, size)``: the first n normal training images of the synthetic set at size px."""
    from msacl.data import load_split

    cache: dict[int, torch.Tensor] = {}

    def get(n: int, size: int) -> torch.Tensor:
        if size not in cache:
            cache[size] = load_split(synthetic_data, "train", image_size=size).images
        return cache[size][:n]

    return get


def write_test_image(path: Path, size: int | tuple[int, int] = 16, *, mode: str = "RGB", value: int = 128) -> Path:
    """A small constant image (any Pillow mode and format, chosen by the suffix) for building data trees."""
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else size
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = Image.getmodebands(mode)
    Image.new(mode, (w, h), value if bands == 1 else (value,) * bands).save(path)
    return path


@pytest.fixture
def image_file():
    """The :func:`write_test_image` helper, as a fixture."""
    return write_test_image


def dicom_bytes(side: int = 48) -> bytes:
    """A 16-bit grey (12 bits stored) DICOM file of side x side pixels, as bytes; skips without pydicom."""
    import io

    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (torch.arange(side * side) % 4000).numpy().astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
