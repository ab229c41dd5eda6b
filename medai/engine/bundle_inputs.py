"""What a MONAI Bundle's preprocessing receives: the input volumes as MetaTensors under the bundle's own keys.

Most bundles load one image (``image``; several channels are stacked on the first volume's grid).
A bundle whose ``LoadImaged`` loads several images (renalStructures_CECT: ``artery``, ``vein``,
``excret``, later merged by its own ``ConcatImages``) gets volume *i* under key *i*, each
channel-first with its own affine, so that its per-key Orientation/Spacing run as written.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import GeometryError, Volume, check_voxels, to_ijk_array
from ..models.loader import LoadedModel
from .common import stack_inputs


def as_meta_tensor(x: torch.Tensor, volume: Volume):
    """``x`` (C, I, J, K) as a MetaTensor with ``volume``'s affine and the meta a file reader would give."""
    from monai.data import MetaTensor

    affine = torch.as_tensor(volume.ijk_to_ras)
    return MetaTensor(x, affine=affine, meta={
        "filename_or_obj": volume.name, "original_affine": affine.clone(),
        "spatial_shape": np.asarray(volume.shape_ijk), "original_channel_dim": 0, "space": "RAS",
    })


def bundle_input_data(model: LoadedModel, volumes: list[Volume]) -> dict:
    """The data dict a bundle's preprocessing starts from, as its ``LoadImaged`` would have left it."""
    keyed = [spec for spec in model.card.inputs if isinstance(spec, dict) and spec.get("bundle_key")]
    if not keyed:
        x = stack_inputs(volumes, len(model.card.inputs), model.card.name)
        return {model.bundle.image_key: as_meta_tensor(x, volumes[0])}
    names = ", ".join(spec["bundle_key"] for spec in keyed)
    if len(volumes) != len(keyed):
        raise GeometryError(f"model {model.card.name} expects {len(keyed)} volumes ({names}), got {len(volumes)}; "
                            "select one volume for each input")
    data: dict = {}
    for spec, volume in zip(keyed, volumes):
        check_voxels(volume)
        x = torch.from_numpy(to_ijk_array(volume)).to(torch.float32)
        if x.shape[0] != 1:
            raise GeometryError(f"model {model.card.name} expects one single-channel volume per input ({names}); "
                                f"{volume.name} has {x.shape[0]} channels")
        data[spec["bundle_key"]] = image = as_meta_tensor(x, volume)
        if spec.get("meta_dict"):  # LoadImaged(image_only=False) also leaves "<key>_meta_dict" (ConcatImages reads it)
            data[spec["meta_dict"]] = image.meta
    return data
