"""Peer driver: anomalib's PaDiM on a folder data set, with a given backbone state and channel subset.

Runs in a separate virtual environment that has anomalib (never the project's); ``bench_padim.py`` calls it.

    PEER_PYTHON peer_anomalib_padim.py DATA_DIR SIZE [--masks] [--state-dict F.pt] [--channel-index F.pt]

``--state-dict`` is a torchvision ResNet-18 state dict loaded into anomalib's timm feature extractor;
``--channel-index`` replaces anomalib's random channel subset, so both libraries fit the same Gaussians.
Unlike the plain peer script this sets anomalib's pre-processor to SIZE: its default resizes every image to
256 px again. Prints one JSON line: fit and test seconds (wall and CPU), anomalib's metrics.
"""

import argparse
import json
import logging
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch  # noqa: E402
from anomalib.data import Folder  # noqa: E402
from anomalib.engine import Engine  # noqa: E402
from anomalib.models import Padim  # noqa: E402
from torchvision.transforms.v2 import Resize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("size", type=int)
    ap.add_argument("--masks", action="store_true")
    ap.add_argument("--state-dict")
    ap.add_argument("--channel-index")
    ap.add_argument("--accelerator", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    dm = Folder(name="x", root=a.root, normal_dir="train/normal", abnormal_dir="test/abnormal",
                normal_test_dir="test/normal", mask_dir="test/masks" if a.masks else None,
                train_batch_size=32, eval_batch_size=32, num_workers=0, augmentations=Resize((a.size, a.size)))
    model = Padim(backbone="resnet18", pre_trained=False, layers=["layer1", "layer2", "layer3"],
                  pre_processor=Padim.configure_pre_processor(image_size=(a.size, a.size)))
    if a.state_dict:
        fe = model.model.feature_extractor.feature_extractor
        own = fe.state_dict()
        state = torch.load(a.state_dict, map_location="cpu", weights_only=True)
        missing = [k for k in own if k not in state]
        if missing:
            raise SystemExit(f"{a.state_dict}: missing {len(missing)} keys of the feature extractor: {missing[:3]}")
        fe.load_state_dict({k: state[k] for k in own})
    if a.channel_index:
        idx = torch.load(a.channel_index, weights_only=True)
        model.model.idx = idx.to(model.model.idx.dtype)
    engine = Engine(accelerator=a.accelerator, devices=1, logger=False, enable_progress_bar=False,
                    default_root_dir=tempfile.mkdtemp())
    t, c = time.perf_counter(), time.process_time()
    engine.fit(model=model, datamodule=dm)
    tf, cf = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    res = engine.test(model=model, datamodule=dm, verbose=False)
    tt, ct = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({"root": a.root, "size": a.size, "fit_s": round(tf, 2), "test_s": round(tt, 2),
                      "fit_cpu_s": round(cf, 2), "test_cpu_s": round(ct, 2),
                      **{k: round(float(v), 4) for k, v in res[0].items()}}))


if __name__ == "__main__":
    main()
