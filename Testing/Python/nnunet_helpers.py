"""A tiny nnU-Net v2 result folder made in the tests: plans.json (3d_fullres, 2 stages), dataset.json, fold_N checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TRAINER, PLANS, CONFIG = "nnUNetTrainer", "nnUNetPlans", "3d_fullres"

ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 2, "features_per_stage": [4, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1],
        "n_conv_per_stage_decoder": [1], "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def plans(spacing=(2.0, 1.5, 1.5), patch=(16, 16, 16), transpose=(0, 1, 2), reader: str = "SimpleITKIO") -> dict:
    """A valid plans.json for one tiny 3d_fullres configuration (nnU-Net's own keys, z-score normalisation)."""
    backward = [int(i) for i in np.argsort(transpose)]
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": PLANS, "image_reader_writer": reader,
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [16, 24, 24],
        "transpose_forward": list(transpose), "transpose_backward": backward,
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 3.0, "mean": 0.0, "median": 0.0, "min": -3.0,
                                                               "percentile_00_5": -2.5, "percentile_99_5": 2.5, "std": 1.0}},
        "configurations": {CONFIG: {
            "data_identifier": f"{PLANS}_{CONFIG}", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(patch), "median_image_size_in_voxels": [16, 24, 24], "spacing": list(spacing),
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": ARCH, "batch_dice": False,
        }},
    }


def make_result_folder(root: Path, labels: dict | None = None, folds=(0,), regions: list | None = None, seed: int = 0,
                       channels=("T1",), **plan_args) -> Path:
    """``root/Dataset999_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres`` with fresh weights of the planned network per fold."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    labels = labels or {"background": 0, "left": 1, "right": 2}
    folder = root / "Dataset999_Tiny" / f"{TRAINER}__{PLANS}__{CONFIG}"
    folder.mkdir(parents=True)
    p = plans(**plan_args)
    intensity = p["foreground_intensity_properties_per_channel"]["0"]
    p["foreground_intensity_properties_per_channel"] = {str(c): intensity for c in range(len(channels))}
    p["configurations"][CONFIG]["normalization_schemes"] = ["ZScoreNormalization"] * len(channels)
    p["configurations"][CONFIG]["use_mask_for_norm"] = [False] * len(channels)
    (folder / "plans.json").write_text(json.dumps(p))
    dataset = {"channel_names": {str(c): n for c, n in enumerate(channels)}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    if regions:
        dataset["regions_class_order"] = regions
    (folder / "dataset.json").write_text(json.dumps(dataset))
    heads = len(regions) if regions else len(labels)
    for n, fold in enumerate(folds):
        torch.manual_seed(seed + n)
        net = get_network_from_plans(ARCH["network_class_name"], ARCH["arch_kwargs"], ARCH["_kw_requires_import"],
                                     len(channels), heads, allow_init=True, deep_supervision=False)
        (folder / f"fold_{fold}").mkdir()
        torch.save({"network_weights": net.state_dict(), "trainer_name": TRAINER,
                    "init_args": {"configuration": CONFIG, "plans": p, "fold": fold},
                    "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
