"""`msacl serve`: round trips through the HTTP API, bad uploads, the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from msacl.cli.main import main

pytest.importorskip("fastapi", reason="msacl serve needs the serve extra: pip install 'msacl[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (the serve extra)")
from fastapi.testclient import TestClient  # noqa: E402

from msacl.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def run(synthetic_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "padim"
    assert main(["fit", "--detector", "padim", "--data", str(synthetic_data), "--out", str(out), "--quiet",
                 "--set", "n_features=40"]) == 0
    return out


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _dicom() -> bytes:
    from conftest import dicom_bytes

    return dicom_bytes(48)


def test_predict_round_trip_matches_the_run(run, synthetic_data):
    from msacl.inference import FittedRun

    files = sorted((synthetic_data / "test" / "abnormal").iterdir())[:3]
    expected = FittedRun(run, fpr=0.2).predict_files(files)
    with TestClient(create_app(run, fpr=0.2, load_in_background=False)) as client:
        h = client.get("/health")
        assert h.status_code == 200 and h.json()["loads"] == 1 and h.json()["image"]["n"] == 6
        for f, want in zip(files, expected, strict=True):
            r = client.post("/predict", files={"file": (f.name, _png(f), "image/png")})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["file"] == f.name and body["fpr"] == 0.2
            assert body["score"] == pytest.approx(want.score, rel=1e-5)
            assert body["threshold"] == pytest.approx(want.threshold)
            assert body["decision"] == ("abnormal" if body["score"] > body["threshold"] else "normal")
            assert body["lesion_fraction"] == pytest.approx(want.lesion_fraction)
            assert (body["width"], body["height"]) == (64, 64) and "guarantee" in body
            png = base64.b64decode(body["heatmap_png"])
            with Image.open(io.BytesIO(png)) as im:
                assert im.format == "PNG" and im.size[0] > 64
        r = client.post("/predict", params={"heatmap": "false"}, files={"file": ("x.png", _png(files[0]))})
        assert r.status_code == 200 and "heatmap_png" not in r.json()
        assert client.get("/health").json()["requests"] == 4
        # other formats: JPEG and TIFF of the same image, and a 16-bit grey DICOM (read as DICOM, then refused:
        # the run was fitted on colour images)
        for fmt, suffix in (("JPEG", "jpg"), ("TIFF", "tif")):
            buf = io.BytesIO()
            Image.open(files[0]).convert("RGB").save(buf, format=fmt)
            r = client.post("/predict", files={"file": (f"scan.{suffix}", buf.getvalue())})
            assert r.status_code == 200 and abs(r.json()["score"] - expected[0].score) < 0.05 * expected[0].score
        r = client.post("/predict", files={"file": ("case.dcm", _dicom())})
        assert r.status_code == 422 and "case.dcm: a grey image (DICOM MONOCHROME2)" in r.json()["detail"]


def test_bad_uploads_get_a_reason_and_the_service_keeps_serving(run, synthetic_data, tmp_path):
    good = sorted((synthetic_data / "test" / "normal").iterdir())[0]
    grey = io.BytesIO()
    Image.open(good).convert("L").save(grey, format="PNG")
    truncated = _png(good)[:200]
    with TestClient(create_app(run, max_bytes=20_000, load_in_background=False)) as client:
        cases = [
            ({"file": ("notes.txt", b"hello, not an image")}, 415, "notes.txt: not a supported image"),
            ({"file": ("cut.png", truncated)}, 422, "cut.png"),
            ({"file": ("grey.png", grey.getvalue())}, 422, "grey.png: a grey image"),
            ({"file": ("empty.png", b"")}, 400, "empty.png: empty upload"),
            ({"file": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(30_000))}, 413, "larger than the 20000 byte limit"),
            ({"wrong": ("x.png", _png(good))}, 422, "file"),
            ({"file": ("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(200_000))}, 413, "byte limit"),
        ]
        for files, status, reason in cases:
            r = client.post("/predict", files=files)
            assert r.status_code == status, (files.keys(), r.text)
            assert reason in str(r.json()["detail"]), r.text
        assert "--convert-channels" in client.post("/predict", files={"file": ("g.png", grey.getvalue())}).text
        r = client.post("/predict", files={"file": (good.name, _png(good))})
        assert r.status_code == 200
        h = client.get("/health").json()
        assert h["loads"] == 1 and h["requests"] == 1  # loaded once; only the good upload reached the model


def test_health_says_loading_until_the_model_is_ready(run):
    app = create_app(run)
    svc = app.state.service
    release = threading.Event()
    real_load = svc.load

    def slow_load() -> None:
        release.wait(30)
        real_load()

    svc.load = slow_load
    with TestClient(app) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert client.post("/predict", files={"file": ("x.png", b"x")}).status_code == 503
        release.set()
        for _ in range(600):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/health").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'id="drop"' in page.text and "/predict" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere


def test_a_run_that_fails_to_load_is_reported(tmp_path):
    with TestClient(create_app(tmp_path / "nowhere", load_in_background=False)) as client:
        r = client.get("/health")
        assert r.status_code == 500 and "not found" in r.json()["detail"]
    assert main(["serve", "--run", str(tmp_path / "nowhere")]) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_page_in_headless_chromium(run, synthetic_data, tmp_path):
    """A real server on loopback; Chromium opens the page, which posts an image and shows the result."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium); the page is tested with "
                    "TestClient in test_health_says_loading_until_the_model_is_ready")
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run, fpr=0.2), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        img = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
        page = f"{url}/#data:image/png;base64,{base64.b64encode(_png(img)).decode()}"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000"]
        dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        want = httpx.post(url + "/predict", files={"file": (img.name, _png(img))}, timeout=60).json()
        assert 'data-status="200"' in dom, dom[-2000:]
        assert f'data-decision="{want["decision"]}"' in dom
        assert f"{float(want['score']):.4g}"[:4] in dom
        assert 'src="data:image/png;base64,' in dom and "abnormal if score" in dom
        shot = tmp_path / "page.png"
        subprocess.run([chromium, *flags, "--window-size=1000,800", f"--screenshot={shot}", page],
                       capture_output=True, timeout=120)
        with Image.open(shot) as im:
            assert im.size == (1000, 800)
            assert len(im.convert("RGB").resize((50, 40)).getcolors(4000)) > 20  # the heat map is on it
    finally:
        server.should_exit = True
        thread.join(30)
