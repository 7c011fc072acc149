"""`msacl serve`: round trips through the HTTP API, bad uploads, bounded work per request, the API key, the page
in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
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

from msacl.deploy.inference import InputLimits  # noqa: E402
from msacl.serve import create_app  # noqa: E402
from test_predict_limits import header_only_png  # noqa: E402

KEY = "k3y-0f-the-test-service-9f8e7d6c"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def run(fitted_padim: Path) -> Path:
    return fitted_padim


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _dicom() -> bytes:
    from conftest import dicom_bytes

    return dicom_bytes(48)


def _png_of(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_predict_round_trip_matches_the_run(run, synthetic_data):
    from msacl.deploy.inference import FittedRun

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


def find_chromium() -> str:
    """The Chromium binary, or a skip: CI machines may not have one."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium); the page is tested with "
                    "TestClient in test_health_says_loading_until_the_model_is_ready")
    return chromium


def chromium_flags(tmp_path: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000"]


@contextlib.contextmanager
def serving(app):  # noqa: ANN001, ANN201
    """``app`` served by uvicorn on a free loopback port until the block ends; yields its URL once ready."""
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
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
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def test_page_in_headless_chromium(run, synthetic_data, tmp_path):
    """A real server on loopback; Chromium opens the page, which posts an image and shows the result."""
    chromium = find_chromium()
    import httpx

    with serving(create_app(run, fpr=0.2)) as url:
        img = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
        page = f"{url}/#data:image/png;base64,{base64.b64encode(_png(img)).decode()}"
        flags = chromium_flags(tmp_path)
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


def test_page_asks_for_the_key_in_headless_chromium(run, synthetic_data, tmp_path):
    """With an API key the page's requests get 401 until it has the key, then 200."""
    chromium = find_chromium()
    img = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
    data = f"data:image/png;base64,{base64.b64encode(_png(img)).decode()}"
    flags = chromium_flags(tmp_path)

    def dom(url: str) -> str:
        return subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True,
                              timeout=120).stdout

    with serving(create_app(run, fpr=0.2, api_key=KEY)) as url:
        without = dom(f"{url}/#{data}")
        assert 'data-status="401"' in without and 'data-status="200"' not in without, without[-2000:]
        assert '<form id="keyform">' in without and "enter its API key" in without  # the form is shown
        wrong = dom(f"{url}/#key=not-the-key&{data}")
        assert 'data-status="401"' in wrong
        right = dom(f"{url}/#key={KEY}&{data}")
        assert 'data-status="200"' in right and '<form id="keyform" hidden="">' in right, right[-2000:]
        assert "abnormal if score" in right  # /health's details, shown once the key was given


def test_pixel_limit_is_answered_413_from_the_header_before_decoding(run, monkeypatch):
    import msacl.data.readers

    decoded: list[str] = []
    real_decode = msacl.data.readers.decode
    monkeypatch.setattr(msacl.data.readers, "decode", lambda path: decoded.append(str(path)) or real_decode(path))
    huge = header_only_png(13_000, 13_000)  # 169 megapixels in a few hundred bytes
    with TestClient(create_app(run, load_in_background=False)) as client:
        r = client.post("/predict", files={"file": ("scan.png", huge)})
        assert r.status_code == 413, r.text
        detail = r.json()["detail"]
        assert "scan.png: 13000 x 13000 px (169.0 megapixels)" in detail
        assert "limit of 50 megapixels" in detail and "msacl serve --max-pixels" in detail
        assert decoded == [] and client.get("/health").json()["requests"] == 0
        # under the limit the same kind of file is decoded and scored
        small = header_only_png(300, 300, complete=True)
        assert client.post("/predict", files={"file": ("s.png", small)}).status_code == 200
        assert len(decoded) == 1
    # a lower limit: a 64 x 64 image (4,096 px) is refused, DICOM headers too
    from conftest import dicom_bytes

    with TestClient(create_app(run, limits=InputLimits(max_pixels=2000), load_in_background=False)) as client:
        image = _png_of(Image.new("RGB", (64, 64), (200, 90, 80)))
        r = client.post("/predict", files={"file": ("a.png", image)})
        assert r.status_code == 413 and "limit of 0.002 megapixels" in r.json()["detail"]
        r = client.post("/predict", files={"file": ("case.dcm", dicom_bytes(48))})
        assert r.status_code == 413 and "48 x 48 px" in r.json()["detail"]
        assert client.get("/health").json()["max_pixels"] == 2000


