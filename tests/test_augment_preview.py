"""The preview grid (MSACL Fig. 3 layout) and the ``msacl augment-preview`` verb."""

from __future__ import annotations

import pytest
import torch

from msacl.augment import WeakAugment, build_strong
from msacl.augment.preview import preview_grid, save_preview
from msacl.cli.main import main


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from msacl.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("aug") / "syn", size=32, n_train=10, n_test_normal=2,
                           n_test_abnormal=2)


def test_grid_rows_are_images_and_columns_are_classes():
    x = torch.rand(3, 3, 24, 24, generator=gen())
    fam = build_strong("medmix")
    grid = preview_grid(x, fam, generator=gen(1), sources=x.roll(1, 0), weak=WeakAugment(16))
    assert grid.strong.shape == (3, 4, 3, 24, 24) and grid.masks.shape == (3, 4, 1, 24, 24)
    assert grid.weak is not None and grid.weak.shape == (3, 4, 3, 16, 16)
    assert grid.class_names == ("0 lesions", "1 lesion", "2 lesions", "3 lesions")
    assert torch.equal(grid.strong[:, 0], x)  # column 0 is the image itself
    for n in range(4):
        assert all(grid.masks[i, n].sum() > 0 for i in range(3)) == (n > 0)
    rot = preview_grid(x, build_strong("rotation"), generator=gen())
    assert torch.equal(rot.strong[1, 3], torch.rot90(x[1], 3, dims=(1, 2))) and rot.weak is None


@pytest.mark.parametrize("c", [1, 3])
def test_save_preview_writes_a_png_of_the_grid(tmp_path, c):
    import matplotlib.image

    x = torch.rand(2, c, 16, 16, generator=gen())
    grid = preview_grid(x, build_strong("noise"), generator=gen(), weak=WeakAugment(16))
    path = save_preview(tmp_path / "sub" / "p.png", grid, title="noise", outline=True, panel_inches=1.0, dpi=50)
    img = matplotlib.image.imread(path)
    # 4 columns x (2 + 2 weak) rows of 1-inch panels at 50 dpi, plus the title band.
    assert img.shape[1] == 200 and 200 <= img.shape[0] <= 230


def test_cli_writes_the_preview(tiny_data, tmp_path, capsys):
    out = tmp_path / "medmix.png"
    rc = main(["augment-preview", "--data", str(tiny_data), "--out", str(out), "--rows", "2", "--weak",
               "--outline", "--option", "size=[0.2,0.3]", "--seed", "3"])
    assert rc == 0 and out.stat().st_size > 1000
    assert "2 images x 4 classes, with weak views" in capsys.readouterr().err
    rc = main(["augment-preview", "--data", str(tiny_data), "--out", str(tmp_path / "r.png"), "--family",
               "rotation", "--rows", "20", "--image-size", "16", "--channels", "1"])
    assert rc == 0 and "only 10 training images" in capsys.readouterr().err


def test_cli_errors_name_the_problem(tiny_data, tmp_path, capsys):
    base = ["augment-preview", "--data", str(tiny_data)]
    assert main(base + ["--out", str(tmp_path / "x.jpg")]) == 1
    assert "ending in .png" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "x.png"), "--option", "holes=3", "--family", "cutout"]) == 1
    assert "'cutout' has no option 'holes'" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "x.png"), "--option", "size"]) == 1
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["augment-preview", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
