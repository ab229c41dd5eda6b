"""MONAI network configurations by name, as ``{"_target_": ..., **args}`` dicts a card stores.

The dict is built into a module by :func:`medai.models.loader.build_network`, the same code that
loads the card later, so a trained card always rebuilds the network it was trained with.
"""

from __future__ import annotations

from .data import DataError

SEGMENTATION_NETWORKS = ("unet", "segresnet", "dynunet")
CLASSIFICATION_NETWORKS = ("densenet121", "resnet")


def network_config(name: str, task: str, spatial_dims: int, in_channels: int, out_channels: int, overrides: dict | None = None) -> dict:
    """A card ``network`` section for ``name`` (case-insensitive); ``overrides`` replace default arguments."""
    key = name.lower().replace("-", "").replace("_", "")
    allowed = SEGMENTATION_NETWORKS if task == "segmentation" else CLASSIFICATION_NETWORKS
    if key not in allowed:
        raise DataError(f"network {name!r} does not fit task {task}; use one of {', '.join(allowed)}")
    if key == "unet":
        cfg = {"_target_": "monai.networks.nets.UNet", "spatial_dims": spatial_dims, "in_channels": in_channels,
               "out_channels": out_channels, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2,
               "norm": "INSTANCE"}
    elif key == "segresnet":
        cfg = {"_target_": "monai.networks.nets.SegResNet", "spatial_dims": spatial_dims, "in_channels": in_channels,
               "out_channels": out_channels, "init_filters": 8, "blocks_down": [1, 2, 2], "blocks_up": [1, 1]}
    elif key == "dynunet":
        cfg = {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": spatial_dims, "in_channels": in_channels,
               "out_channels": out_channels, "kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2],
               "upsample_kernel_size": [2, 2, 2], "filters": [16, 32, 64, 128], "norm_name": "instance"}
    elif key == "densenet121":
        cfg = {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": spatial_dims, "in_channels": in_channels,
               "out_channels": out_channels}
    else:  # resnet: a ResNet-10-like default, small enough for CPU training
        cfg = {"_target_": "monai.networks.nets.ResNet", "block": "basic", "layers": [1, 1, 1, 1],
               "block_inplanes": [32, 64, 128, 256], "spatial_dims": spatial_dims, "n_input_channels": in_channels,
               "num_classes": out_channels}
    cfg.update(overrides or {})
    if key == "dynunet" and "strides" in (overrides or {}) and "upsample_kernel_size" not in (overrides or {}):
        cfg["upsample_kernel_size"] = list(cfg["strides"][1:])
    return cfg


def size_divisor(cfg: dict) -> int:
    """The factor a patch size must be divisible by for the network's down/up-sampling to line up."""
    strides = cfg.get("strides") or []
    if cfg.get("_target_", "").endswith("SegResNet"):
        return 2 ** (len(cfg.get("blocks_down", [1, 2, 2, 4])) - 1)
    d = 1
    for s in strides:
        d *= int(s if not isinstance(s, list) else max(s))
    return d
