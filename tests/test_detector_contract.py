"""The contract every registered detector keeps, checked on each of them on the synthetic data set.

``fit`` on normal images, then ``predict`` gives scores (N,) and maps (N, 1, H, W) of finite numbers; a saved
detector loads and gives the same numbers; the same seed gives the same numbers; and, where a detector finds
the synthetic lesions within a small budget, it does (image AUROC clearly above chance).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.metrics import roc_auc_score

from msacl.detectors import REGISTRY, Detector, batches, build_detector, options_for
from msacl.detectors.network import NetworkDetector
from msacl.runs import make_generator

SIZE = 32  # the smallest image every detector takes (a multiple of 32)
# The smallest networks and budgets each option set allows: one epoch of batch 4.
TINY = {"epochs": 1, "gan_epochs": 1, "batch_size": 4, "width": 8, "latent_dim": 16, "map_images": 4,
        "n_features": 16, "mining_start": 0}


def tiny(name: str, **kw) -> dict:
    fields = options_for(name).to_dict()
    return {k: v for k, v in TINY.items() if k in fields} | {"backbone": "resnet18", "image_size": SIZE} | kw


def fitted(name: str, images: torch.Tensor, seed: int = 0, **kw) -> Detector:
    # Every random choice follows the seed (init_seed for the construction, the generator for fit), never
    # torch's global generator, which is set to something else each time to show it.
    torch.manual_seed(1000 + seed + int(torch.randint(10**6, ())))
    det = build_detector(name, **tiny(name, **({"init_seed": seed} | kw)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PANDA warns that its random-init encoder is not pre-trained
        return det.fit(batches(images, 4), generator=make_generator(seed))


@pytest.fixture(scope="module")
def images(synthetic_data) -> tuple[torch.Tensor, torch.Tensor]:
    from msacl.data import load_split

    train = load_split(synthetic_data, "train", image_size=SIZE).images[:12]
    test = load_split(synthetic_data, "test", image_size=SIZE).images
    return train, torch.cat([test[:3], test[-3:]])  # 3 normal and 3 abnormal test images


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_shapes_round_trip_and_seed(name, images, tmp_path):
    train, test = images
    det = fitted(name, train)
    scores, maps = det.predict(test)
    assert scores.shape == (6,) and maps.shape == (6, 1, SIZE, SIZE)
    assert scores.dtype.is_floating_point and torch.isfinite(scores).all() and torch.isfinite(maps).all()
    assert float(scores.std()) > 0  # scores that differ between images, not a constant

    det.save(tmp_path / "det.pt")
    loaded = Detector.load(tmp_path / "det.pt")
    assert type(loaded) is type(det) and loaded.options == det.options
    s2, m2 = loaded.predict(test)  # the same numbers, bit for bit
    assert torch.equal(s2, scores) and torch.equal(m2, maps)

    s3, m3 = fitted(name, train).predict(test)  # same seed: the same numbers, bit for bit
    assert torch.equal(s3, scores) and torch.equal(m3, maps)
    s4, _ = fitted(name, train, seed=1).predict(test)  # another seed: other numbers
    assert not torch.allclose(s4, scores)


# The detectors that find the synthetic lesions (4 % of a 64 px image) within seconds, from a random-init
# encoder: the feature-based ones. The trained detectors need ImageNet weights and several epochs for it; their
# own modules test that under `-m slow` (test_ocgan, test_cavga) or test the map instead (test_panda).
FINDS_LESIONS = {"padim": 0.75, "patchcore": 0.65}


@pytest.mark.parametrize("name", sorted(FINDS_LESIONS))
def test_finds_the_synthetic_lesions(name, synthetic_data):
    from msacl.data import load_split

    train = load_split(synthetic_data, "train", image_size=64)
    test = load_split(synthetic_data, "test", image_size=64)
    full = {"n_features": 100} if name == "padim" else {}  # PaDiM's default d for ResNet-18, not TINY's 16
    det = fitted(name, train.images, image_size=64, **full)
    scores, _ = det.predict(test.images)
    auroc = roc_auc_score(test.labels.numpy(), scores.numpy())
    assert auroc > FINDS_LESIONS[name], auroc  # chance is 0.5 (sd ~0.08 for 24 + 24 images)


TRAINED = sorted(name for name, cls in REGISTRY.items() if hasattr(cls, "checkpointing"))


def test_every_detector_that_trains_can_resume():
    # the feature detectors fit in one pass and have nothing to resume; every other one trains through FitLoop
    assert set(REGISTRY) - set(TRAINED) == {"padim", "patchcore"}


@pytest.mark.parametrize("name", TRAINED)
def test_an_interrupted_fit_resumes_bit_for_bit(name, images, tmp_path, monkeypatch):
    from msacl.detectors import fitloop

    train, test = images
    # two epochs (of each phase), interrupted right after the first checkpoint, at the end of epoch 1
    two = {k: 2 for k in ("epochs", "gan_epochs") if k in options_for(name).to_dict()}
    full = fitted(name, train, **two)
    save = fitloop.FitLoop.save

    def save_then_stop(self, *args):  # noqa: ANN001, ANN202
        save(self, *args)
        raise KeyboardInterrupt

    part = build_detector(name, **tiny(name, init_seed=0, **two))
    part.checkpointing(tmp_path / "ck.pt")
    monkeypatch.setattr(fitloop.FitLoop, "save", save_then_stop)
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("ignore")
        part.fit(batches(train, 4), generator=make_generator(0))
    monkeypatch.setattr(fitloop.FitLoop, "save", save)
    rest = build_detector(name, **tiny(name, init_seed=0, **two))
    rest.checkpointing(tmp_path / "ck.pt", resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rest.fit(batches(train, 4), generator=make_generator(0))
    s1, m1 = full.predict(test)
    s2, m2 = rest.predict(test)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    assert rest.history == full.history


NETWORKS = sorted(name for name, cls in REGISTRY.items() if issubclass(cls, NetworkDetector))


@pytest.mark.parametrize("name", NETWORKS)
def test_channels_last_networks_draw_the_weights_of_the_plain_layout(name):
    """The trained networks run channels-last (faster convolutions); ``fit``'s re-initialisation draws the same
    numbers as in the plain layout (torch's convolutions initialise through a contiguous buffer; a layer that
    drew straight into a channels-last weight would fail here), so a seed gives the weights it gave before."""
    from msacl.detectors.training import reinit

    det = build_detector(name, **tiny(name))
    convs = [m.weight for m in det.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    plain = build_detector(name, **tiny(name)).to(memory_format=torch.contiguous_format)
    for d in (det, plain):
        g = make_generator(7)
        for group in d.new_layer_groups():
            reinit(group, g)
    a, b = det.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
