"""SlicerMONAIAuto3DSeg's ``Scripts/auto3dseg_segresnet_inference.py``, restated for the parity test and the benchmark.

The same MONAI transforms in the same order, reading and writing NRRD files as the extension's
process does (``LoadImaged`` from the file, ``nrrd.write`` with the input's header). Written from
the upstream script (github:lassoan/SlicerMONAIAuto3DSeg, MONAIAuto3DSeg/Scripts/) and independent
of ``medai``: the test compares MedAI's in-process run against this. ``fire`` is replaced by
argparse; the ``progress`` bar is off. Run as the extension does::

    python auto3dseg_reference.py --model-file M/model.pt --image-file in.nrrd --result-file out.nrrd [--image-file-2 ...]
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict

import nrrd
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import decollate_batch, list_data_collate
from monai.inferers import SlidingWindowInfererAdapt
from monai.transforms import (
    Compose,
    ConcatItemsd,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    KeepLargestConnectedComponentd,
    Lambdad,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import convert_to_dst_type


def _normalize(ts: list, key: str, mode: str, bounds) -> None:
    if mode == "none":
        return
    if mode in ("range", "ct"):
        ts += [ScaleIntensityRanged(keys=key, a_min=bounds[0], a_max=bounds[1], b_min=-1, b_max=1, clip=False),
               Lambdad(keys=key, func=lambda x: torch.sigmoid(x))]
    elif mode in ("meanstd", "mri"):
        ts.append(NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True))
    elif mode == "meanstdtanh":
        ts += [NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True), Lambdad(keys=key, func=lambda x: 3 * torch.tanh(x / 3))]
    elif mode == "pet":
        ts.append(Lambdad(keys=key, func=lambda x: torch.sigmoid((x - x.min()) / x.std())))
    else:
        raise ValueError(f"Unsupported normalize_mode {mode}")


def _spatial(ts: list, config: dict, source_key: str) -> None:
    if config.get("orientation_ras", False):
        ts.append(Orientationd(keys="image", axcodes="RAS"))
    if config.get("crop_foreground", True):
        ts.append(CropForegroundd(keys="image", source_key=source_key, margin=10, allow_smaller=True))
    if config.get("resample_resolution", None) is not None:
        pixdim = list(config["resample_resolution"])
        ts.append(Spacingd(keys=["image"], pixdim=pixdim, mode=["bilinear"], dtype=torch.float,
                           min_pixdim=np.array(pixdim) * 0.75, max_pixdim=np.array(pixdim) * 1.25, allow_missing_keys=True))


def _pred(logits, sigmoid: bool):
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    if sigmoid:
        return torch.sigmoid(logits) >= 0.5
    return torch.argmax(torch.softmax(logits, dim=1), dim=1, keepdim=True).to(dtype=torch.uint8)


@torch.no_grad()
def main(model_file: str, image_file: str, result_file: str, image_file_2=None, image_file_3=None, image_file_4=None) -> None:
    checkpoint = torch.load(model_file, map_location="cpu")  # as the script (weights_only=True by default since torch 2.6)
    config = checkpoint["config"]
    model = ConfigParser(config["network"]).get_parsed_content()
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    device = torch.device("cpu") if torch.cuda.device_count() == 0 else torch.device(0)
    model = model.to(device=device, memory_format=torch.channels_last_3d).eval()
    files = [f for f in (image_file, image_file_2, image_file_3, image_file_4) if f is not None]
    mode, bounds = config["normalize_mode"], config["intensity_bounds"]
    brats = "brats" in model_file
    if brats:
        ts = [LoadImaged(keys="image", ensure_channel_first=True, dtype=None, allow_missing_keys=True, image_only=False),
              EnsureTyped(keys="image", data_type="tensor", dtype=torch.float, allow_missing_keys=True)]
        _spatial(ts, config, "image")
        _normalize(ts, "image", mode, bounds)
        transform = Compose(ts)
        batch = list_data_collate([transform([{"image": files}])])
    else:
        images = {f"image{n + 1}": f for n, f in enumerate(files)}
        keys = list(images)
        loaded = LoadImaged(keys=keys, ensure_channel_first=True, dtype=None, allow_missing_keys=True, image_only=False)(images)
        first_shape = loaded[keys[0]].shape[1:]
        for key in keys[1:]:
            if np.any(np.not_equal(first_shape, loaded[key].shape[-len(first_shape):])):
                loaded = Resized(keys=key, spatial_size=first_shape, mode="bilinear")(loaded)
        if len(keys) == 1:
            ts = [ConcatItemsd(keys=keys, name="image", dim=0),
                  EnsureTyped(keys="image", data_type="tensor", dtype=torch.float, allow_missing_keys=True)]
            _normalize(ts, "image", mode, bounds)
        else:
            ts = []
            for key, m in zip(keys, [mode] + list(OrderedDict(config["extra_modalities"]).values())):
                _normalize(ts, key, m, bounds)
            ts += [ConcatItemsd(keys=keys, name="image", dim=0),
                   EnsureTyped(keys="image", data_type="tensor", dtype=torch.float, allow_missing_keys=True)]
        _spatial(ts, config, "image1")
        transform = Compose(ts)
        batch = list_data_collate([transform([loaded])])
    data = batch["image"].as_subclass(torch.Tensor).to(memory_format=torch.channels_last_3d, device=device)
    inferer = SlidingWindowInfererAdapt(roi_size=config["roi_size"], sw_batch_size=1, overlap=0.625, mode="gaussian",
                                        cache_roi_weight_map=False, progress=False)
    with torch.autocast("cuda", enabled=device.type == "cuda"):
        logits = inferer(inputs=data, network=model)
    pred = _pred(logits, config.get("sigmoid", False))
    post = [Invertd(keys="pred", orig_keys="image", transform=transform, nearest_interp=True)]
    if not brats and "whole-head" in model_file:
        post.append(KeepLargestConnectedComponentd(keys="pred", num_components=2))
    batch["pred"] = convert_to_dst_type(pred, batch["image"], dtype=pred.dtype, device=pred.device)[0]
    seg = [Compose(post)(x)["pred"] for x in decollate_batch(batch)][0]
    if brats:
        merged = 2 * seg.any(0).to(dtype=torch.uint8)
        merged[seg[1:].any(0)] = 1
        merged[seg[2:].any(0)] = 3
        seg = merged
    else:
        seg = seg[0]
    nrrd.write(result_file, seg.cpu().numpy().astype(np.uint8), nrrd.read_header(image_file))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("model-file", "image-file", "result-file"):
        parser.add_argument(f"--{name}", required=True)
    for n in (2, 3, 4):
        parser.add_argument(f"--image-file-{n}")
    args = parser.parse_args()
    if not os.path.exists(args.model_file):
        raise SystemExit(f"Cannot find model file: {args.model_file}")
    main(args.model_file, args.image_file, args.result_file, args.image_file_2, args.image_file_3, args.image_file_4)