def test_images_below_the_smallest_scorable_size_get_422(run):
    tiny = _png_of(Image.new("RGB", (15, 200), (200, 90, 80)))
    with TestClient(create_app(run, load_in_background=False)) as client:
        r = client.post("/predict", files={"file": ("thin.png", tiny)})
        assert r.status_code == 422
        assert "thin.png: 15 x 200 px is smaller than the 16 px shorter side" in r.json()["detail"]
        assert "msacl serve --min-side" in r.json()["detail"]
        ok = _png_of(Image.new("RGB", (16, 200), (200, 90, 80)))
        assert client.post("/predict", files={"file": ("ok.png", ok)}).status_code == 200
    with TestClient(create_app(run, limits=InputLimits(min_side=1), load_in_background=False)) as client:
        r = client.post("/predict", files={"file": ("one.png", _png_of(Image.new("RGB", (1, 1))))})
        assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (1, 1)


def test_heatmap_is_bounded_and_the_decision_uses_the_full_map(run, synthetic_data, tmp_path):
    from msacl.deploy.inference import FittedRun
    from msacl.report.heatmap import BAR_WIDTH

    big = tmp_path / "big.png"
    src = sorted((synthetic_data / "test" / "abnormal").iterdir())[0]
    Image.open(src).convert("RGB").resize((2000, 1000), Image.Resampling.BILINEAR).save(big)
    (want,) = FittedRun(run, fpr=0.2).predict_files([big])

    def heatmap_size(body: dict) -> tuple[int, int]:
        with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))) as im:
            return im.size

    with TestClient(create_app(run, fpr=0.2, load_in_background=False)) as client:
        body = client.post("/predict", files={"file": ("big.png", big.read_bytes())}).json()
    assert (body["width"], body["height"]) == (2000, 1000)  # the input's own size
    assert body["score"] == pytest.approx(want.score, rel=1e-5) and body["decision"] == want.decision
    assert body["lesion_fraction"] == pytest.approx(want.lesion_fraction)
    w, h = heatmap_size(body)
    assert w == 1024 + BAR_WIDTH and 512 <= h <= 512 + 40  # image area 1024 x 512, one title line
    with TestClient(create_app(run, fpr=0.2, limits=InputLimits(heatmap_side=1500),
                               load_in_background=False)) as client:
        larger = client.post("/predict", files={"file": ("big.png", big.read_bytes())}).json()
    assert heatmap_size(larger)[0] == 1500 + BAR_WIDTH and larger["score"] == body["score"]


def test_a_request_over_the_time_limit_gets_503_and_frees_the_detector(run, synthetic_data):
    good = _png(sorted((synthetic_data / "test" / "normal").iterdir())[0])
    app = create_app(run, timeout_s=0.5, load_in_background=False)
    with TestClient(app) as client:
        model = app.state.service.model
        real_score, calls = model.score, []

        def slow_score(x):  # noqa: ANN001, ANN202
            calls.append(1)
            if len(calls) == 1:
                time.sleep(3)
            return real_score(x)

        model.score = slow_score
        t0 = time.perf_counter()
        r = client.post("/predict", files={"file": ("slow.png", good)})
        waited = time.perf_counter() - t0
        assert r.status_code == 503, r.text
        assert "slow.png: not answered within the 0.5 s limit" in r.json()["detail"]
        assert "msacl serve --timeout" in r.json()["detail"]
        assert waited < 2.5  # answered at the limit, not when the slow call returned
        # the abandoned request stops before drawing; the next one waits for the detector, then succeeds
        time.sleep(3)
        r = client.post("/predict", files={"file": ("next.png", good)})
        assert r.status_code == 200 and len(calls) == 2


def test_health_answers_while_a_request_holds_the_detector(run, synthetic_data):
    good = _png(sorted((synthetic_data / "test" / "normal").iterdir())[0])
    app = create_app(run, load_in_background=False)
    entered, release = threading.Event(), threading.Event()
    with TestClient(app) as client:
        model = app.state.service.model
        real_score = model.score

        def blocked_score(x):  # noqa: ANN001, ANN202
            entered.set()
            release.wait(30)
            return real_score(x)

        model.score = blocked_score
        answers: list[int] = []
        worker = threading.Thread(target=lambda: answers.append(
            client.post("/predict", files={"file": ("a.png", good)}).status_code))
        worker.start()
        try:
            assert entered.wait(30)
            h = client.get("/health")
            assert h.status_code == 200 and h.json()["requests"] == 0  # the request in flight is not done
        finally:
            release.set()
            worker.join(30)
        assert answers == [200] and client.get("/health").json()["requests"] == 1


def test_api_key_is_needed_on_every_route_but_health_and_the_page(run, synthetic_data):
    good = _png(sorted((synthetic_data / "test" / "normal").iterdir())[0])
    with TestClient(create_app(run, api_key=KEY, load_in_background=False)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}):
            r = client.post("/predict", files={"file": ("a.png", good)}, headers=headers)
            assert r.status_code == 401, headers
            assert "Authorization: Bearer KEY" in r.json()["detail"] and r.headers["www-authenticate"].startswith(
                "Bearer")
        for path in ("/openapi.json", "/docs"):
            assert client.get(path).status_code == 401 and client.get(path, headers=AUTH).status_code == 200
        # a large upload without the key is refused before its body is read
        r = client.post("/predict", files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(60 << 20))})
        assert r.status_code == 401
        bare = client.get("/health").json()
        assert bare["status"] == "ok" and bare["auth_required"] and "run" not in bare and "image" not in bare
        full = client.get("/health", headers=AUTH).json()
        assert full["run"] == str(run) and full["auth_required"] and full["requests"] == 0
        assert client.get("/").status_code == 200  # the page holds no data; it asks for the key
        r = client.post("/predict", files={"file": ("a.png", good)}, headers={"authorization": f"bearer {KEY}"})
        assert r.status_code == 200 and r.json()["file"] == "a.png"
    with pytest.raises(Exception, match="API key is empty"):
        create_app(run, api_key="  ")


def test_key_comparison_and_who_a_binding_exposes():
    from msacl.cli.serve import exposure_warning, is_loopback
    from msacl.serve.app import key_matches

    assert key_matches(f"Bearer {KEY}", KEY) and key_matches(f"  bearer {KEY} ", KEY)
    assert not any(key_matches(h, KEY) for h in (None, "", KEY, f"Bearer {KEY[:-1]}", f"Token {KEY}", "Bearer"))
    assert key_matches("Bearer cl\u00e9", "cl\u00e9") and not key_matches("Bearer cle", "cl\u00e9")
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "scanner.example.org"))
    assert exposure_warning("127.0.0.1", 8000, None) is None
    w = exposure_warning("0.0.0.0", 8000, None)
    assert w.startswith("warning: listening on 0.0.0.0:8000 without an API key") and "MSACL_API_KEY" in w
    assert "any machine that can reach this one" in w
    assert "192.168.1.5" in exposure_warning("192.168.1.5", 9000, None)
    assert "401" in exposure_warning("0.0.0.0", 8000, KEY) and "not encrypted" in exposure_warning("0.0.0.0", 1, KEY)


def test_serve_cli_refuses_an_empty_key_and_a_bad_timeout(run, capsys, monkeypatch):
    monkeypatch.setenv("MSACL_API_KEY", "")
    assert main(["serve", "--run", str(run)]) == 1
    assert "API key is empty" in capsys.readouterr().err
    monkeypatch.delenv("MSACL_API_KEY")
    assert main(["serve", "--run", str(run), "--timeout", "0"]) == 1
    assert "--timeout must be a positive number" in capsys.readouterr().err


def test_serve_cli_warns_who_can_reach_it_and_passes_the_key(run, capsys, monkeypatch):
    import uvicorn

    started: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append({"app": app, **kw}))
    monkeypatch.delenv("MSACL_API_KEY", raising=False)
    assert main(["serve", "--run", str(run), "--host", "0.0.0.0", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0:8123 without an API key: any machine that can reach this one" in err
    assert started[-1]["host"] == "0.0.0.0" and started[-1]["port"] == 8123
    monkeypatch.setenv("MSACL_API_KEY", KEY)
    assert main(["serve", "--run", str(run), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "without an API key" not in err and "API key required" in err and "401" in err
    with TestClient(started[-1]["app"]) as client:  # the key from the environment guards the app
        assert client.get("/openapi.json").status_code == 401
        assert client.get("/openapi.json", headers=AUTH).status_code == 200
    assert main(["serve", "--run", str(run), "--api-key", "short"]) == 0
    assert "the API key has 5 characters" in capsys.readouterr().err
    assert main(["serve", "--run", str(run)]) == 0 and "warning" not in capsys.readouterr().err  # loopback
